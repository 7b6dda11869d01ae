//! Authentication at the edge.
//!
//! Protected routes (`/upload`, `/download`, `/jobs`, `/jobs/{id}`) need a valid Bearer
//! token (`POST /events` an admin's: 403 for anyone else), checked *here* with the auth service's public keys (fetched once through the
//! auth upstream and cached; refetched when a token names an unknown key, at most every
//! few seconds), so a missing or bad token is answered 401 before any upstream is
//! called and a good one costs no call to auth. The verified [`identity::Caller`] rides
//! along in the request's extensions to an in-process service; a remote one gets the
//! `Authorization` header and may check it again.
//!
//! Every upstream request gets `X-Forwarded-For` with the connection's peer appended, in
//! both modes (remote.rs, inprocess.rs), so auth's per-client login limit sees the real
//! client: its last entry is the address this gateway saw, whatever a client wrote in
//! front of it.

use axum::{middleware, routing::MethodRouter};
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

/// `route`, reachable only with a valid Bearer token of an admin (401, else 403).
pub(crate) fn protect_admin(route: MethodRouter, verifier: &Verifier) -> MethodRouter {
    route.layer(middleware::from_fn_with_state(
        verifier.clone(),
        identity::require_admin,
    ))
}
