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
        // Before the comments and query services, which follow its log.
        ServiceName::EventBus,
        ServiceName::Comments,
        ServiceName::Moderation,
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
    #[command(flatten, next_help_heading = "Service registry")]
    pub registry: RegistryArgs,
}

/// The service registry (every instance announces itself on the bus) and the system map.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// How often each instance announces itself in the service registry.
    #[arg(long, env = "FLOTILLA_REGISTRY_HEARTBEAT", default_value = "5s",
          value_parser = platform::config::parse_duration)]
    pub registry_heartbeat: std::time::Duration,
    /// How long the gateway keeps listing an instance it has not heard from (at least
    /// two heartbeats; a graceful stop deregisters at once).
    #[arg(long, env = "FLOTILLA_REGISTRY_EXPIRY", default_value = "15s",
          value_parser = platform::config::parse_duration)]
    pub registry_expiry: std::time::Duration,
    /// The URL other processes reach this instance at, as registered in the service
    /// registry (`http://host:port`); unset → the listen address (a wildcard address
    /// registers as 127.0.0.1: set this when the services run on several hosts).
    #[arg(long, env = "FLOTILLA_ADVERTISE_URL", value_parser = parse_advertise_url)]
    pub advertise_url: Option<String>,
    /// A trace in your tracing UI, for the system map's messages: a URL in which
    /// `{trace_id}` is replaced, e.g. `http://localhost:16686/trace/{trace_id}` (Jaeger).
    #[arg(long, env = "FLOTILLA_TRACE_URL_TEMPLATE", value_parser = parse_trace_url_template)]
    pub trace_url_template: Option<String>,
}

impl Default for RegistryArgs {
    fn default() -> Self {
        Self {
            registry_heartbeat: bus::registry::HEARTBEAT,
            registry_expiry: bus::registry::EXPIRY,
            advertise_url: None,
            trace_url_template: None,
        }
    }
}

impl RegistryArgs {
    /// Refuses timings under which a live instance would expire between two heartbeats.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.registry_heartbeat.is_zero()
                && self.registry_expiry >= self.registry_heartbeat * 2,
            "FLOTILLA_REGISTRY_EXPIRY ({:?}) must be at least twice FLOTILLA_REGISTRY_HEARTBEAT ({:?}), which must not be 0",
            self.registry_expiry,
            self.registry_heartbeat
        );
        Ok(())
    }
}

fn parse_advertise_url(value: &str) -> Result<String, String> {
    let value = value.trim().trim_end_matches('/');
    match gateway::parse_upstream_url(value) {
        Ok(url) if !url.is_registry() && !value.contains(',') => Ok(value.to_owned()),
        _ => Err(format!(
            "'{value}' is not one http://host:port URL (how other processes reach this one)"
        )),
    }
}

fn parse_trace_url_template(value: &str) -> Result<String, String> {
    let value = value.trim();
    let http = value.starts_with("http://") || value.starts_with("https://");
    if !http || !value.contains("{trace_id}") || value.len() > 2048 {
        return Err(format!(
            "'{value}' must be an http(s) URL containing {{trace_id}}, e.g. http://localhost:16686/trace/{{trace_id}}"
        ));
    }
    Ok(value.to_owned())
}

/// What each service behind the gateway serves, from its handlers, for the gateway's
/// `/openapi.json` (the gateway depends on no service; this binary knows them all).
fn api_descriptions() -> gateway::Descriptions {
    gateway::Descriptions::default()
        .with(auth::NAME, auth::openapi())
        .with(media::NAME, media::routes::openapi())
        .with(posts::NAME, posts::openapi())
        .with(comments::NAME, comments::openapi())
        .with(query::NAME, query::openapi())
        .with(event_bus::NAME, event_bus::openapi())
}

/// The registration of one instance: `service` reached at `url`.
fn instance(service: &str, url: String, process_id: &str) -> bus::registry::Instance {
    bus::registry::Instance {
        service: service.to_owned(),
        id: format!("{service}-{process_id}"),
        url,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at_ms: i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(0),
        consumes: Vec::new(),
    }
}

/// A short id of this process (the hostname is not always unique, a pid not across hosts).
fn process_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_owned()
}

/// Announces `services` of this process on `bus` until shutdown (the drain waits for
/// their last word); on RabbitMQ also forwards the process's tap to the gateway.
fn register_instances(
    bus: &std::sync::Arc<dyn bus::EventBus>,
    services: &[&str],
    url: &str,
    heartbeat: std::time::Duration,
    context: &ServiceContext,
) {
    let process = process_id();
    for service in services {
        let registration = bus::registry::register(
            bus.clone(),
            instance(service, url.to_owned(), &process),
            heartbeat,
            context.shutdown.clone(),
        );
        context.tasks.spawn(async move {
            let _ = registration.await;
        });
    }
    if bus.backend() == "rabbitmq" {
        let forwarding = bus::registry::forward_observations(bus.clone(), context.shutdown.clone());
        context.tasks.spawn(async move {
            let _ = forwarding.await;
        });
    }
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
    /// The service's name, as in `serve NAME` and the registry.
    pub fn name(self) -> &'static str {
        use ServiceName::*;
        match self {
            Gateway => gateway::NAME,
            Auth => "auth",
            Media => "media",
            Converter => "converter",
            Notification => "notification",
            Posts => "posts",
            Comments => "comments",
            Moderation => "moderation",
            Query => "query",
            EventBus => "event-bus",
        }
    }

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
        if bus || self == Gateway {
            headings.push("Message bus");
        }
        if blobs {
            headings.push("Blob store");
        }
        headings.push("Service registry");
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
    args.services.registry.check()?;
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
            // The comments service learns posts from the same log.
            ServiceName::Comments => {
                let log = upstreams
                    .get(event_bus::NAME)
                    .cloned()
                    .map(comments::EventLogClient::new);
                comments::build_with_event_log(&context, &args.services.comments, log).await?
            }
            _ => build_service(name, &context, &args.services, None).await?,
        };
        upstreams = upstreams.in_process(app.name, app.into_router(shutdown.clone()));
    }
    let bus = bus::connect(
        &context.bus_url_or_embedded(),
        bus::BusOptions::for_service(gateway::NAME),
    )
    .await?;
    let directory = bus::registry::Directory::start(
        bus.clone(),
        args.services.registry.registry_expiry,
        shutdown.clone(),
    );
    let system = gateway::System {
        bus: Some(bus.clone()),
        directory: Some(directory),
        trace_url_template: args.services.registry.trace_url_template.clone(),
        descriptions: api_descriptions(),
    };
    let entry =
        gateway::build_with_system(upstreams, &args.services.gateway, shutdown.clone(), system)
            .into_entry(shutdown.clone());
    let threads = args.server.http_threads.unwrap_or(0);
    let limits = connection_limits(&args.server, true);
    let running = start(
        listener,
        &args.server,
        entry,
        context,
        threads,
        limits,
        shutdown,
    )
    .await?;
    let url = args
        .services
        .registry
        .advertise_url
        .clone()
        .unwrap_or_else(|| public_url_of(running.addr));
    let mut services = vec![gateway::NAME];
    services.extend(ServiceName::BEHIND_GATEWAY.iter().map(|s| s.name()));
    register_instances(
        &bus,
        &services,
        &url,
        args.services.registry.registry_heartbeat,
        &running.context,
    );
    Ok(running)
}

/// `flotilla serve SERVICE`: one service in this process. A service whose stores are not
/// configured refuses to start (see [`ServeArgs::allow_embedded`]). A dependency that
/// cannot be reached yet (the database or broker still starting) is tried again, with
/// backoff, until it answers or `shutdown` is cancelled — never a reason to exit.
pub async fn serve(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<Running> {
    args.services.registry.check()?;
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
    let registered = context.bus_url.is_some() || needs(args.service).1;
    let running = start(
        listener,
        &args.server,
        entry,
        context,
        threads,
        limits,
        shutdown,
    )
    .await?;
    if registered {
        let url = args
            .services
            .registry
            .advertise_url
            .clone()
            .unwrap_or_else(|| public_url_of(running.addr));
        let context = running.context.clone();
        let service = args.service.name();
        let heartbeat = args.services.registry.registry_heartbeat;
        // The broker may come later: the registration waits for it, the server does not.
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(250);
            loop {
                let options = bus::BusOptions::for_service(service);
                match bus::connect(&context.bus_url_or_embedded(), options).await {
                    Ok(bus) => {
                        register_instances(&bus, &[service], &url, heartbeat, &context);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot register in the service registry yet")
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = context.shutdown.cancelled() => return,
                }
                delay = (delay * 2).min(MAX_START_RETRY_DELAY);
            }
        });
    }
    Ok(running)
}

/// Refuses, before any connection is tried, a store URL no attempt could ever open (a
/// wrong scheme): only what may come later (a server still starting) is waited for.
fn check_urls(args: &ServeArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.database_url {
        storage::Dialect::from_url(url).context("FLOTILLA_DATABASE_URL")?;
    }
    if let Some(url) = &args.services.bus.bus_url {
        bus::check_url(url).context("FLOTILLA_BUS_URL")?;
    }
    if args.services.bus.bus_url.is_none()
        && let Some(variable) = args.gateway.registry_variable()
    {
        anyhow::bail!(
            "{variable}=registry takes the endpoints from the service registry, which is on the bus: set FLOTILLA_BUS_URL"
        );
    }
    if let Some(url) = &args.services.blobs.blob_url {
        storage::blob::BlobStore::check_url(url).context("FLOTILLA_BLOB_URL")?;
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
            // With a bus, the gateway follows the registry and serves the system API.
            let mut system = gateway::System {
                trace_url_template: args.registry.trace_url_template.clone(),
                descriptions: api_descriptions(),
                ..gateway::System::default()
            };
            if let Some(url) = &context.bus_url {
                let bus = bus::connect(url, bus::BusOptions::for_service(gateway::NAME)).await?;
                system.directory = Some(bus::registry::Directory::start(
                    bus.clone(),
                    args.registry.registry_expiry,
                    context.shutdown.clone(),
                ));
                system.bus = Some(bus);
            }
            gateway::build_with_system(
                urls.upstreams(&args.gateway.policy(), system.directory.clone()),
                &args.gateway,
                context.shutdown.clone(),
                system,
            )
        }
        ServiceName::Auth => auth::build(context, &args.auth).await?,
        ServiceName::Media => media::build(context, &args.media).await?,
        ServiceName::Converter => converter::build(context, &args.converter).await?,
        ServiceName::Notification => notification::build(context, &args.notification).await?,
        ServiceName::Posts => posts::build(context, &args.posts).await?,
        ServiceName::Comments => {
            // Learns posts from the event log at FLOTILLA_EVENT_BUS_URL, as the query
            // service reads it; without one, from the bus.
            let log = gateway_args
                .and_then(|urls| urls.event_bus_url.clone())
                .map(|url| comments::EventLogClient::remote(url, None));
            comments::build_with_event_log(context, &args.comments, log).await?
        }
        ServiceName::Moderation => moderation::build(context, &args.moderation).await?,
        ServiceName::Query => {
            // Over HTTP to FLOTILLA_EVENT_BUS_URL, through the query service's own
            // resilience stack (crates/upstream, as the gateway's).
            // The README's `registry` is the gateway's: the query service follows no
            // directory of its own (the resolver says so if one is configured).
            let log = gateway_args
                .and_then(|urls| urls.event_bus_url.clone())
                .map(|url| query::EventLogClient::remote(url, None));
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
