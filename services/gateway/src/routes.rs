//! The route table of the system (docs/API.md), in one place: which upstream serves
//! which path and method, how long each route may take and what it needs from a caller.
//!
//! The table is served twice, with the same answers: as an axum router (what a test or
//! an in-process caller gets from [`platform::ServiceApp::into_router`]), and as the
//! gateway's fast path ([`Proxy`], what the HTTP server calls first), which matches the
//! table itself and calls the upstream's stack directly instead of through a router's
//! per-route services.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::Request,
    middleware,
    response::{IntoResponse, Response},
    routing::{MethodRouter, any_service, get_service, post_service},
};
use futures::future::BoxFuture;
use http::Method;
use identity::Verifier;
use platform::{
    Problem,
    entry::{FastPath, MatchedRoute},
    forwarded::IpNet,
    http::TimeoutLayer,
};
use tower::{Layer, Service};

use crate::{Upstream, Upstreams, ratelimit::ClientLimiter, resilience::RemoteStack};

/// Time to response headers for ordinary routes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// An upload's response comes after its whole body has been stored.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    pub(crate) methods: Methods,
    pub(crate) pattern: &'static str,
    pub(crate) upstream: &'static str,
    timeout: Duration,
    pub(crate) guard: Guard,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Methods {
    Get,
    Post,
    Any,
}

/// What a route needs before its upstream is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guard {
    Open,
    /// A valid Bearer token, checked here (auth.rs), or 401.
    Token,
    /// A valid Bearer token of an admin: 401 without one, 403 for anyone else.
    Admin,
}

const fn route(methods: Methods, pattern: &'static str, upstream: &'static str) -> Route {
    Route {
        methods,
        pattern,
        upstream,
        timeout: DEFAULT_TIMEOUT,
        guard: Guard::Open,
    }
}

impl Route {
    const fn guarded(self, guard: Guard) -> Self {
        Route { guard, ..self }
    }

    const fn within(self, timeout: Duration) -> Self {
        Route { timeout, ..self }
    }
}

use Methods::{Any, Get, Post};

const TABLE: [Route; 14] = [
    // auth
    route(Post, "/signup", "auth"),
    route(Post, "/login", "auth"),
    route(Post, "/validate", "auth"),
    route(Get, "/.well-known/jwks.json", "auth"),
    // media: a valid Bearer token or 401, before media is called
    route(Post, "/upload", "media")
        .guarded(Guard::Token)
        .within(UPLOAD_TIMEOUT),
    route(Get, "/download", "media").guarded(Guard::Token),
    route(Get, "/jobs", "media").guarded(Guard::Token),
    route(Get, "/jobs/{id}", "media").guarded(Guard::Token),
    // blog: the write side and the read model share `/posts`
    route(Post, "/posts/create", "posts"),
    route(Post, "/posts", "posts"),
    route(Get, "/posts", "query"),
    route(Any, "/posts/{id}/comments", "comments"),
    // The blog's event log is public to read; writing to it (which the course's own
    // ingress never exposed) is for admins. The event-bus's own port stays open to the
    // services inside the cluster.
    route(Get, "/events", "event-bus"),
    route(Post, "/events", "event-bus").guarded(Guard::Admin),
];

/// The rows of the table, for the API description (openapi.rs).
pub(crate) fn table_rows() -> impl Iterator<Item = &'static Route> {
    TABLE.iter()
}

/// What every route shares: the upstreams, the token verifier (auth's keys, cached) and
/// the per-client rate limit.
pub(crate) struct Table<'a> {
    upstreams: &'a Upstreams,
    verifier: Verifier,
    limiter: Option<ClientLimiter>,
    /// `FLOTILLA_GATEWAY_TRUSTED_PROXIES`: behind them the client is resolved from
    /// `X-Forwarded-For` before anything else (limits, logs, upstreams) sees it.
    proxies: Arc<[IpNet]>,
}

impl<'a> Table<'a> {
    pub(crate) fn new(
        upstreams: &'a Upstreams,
        token_cache: usize,
        limiter: Option<ClientLimiter>,
        proxies: Arc<[IpNet]>,
    ) -> Self {
        let verifier = crate::auth::verifier(upstream_of(upstreams, "auth"), token_cache);
        Self {
            upstreams,
            verifier,
            limiter,
            proxies,
        }
    }

    /// The verifier of Bearer tokens the table's guards use.
    pub(crate) fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// `router` behind what every route of the table has in front: the client resolved
    /// from trusted proxies, then the per-client rate limit.
    pub(crate) fn guard(&self, mut router: Router) -> Router {
        // No layer at all when the limit is off, rather than one that passes everything.
        if let Some(limiter) = &self.limiter {
            router = router.route_layer(middleware::from_fn_with_state(
                limiter.clone(),
                crate::ratelimit::enforce,
            ));
        }
        // Outermost: the client is known before the rate limit keys on it.
        if !self.proxies.is_empty() {
            router = router.route_layer(middleware::from_fn_with_state(
                self.proxies.clone(),
                adopt_client,
            ));
        }
        router
    }

    /// The table as an axum router.
    pub(crate) fn router(&self) -> Router {
        let mut router = Router::new();
        let mut patterns: Vec<&str> = TABLE.iter().map(|r| r.pattern).collect();
        patterns.dedup();
        for pattern in patterns {
            let methods = TABLE
                .iter()
                .filter(|r| r.pattern == pattern)
                .map(|r| self.method_router(r))
                .reduce(MethodRouter::merge);
            if let Some(methods) = methods {
                router = router.route(pattern, methods);
            }
        }
        self.guard(router)
    }

    fn method_router(&self, route: &Route) -> MethodRouter {
        // The upstream within the route's timeout, as one service (a layer on the method
        // router would box and clone one more level per request).
        let service =
            TimeoutLayer::new(route.timeout).layer(upstream_of(self.upstreams, route.upstream));
        let methods = match route.methods {
            Get => get_service(service),
            Post => post_service(service),
            Any => any_service(service),
        };
        match route.guard {
            Guard::Open => methods,
            Guard::Token => crate::auth::protect(methods, &self.verifier),
            Guard::Admin => crate::auth::protect_admin(methods, &self.verifier),
        }
    }

    /// The table as the gateway's fast path.
    pub(crate) fn proxy(&self) -> Proxy {
        let routes = TABLE
            .iter()
            .map(|route| ProxyRoute {
                route: *route,
                pattern: Pattern::new(route.pattern),
                upstream: match self.upstreams.remote_stack(route.upstream) {
                    Some(stack) => Direct::Remote(stack),
                    None => Direct::Service(upstream_of(self.upstreams, route.upstream)),
                },
            })
            .collect();
        Proxy {
            routes,
            verifier: self.verifier.clone(),
            limiter: self.limiter.clone(),
            proxies: self.proxies.clone(),
        }
    }
}

async fn adopt_client(
    axum::extract::State(proxies): axum::extract::State<Arc<[IpNet]>>,
    mut request: Request,
    next: middleware::Next,
) -> Response {
    platform::forwarded::adopt_client(&mut request, &proxies);
    next.run(request).await
}

pub(crate) fn upstream_of(upstreams: &Upstreams, name: &'static str) -> Upstream {
    match upstreams.get(name) {
        Some(upstream) => upstream.clone(),
        None => not_configured(name),
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

/// The route table as a [`FastPath`]: the requests whose method and path a row names are
/// answered here — rate limit, guard, route timeout, then the upstream's own stack called
/// directly — in one boxed future; everything else (other methods, unknown paths, the
/// gateway's own pages) goes to the router, which answers as it always does.
pub(crate) struct Proxy {
    routes: Vec<ProxyRoute>,
    verifier: Verifier,
    limiter: Option<ClientLimiter>,
    proxies: Arc<[IpNet]>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

struct ProxyRoute {
    route: Route,
    /// The route's pattern, split once (matching runs for every request).
    pattern: Pattern<'static>,
    upstream: Direct,
}

/// How the fast path reaches an upstream: a remote one through its concrete stack (no
/// boxing), any other (in-process, not configured) through its boxed service.
#[derive(Clone)]
enum Direct {
    Remote(RemoteStack),
    Service(Upstream),
}

impl Direct {
    async fn call(self, request: Request, timeout: Duration) -> Response {
        let limit = TimeoutLayer::new(timeout);
        let Ok(response) = match self {
            Self::Remote(stack) => limit.layer(stack).call(request).await,
            Self::Service(service) => limit.layer(service).call(request).await,
        };
        response
    }
}

impl FastPath for Proxy {
    fn route(&self, request: &Request) -> Option<MatchedRoute> {
        let path = request.uri().path();
        let method = request.method();
        self.routes
            .iter()
            .position(|r| r.route.methods.allow(method) && r.pattern.matches(path))
            .map(|index| MatchedRoute {
                pattern: self.routes[index].route.pattern,
                index,
            })
    }

    fn call(&self, matched: MatchedRoute, mut request: Request) -> BoxFuture<'static, Response> {
        let Some(row) = self.routes.get(matched.index) else {
            return Box::pin(std::future::ready(
                Problem::not_found("no such route").into_response(),
            ));
        };
        let (route, upstream) = (&row.route, &row.upstream);
        if !self.proxies.is_empty() {
            platform::forwarded::adopt_client(&mut request, &self.proxies);
        }
        if let Some(limiter) = &self.limiter
            && let Some(refused) = crate::ratelimit::refusal(limiter, &request)
        {
            return Box::pin(after_reading_body(request, refused));
        }
        let upstream = upstream.clone();
        let timeout = route.timeout;
        let admin = match route.guard {
            Guard::Open => return Box::pin(upstream.call(request, timeout)),
            Guard::Token => false,
            Guard::Admin => true,
        };
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let checked = if admin {
                identity::authenticate_admin(&verifier, &mut request).await
            } else {
                identity::authenticate(&verifier, &mut request).await
            };
            match checked {
                Ok(()) => upstream.call(request, timeout).await,
                Err(refusal) => after_reading_body(request, refusal).await,
            }
        })
    }
}

/// What a refused request may still send before its answer goes out.
const REFUSED_BODY_LIMIT: usize = 1024 * 1024;
const REFUSED_BODY_TIME: Duration = Duration::from_secs(2);

/// `refusal`, once `request`'s body has been read and dropped (up to a limit).
///
/// Two mechanisms meet here. Every server closes lingeringly (`platform::http`): after
/// an early answer it stops sending and drains what the client still writes, so the
/// client reads the answer rather than a reset — but the connection is then closed.
/// Reading the body *before* answering, as this does for small bodies, lets hyper keep
/// the connection: a client refused with 401 or 429 (a browser, a script retrying after
/// `Retry-After`) goes on over the same connection instead of opening a new one. Bodies
/// above the limit, or too slow, fall through to the lingering close.
async fn after_reading_body(request: Request, refusal: Response) -> Response {
    use http_body_util::BodyExt as _;
    let mut body = request.into_body();
    let mut read = 0;
    let _ = tokio::time::timeout(REFUSED_BODY_TIME, async {
        while read <= REFUSED_BODY_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |data| data.len()),
                _ => break,
            }
        }
    })
    .await;
    refusal
}

impl Methods {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Get => "GET",
            Post => "POST",
            Any => "any method",
        }
    }

    /// Whether the row serves the method named `name` (upper case).
    pub(crate) fn covers(self, name: &str) -> bool {
        match self {
            Get => name == "GET",
            Post => name == "POST",
            Any => true,
        }
    }

    /// As axum's method routers: `GET` routes answer `HEAD` too, but that (rare) case is
    /// left to the router.
    fn allow(self, method: &Method) -> bool {
        match self {
            Get => method == Method::GET,
            Post => method == Method::POST,
            Any => true,
        }
    }
}

/// Whether `path` matches `pattern`, whose `{name}` segments match one non-empty segment
/// (as the router matches).
fn matches(pattern: &str, path: &str) -> bool {
    Pattern::new(pattern).matches(path)
}

/// A route pattern split at its first `{name}` segment, once, so that matching a path
/// against it searches nothing in the pattern: it runs against every row per request,
/// and a pattern without parameters is one comparison.
#[derive(Debug, Clone, Copy)]
enum Pattern<'a> {
    /// No parameter: the path must be the pattern.
    Literal(&'a str),
    /// What comes before the first parameter, and the pattern after it.
    Parameter { prefix: &'a str, suffix: &'a str },
    /// A `{` without its `}`: matches nothing.
    Unclosed,
}

impl<'a> Pattern<'a> {
    fn new(pattern: &'a str) -> Self {
        let Some(open) = pattern.find('{') else {
            return Self::Literal(pattern);
        };
        match pattern[open..].find('}').map(|i| open + i) {
            Some(close) => Self::Parameter {
                prefix: &pattern[..open],
                suffix: &pattern[close + 1..],
            },
            None => Self::Unclosed,
        }
    }

    /// No allocation.
    fn matches(&self, path: &str) -> bool {
        match *self {
            Self::Literal(pattern) => pattern == path,
            Self::Parameter { prefix, suffix } => {
                let Some(rest) = path.strip_prefix(prefix) else {
                    return false;
                };
                // The parameter runs to the next `/` (or the end); what follows must
                // match too.
                let end = rest.find('/').unwrap_or(rest.len());
                end > 0 && matches(suffix, &rest[end..])
            }
            Self::Unclosed => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_the_router_does() {
        assert!(matches("/posts", "/posts"));
        assert!(!matches("/posts", "/posts/"));
        assert!(!matches("/posts", "/post"));
        assert!(matches("/jobs/{id}", "/jobs/42"));
        assert!(!matches("/jobs/{id}", "/jobs/"));
        assert!(!matches("/jobs/{id}", "/jobs"));
        assert!(!matches("/jobs/{id}", "/jobs/4/2"));
        assert!(matches("/posts/{id}/comments", "/posts/p%201/comments"));
        assert!(!matches("/posts/{id}/comments", "/posts//comments"));
        assert!(matches("/.well-known/jwks.json", "/.well-known/jwks.json"));
        assert!(!matches("/jobs/{id", "/jobs/{id"));
    }

    #[test]
    fn every_pattern_appears_in_one_run_of_rows() {
        // `Table::router` merges the rows of a pattern when they are next to each other.
        let mut seen: Vec<&str> = Vec::new();
        for (i, row) in TABLE.iter().enumerate() {
            let continues = i > 0 && TABLE[i - 1].pattern == row.pattern;
            assert!(
                continues || !seen.contains(&row.pattern),
                "{} split",
                row.pattern
            );
            seen.push(row.pattern);
        }
    }
}
