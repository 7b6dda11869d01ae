//! Authentication at the edge.
//!
//! Protected routes (`/upload`, `/download`, `/jobs`, `/jobs/{id}`) need a valid Bearer
//! token, checked *here* with the auth service's public keys (fetched once through the
//! auth upstream and cached; refetched when a token names an unknown key, at most every
//! few seconds), so a missing or bad token is answered 401 before any upstream is
//! called and a good one costs no call to auth. The verified [`identity::Caller`] rides
//! along in the request's extensions to an in-process service; a remote one gets the
//! `Authorization` header and may check it again.
//!
//! The auth routes get `X-Forwarded-For` with the connection's peer appended, in both
//! modes, so auth's per-client login limit sees the real client: its last entry is the
//! address this gateway saw, whatever a client wrote in front of it.

use axum::{
    extract::Request,
    middleware::{self, Next},
    response::Response,
    routing::MethodRouter,
};
use identity::{JwksSource, Verifier, VerifierSettings};

use crate::Upstream;

/// A verifier whose keys come from `auth` (`GET /.well-known/jwks.json`), remembering
/// up to `token_cache` verified tokens.
pub(crate) fn verifier(auth: Upstream, token_cache: usize) -> Verifier {
    Verifier::with_settings(
        JwksSource::via_service(auth),
        VerifierSettings {
            cache_capacity: token_cache,
            ..VerifierSettings::default()
        },
    )
}

/// `route`, reachable only with a valid Bearer token.
pub(crate) fn protect(route: MethodRouter, verifier: &Verifier) -> MethodRouter {
    route.layer(middleware::from_fn_with_state(
        verifier.clone(),
        identity::require_caller,
    ))
}

/// `route`, with the client's address appended to `X-Forwarded-For`.
pub(crate) fn with_client_address(route: MethodRouter) -> MethodRouter {
    route.layer(middleware::from_fn(append_forwarded_for))
}

async fn append_forwarded_for(mut request: Request, next: Next) -> Response {
    crate::remote::append_client_address(&mut request);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_peer_is_appended_after_what_the_client_sent() {
        let echo = get(|request: Request| async move {
            request.headers()["x-forwarded-for"]
                .to_str()
                .unwrap_or_default()
                .to_owned()
        });
        let app = Router::new().route("/login", with_client_address(echo));
        let mut request = Request::get("/login")
            .header("x-forwarded-for", "198.51.100.1")
            .body(Body::empty())
            .expect("request");
        request.extensions_mut().insert(ConnectInfo::<SocketAddr>(
            "203.0.113.5:4000".parse().expect("addr"),
        ));
        let response = app.oneshot(request).await.expect("infallible");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(&body[..], b"198.51.100.1, 203.0.113.5");
    }
}
