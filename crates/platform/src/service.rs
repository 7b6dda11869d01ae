//! A service as the rest of the system sees it: routes, readiness checks, and the
//! common stack wrapped around them in one place.

use std::{path::PathBuf, sync::Arc, time::Duration};

use axum::{Router, extract::DefaultBodyLimit};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceBuilder;
use tower_http::{catch_panic::CatchPanicLayer, cors::CorsLayer};

use crate::{
    Problem,
    entry::{Entry, FastPath},
    health::Readiness,
    http,
    observe::ObserveLayer,
};

/// What a service gets from whoever starts it (`flotilla up`, `flotilla serve`, a test).
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// Where the service keeps its files (SQLite databases, keys, blobs, mail).
    pub data_dir: PathBuf,
    /// Cancelled when the process shuts down; background tasks must watch it.
    pub shutdown: CancellationToken,
    /// Background tasks (consumers, relays) are spawned here, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// `FLOTILLA_DATABASE_URL` of `serve`; `None` in `up`, where every service has
    /// its own SQLite file (see [`ServiceContext::database_url_for`]).
    pub database_url: Option<String>,
    /// `FLOTILLA_BUS_URL`; `None` means the embedded bus in the data directory (see
    /// [`ServiceContext::bus_url_or_embedded`]). Every service of a process opens the
    /// same URL, and the embedded bus shares one writer per file within a process.
    pub bus_url: Option<String>,
    /// `FLOTILLA_BLOB_URL`; `None` means files under `<data>/blobs` (see
    /// [`ServiceContext::blob_url_or_local`]).
    pub blob_url: Option<String>,
}

impl ServiceContext {
    pub fn new(data_dir: PathBuf, shutdown: CancellationToken) -> Self {
        Self {
            data_dir,
            shutdown,
            tasks: TaskTracker::new(),
            database_url: None,
            bus_url: None,
            blob_url: None,
        }
    }

    /// The blob store: the configured URL, or `file://<data>/blobs` (absolute).
    pub fn blob_url_or_local(&self) -> String {
        match &self.blob_url {
            Some(url) => url.clone(),
            None => {
                let dir =
                    std::path::absolute(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
                format!("file://{}", dir.join("blobs").display())
            }
        }
    }

    /// The bus to connect to: the configured URL, or `sqlite://<data>/bus.db`.
    pub fn bus_url_or_embedded(&self) -> String {
        match &self.bus_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("bus.db").display()),
        }
    }

    /// The database of `service`: the configured URL, or `<data>/<service>.db`.
    pub fn database_url_for(&self, service: &str) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join(format!("{service}.db")).display()
            ),
        }
    }
}

/// Limits applied to every request of a service unless a route sets its own.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time allowed until response headers are ready; `None` when every route sets its
    /// own (the gateway), so requests do not pay for a second timer.
    pub request_timeout: Option<Duration>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            request_timeout: Some(Duration::from_secs(30)),
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// A built service, ready to be served on its own or mounted behind the gateway.
#[derive(Debug)]
pub struct ServiceApp {
    pub name: &'static str,
    pub routes: Router,
    pub readiness: Readiness,
    pub limits: HttpLimits,
    /// Cross-origin rules for browser clients on other origins, if the service has any.
    pub cors: Option<CorsLayer>,
    /// Requests served ahead of the router when served over HTTP ([`crate::entry`]).
    pub fast_path: Option<Arc<dyn FastPath>>,
}

impl ServiceApp {
    pub fn new(name: &'static str, routes: Router) -> Self {
        Self {
            name,
            routes,
            readiness: Readiness::new(),
            limits: HttpLimits::default(),
            cors: None,
            fast_path: None,
        }
    }

    /// Answers CORS preflights and marks responses for the origins `cors` allows. Part
    /// of the common stack (not a layer of its own around every route: each layer of a
    /// router is one more boxed service cloned per request).
    pub fn with_cors(mut self, cors: CorsLayer) -> Self {
        self.cors = Some(cors);
        self
    }

    /// Serves the requests `fast_path` recognises ahead of the router (see
    /// [`crate::entry`]) when served by [`ServiceApp::into_entry`]. The router must serve
    /// the same routes: a service called in-process gets only the router.
    pub fn with_fast_path(mut self, fast_path: Arc<dyn FastPath>) -> Self {
        self.fast_path = Some(fast_path);
        self
    }

    /// What an HTTP server should call: [`ServiceApp::into_router`], behind the service's
    /// fast path if it has one.
    pub fn into_entry(mut self, shutdown: CancellationToken) -> Entry {
        let name = self.name;
        let cors = self.cors.clone();
        match self.fast_path.take() {
            Some(fast) => Entry::with_fast_path(self.into_router(shutdown), name, cors, fast),
            None => Entry::router(self.into_router(shutdown)),
        }
    }

    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    pub fn with_limits(mut self, limits: HttpLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The service's routes plus `/healthz`, `/readyz`, `/metrics`, wrapped in the
    /// common stack. Layers, outermost first:
    /// 1. observe — accept or make `x-request-id` (echoed), continue or start the W3C
    ///    trace, a span (exported when OTLP is on) around everything below, every error
    ///    as problem+json with the request id, access log, metrics ([`crate::observe`]);
    /// 2. CORS, when the service has rules ([`ServiceApp::with_cors`]) — preflights are
    ///    answered here; requests without `Origin` only get `Vary` ([`crate::cors`]);
    /// 3. catch panic — a panicking handler is a 500 problem, not a dropped connection;
    /// 4. timeout — no response headers within the limit → 503 problem (unless the
    ///    service's routes have their own);
    /// 5. body limit — larger bodies → 413 problem.
    pub fn into_router(self, shutdown: CancellationToken) -> Router {
        let _ = crate::metrics::handle();
        let name = self.name;
        let readiness = self.readiness;
        let limits = self.limits;
        // The standard routes are registered with their descriptions (openapi.rs).
        let (standard, _) = crate::openapi::standard_routes()
            .with_state(crate::openapi::ReadyState {
                readiness,
                shutdown,
            })
            .split_for_parts();
        self.routes
            .merge(standard)
            .fallback(|| async { Problem::not_found("no such route") })
            .layer(
                ServiceBuilder::new()
                    .layer(ObserveLayer::new(name))
                    .option_layer(self.cors.map(crate::cors::CorsLayer::new))
                    .map_response(|response: ::http::Response<_>| {
                        response.map(axum::body::Body::new)
                    })
                    .layer(CatchPanicLayer::custom(crate::problem::panic_to_problem))
                    .option_layer(limits.request_timeout.map(http::TimeoutLayer::new))
                    .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
            )
    }
}
