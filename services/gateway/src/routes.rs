//! The route table of the system (CONTRACTS §2), in one place: which upstream serves
//! which path and method, and how long each route may take.

use std::time::Duration;

use axum::{
    Router,
    response::IntoResponse,
    routing::{MethodRouter, any_service, get_service, post_service},
};
use platform::Problem;

use crate::{Upstream, Upstreams};

/// Time to response headers for ordinary routes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// An upload's response comes after its whole body has been stored.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60 * 60);

pub fn table(upstreams: &Upstreams, token_cache: usize) -> Router {
    let to = |name: &'static str| Target {
        upstreams,
        name,
        timeout: DEFAULT_TIMEOUT,
    };
    // Tokens are checked here, from auth's cached public keys (auth.rs).
    let verifier = crate::auth::verifier(to("auth").upstream(), token_cache);
    let protected = |route| crate::auth::protect(route, &verifier);
    let client_address = crate::auth::with_client_address;
    Router::new()
        // auth
        .route("/signup", client_address(to("auth").post()))
        .route("/login", client_address(to("auth").post()))
        .route("/validate", to("auth").post())
        .route("/.well-known/jwks.json", to("auth").get())
        // media: a valid Bearer token or 401, before media is called
        .route(
            "/upload",
            protected(to("media").within(UPLOAD_TIMEOUT).post()),
        )
        .route("/download", protected(to("media").get()))
        .route("/jobs", protected(to("media").get()))
        .route("/jobs/{id}", protected(to("media").get()))
        // blog: the write side and the read model share `/posts`
        .route("/posts/create", to("posts").post())
        .route("/posts", to("posts").post().merge(to("query").get()))
        .route("/posts/{id}/comments", to("comments").any())
        .route("/events", to("event-bus").any())
}

struct Target<'a> {
    upstreams: &'a Upstreams,
    name: &'static str,
    timeout: Duration,
}

impl Target<'_> {
    fn within(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    fn upstream(&self) -> Upstream {
        match self.upstreams.get(self.name) {
            Some(upstream) => upstream.clone(),
            None => not_configured(self.name),
        }
    }

    fn post(&self) -> MethodRouter {
        post_service(self.limited())
    }

    fn get(&self) -> MethodRouter {
        get_service(self.limited())
    }

    fn any(&self) -> MethodRouter {
        any_service(self.limited())
    }

    /// The upstream within the route's timeout, as one service (a layer on the method
    /// router would box and clone one more level per request).
    fn limited(&self) -> platform::http::Timeout<Upstream> {
        tower::Layer::layer(
            &platform::http::TimeoutLayer::new(self.timeout),
            self.upstream(),
        )
    }
}

/// Stands in for an upstream the configuration does not name.
fn not_configured(name: &'static str) -> Upstream {
    let handler = move || async move {
        Problem::service_unavailable(format!(
            "the {name} service is not configured on this gateway ({} is unset)",
            contracts::upstream_url_var(name)
        ))
        .into_response()
    };
    Upstream::new(Router::new().fallback(handler))
}
