//! The gateway: the one origin clients talk to. It owns the route table of the system
//! (docs/API.md) and forwards each route to the service that serves it.
//!
//! Every upstream is a [`Upstream`]: a cloneable tower `Service` from request to
//! response. In `flotilla up` it is the service's own router, called in-process with no
//! TCP hop; in `flotilla serve gateway` it is an HTTP client for `FLOTILLA_<SERVICE>_URL`.
//! The route table does not know which, so both modes behave the same.

mod auth;
mod cors;
mod descriptions;
mod inprocess;
mod live;
mod openapi;
mod ratelimit;
mod routes;
mod system;
mod web;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{body::Body, extract::Request};
use bus::registry::Directory;
use platform::{ServiceApp, health::Readiness, service::HttpLimits};
use tower::{ServiceExt, util::BoxCloneSyncService};

pub use descriptions::Descriptions;
pub use openapi::{OPENAPI_PATH, Undocumented, openapi};
pub use system::{System, SystemView, caption};
pub use upstream::{Policy, Upstream, UpstreamUrl, parse_upstream_url, resilience};

pub const NAME: &str = "gateway";

/// The upstreams by service name (`auth`, `media`, … as in docs/API.md).
#[derive(Clone, Default)]
pub struct Upstreams {
    by_name: BTreeMap<&'static str, Upstream>,
    /// The remote ones' stacks as their concrete type, for the fast path (routes.rs).
    remote_stacks: BTreeMap<&'static str, resilience::RemoteStack>,
    /// The registry that remote upstreams configured as `registry` follow.
    directory: Option<Arc<Directory>>,
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

    /// The registry directory that the remote upstreams added after this and configured
    /// as `registry` take their endpoints from.
    pub fn with_directory(mut self, directory: Option<Arc<Directory>>) -> Self {
        self.directory = directory;
        self
    }

    /// A service running in this process: its router is called directly, with fresh
    /// request extensions (see `inprocess.rs`).
    pub fn in_process(mut self, name: &'static str, router: axum::Router) -> Self {
        self.remote_stacks.remove(name);
        self.by_name.insert(
            name,
            BoxCloneSyncService::new(inprocess::InProcess::new(router)),
        );
        self
    }

    /// A service reached over HTTP, through the resilience stack of `policy`.
    pub fn remote(mut self, name: &'static str, url: UpstreamUrl, policy: &Policy) -> Self {
        let stack = resilience::remote_stack(name, url, policy, self.directory.clone());
        // One stack (one breaker, one pool of endpoints) however it is called.
        self.by_name
            .insert(name, BoxCloneSyncService::new(stack.clone()));
        self.remote_stacks.insert(name, stack);
        self
    }

    fn remote_stack(&self, name: &str) -> Option<resilience::RemoteStack> {
        self.remote_stacks.get(name).cloned()
    }

    pub fn get(&self, name: &str) -> Option<&Upstream> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_name.keys().copied()
    }
}

/// How the gateway protects itself and its upstreams, in `up` and `serve` alike.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "gateway-args")]
pub struct Args {
    /// Requests per second allowed from one client address (bursts of twice that);
    /// 0 turns the limit off.
    #[arg(long, env = "FLOTILLA_GATEWAY_RATE_LIMIT", default_value_t = 500)]
    pub gateway_rate_limit: u32,
    /// Proxies in front of the gateway (ingress, load balancer) whose `X-Forwarded-For`
    /// is believed, as comma-separated addresses or CIDR networks; the client is the
    /// rightmost address in it that is not one of them. Default: none (the connection's
    /// peer is the client).
    #[arg(long, env = "FLOTILLA_GATEWAY_TRUSTED_PROXIES", value_delimiter = ',',
          value_parser = platform::forwarded::parse_ip_net)]
    pub gateway_trusted_proxies: Vec<platform::forwarded::IpNet>,
    /// Requests in flight to one upstream beyond which the gateway sheds load with 503.
    #[arg(long, env = "FLOTILLA_GATEWAY_MAX_IN_FLIGHT", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub gateway_max_in_flight: u32,
    /// How often upstream host names are resolved again (new instances, restarts).
    #[arg(long, env = "FLOTILLA_GATEWAY_RESOLVE_INTERVAL", default_value = "5s",
          value_parser = platform::config::parse_duration)]
    pub gateway_resolve_interval: Duration,
    /// Origins allowed to call the gateway from a browser (CORS), comma-separated; `*`
    /// for any. The default is the course's React dev server.
    #[arg(long, env = "FLOTILLA_CORS_ORIGINS", default_value = DEFAULT_CORS_ORIGINS,
          value_delimiter = ',')]
    pub gateway_cors_origins: Vec<String>,
    /// Verified tokens remembered, so a token's next request skips the signature check
    /// (≈ 1 µs instead of ≈ 120 µs); size it above the number of tokens in use at once.
    /// 0 checks every signature.
    #[arg(long, env = "FLOTILLA_GATEWAY_TOKEN_CACHE", default_value_t = DEFAULT_TOKEN_CACHE)]
    pub gateway_token_cache: usize,
    /// Live streams (`/live/blog`, `/live/jobs`) open at once, in total; beyond it new
    /// ones are refused with 503. In `serve`, each `/live/jobs` stream holds one request
    /// to media, counted against `FLOTILLA_GATEWAY_MAX_IN_FLIGHT`.
    #[arg(long, env = "FLOTILLA_GATEWAY_MAX_STREAMS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub gateway_max_streams: u32,
    /// Live streams open at once from one client address (a browser tab opens two).
    #[arg(long, env = "FLOTILLA_GATEWAY_MAX_STREAMS_PER_CLIENT", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub gateway_max_streams_per_client: u32,
}

/// Verified tokens the gateway remembers by default.
pub const DEFAULT_TOKEN_CACHE: usize = 16 * 1024;

/// Where the course's React client runs in development.
pub const DEFAULT_CORS_ORIGINS: &str = "http://localhost:3000";

platform::default_from_flags!(Args);

impl Args {
    pub fn policy(&self) -> Policy {
        Policy {
            max_in_flight: self.gateway_max_in_flight as usize,
            resolve_interval: self.gateway_resolve_interval,
            ..Policy::default()
        }
    }
}

/// Where each upstream runs when the gateway is its own process: one flag / variable per
/// service (`FLOTILLA_AUTH_URL`, …, `FLOTILLA_EVENT_BUS_URL`). A service left unset is
/// answered with 503 by the gateway.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GatewayArgs {
    /// The auth service (signup, login, keys): `http://auth:8080`; a host name is resolved again every resolve interval, so every instance behind it is used.
    #[arg(long, env = "FLOTILLA_AUTH_URL", value_parser = parse_upstream_url)]
    pub auth_url: Option<UpstreamUrl>,
    /// The media service (upload, download, jobs): `http://media:8080`.
    #[arg(long, env = "FLOTILLA_MEDIA_URL", value_parser = parse_upstream_url)]
    pub media_url: Option<UpstreamUrl>,
    /// The posts service (`POST /posts`, `/posts/create`): `http://posts:8080`.
    #[arg(long, env = "FLOTILLA_POSTS_URL", value_parser = parse_upstream_url)]
    pub posts_url: Option<UpstreamUrl>,
    /// The comments service (`POST /posts/{id}/comments`): `http://comments:8080`.
    #[arg(long, env = "FLOTILLA_COMMENTS_URL", value_parser = parse_upstream_url)]
    pub comments_url: Option<UpstreamUrl>,
    /// The query service (the blog's read model, `GET /posts`): `http://query:8080`.
    #[arg(long, env = "FLOTILLA_QUERY_URL", value_parser = parse_upstream_url)]
    pub query_url: Option<UpstreamUrl>,
    /// The event-bus service (the blog's event log, `/events`): `http://event-bus:8080`.
    #[arg(long, env = "FLOTILLA_EVENT_BUS_URL", value_parser = parse_upstream_url)]
    pub event_bus_url: Option<UpstreamUrl>,
}

impl GatewayArgs {
    /// The variable of the first upstream configured as `registry`, if any.
    pub fn registry_variable(&self) -> Option<String> {
        self.configured()
            .into_iter()
            .find(|(_, url)| url.as_ref().is_some_and(UpstreamUrl::is_registry))
            .map(|(name, _)| contracts::upstream_url_var(name))
    }

    fn configured(&self) -> [(&'static str, &Option<UpstreamUrl>); 6] {
        [
            ("auth", &self.auth_url),
            ("media", &self.media_url),
            ("posts", &self.posts_url),
            ("comments", &self.comments_url),
            ("query", &self.query_url),
            ("event-bus", &self.event_bus_url),
        ]
    }

    /// The remote upstreams named by the configuration; those configured as `registry`
    /// follow `directory`.
    pub fn upstreams(&self, policy: &Policy, directory: Option<Arc<Directory>>) -> Upstreams {
        let configured = self.configured();
        let mut upstreams = Upstreams::new().with_directory(directory);
        for (name, url) in configured {
            match url {
                Some(url) => upstreams = upstreams.remote(name, url.clone(), policy),
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

/// Builds the gateway over `upstreams`. Each upstream's readiness is in its `/readyz`.
/// In-process upstreams (`flotilla up`, one process) are required: the gateway is ready
/// when the whole system is. Remote ones (`serve gateway`) are *degraded* checks: the
/// gateway is ready as long as it can serve, and the routes of an upstream that is down
/// answer 503 with `Retry-After` — one service's outage must not take every gateway
/// instance out of the load balancer, and login with it.
pub fn build(upstreams: Upstreams, args: &Args) -> ServiceApp {
    build_with_shutdown(upstreams, args, tokio_util::sync::CancellationToken::new())
}

/// [`build`], with the token whose cancellation ends the live streams (`live.rs`):
/// they never end on their own and would otherwise hold the drain to its timeout.
pub fn build_with_shutdown(
    upstreams: Upstreams,
    args: &Args,
    shutdown: tokio_util::sync::CancellationToken,
) -> ServiceApp {
    build_with_system(upstreams, args, shutdown, System::default())
}

/// [`build_with_shutdown`], with what the admin routes read (`/admin/system`, its
/// stream, the dead letters): the bus and the registry's directory.
pub fn build_with_system(
    upstreams: Upstreams,
    args: &Args,
    shutdown: tokio_util::sync::CancellationToken,
    system: System,
) -> ServiceApp {
    let mut readiness = Readiness::new();
    for name in upstreams.names() {
        let Some(upstream) = upstreams.get(name).cloned() else {
            continue;
        };
        let check = move || probe_ready(upstream.clone());
        readiness = if upstreams.remote_stack(name).is_some() {
            readiness.with_degraded_check(name, check)
        } else {
            readiness.with_check(name, check)
        };
    }
    let limits = HttpLimits {
        // Every proxied route has its own timeout (routes.rs) and the gateway's own
        // routes (web UI, API docs, health) answer at once: no stack-wide timer.
        request_timeout: None,
        ..HttpLimits::default()
    };
    let limiter = ratelimit::client_limiter(args.gateway_rate_limit);
    let table = routes::Table::new(
        &upstreams,
        args.gateway_token_cache,
        limiter,
        args.gateway_trusted_proxies.clone().into(),
    );
    // The gateway's own routes are registered with their descriptions; the whole
    // description (theirs and the table's rows) is served at /openapi.json.
    let served = openapi::Served::default();
    let (own, own_document) = own_routes(served.clone()).split_for_parts();
    let streams = live::OpenStreams::new(live::StreamCaps {
        total: args.gateway_max_streams as usize,
        per_client: args.gateway_max_streams_per_client as usize,
    });
    let (live, live_document) = live::routes(
        routes::upstream_of(&upstreams, "query"),
        routes::upstream_of(&upstreams, "media"),
        table.verifier(),
        streams.clone(),
        shutdown.clone(),
    )
    .split_for_parts();
    let descriptions = system.descriptions.clone();
    let (admin, admin_document) =
        system::routes(system, table.verifier(), streams, shutdown).split_for_parts();
    match openapi::document(own_document, live_document, admin_document, &descriptions) {
        Ok(document) => served.set(&document),
        // The gateway's tests fail on this; a binary built anyway still serves the API.
        Err(error) => tracing::error!(%error, "the API description is incomplete"),
    }
    let routes = table
        .router()
        .merge(table.guard(live))
        .merge(table.guard(admin))
        .merge(own);
    ServiceApp::new(NAME, routes)
        .with_readiness(readiness)
        .with_limits(limits)
        .with_cors(cors::layer(&args.gateway_cors_origins))
        .with_fast_path(std::sync::Arc::new(table.proxy()))
}

/// The gateway's own routes (web UI, API documentation) with their descriptions.
fn own_routes(served: openapi::Served) -> utoipa_axum::router::OpenApiRouter {
    web::routes().merge(openapi::routes(served))
}

async fn probe_ready(upstream: Upstream) -> Result<(), String> {
    let request = Request::get("/readyz")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let Ok(response) = upstream.oneshot(request).await;
    let status = response.status();
    // Read to the end (it is short), so the upstream connection can be reused.
    let _ = axum::body::to_bytes(response.into_body(), 64 * 1024).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("not ready ({status})"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        gateway: Args,
    }

    #[test]
    fn flags_parse_into_the_defaults_and_bad_values_are_refused() {
        let defaults = Cli::try_parse_from(["gateway"]).expect("no flags");
        assert_eq!(defaults.gateway.gateway_token_cache, DEFAULT_TOKEN_CACHE);
        assert_eq!(
            defaults.gateway.gateway_rate_limit,
            Args::default().gateway_rate_limit
        );
        assert!(defaults.gateway.gateway_trusted_proxies.is_empty());
        let proxies = Cli::try_parse_from([
            "gateway",
            "--gateway-trusted-proxies",
            "10.0.0.0/8,192.0.2.1",
        ])
        .expect("networks");
        assert_eq!(proxies.gateway.gateway_trusted_proxies.len(), 2);
        assert!(
            Cli::try_parse_from(["gateway", "--gateway-trusted-proxies", "10.0.0.0/40"]).is_err()
        );
        let off = Cli::try_parse_from(["gateway", "--gateway-token-cache", "0"]).expect("0");
        assert_eq!(off.gateway.gateway_token_cache, 0);
        assert!(Cli::try_parse_from(["gateway", "--gateway-token-cache", "many"]).is_err());
        assert!(Cli::try_parse_from(["gateway", "--gateway-max-in-flight", "0"]).is_err());
    }
}
