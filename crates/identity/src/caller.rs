//! The caller of a request, as an axum extractor and as a guard middleware.

use axum::{
    extract::{FromRequestParts, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, header, request::Parts};
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

/// `WWW-Authenticate` of a 401 for a request that presented no Bearer token (RFC 6750 §3).
pub const BEARER_CHALLENGE: &str = "Bearer";
/// `WWW-Authenticate` of a refusal of a Bearer token that was presented but is not
/// acceptable (RFC 6750 §3.1, `invalid_token`).
pub const INVALID_TOKEN_CHALLENGE: &str = r#"Bearer error="invalid_token""#;

/// A 401 with its RFC 6750 challenge.
impl IntoResponse for BearerError {
    fn into_response(self) -> Response {
        with_challenge(Problem::from(self).into_response(), BEARER_CHALLENGE)
    }
}

/// A 401 with an `invalid_token` challenge, or a 503 when the keys are unavailable.
impl IntoResponse for VerifyError {
    fn into_response(self) -> Response {
        let refused = !matches!(self, VerifyError::KeysUnavailable(_));
        let response = Problem::from(self).into_response();
        if refused {
            with_challenge(response, INVALID_TOKEN_CHALLENGE)
        } else {
            response
        }
    }
}

/// `response` with `WWW-Authenticate: challenge`.
pub fn with_challenge(mut response: Response, challenge: &'static str) -> Response {
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
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
/// the extensions (see [`Verifier::layer`]). Missing or bad token → 401 with a
/// `WWW-Authenticate: Bearer` challenge.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let token = bearer_token(&parts.headers).map_err(IntoResponse::into_response)?;
        let Some(verifier) = parts.extensions.get::<Verifier>() else {
            return Err(Problem::internal(
                &"no Verifier in the request extensions: add Verifier::layer() to this router",
            )
            .into_response());
        };
        let claims = verifier
            .verify(token)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(claims.into())
    }
}

/// An axum middleware (`axum::middleware::from_fn_with_state(verifier, NAME)`) that
/// lets a request through only when `check(&verifier, &mut request)` passes, and else
/// answers with its refusal.
macro_rules! middleware {
    ($(#[$doc:meta])* $name:ident => $check:ident) => {
        $(#[$doc])*
        pub async fn $name(
            State(verifier): State<Verifier>,
            mut request: Request,
            next: Next,
        ) -> Response {
            match $check(&verifier, &mut request).await {
                Ok(()) => next.run(request).await,
                Err(refusal) => refusal,
            }
        }
    };
}

middleware!(
    /// Middleware (`axum::middleware::from_fn_with_state(verifier, require_caller)`): lets
    /// the request through only with a valid Bearer token, and records the [`Caller`] in
    /// the extensions for the handler (or the in-process service) behind it. The token
    /// stays in the headers, so a service reached over HTTP can check it again.
    require_caller => authenticate
);

middleware!(
    /// Middleware (`axum::middleware::from_fn_with_state(verifier, require_admin)`): as
    /// [`require_caller`], and the caller must be an admin (403 otherwise).
    require_admin => authenticate_admin
);

/// What [`require_caller`] checks, as a function: with a valid Bearer token the
/// [`Caller`] is put in `request`'s extensions; without one, the 401 problem to answer.
pub async fn authenticate(verifier: &Verifier, request: &mut Request) -> Result<(), Response> {
    // Never trust a caller someone else put there: only this check sets it.
    request.extensions_mut().remove::<Caller>();
    let token = bearer_token(request.headers()).map_err(IntoResponse::into_response)?;
    match verifier.verify(token).await {
        Ok(claims) => {
            request.extensions_mut().insert(Caller::from(claims));
            Ok(())
        }
        Err(error) => {
            if !matches!(error, VerifyError::KeysUnavailable(_)) {
                tracing::debug!(%error, "token rejected");
            }
            Err(error.into_response())
        }
    }
}

/// What [`require_admin`] checks, as a function: [`authenticate`], then 403 unless the
/// token says `admin`.
pub async fn authenticate_admin(
    verifier: &Verifier,
    request: &mut Request,
) -> Result<(), Response> {
    authenticate(verifier, request).await?;
    match request.extensions().get::<Caller>() {
        Some(caller) if caller.admin => Ok(()),
        _ => Err(Problem::forbidden("only an admin may do this").into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_authorization(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value).expect("a header value"),
        );
        headers
    }

    #[test]
    fn the_bearer_token_is_a_visible_ascii_value_after_the_scheme() {
        let token = |value: &[u8]| bearer_token(&with_authorization(value)).map(str::to_owned);
        assert_eq!(token(b"Bearer abc.def"), Ok("abc.def".to_owned()));
        assert_eq!(token(b"bEaReR  abc "), Ok("abc".to_owned()));
        assert_eq!(token(b"Bearer\tabc").ok(), None);
        assert!(matches!(token(b"Basic abc"), Err(BearerError::NotBearer)));
        assert!(matches!(token(b"Bearer "), Err(BearerError::NotBearer)));
        // Bytes `HeaderValue::to_str` refuses (obs-text, and UTF-8 made of them).
        assert!(matches!(
            token(b"Bearer ab\xffc"),
            Err(BearerError::NotBearer)
        ));
        assert!(matches!(
            token("Bearer caf\u{e9}".as_bytes()),
            Err(BearerError::NotBearer)
        ));
        assert!(matches!(
            bearer_token(&HeaderMap::new()),
            Err(BearerError::Missing)
        ));
    }
}
