//! A service in the same process, called as a tower `Service` with no TCP hop.
//!
//! The request it gets is the one a remote instance would get, plus what only in-process
//! code can hand over. Its extensions are fresh: the gateway's own routing state (its
//! path parameters, its matched path, its body limit, …) stays behind, so the service's
//! router sees the request as if it had come off a socket. Kept across:
//!
//! * `ConnectInfo<SocketAddr>` — the client's address (a remote service reads
//!   `X-Forwarded-For` instead; that header gets the client appended here as it does on
//!   the way to a remote instance, so a service that believes its last entry — auth's
//!   per-client login limit — reads the client, never what the client wrote there);
//! * [`identity::Caller`] — the token the gateway already verified (a remote service
//!   verifies the `Authorization` header again);
//! * [`RequestId`] and [`TraceParent`] — also in the headers, which the service's own
//!   stack reads; the extensions keep code between the two stacks consistent.

use std::{convert::Infallible, net::SocketAddr, task::Poll};

use axum::{Router, extract::ConnectInfo, extract::Request, response::Response};
use http::Extensions;
use platform::http::{RequestId, TraceParent};
use tower::Service;

/// The router of a service in this process, behind a fresh set of extensions.
#[derive(Clone)]
pub struct InProcess {
    router: Router,
}

impl InProcess {
    pub fn new(router: Router) -> Self {
        Self { router }
    }
}

impl Service<Request> for InProcess {
    type Response = Response;
    type Error = Infallible;
    type Future = <Router as Service<Request>>::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        <Router as Service<Request>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        upstream::remote::append_client_address(&mut request);
        self.router.call(with_fresh_extensions(request))
    }
}

/// `request` with only the extensions that should cross into another service.
pub fn with_fresh_extensions(request: Request) -> Request {
    let (mut parts, body) = request.into_parts();
    let old = std::mem::take(&mut parts.extensions);
    parts.extensions = crossing(&old);
    Request::from_parts(parts, body)
}

fn crossing(old: &Extensions) -> Extensions {
    let mut kept = Extensions::new();
    if let Some(peer) = old.get::<ConnectInfo<SocketAddr>>() {
        kept.insert(*peer);
    }
    if let Some(caller) = old.get::<identity::Caller>() {
        kept.insert(caller.clone());
    }
    if let Some(id) = old.get::<RequestId>() {
        kept.insert(id.clone());
    }
    if let Some(trace) = old.get::<TraceParent>() {
        kept.insert(trace.clone());
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, extract::Path, routing::get};
    use tower::ServiceExt;

    /// A route with the same `{id}` pattern in front of the service, as the gateway has.
    #[tokio::test]
    async fn the_service_sees_its_own_path_parameters_and_the_client_address_last_in_x_forwarded_for()
     {
        let service = Router::new().route(
            "/posts/{id}/comments",
            get(
                |Path(params): Path<Vec<(String, String)>>,
                 ConnectInfo(peer): ConnectInfo<SocketAddr>,
                 request: Request| async move {
                    let leaked = request.extensions().get::<Marker>().is_some();
                    let forwarded = request.headers()["x-forwarded-for"]
                        .to_str()
                        .unwrap_or_default()
                        .to_owned();
                    format!("{params:?} {peer} leaked={leaked} forwarded={forwarded}")
                },
            ),
        );
        let upstream = InProcess::new(service);
        let gateway = Router::new().route(
            "/posts/{id}/comments",
            get(move |Path(_id): Path<String>, mut request: Request| {
                let upstream = upstream.clone();
                async move {
                    request.extensions_mut().insert(Marker);
                    let Ok(response) = upstream.oneshot(request).await;
                    response
                }
            }),
        );
        let mut request = Request::get("/posts/p1/comments")
            .header("x-forwarded-for", "198.51.100.1")
            .body(Body::empty())
            .expect("request");
        request.extensions_mut().insert(ConnectInfo::<SocketAddr>(
            "192.0.2.8:4000".parse().expect("addr"),
        ));
        let response = gateway.oneshot(request).await.expect("infallible");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(
            std::str::from_utf8(&body).expect("utf-8"),
            r#"[("id", "p1")] 192.0.2.8:4000 leaked=false forwarded=198.51.100.1, 192.0.2.8"#
        );
    }

    #[derive(Clone)]
    struct Marker;
}
