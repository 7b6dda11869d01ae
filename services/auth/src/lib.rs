//! The auth service: accounts, login, and the access tokens every other service trusts.
//!
//! * `POST /signup` JSON `{"email","password"}` → 201; duplicate → 409; bad input → 400.
//! * `POST /login` with `Authorization: Basic base64(email:password)` → 200 and the token
//!   as plain text; missing credentials or a wrong email/password → 401, the same answer
//!   for both; too many attempts per account or per client address → 429 + `Retry-After`.
//! * `POST /validate` with `Authorization: Bearer <token>` → 200 and the claims; no token
//!   → 401; a token that does not verify → 403 (as the reference system answers).
//! * `GET /.well-known/jwks.json` → the public keys, so that the gateway and services
//!   verify tokens locally ([`identity::Verifier`]) without calling auth.
//!
//! Tokens are EdDSA (Ed25519) JWTs with `sub`, `username`, `admin`, `iat`, `exp`, `iss`,
//! signed with a key kept in a file ([`keys`]). Passwords are stored only as argon2id
//! hashes ([`password`]). Accounts live in any database `storage` supports ([`store`]).

pub mod domain;
pub mod keys;
pub mod limits;
pub mod password;
mod routes;
pub mod store;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use identity::Verifier;
use platform::{ServiceApp, ServiceContext, health::Readiness};

pub use routes::{AuthError, SignupResponse, openapi};

use crate::{
    domain::{Email, Password},
    keys::KeySet,
    limits::{IpNet, LoginLimits, parse_ip_net},
    password::PasswordHasherPool,
    store::{SqlUserStore, UserStore},
};

pub const NAME: &str = "auth";

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "auth-args")]
pub struct Args {
    /// The Ed25519 signing key (PKCS#8 PEM); generated with mode 0600 if missing.
    /// Default: `<data dir>/jwt-signing.pem`.
    #[arg(long, env = "FLOTILLA_JWT_KEY_FILE")]
    pub jwt_key_file: Option<PathBuf>,

    /// Keys rotated out whose tokens must still verify until they expire: PEM files
    /// (public or private), comma-separated.
    #[arg(long, env = "FLOTILLA_JWT_PREVIOUS_KEYS", value_delimiter = ',')]
    pub jwt_previous_keys: Vec<PathBuf>,

    /// How long an access token is valid (e.g. 24h, 30m).
    #[arg(long, env = "FLOTILLA_JWT_LIFETIME", default_value = "24h", value_parser = platform::config::parse_duration)]
    pub jwt_lifetime: Duration,

    /// Email of an admin account created on start if it does not exist.
    #[arg(long, env = "FLOTILLA_ADMIN_EMAIL", requires = "admin_password")]
    pub admin_email: Option<String>,

    /// Password of that admin account (only used to create it).
    #[arg(
        long,
        env = "FLOTILLA_ADMIN_PASSWORD",
        hide_env_values = true,
        requires = "admin_email"
    )]
    pub admin_password: Option<String>,

    /// Failed logins allowed per account from one client address per minute; past it
    /// that client gets 429 for that account, while others still log in (0: unlimited).
    #[arg(long, env = "FLOTILLA_LOGIN_ATTEMPTS_PER_ACCOUNT", default_value_t = DEFAULT_ATTEMPTS_PER_ACCOUNT)]
    pub login_attempts_per_account: u32,

    /// Failed logins per account per minute from all clients together past which
    /// logins to it are slowed (1 s each) and clients that failed on it get 429; the
    /// right password from a client that has not failed still logs in (0: no ceiling).
    #[arg(long, env = "FLOTILLA_LOGIN_FAILURES_PER_ACCOUNT", default_value_t = DEFAULT_FAILURES_PER_ACCOUNT)]
    pub login_failures_per_account: u32,

    /// Login and signup attempts allowed per client address per minute (0: unlimited).
    #[arg(long, env = "FLOTILLA_LOGIN_ATTEMPTS_PER_CLIENT", default_value_t = DEFAULT_ATTEMPTS_PER_CLIENT)]
    pub login_attempts_per_client: u32,

    /// Peers whose `X-Forwarded-For` is believed: the gateway's addresses, as
    /// comma-separated addresses or CIDR networks. Default: this host only (`up` calls
    /// auth in-process); set it to the gateway's network when `serve auth` runs apart.
    #[arg(
        long,
        env = "FLOTILLA_TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = limits::DEFAULT_TRUSTED_PROXIES,
        value_parser = parse_ip_net
    )]
    pub trusted_proxies: Vec<IpNet>,
}

const DEFAULT_ATTEMPTS_PER_ACCOUNT: u32 = 10;
const DEFAULT_ATTEMPTS_PER_CLIENT: u32 = 60;
const DEFAULT_FAILURES_PER_ACCOUNT: u32 = 100;

platform::default_from_flags!(Args);

impl Args {
    fn key_file(&self, context: &ServiceContext) -> PathBuf {
        self.jwt_key_file
            .clone()
            .unwrap_or_else(|| context.data_dir.join("jwt-signing.pem"))
    }
}

/// How often idle rate-limit entries are forgotten.
const LIMITER_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// Builds the service; `flotilla up`, `flotilla serve auth` and tests all call this.
pub async fn build(context: &ServiceContext, args: &Args) -> anyhow::Result<ServiceApp> {
    let keys = Arc::new(KeySet::load(
        &args.key_file(context),
        &args.jwt_previous_keys,
    )?);
    let users = open_store(context).await?;
    let hasher = PasswordHasherPool::new().await?;
    if let (Some(email), Some(password)) = (&args.admin_email, &args.admin_password) {
        seed_admin(&users, &hasher, email, password).await?;
    }
    let limits = Arc::new(LoginLimits::new(
        args.login_attempts_per_account,
        args.login_attempts_per_client,
        args.login_failures_per_account,
    ));
    spawn_limiter_cleanup(context, limits.clone());

    let users: Arc<dyn UserStore> = Arc::new(users);
    let state = routes::AuthState {
        users: users.clone(),
        hasher,
        verifier: Verifier::from_jwks(&keys.jwks),
        keys,
        limits,
        trusted_proxies: args.trusted_proxies.clone().into(),
        token_lifetime: args.jwt_lifetime,
    };
    let readiness = Readiness::new().with_check("db", move || {
        let users = users.clone();
        async move { users.ping().await.map_err(|e| e.to_string()) }
    });
    Ok(ServiceApp::new(NAME, routes::router(state)).with_readiness(readiness))
}

async fn open_store(context: &ServiceContext) -> anyhow::Result<SqlUserStore> {
    let url = context.database_url_for(NAME);
    SqlUserStore::open(&url)
        .await
        .with_context(|| format!("cannot open the auth database {}", storage::redact(&url)))
}

/// Creates the admin account of `FLOTILLA_ADMIN_EMAIL` unless it exists. Idempotent;
/// never changes an existing account (so it cannot turn someone else's signup into an
/// admin, nor reset a password an operator changed).
async fn seed_admin(
    users: &SqlUserStore,
    hasher: &PasswordHasherPool,
    email: &str,
    password: &str,
) -> anyhow::Result<()> {
    let email = Email::parse(email).context("FLOTILLA_ADMIN_EMAIL")?;
    let password = Password::new(password.to_owned()).context("FLOTILLA_ADMIN_PASSWORD")?;
    match users.find_by_email(&email).await? {
        Some(user) if user.admin => {
            tracing::debug!(%email, "admin account already exists");
        }
        Some(_) => tracing::warn!(
            %email,
            "FLOTILLA_ADMIN_EMAIL names an existing account that is not an admin; it was left unchanged"
        ),
        None => match routes::create_user(users, hasher, &email, &password, true).await {
            Ok(user) => tracing::info!(%email, user_id = %user.id, "admin account created"),
            // Another replica seeded it at the same moment.
            Err(AuthError::DuplicateEmail) => {}
            Err(error) => return Err(anyhow::anyhow!("cannot create the admin account: {error}")),
        },
    }
    Ok(())
}

fn spawn_limiter_cleanup(context: &ServiceContext, limits: Arc<LoginLimits>) {
    let shutdown = context.shutdown.clone();
    context.tasks.spawn(async move {
        let mut tick = tokio::time::interval(LIMITER_CLEANUP_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => limits.forget_idle(),
            }
        }
    });
}

/// `flotilla user add`: creates an account in the auth database of `context` (the same
/// one `up` / `serve auth` use). Returns its id.
pub async fn add_user(
    context: &ServiceContext,
    email: &str,
    password: String,
    admin: bool,
) -> anyhow::Result<String> {
    let email = Email::parse(email)?;
    let password = Password::new(password)?;
    let users = open_store(context).await?;
    let hasher = PasswordHasherPool::new().await?;
    let user = routes::create_user(&users, &hasher, &email, &password, admin)
        .await
        .map_err(|error| match error {
            AuthError::DuplicateEmail => {
                anyhow::anyhow!("an account with email {email} already exists")
            }
            other => anyhow::anyhow!("cannot create the account: {other}"),
        })?;
    users.database().close().await;
    Ok(user.id)
}
