//! Wiring only: which services exist, how `up` puts them in one process behind the
//! gateway, and how `serve` runs one of them. Every decision about *how* a service works
//! lives in that service's crate or in `platform`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use axum::{body::Body, extract::Request};
use platform::{
    ServiceApp, ServiceContext, config::ServerArgs, entry::Entry, http::DEFAULT_DRAIN_TIMEOUT,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use gateway::{GatewayArgs, parse_upstream_url};

/// The services of the system (docs/API.md §1), as accepted by `flotilla serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceName {
    Gateway,
    Auth,
    Media,
    Converter,
    Notification,
    Posts,
    Comments,
    Moderation,
    Query,
    EventBus,
}

impl ServiceName {
    /// Every service but the gateway, in the order `up` builds them.
    pub const BEHIND_GATEWAY: [ServiceName; 9] = [
        ServiceName::Auth,
        ServiceName::Media,
        ServiceName::Converter,
        ServiceName::Notification,
        ServiceName::Posts,
        ServiceName::Comments,
        ServiceName::Moderation,
        // Before the query service, which reads its log at start.
        ServiceName::EventBus,
        ServiceName::Query,
    ];
}

/// The settings of every service, each service's own struct. In `up` they all apply;
/// in `serve SERVICE` only the served one's are used.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten, next_help_heading = "Gateway")]
    pub gateway: gateway::Args,
    #[command(flatten, next_help_heading = "Auth")]
    pub auth: auth::Args,
    #[command(flatten, next_help_heading = "Media")]
    pub media: media::Args,
    #[command(flatten, next_help_heading = "Converter")]
    pub converter: converter::Args,
    #[command(flatten, next_help_heading = "Notification")]
    pub notification: notification::Args,
    #[command(flatten, next_help_heading = "Posts")]
    pub posts: posts::Args,
    #[command(flatten, next_help_heading = "Comments")]
    pub comments: comments::Args,
    #[command(flatten, next_help_heading = "Moderation")]
    pub moderation: moderation::Args,
    #[command(flatten, next_help_heading = "Query")]
    pub query: query::Args,
    #[command(flatten, next_help_heading = "Event bus")]
    pub event_bus: event_bus::Args,
    #[command(flatten, next_help_heading = "Message bus")]
    pub bus: BusArgs,
    #[command(flatten, next_help_heading = "Blob store")]
    pub blobs: BlobArgs,
}

/// The blob store (uploaded videos, MP3s) of the media services.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BlobArgs {
    /// `s3://bucket[/prefix]` (credentials from the standard `AWS_*` variables) or
    /// `file:///abs/dir`; unset → `file://<data>/blobs`.
    #[arg(long, env = "FLOTILLA_BLOB_URL")]
    pub blob_url: Option<String>,
}

/// The message bus every service of the process uses.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BusArgs {
    /// `amqp://user:pw@host:5672/%2f` for RabbitMQ; unset → the embedded bus,
    /// `sqlite://<data>/bus.db`.
    #[arg(long, env = "FLOTILLA_BUS_URL", hide_env_values = true)]
    pub bus_url: Option<String>,
}

/// Settings of `flotilla up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub services: ServiceArgs,
}

/// Settings of `flotilla serve SERVICE`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The service to run.
    #[arg(value_enum)]
    pub service: ServiceName,
    #[command(flatten)]
    pub server: ServerArgs,
    /// The service's database; unset → SQLite in the data directory.
    /// `postgres://…` or `mysql://…` in production.
    #[arg(long, env = "FLOTILLA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Lets a service whose database, bus or blob store URL is unset use the embedded
    /// one in its data directory (SQLite, files). Without it `serve` refuses to start
    /// and names the missing variable: in a cluster an embedded store is private to
    /// one container, and the system would split without a word.
    #[arg(long, env = "FLOTILLA_ALLOW_EMBEDDED",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_embedded: bool,
    #[command(flatten, next_help_heading = "Gateway upstreams")]
    pub gateway: gateway::GatewayArgs,
    #[command(flatten)]
    pub services: ServiceArgs,
}

impl ServeArgs {
    /// The variables the served service needs and that are unset.
    pub fn missing_stores(&self) -> Vec<&'static str> {
        let (database, bus, blobs) = needs(self.service);
        let mut missing = Vec::new();
        if database && self.database_url.is_none() {
            missing.push("FLOTILLA_DATABASE_URL");
        }
        if bus && self.services.bus.bus_url.is_none() {
            missing.push("FLOTILLA_BUS_URL");
        }
        if blobs && self.services.blobs.blob_url.is_none() {
            missing.push("FLOTILLA_BLOB_URL");
        }
        missing
    }
}

impl ServiceName {
    /// The `--help` sections of `serve SERVICE` that the service reads: its own, the
    /// gateway's upstreams, the message bus, the blob store (see [`needs`]).
    pub fn help_headings(self) -> Vec<&'static str> {
        use ServiceName::*;
        let own = match self {
            Gateway => "Gateway",
            Auth => "Auth",
            Media => "Media",
            Converter => "Converter",
            Notification => "Notification",
            Posts => "Posts",
            Comments => "Comments",
            Moderation => "Moderation",
            Query => "Query",
            EventBus => "Event bus",
        };
        let (_, bus, blobs) = needs(self);
        let mut headings = vec![own];
        if self == Gateway {
            headings.push("Gateway upstreams");
        }
        if bus {
            headings.push("Message bus");
        }
        if blobs {
            headings.push("Blob store");
        }
        headings
    }

    /// Whether the service keeps a database (reads `FLOTILLA_DATABASE_URL`).
    pub fn keeps_a_database(self) -> bool {
        needs(self).0
    }

    /// Whether the service keeps any store (a database, the bus or blobs).
    pub fn keeps_a_store(self) -> bool {
        let (database, bus, blobs) = needs(self);
        database || bus || blobs
    }
}

/// Whether `service` keeps state in a database, talks over the bus, keeps blobs.
fn needs(service: ServiceName) -> (bool, bool, bool) {
    use ServiceName::*;
    match service {
        Gateway => (false, false, false),
        Auth => (true, false, false),
        Converter => (false, true, true),
        Media => (true, true, true),
        Notification | Posts | Comments | Moderation | Query | EventBus => (true, true, false),
    }
}

/// How often a server that is not ready yet says what it waits for.
pub const NOT_READY_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A running server: its address, and the means to wait for it or stop it.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    shutdown: CancellationToken,
    context: ServiceContext,
    entry: Entry,
    server: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Waits until `/readyz` answers 200 (`true`), or until shutdown (`false`): however
    /// long a dependency takes to come, that is no reason to exit. Says every
    /// [`NOT_READY_LOG_INTERVAL`] what it is still waiting for.
    pub async fn wait_until_ready(&self) -> anyhow::Result<bool> {
        let started = tokio::time::Instant::now();
        let mut next_log = started + NOT_READY_LOG_INTERVAL;
        let mut pause = Duration::from_millis(20);
        loop {
            let request = Request::get("/readyz").body(Body::empty())?;
            let response = self.entry.clone().oneshot(request).await?;
            if response.status().is_success() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= next_log {
                let body = axum::body::to_bytes(response.into_body(), 16 * 1024)
                    .await
                    .unwrap_or_default();
                tracing::warn!(
                    waited_s = started.elapsed().as_secs(),
                    readyz = %String::from_utf8_lossy(&body),
                    "not ready yet; waiting for its dependencies"
                );
                next_log += NOT_READY_LOG_INTERVAL;
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.shutdown.cancelled() => return Ok(false),
            }
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Waits until `/readyz` answers 200, at most `limit` (for tests and benchmarks).
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(limit, self.wait_until_ready()).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => anyhow::bail!("stopped before it was ready"),
            Ok(Err(error)) => Err(error),
            Err(_) => anyhow::bail!("not ready after {} s", limit.as_secs()),
        }
    }

    /// The token that stops everything when cancelled (signals cancel it too).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for the server to stop (after shutdown), then for background tasks.
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.server.await.context("server task failed")?;
        served.context("server failed")?;
        self.context.tasks.close();
        if tokio::time::timeout(DEFAULT_DRAIN_TIMEOUT, self.context.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within the drain timeout");
        }
        Ok(())
    }

    /// Starts the drain and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// `flotilla up`: every service in this process, behind the gateway on `--listen`.
pub async fn up(mut args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<Running> {
    // Bound first, so that the emails' download links name the real port (`--listen :0`).
    let listener = platform::http::bind(args.server.listen).await?;
    if args.services.notification.public_url.is_none() {
        args.services.notification.public_url = Some(public_url_of(listener.local_addr()?));
    }
    let mut context = prepare_context(&args.server, None, &shutdown)?;
    context.bus_url = args.services.bus.bus_url.clone();
    context.blob_url = args.services.blobs.blob_url.clone();
    let mut upstreams = gateway::Upstreams::new();
    for name in ServiceName::BEHIND_GATEWAY {
        let app = match name {
            // The query service rebuilds its view from the event-bus service's log, whose
            // router (built just before) it calls in-process.
            ServiceName::Query => {
                let log = upstreams
                    .get(event_bus::NAME)
                    .cloned()
                    .map(query::EventLogClient::new);
                query::build_with_event_log(&context, &args.services.query, log).await?
            }
            _ => build_service(name, &context, &args.services, None).await?,
        };
        upstreams = upstreams.in_process(app.name, app.into_router(shutdown.clone()));
    }
    let entry = gateway::build_with_shutdown(upstreams, &args.services.gateway, shutdown.clone())
        .into_entry(shutdown.clone());
    let threads = args.server.http_threads.unwrap_or(0);
    let limits = connection_limits(&args.server, true);
    start(
        listener,
        &args.server,
        entry,
        context,
        threads,
        limits,
        shutdown,
    )
    .await
}

/// `flotilla serve SERVICE`: one service in this process. A service whose stores are not
/// configured refuses to start (see [`ServeArgs::allow_embedded`]). A dependency that
/// cannot be reached yet (the database or broker still starting) is tried again, with
/// backoff, until it answers or `shutdown` is cancelled — never a reason to exit.
pub async fn serve(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let missing = args.missing_stores();
    if !missing.is_empty() && !args.allow_embedded {
        let service = clap::ValueEnum::to_possible_value(&args.service)
            .map_or_else(String::new, |v| v.get_name().to_owned());
        anyhow::bail!(
            "serve {service} needs {}: set {}, or FLOTILLA_ALLOW_EMBEDDED=1 to keep {} in the data directory",
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" },
            if missing.len() == 1 { "it" } else { "them" },
        );
    }
    check_urls(&args)?;
    let mut context = prepare_context(&args.server, args.database_url.clone(), &shutdown)?;
    context.bus_url = args.services.bus.bus_url.clone();
    context.blob_url = args.services.blobs.blob_url.clone();
    let mut delay = Duration::from_millis(250);
    let mut app = loop {
        match build_checked(&args, &context).await {
            Ok(app) => break app,
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    retry_in = ?delay,
                    "cannot start yet; trying again"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => anyhow::bail!("stopped before starting: {error:#}"),
                }
                delay = (delay * 2).min(MAX_START_RETRY_DELAY);
            }
        }
    };
    let (_, _, keeps_blobs) = needs(args.service);
    if keeps_blobs {
        app.readiness = with_blob_check(app.readiness, &context)?;
    }
    let entry = app.into_entry(shutdown.clone());
    let threads = args.server.http_threads.unwrap_or(match args.service {
        ServiceName::Gateway => std::thread::available_parallelism().map_or(1, usize::from),
        _ => 0,
    });
    let limits = connection_limits(&args.server, args.service == ServiceName::Gateway);
    let listener = platform::http::bind(args.server.listen).await?;
    start(
        listener,
        &args.server,
        entry,
        context,
        threads,
        limits,
        shutdown,
    )
    .await
}

/// Refuses, before any connection is tried, a store URL no attempt could ever open (a
/// wrong scheme): only what may come later (a server still starting) is waited for.
fn check_urls(args: &ServeArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.database_url {
        storage::Dialect::from_url(url).context("FLOTILLA_DATABASE_URL")?;
    }
    if let Some(url) = &args.services.bus.bus_url {
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("sqlite" | "amqp" | "amqps")) {
            anyhow::bail!(
                "FLOTILLA_BUS_URL: unsupported bus URL '{}': expected amqp://, amqps:// or sqlite://",
                storage::redact(url)
            );
        }
    }
    if let Some(url) = &args.services.blobs.blob_url {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("file" | "s3" | "memory")) {
            anyhow::bail!(
                "FLOTILLA_BLOB_URL: unsupported blob store URL '{}': expected file:///dir or s3://bucket",
                storage::redact(url)
            );
        }
    }
    Ok(())
}

/// The longest pause between two attempts to start a service whose dependency is down.
const MAX_START_RETRY_DELAY: Duration = Duration::from_secs(10);

/// The service with its broker check (every service on the bus).
async fn build_checked(args: &ServeArgs, context: &ServiceContext) -> anyhow::Result<ServiceApp> {
    let mut app = build_service(args.service, context, &args.services, Some(&args.gateway)).await?;
    let (_, on_the_bus, _) = needs(args.service);
    if on_the_bus {
        app.readiness = with_broker_check(app.readiness, context).await?;
    }
    Ok(app)
}

/// Adds the blob store as a required readiness check: uploads and conversions need it.
fn with_blob_check(
    readiness: platform::health::Readiness,
    context: &ServiceContext,
) -> anyhow::Result<platform::health::Readiness> {
    let blobs = storage::blob::BlobStore::from_url(&context.blob_url_or_local())?;
    Ok(readiness.with_check("blobs", move || {
        let blobs = blobs.clone();
        async move { blobs.health().await.map_err(|e| e.to_string()) }
    }))
}

/// Adds the broker as a *degraded* readiness check: `/readyz` reports an outage, yet the
/// service stays ready, because it keeps accepting writes into its outbox meanwhile.
/// (Whether its consumers can subscribe is the service's own `consumers` check, from
/// their [`bus::ConsumerHealth`].)
async fn with_broker_check(
    readiness: platform::health::Readiness,
    context: &ServiceContext,
) -> anyhow::Result<platform::health::Readiness> {
    let bus = bus::connect(&context.bus_url_or_embedded(), bus::BusOptions::default()).await?;
    Ok(readiness.with_degraded_check("broker", move || {
        let bus = bus.clone();
        async move { bus.health().await }
    }))
}

fn prepare_context(
    server: &ServerArgs,
    database_url: Option<String>,
    shutdown: &CancellationToken,
) -> anyhow::Result<ServiceContext> {
    std::fs::create_dir_all(&server.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            server.data_dir.display()
        )
    })?;
    let mut context = ServiceContext::new(server.data_dir.clone(), shutdown.clone());
    context.database_url = database_url;
    Ok(context)
}

async fn build_service(
    name: ServiceName,
    context: &ServiceContext,
    args: &ServiceArgs,
    gateway_args: Option<&gateway::GatewayArgs>,
) -> anyhow::Result<ServiceApp> {
    let app = match name {
        ServiceName::Gateway => {
            let urls = gateway_args.cloned().unwrap_or_default();
            gateway::build_with_shutdown(
                urls.upstreams(&args.gateway.policy()),
                &args.gateway,
                context.shutdown.clone(),
            )
        }
        ServiceName::Auth => auth::build(context, &args.auth).await?,
        ServiceName::Media => media::build(context, &args.media).await?,
        ServiceName::Converter => converter::build(context, &args.converter).await?,
        ServiceName::Notification => notification::build(context, &args.notification).await?,
        ServiceName::Posts => posts::build(context, &args.posts).await?,
        ServiceName::Comments => comments::build(context, &args.comments).await?,
        ServiceName::Moderation => moderation::build(context, &args.moderation).await?,
        ServiceName::Query => {
            // Over HTTP to FLOTILLA_EVENT_BUS_URL, through the query service's own
            // resilience stack (crates/upstream, as the gateway's).
            let log = gateway_args
                .and_then(|urls| urls.event_bus_url.clone())
                .map(query::EventLogClient::remote);
            query::build_with_event_log(context, &args.query, log).await?
        }
        ServiceName::EventBus => event_bus::build(context, &args.event_bus).await?,
    };
    Ok(app)
}

/// The connection limits of `server`; a server facing clients (`up`, the gateway) limits
/// connections per client address by default, one that only the gateway and other
/// services call does not.
fn connection_limits(server: &ServerArgs, faces_clients: bool) -> platform::http::ConnectionLimits {
    let defaults = platform::http::ConnectionLimits::default();
    let per_client_default = if faces_clients {
        defaults.max_connections_per_client
    } else {
        defaults.max_connections
    };
    platform::http::ConnectionLimits {
        max_connections_per_client: server
            .http_max_connections_per_client
            .unwrap_or(per_client_default),
        body_window: server.http_body_timeout,
        ..defaults
    }
}

/// The URL users reach a gateway listening on `addr` at: a wildcard address is named
/// `127.0.0.1`, which the person who started `up` can open.
pub fn public_url_of(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

async fn start(
    listener: tokio::net::TcpListener,
    server: &ServerArgs,
    entry: Entry,
    context: ServiceContext,
    http_threads: usize,
    limits: platform::http::ConnectionLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let server_task = tokio::spawn(platform::http::serve_on_threads(
        listener,
        entry.clone(),
        shutdown.clone(),
        DEFAULT_DRAIN_TIMEOUT,
        limits,
        http_threads,
    ));
    Ok(Running {
        addr,
        data_dir: server.data_dir.clone(),
        shutdown,
        context,
        entry,
        server: server_task,
    })
}
