//! The caller of a request, as an axum extractor and as a guard middleware.

use axum::{
    extract::{FromRequestParts, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderMap, header, request::Parts};
use platform::Problem;

use crate::{Claims, Verifier, VerifyError};

/// The authenticated user making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    /// The user's email (`username` in the token, as in the reference system).
    pub username: String,
    pub admin: bool,
    /// When the token expires, Unix seconds.
    pub expires_at: i64,
}

impl From<Claims> for Caller {
    fn from(claims: Claims) -> Self {
        Self {
            user_id: claims.sub,
            username: claims.username,
            admin: claims.admin,
            expires_at: claims.exp,
        }
    }
}

/// Why a request carries no usable Bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("missing Authorization: Bearer token")]
    Missing,
    #[error("expected Authorization: Bearer <token>")]
    NotBearer,
}

impl From<BearerError> for Problem {
    fn from(error: BearerError) -> Self {
        Problem::unauthorized(error.to_string())
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, BearerError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(BearerError::Missing)?
        .to_str()
        .map_err(|_| BearerError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(BearerError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(BearerError::NotBearer);
    }
    Ok(token)
}

/// The caller of the request: taken from the extensions if the in-process gateway
/// already verified it, else verified from the Bearer token with the [`Verifier`] in
/// the extensions (see [`Verifier::layer`]). Missing or bad token → 401.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let token = bearer_token(&parts.headers)?;
        let Some(verifier) = parts.extensions.get::<Verifier>() else {
            return Err(Problem::internal(
                &"no Verifier in the request extensions: add Verifier::layer() to this router",
            ));
        };
        let claims = verifier.verify(token).await.map_err(Problem::from)?;
        Ok(claims.into())
    }
}

/// Middleware (`axum::middleware::from_fn_with_state(verifier, require_caller)`): lets
/// the request through only with a valid Bearer token, and records the [`Caller`] in the
/// extensions for the handler (or the in-process service) behind it. The token stays
/// in the headers, so a service reached over HTTP can check it again.
pub async fn require_caller(
    State(verifier): State<Verifier>,
    mut request: Request,
    next: Next,
) -> Response {
    // Never trust a caller someone else put there: only this check sets it.
    request.extensions_mut().remove::<Caller>();
    let token = match bearer_token(request.headers()) {
        Ok(token) => token,
        Err(error) => return Problem::from(error).into_response(),
    };
    match verifier.verify(token).await {
        Ok(claims) => {
            request.extensions_mut().insert(Caller::from(claims));
            next.run(request).await
        }
        Err(error) => {
            if !matches!(error, VerifyError::KeysUnavailable(_)) {
                tracing::debug!(%error, "token rejected");
            }
            Problem::from(error).into_response()
        }
    }
}
