//! The HTTP API (CONTRACTS §3): `POST /signup`, `POST /login`, `POST /validate`,
//! `GET /.well-known/jwks.json`.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use http::{HeaderMap, StatusCode, header};
use identity::{Claims, ISSUER, Verifier, VerifyError};
use platform::Problem;
use serde::{Deserialize, Serialize};

use crate::{
    domain::{Email, InputError, Password},
    keys::KeySet,
    limits::{Admission, IpNet, LoginLimits, client_address},
    password::{HashError, PasswordHasherPool},
    store::{StoreError, User, UserStore},
};

/// Largest signup body read.
const MAX_SIGNUP_BYTES: usize = 16 * 1024;

/// Everything the handlers share.
#[derive(Clone)]
pub(crate) struct AuthState {
    pub users: Arc<dyn UserStore>,
    pub hasher: PasswordHasherPool,
    pub keys: Arc<KeySet>,
    pub verifier: Verifier,
    pub limits: Arc<LoginLimits>,
    pub trusted_proxies: Arc<[IpNet]>,
    pub token_lifetime: Duration,
}

pub(crate) fn router(state: AuthState) -> Router {
    Router::new()
        .route("/signup", post(signup))
        .route("/login", post(login))
        .route("/validate", post(validate))
        .route(identity::JWKS_PATH, get(jwks))
        .with_state(state)
}

/// What can go wrong in a request, and the answer each gets.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send Authorization: Basic base64(email:password)")]
    MissingCredentials,
    /// Same answer for an unknown email and a wrong password.
    #[error("invalid email or password")]
    BadCredentials,
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("the body must be JSON {{\"email\": \"…\", \"password\": \"…\"}}: {0}")]
    BadJson(String),
    #[error("an account with this email already exists")]
    DuplicateEmail,
    #[error("too many attempts")]
    RateLimited { retry_after_secs: u64 },
    #[error("missing token: send Authorization: Bearer <token>")]
    MissingToken,
    #[error("{0}")]
    InvalidToken(VerifyError),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for AuthError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::DuplicateEmail => AuthError::DuplicateEmail,
            other => AuthError::Internal(other.to_string()),
        }
    }
}

impl From<HashError> for AuthError {
    fn from(error: HashError) -> Self {
        AuthError::Internal(error.to_string())
    }
}

impl From<AuthError> for Problem {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::MissingCredentials | AuthError::BadCredentials | AuthError::MissingToken => {
                Problem::unauthorized(error.to_string())
            }
            AuthError::Input(_) | AuthError::BadJson(_) => Problem::bad_request(error.to_string()),
            AuthError::DuplicateEmail => Problem::conflict(error.to_string()),
            AuthError::RateLimited { retry_after_secs } => {
                Problem::too_many_requests(retry_after_secs)
            }
            // As in the reference system: a token was presented and refused.
            AuthError::InvalidToken(_) => Problem::forbidden(error.to_string()),
            AuthError::Internal(cause) => Problem::internal(&cause),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        // RFC 6750 §3: say which scheme `/validate` wants, and why a token was refused.
        let challenge = match &self {
            AuthError::MissingToken => Some(identity::BEARER_CHALLENGE),
            AuthError::InvalidToken(_) => Some(identity::INVALID_TOKEN_CHALLENGE),
            _ => None,
        };
        let response = Problem::from(self).into_response();
        match challenge {
            Some(challenge) => identity::with_challenge(response, challenge),
            None => response,
        }
    }
}

#[derive(Debug, Deserialize)]
struct SignupRequest {
    email: String,
    password: String,
}

/// The account created by a signup.
#[derive(Debug, Serialize, Deserialize)]
pub struct SignupResponse {
    pub id: String,
    pub email: String,
}

async fn signup(State(state): State<AuthState>, request: Request) -> Result<Response, AuthError> {
    let (parts, body) = request.into_parts();
    let client = client_address(&parts.extensions, &parts.headers, &state.trusted_proxies);
    // Each signup costs a hash: the per-client limit protects the CPU here too.
    state
        .limits
        .check_client(client)
        .map_err(|retry_after_secs| AuthError::RateLimited { retry_after_secs })?;
    let bytes = axum::body::to_bytes(body, MAX_SIGNUP_BYTES)
        .await
        .map_err(|e| AuthError::BadJson(e.to_string()))?;
    let input: SignupRequest =
        serde_json::from_slice(&bytes).map_err(|e| AuthError::BadJson(e.to_string()))?;
    let email = Email::parse(&input.email)?;
    let password = Password::new(input.password)?;
    let user = create_user(&*state.users, &state.hasher, &email, &password, false).await?;
    tracing::info!(user_id = %user.id, "account created");
    let body = SignupResponse {
        id: user.id,
        email: user.email,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Hashes the password and stores a new account.
pub(crate) async fn create_user(
    users: &dyn UserStore,
    hasher: &PasswordHasherPool,
    email: &Email,
    password: &Password,
    admin: bool,
) -> Result<User, AuthError> {
    let user = User {
        id: uuid::Uuid::now_v7().to_string(),
        email: email.as_str().to_owned(),
        password_hash: hasher.hash(password).await?,
        admin,
        created_at: unix_now(),
    };
    users.insert(&user).await?;
    Ok(user)
}

async fn login(State(state): State<AuthState>, request: Request) -> Result<Response, AuthError> {
    let (parts, _body) = request.into_parts();
    let client = client_address(&parts.extensions, &parts.headers, &state.trusted_proxies);
    let limited = |retry_after_secs| AuthError::RateLimited { retry_after_secs };
    state.limits.check_client(client).map_err(limited)?;
    let (email, password) = basic_credentials(&parts.headers)?;
    // Keyed by what was typed (normalised when possible), so a wrong-format email is
    // limited too.
    let account_key = Email::for_lookup(&email).to_string();
    match state
        .limits
        .check_account(&account_key, client)
        .map_err(limited)?
    {
        Admission::Now => {}
        // The account is under attack from many clients: slowed, not locked.
        Admission::After(wait) => tokio::time::sleep(wait).await,
    }

    let Some(password) = Password::offered(password) else {
        state.limits.record_failure(&account_key, client);
        return Err(AuthError::BadCredentials);
    };
    // Accounts made before the address rule tightened still log in.
    let user = state
        .users
        .find_by_email(&Email::for_lookup(&email))
        .await?;
    // Unknown account: checked against the dummy hash, same cost, same answer.
    let matched = state
        .hasher
        .verify(&password, user.as_ref().map(|u| u.password_hash.as_str()))
        .await?;
    let user = match user {
        Some(user) if matched => user,
        _ => {
            state.limits.record_failure(&account_key, client);
            tracing::info!(client = ?client, "login refused");
            return Err(AuthError::BadCredentials);
        }
    };
    state.limits.record_success(&account_key, client);
    let token = issue_token(&state, &user)?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        token,
    )
        .into_response())
}

fn issue_token(state: &AuthState, user: &User) -> Result<String, AuthError> {
    let now = unix_now();
    let lifetime = i64::try_from(state.token_lifetime.as_secs()).unwrap_or(i64::MAX);
    let claims = Claims {
        sub: user.id.clone(),
        username: user.email.clone(),
        admin: user.admin,
        iat: now,
        exp: now.saturating_add(lifetime),
        iss: ISSUER.to_owned(),
    };
    state
        .keys
        .signing
        .sign(&claims)
        .map_err(|e| AuthError::Internal(e.to_string()))
}

/// `(email, password)` of `Authorization: Basic base64(email:password)`.
fn basic_credentials(headers: &HeaderMap) -> Result<(String, String), AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::MissingCredentials)?
        .to_str()
        .map_err(|_| AuthError::MissingCredentials)?;
    let (scheme, encoded) = value.split_once(' ').ok_or(AuthError::MissingCredentials)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::MissingCredentials);
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| AuthError::MissingCredentials)?;
    let decoded = String::from_utf8(decoded).map_err(|_| AuthError::MissingCredentials)?;
    // The password may contain ':', the email may not.
    let (email, password) = decoded
        .split_once(':')
        .ok_or(AuthError::MissingCredentials)?;
    Ok((email.to_owned(), password.to_owned()))
}

async fn validate(
    State(state): State<AuthState>,
    headers: HeaderMap,
) -> Result<Json<Claims>, AuthError> {
    let token = identity::bearer_token(&headers).map_err(|_| AuthError::MissingToken)?;
    match state.verifier.verify(token).await {
        Ok(claims) => Ok(Json(claims)),
        Err(VerifyError::KeysUnavailable(cause)) => Err(AuthError::Internal(cause)),
        Err(error) => Err(AuthError::InvalidToken(error)),
    }
}

async fn jwks(State(state): State<AuthState>) -> Response {
    let body = match serde_json::to_vec(&state.keys.jwks) {
        Ok(body) => body,
        Err(error) => return Problem::internal(&error).into_response(),
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        // Verifiers refetch on an unknown kid anyway; this only spares repeat fetches.
        .header(header::CACHE_CONTROL, "public, max-age=300")
        .body(Body::from(body))
        .unwrap_or_else(|error| Problem::internal(&error).into_response())
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().expect("header"));
        headers
    }

    #[test]
    fn basic_credentials_are_parsed() {
        let encoded = STANDARD.encode("a@x.com:pa:ss word");
        assert_eq!(
            basic_credentials(&basic(&format!("Basic {encoded}"))).expect("valid"),
            ("a@x.com".to_owned(), "pa:ss word".to_owned())
        );
        assert!(basic_credentials(&HeaderMap::new()).is_err());
        assert!(basic_credentials(&basic(&format!("Bearer {encoded}"))).is_err());
        assert!(basic_credentials(&basic("Basic !!!")).is_err());
        let no_colon = STANDARD.encode("a@x.com");
        assert!(basic_credentials(&basic(&format!("Basic {no_colon}"))).is_err());
    }

    #[test]
    fn errors_map_to_the_contract_status_codes() {
        let status = |e: AuthError| Problem::from(e).status();
        assert_eq!(
            status(AuthError::MissingCredentials),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status(AuthError::BadCredentials), StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(AuthError::Input(InputError::PasswordTooShort)),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(AuthError::BadJson("x".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(AuthError::DuplicateEmail), StatusCode::CONFLICT);
        assert_eq!(
            status(AuthError::RateLimited {
                retry_after_secs: 3
            }),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(status(AuthError::MissingToken), StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(AuthError::InvalidToken(VerifyError::Expired)),
            StatusCode::FORBIDDEN
        );
    }
}
