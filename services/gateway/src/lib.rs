//! The gateway: the one origin clients talk to. It owns the route table of the system
//! (CONTRACTS §2) and forwards each route to the service that serves it.
//!
//! Every upstream is a [`Upstream`]: a cloneable tower `Service` from request to
//! response. In `flotilla up` it is the service's own router, called in-process with no
//! TCP hop; in `flotilla serve gateway` it is an HTTP client for `FLOTILLA_<SERVICE>_URL`.
//! The route table does not know which, so both modes behave the same.

mod remote;
mod routes;

use std::{collections::BTreeMap, convert::Infallible, time::Duration};

use axum::{body::Body, extract::Request, response::Response};
use platform::{ServiceApp, health::Readiness, service::HttpLimits};
use tower::{ServiceExt, util::BoxCloneSyncService};

pub use remote::{UpstreamUrl, parse_upstream_url};

pub const NAME: &str = "gateway";

/// One upstream service, however it is reached.
pub type Upstream = BoxCloneSyncService<Request, Response, Infallible>;

/// The upstreams by service name (`auth`, `media`, … as in CONTRACTS §1).
#[derive(Clone, Default)]
pub struct Upstreams {
    by_name: BTreeMap<&'static str, Upstream>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl Upstreams {
    pub fn new() -> Self {
        Self::default()
    }

    /// A service running in this process: its router is called directly.
    pub fn in_process(mut self, name: &'static str, router: axum::Router) -> Self {
        self.by_name.insert(name, BoxCloneSyncService::new(router));
        self
    }

    /// A service reached over HTTP.
    pub fn remote(mut self, name: &'static str, url: UpstreamUrl) -> Self {
        self.by_name.insert(
            name,
            BoxCloneSyncService::new(remote::HttpUpstream::new(name, url)),
        );
        self
    }

    pub fn get(&self, name: &str) -> Option<&Upstream> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_name.keys().copied()
    }
}

/// Where each upstream runs when the gateway is its own process: one flag / variable per
/// service (`FLOTILLA_AUTH_URL`, …, `FLOTILLA_EVENT_BUS_URL`). A service left unset is
/// answered with 503 by the gateway.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GatewayArgs {
    #[arg(long, env = "FLOTILLA_AUTH_URL", value_parser = parse_upstream_url)]
    pub auth_url: Option<UpstreamUrl>,
    #[arg(long, env = "FLOTILLA_MEDIA_URL", value_parser = parse_upstream_url)]
    pub media_url: Option<UpstreamUrl>,
    #[arg(long, env = "FLOTILLA_POSTS_URL", value_parser = parse_upstream_url)]
    pub posts_url: Option<UpstreamUrl>,
    #[arg(long, env = "FLOTILLA_COMMENTS_URL", value_parser = parse_upstream_url)]
    pub comments_url: Option<UpstreamUrl>,
    #[arg(long, env = "FLOTILLA_QUERY_URL", value_parser = parse_upstream_url)]
    pub query_url: Option<UpstreamUrl>,
    #[arg(long, env = "FLOTILLA_EVENT_BUS_URL", value_parser = parse_upstream_url)]
    pub event_bus_url: Option<UpstreamUrl>,
}

impl GatewayArgs {
    /// The remote upstreams named by the configuration.
    pub fn upstreams(&self) -> Upstreams {
        let configured = [
            ("auth", &self.auth_url),
            ("media", &self.media_url),
            ("posts", &self.posts_url),
            ("comments", &self.comments_url),
            ("query", &self.query_url),
            ("event-bus", &self.event_bus_url),
        ];
        let mut upstreams = Upstreams::new();
        for (name, url) in configured {
            match url {
                Some(url) => upstreams = upstreams.remote(name, url.clone()),
                None => tracing::warn!(
                    service = name,
                    variable = contracts::upstream_url_var(name),
                    "upstream not configured; its routes will answer 503"
                ),
            }
        }
        upstreams
    }
}

/// Builds the gateway over `upstreams`. It is ready when every upstream is.
pub fn build(upstreams: Upstreams) -> ServiceApp {
    let mut readiness = Readiness::new();
    for name in upstreams.names() {
        let Some(upstream) = upstreams.get(name).cloned() else {
            continue;
        };
        readiness = readiness.with_check(name, move || probe_ready(upstream.clone()));
    }
    let limits = HttpLimits {
        // Route-level timeouts (routes.rs) are the real limits; this is the backstop
        // for the slowest route, a large upload.
        request_timeout: routes::UPLOAD_TIMEOUT + Duration::from_secs(5),
        ..HttpLimits::default()
    };
    ServiceApp::new(NAME, routes::table(&upstreams))
        .with_readiness(readiness)
        .with_limits(limits)
}

async fn probe_ready(upstream: Upstream) -> Result<(), String> {
    let request = Request::get("/readyz")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let Ok(response) = upstream.oneshot(request).await;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("not ready ({})", response.status()))
    }
}
