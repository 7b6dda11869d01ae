//! The HTTP API (docs/API.md §3): `POST /signup`, `POST /login`, `POST /validate`,
//! `GET /.well-known/jwks.json`.

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use http::{HeaderMap, StatusCode, header, request::Parts};
use identity::{Claims, ISSUER, Verifier, VerifyError};
use platform::{Problem, problem::PROBLEM_JSON};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

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

impl AuthState {
    /// The client of a signup or login (its address, behind the trusted proxies), if the
    /// per-client limit lets it try now.
    fn admit_client(&self, parts: &Parts) -> Result<Option<IpAddr>, AuthError> {
        let client = client_address(&parts.extensions, &parts.headers, &self.trusted_proxies);
        self.limits
            .check_client(client)
            .map_err(|retry_after_secs| AuthError::RateLimited { retry_after_secs })?;
        Ok(client)
    }
}

/// The refusal of a signup or login past a limit (for the OpenAPI description).
#[derive(utoipa::IntoResponses)]
#[expect(
    dead_code,
    reason = "describes the answer; AuthError::RateLimited builds it"
)]
enum TooManyAttempts {
    #[response(
        status = 429,
        description = "Too many attempts from this address (at login, also: for this account); see Retry-After",
        content_type = PROBLEM_JSON,
        headers(("Retry-After" = u64, description = "Seconds to wait"))
    )]
    Refused(Problem),
}

pub(crate) fn router(state: AuthState) -> Router {
    let (router, _) = api().with_state(state).split_for_parts();
    router
}

/// The routes with their descriptions (one source for the router and the OpenAPI).
fn api() -> OpenApiRouter<AuthState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(validate))
        .routes(routes!(jwks))
}

/// The OpenAPI description of auth's routes, from the handlers themselves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
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

/// A signup: the new account's email and password.
#[derive(Debug, Deserialize, ToSchema)]
struct SignupRequest {
    /// The account's address; stored trimmed, NFC-normalised and lower-cased, so
    /// `Ada@Example.com` and `ada@example.com` are one account.
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    email: String,
    /// 8 to 256 characters.
    #[schema(
        min_length = 8,
        max_length = 256,
        example = "correct horse battery staple"
    )]
    password: String,
}

/// The account created by a signup.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignupResponse {
    /// The user id (the `sub` of their tokens).
    #[schema(format = Uuid)]
    pub id: String,
    /// The address as stored (normalised, lower case).
    #[schema(format = Email)]
    pub email: String,
}

/// A JSON Web Key Set (RFC 7517): the keys that verify access tokens. Described here;
/// served from `jsonwebtoken`'s own type.
#[derive(ToSchema)]
#[allow(dead_code)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// An Ed25519 public key (RFC 8037).
#[derive(ToSchema)]
#[allow(dead_code)]
struct Jwk {
    #[schema(example = "OKP")]
    kty: String,
    #[schema(example = "Ed25519")]
    crv: String,
    /// The public key, base64url.
    x: String,
    /// The RFC 7638 thumbprint; a token names its key with it in the `kid` header.
    kid: String,
    #[schema(example = "EdDSA")]
    alg: String,
    #[schema(rename = "use", example = "sig")]
    key_use: String,
}

/// Create an account. The answer is the account; log in next for a token.
#[utoipa::path(
    post, path = "/signup", tag = "auth",
    request_body = SignupRequest,
    responses(
        (status = 201, description = "Account created", body = SignupResponse),
        (status = 400, description = "Not JSON, not an accepted email address, or a password outside 8 to 256 characters", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An account with this email exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        TooManyAttempts,
    )
)]
async fn signup(State(state): State<AuthState>, request: Request) -> Result<Response, AuthError> {
    let (parts, body) = request.into_parts();
    // Each signup costs a hash: the per-client limit protects the CPU here too.
    state.admit_client(&parts)?;
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

/// Log in with HTTP Basic credentials (email and password); the answer is an access
/// token (an EdDSA JWT) as plain text, for `Authorization: Bearer`.
#[utoipa::path(
    post, path = "/login", tag = "auth",
    security(("basic" = [])),
    responses(
        (status = 200, description = "The access token, valid 24 h by default", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or malformed credentials, or a wrong email or password (one answer for both)", body = Problem, content_type = "application/problem+json"),
        TooManyAttempts,
    )
)]
async fn login(State(state): State<AuthState>, request: Request) -> Result<Response, AuthError> {
    let (parts, _body) = request.into_parts();
    let client = state.admit_client(&parts)?;
    let limited = |retry_after_secs| AuthError::RateLimited { retry_after_secs };
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

/// Check a token online and read its claims. (The gateway and services check tokens
/// locally with the JWKS; this is for clients and tools.)
#[utoipa::path(
    post, path = "/validate", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The token is valid; its claims", body = Claims),
        (status = 401, description = "No Bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is invalid or expired", body = Problem, content_type = "application/problem+json"),
    )
)]
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

/// The public keys that verify access tokens.
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "The key set", body = JwkSet))
)]
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
