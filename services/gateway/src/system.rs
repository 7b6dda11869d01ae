//! The system API, for admins (401 without a token, 403 for anyone else): what runs,
//! what waits, what moves — the data of the system map (`/system` in the web app) and of
//! `flotilla status`.
//!
//! * `GET /admin/system` — the services with their instances (from the service registry,
//!   `bus::registry`) and their request rate, error ratio and p99 over the last minute
//!   (from each instance's own `/metrics`, scraped every [`SCRAPE_INTERVAL`] while
//!   someone looks); the queues (consumer groups) with depth, in flight, consumers, dead
//!   letters (from the bus: passive declares on RabbitMQ) and publish / delivery rates
//!   (from the bus's tap); the bus's backend and state. Computed at most once a second
//!   however many ask.
//! * `GET /admin/system/stream` — Server-Sent Events: `message` for every message
//!   published and settled (`bus::tap::Observation`), `instance` for instances coming and
//!   going, `system` (the snapshot above) every [`SNAPSHOT_INTERVAL`], and `sampled` with
//!   how many messages this watcher did not get: watching is a bounded broadcast, a slow
//!   watcher is skipped ahead and never slows the bus.
//! * `GET /admin/dead-letters?group=` and `POST /admin/dead-letters/replay` — what
//!   `flotilla bus dlq list|replay` does.
//!
//! Where observations come from: in `up` (embedded bus) the gateway watches the tap of
//! its own process, where every service runs; on RabbitMQ every process forwards its
//! tap in batches (`bus::registry::forward_observations`) and the gateway listens.
//! Nothing runs until the first admin request: a system nobody looks at pays nothing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    convert::Infallible,
    sync::{Arc, Mutex, Once},
    time::{Duration, Instant},
};

use axum::{
    Json,
    extract::{DefaultBodyLimit, Query, Request, State},
    middleware,
    response::{IntoResponse, Response, sse::Event},
};
use bus::{
    EventBus,
    registry::{Batch, Change, Directory},
    tap::{Observation, Outcome},
};
use bytes::Bytes;
use futures::StreamExt as _;
use identity::Verifier;
use platform::{Problem, problem::PROBLEM_JSON};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::live::{OpenStreams, client_ip, sse};

/// How often the stream sends the `system` snapshot.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(2);
/// How often each instance's `/metrics` is read while someone looks.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(5);
/// Stream items a watcher may fall behind by before it skips ahead (`sampled`).
pub const STREAM_BUFFER: usize = 1024;
/// How long observations from other processes are held to be sent on in time order
/// (their batches leave every 100 ms).
const REORDER_MS: i64 = 400;
/// The window of the rates.
const WINDOW: Duration = Duration::from_secs(60);
/// Errors kept per service.
const RECENT_ERRORS: usize = 20;
/// The longest group name or message id taken.
const MAX_NAME: usize = 200;
/// Message ids in one replay at most.
const MAX_REPLAY_IDS: usize = 1000;
/// Dead letters listed at most (and by default 100).
const MAX_DEAD_LETTERS: usize = 1000;
/// The part of a dead letter's body shown.
const MAX_BODY_SHOWN: usize = 16 * 1024;

/// What the system API reads: the bus (absent: the gateway has no `FLOTILLA_BUS_URL`),
/// the registry's directory, and the tracing UI's link template.
#[derive(Debug, Clone, Default)]
pub struct System {
    pub bus: Option<Arc<dyn EventBus>>,
    pub directory: Option<Arc<Directory>>,
    /// `FLOTILLA_TRACE_URL_TEMPLATE`: a URL with `{trace_id}`, e.g. Jaeger's
    /// `http://jaeger:16686/trace/{trace_id}`.
    pub trace_url_template: Option<String>,
    /// The upstreams' descriptions of their routes, for the gateway's `/openapi.json`.
    pub descriptions: crate::descriptions::Descriptions,
}

/// One sentence per service for someone who has never seen the code.
pub fn caption(service: &str) -> &'static str {
    match service {
        "gateway" => {
            "The one door: checks tokens, limits rates and sends each request to the service that serves it."
        }
        "auth" => "Accounts and logins: signs the tokens (JWTs) every other service checks.",
        "media" => {
            "Takes uploads, stores the video, records a job and puts a message on the video queue."
        }
        "converter" => {
            "Workers that take video messages, turn each video into an MP3 and announce it on mp3."
        }
        "notification" => "Emails the uploader when the MP3 is ready (or the conversion failed).",
        "posts" => "Creates blog posts and announces each as a PostCreated event.",
        "comments" => "Takes comments on posts and sends them to moderation as events.",
        "moderation" => "Checks each new comment and announces the decision.",
        "query" => {
            "The blog's read model: follows the event log and builds the page everyone reads."
        }
        "event-bus" => {
            "The blog's durable event log, in causal order: the read model and comments follow it."
        }
        _ => "A service of the system.",
    }
}

/// The services `service` takes its input from over HTTP rather than from the queues it
/// `consumed`, among those `registered`. The query and comments services follow the event-bus service's
/// log when they are given one (`FLOTILLA_EVENT_BUS_URL`, or in `up`), and then take no
/// `PostCreated` from the bus; without a log their groups consume it like any other.
fn reads_from(
    service: &str,
    consumed: &[&QueueView],
    registered: &BTreeSet<String>,
) -> Vec<String> {
    let post_created = contracts::blog::routing_key(contracts::blog::POST_CREATED);
    let follows_log = matches!(service, "query" | "comments")
        && !consumed
            .iter()
            .flat_map(|queue| &queue.routing_keys)
            .any(|pattern| bus::topic_matches(pattern, &post_created))
        && registered.contains("event-bus");
    if follows_log {
        vec!["event-bus".to_owned()]
    } else {
        Vec::new()
    }
}

const QUEUE_CAPTION: &str = "A queue (consumer group): messages wait here until a consumer of the group takes one; its consumers share the work, and what fails for good is parked as a dead letter.";

/// Everything the admin routes share.
#[derive(Clone)]
pub(crate) struct SystemState {
    inner: Arc<Inner>,
}

struct Inner {
    system: System,
    hub: broadcast::Sender<Arc<StreamItem>>,
    started: Once,
    watched: Mutex<Watched>,
    snapshot: tokio::sync::Mutex<Option<(Instant, Arc<SystemView>)>>,
    streams: Arc<OpenStreams>,
    shutdown: CancellationToken,
    /// "METHOD /pattern" of the gateway's table, by upstream.
    routes: BTreeMap<&'static str, Vec<String>>,
}

/// An item of the stream.
#[derive(Debug)]
enum StreamItem {
    Message(Observation),
    Instance(Change),
    Sampled(u64),
}

/// The admin routes.
pub(crate) fn routes(
    system: System,
    verifier: &Verifier,
    streams: Arc<OpenStreams>,
    shutdown: CancellationToken,
) -> OpenApiRouter {
    let mut routes: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for row in crate::routes::table_rows() {
        routes.entry(row.upstream).or_default().push(format!(
            "{} {}",
            row.methods.name(),
            row.pattern
        ));
    }
    let state = SystemState {
        inner: Arc::new(Inner {
            system,
            hub: broadcast::channel(STREAM_BUFFER).0,
            started: Once::new(),
            watched: Mutex::new(Watched::default()),
            snapshot: tokio::sync::Mutex::new(None),
            streams,
            shutdown,
            routes,
        }),
    };
    api(Some(verifier)).with_state(state)
}

fn api(verifier: Option<&Verifier>) -> OpenApiRouter<SystemState> {
    let router = OpenApiRouter::new()
        .routes(routes!(system_view))
        .routes(routes!(system_stream))
        .routes(routes!(dead_letters))
        .routes(routes!(replay))
        .layer(DefaultBodyLimit::max(64 * 1024));
    match verifier {
        Some(verifier) => router.layer(middleware::from_fn_with_state(
            verifier.clone(),
            identity::require_admin,
        )),
        None => router,
    }
}

/// The description of the admin routes.
pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    api(None).into_openapi()
}

// ---- the views ----

/// The system as `GET /admin/system` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SystemView {
    /// RFC 3339.
    pub generated_at: String,
    pub bus: BusView,
    pub services: Vec<ServiceView>,
    pub queues: Vec<QueueView>,
    /// A link to a trace in the tracing UI: `{trace_id}` is replaced.
    pub trace_url_template: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BusView {
    /// `embedded`, `rabbitmq`, or `none` (this gateway has no bus).
    pub backend: String,
    /// `up` or `down`.
    pub state: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceView {
    pub name: String,
    pub caption: String,
    pub instances: Vec<InstanceView>,
    /// The gateway's routes to it ("METHOD /path").
    pub routes: Vec<String>,
    /// Requests per second over the last minute, all instances.
    pub requests_per_s: Option<f64>,
    /// Share of those answered 5xx.
    pub error_ratio: Option<f64>,
    /// 99th percentile of request duration, milliseconds (from the histogram's buckets).
    pub p99_ms: Option<f64>,
    /// The consumer groups it consumes.
    pub consumes: Vec<String>,
    /// Routing keys it was seen publishing.
    pub publishes: Vec<String>,
    /// Services whose HTTP API it takes its input from instead of a queue: the query and
    /// comments services follow the event-bus service's log (`GET /events?wait=`).
    pub reads_from: Vec<String>,
    /// Its latest failed messages (retried, dead-lettered), newest first.
    pub recent_errors: Vec<ErrorView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    pub id: String,
    pub url: String,
    /// `up`, or `late` (a heartbeat missed; it expires after 15 s).
    pub status: String,
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, the last heartbeat.
    pub last_seen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    pub group: String,
    pub caption: String,
    pub routing_keys: Vec<String>,
    /// Messages waiting.
    pub depth: Option<u64>,
    /// Delivered, not yet settled.
    pub in_flight: Option<u64>,
    pub consumers: Option<u64>,
    pub dead_letters: Option<u64>,
    /// Messages published to its routing keys per second, last minute.
    pub publish_per_s: f64,
    /// Deliveries settled per second, last minute.
    pub deliver_per_s: f64,
    pub consumed_by: Vec<String>,
    pub published_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorView {
    /// RFC 3339.
    pub at: String,
    /// `retried` or `dead_lettered`.
    pub outcome: String,
    pub group: String,
    pub routing_key: String,
    pub message_id: String,
    pub reason: Option<String>,
    pub trace_id: Option<String>,
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

// ---- what the watcher task keeps ----

/// Counts per second over the last minute.
#[derive(Debug, Clone, Default)]
struct Rate {
    buckets: VecDeque<(i64, u64)>,
}

impl Rate {
    fn add(&mut self, at_ms: i64) {
        let second = at_ms / 1000;
        match self.buckets.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => self.buckets.push_back((second, 1)),
        }
        while self.buckets.len() > 61 {
            self.buckets.pop_front();
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn per_second(&self, now_ms: i64) -> f64 {
        let since = now_ms / 1000 - 60;
        let total: u64 = self
            .buckets
            .iter()
            .filter(|(s, _)| *s > since)
            .map(|(_, n)| n)
            .sum();
        total as f64 / 60.0
    }
}

#[derive(Debug, Default)]
struct Watched {
    published: HashMap<String, Rate>,
    delivered: HashMap<String, Rate>,
    /// routing key → publishers seen.
    publishers: BTreeMap<String, BTreeSet<String>>,
    /// group → its latest errors.
    errors: HashMap<String, VecDeque<ErrorView>>,
    /// Scrapes of `/metrics`, oldest first, each: service → totals.
    scrapes: VecDeque<(Instant, BTreeMap<String, Totals>)>,
}

impl Watched {
    fn observe(&mut self, observation: &Observation) {
        match observation.outcome {
            Outcome::Published => {
                self.published
                    .entry(observation.routing_key.clone())
                    .or_default()
                    .add(observation.at_ms);
                if let Some(publisher) = &observation.publisher
                    && self.publishers.len() < 1024
                {
                    self.publishers
                        .entry(observation.routing_key.clone())
                        .or_default()
                        .insert(publisher.clone());
                }
            }
            Outcome::Delivered => {}
            Outcome::Handled | Outcome::Retried | Outcome::DeadLettered | Outcome::Requeued => {
                let Some(group) = &observation.group else {
                    return;
                };
                self.delivered
                    .entry(group.clone())
                    .or_default()
                    .add(observation.at_ms);
                if matches!(
                    observation.outcome,
                    Outcome::Retried | Outcome::DeadLettered
                ) {
                    let errors = self.errors.entry(group.clone()).or_default();
                    errors.push_front(ErrorView {
                        at: rfc3339(observation.at_ms),
                        outcome: if observation.outcome == Outcome::Retried {
                            "retried".into()
                        } else {
                            "dead_lettered".into()
                        },
                        group: group.clone(),
                        routing_key: observation.routing_key.clone(),
                        message_id: observation.message_id.clone(),
                        reason: observation.reason.clone(),
                        trace_id: observation.trace_id.clone(),
                    });
                    errors.truncate(RECENT_ERRORS);
                }
            }
        }
    }
}

impl SystemState {
    /// Starts, once, the tasks that feed the stream and the rates.
    fn start(&self) {
        self.inner.started.call_once(|| {
            if let Some(bus) = self.inner.system.bus.clone() {
                tokio::spawn(Arc::clone(&self.inner).follow_messages(bus));
            }
            if let Some(directory) = self.inner.system.directory.clone() {
                tokio::spawn(Arc::clone(&self.inner).follow_instances(directory));
                tokio::spawn(Arc::clone(&self.inner).scrape_metrics());
            }
        });
    }
}

impl Inner {
    fn deliver(&self, item: StreamItem) {
        let _ = self.hub.send(Arc::new(item));
    }

    fn observed(&self, observation: Observation) {
        if let Ok(mut watched) = self.watched.lock() {
            watched.observe(&observation);
        }
        self.deliver(StreamItem::Message(observation));
    }

    async fn follow_messages(self: Arc<Self>, bus: Arc<dyn EventBus>) {
        if bus.backend() != "rabbitmq" {
            // Every service of the embedded bus's system runs in this process.
            let mut tap = bus.tap().watch();
            loop {
                let next = tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    next = tap.recv() => next,
                };
                match next {
                    Ok(observation) => self.observed((*observation).clone()),
                    Err(RecvError::Lagged(n)) => self.deliver(StreamItem::Sampled(n)),
                    Err(RecvError::Closed) => return,
                }
            }
        }
        let mut backoff = Duration::from_millis(100);
        while !self.shutdown.is_cancelled() {
            let listening = tokio::select! {
                () = self.shutdown.cancelled() => return,
                listening = bus.listen(bus::registry::OBSERVE_TOPIC) => listening,
            };
            match listening {
                Ok(mut batches) => {
                    backoff = Duration::from_millis(100);
                    // Each process sends its batch every 100 ms: held for REORDER and
                    // sent on in time order, a message's steps from different
                    // processes arrive in the order they happened.
                    let mut pending: Vec<Observation> = Vec::new();
                    let mut tick = tokio::time::interval(Duration::from_millis(100));
                    loop {
                        let body = tokio::select! {
                            () = self.shutdown.cancelled() => return,
                            _ = tick.tick() => {
                                pending.sort_by_key(|o| o.at_ms);
                                let due = now_ms() - REORDER_MS;
                                let ready = pending.partition_point(|o| o.at_ms <= due);
                                for observation in pending.drain(..ready) {
                                    self.observed(observation);
                                }
                                continue;
                            }
                            body = batches.next() => body,
                        };
                        let Some(body) = body else { break };
                        let Ok(batch) = serde_json::from_slice::<Batch>(&body) else {
                            continue;
                        };
                        if batch.dropped > 0 {
                            self.deliver(StreamItem::Sampled(batch.dropped));
                        }
                        if pending.len() < STREAM_BUFFER * 4 {
                            pending.extend(batch.observations);
                        } else {
                            self.deliver(StreamItem::Sampled(batch.observations.len() as u64));
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "cannot listen to observations"),
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow_instances(self: Arc<Self>, directory: Arc<Directory>) {
        let mut changes = directory.changes();
        loop {
            let change = tokio::select! {
                () = self.shutdown.cancelled() => return,
                change = changes.recv() => change,
            };
            match change {
                Ok(change) => self.deliver(StreamItem::Instance(change)),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    }

    async fn scrape_metrics(self: Arc<Self>) {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<Bytes>>();
        let mut tick = tokio::time::interval(SCRAPE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(directory) = &self.system.directory else {
                return;
            };
            let urls: BTreeSet<String> = directory
                .instances()
                .into_iter()
                .map(|listed| listed.instance.url)
                .collect();
            let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
            for url in urls {
                if let Some(text) = fetch_metrics(&client, &url).await {
                    for (service, found) in parse_metrics(&text) {
                        totals.entry(service).or_default().add(&found);
                    }
                }
            }
            if let Ok(mut watched) = self.watched.lock() {
                let now = Instant::now();
                watched.scrapes.push_back((now, totals));
                while watched
                    .scrapes
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW + SCRAPE_INTERVAL)
                {
                    watched.scrapes.pop_front();
                }
            }
        }
    }

    /// The snapshot, computed at most once a second.
    async fn snapshot(&self) -> Arc<SystemView> {
        let mut cached = self.snapshot.lock().await;
        if let Some((at, view)) = cached.as_ref()
            && at.elapsed() < Duration::from_secs(1)
        {
            return view.clone();
        }
        let view = Arc::new(self.compute().await);
        *cached = Some((Instant::now(), view.clone()));
        view
    }

    async fn compute(&self) -> SystemView {
        let now = now_ms();
        let listed = self
            .system
            .directory
            .as_ref()
            .map(|d| d.instances())
            .unwrap_or_default();
        let bus = match &self.system.bus {
            None => BusView {
                backend: "none".into(),
                state: "down".into(),
                detail: Some("this gateway has no FLOTILLA_BUS_URL: no registry, no queues".into()),
            },
            Some(bus) => match bus.health().await {
                Ok(()) => BusView {
                    backend: bus.backend().into(),
                    state: "up".into(),
                    detail: None,
                },
                Err(detail) => BusView {
                    backend: bus.backend().into(),
                    state: "down".into(),
                    detail: Some(detail),
                },
            },
        };
        // Groups, their routing keys and consumers, from the registrations.
        let mut groups: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>, u64, u64)> =
            BTreeMap::new();
        let mut by_service: BTreeMap<String, Vec<&bus::registry::Listed>> = BTreeMap::new();
        for entry in &listed {
            by_service
                .entry(entry.instance.service.clone())
                .or_default()
                .push(entry);
            for consumed in &entry.instance.consumes {
                let group = groups.entry(consumed.group.clone()).or_default();
                group.0.extend(consumed.routing_keys.iter().cloned());
                group.1.insert(entry.instance.service.clone());
                group.2 += 1;
                group.3 += u64::try_from(consumed.in_flight.max(0)).unwrap_or(0);
            }
        }
        let watched = self.watched_view(now);
        let mut queues = Vec::new();
        for (group, (keys, consumers_of, consumers, in_flight)) in groups {
            let stats = match &self.system.bus {
                Some(bus) => tokio::time::timeout(Duration::from_secs(3), bus.group_stats(&group))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default(),
                None => bus::GroupStats::default(),
            };
            let published_by: BTreeSet<String> = watched
                .publishers
                .iter()
                .filter(|(key, _)| keys.iter().any(|p| bus::topic_matches(p, key)))
                .flat_map(|(_, who)| who.iter().cloned())
                .collect();
            let publish_per_s = watched
                .published
                .iter()
                .filter(|(key, _)| keys.iter().any(|p| bus::topic_matches(p, key)))
                .map(|(_, rate)| *rate)
                .sum();
            queues.push(QueueView {
                caption: QUEUE_CAPTION.into(),
                routing_keys: keys.into_iter().collect(),
                depth: stats.depth,
                in_flight: stats.in_flight.or(Some(in_flight)),
                consumers: stats.consumers.or(Some(consumers)),
                dead_letters: stats.dead_letters,
                publish_per_s,
                deliver_per_s: watched.delivered.get(&group).copied().unwrap_or(0.0),
                consumed_by: consumers_of.into_iter().collect(),
                published_by: published_by.into_iter().collect(),
                group,
            });
        }
        let mut services = Vec::new();
        let registered: BTreeSet<String> = by_service.keys().cloned().collect();
        for (name, entries) in by_service {
            let consumed: Vec<&QueueView> = queues
                .iter()
                .filter(|q| q.consumed_by.contains(&name))
                .collect();
            let consumes: Vec<String> = consumed.iter().map(|q| q.group.clone()).collect();
            let mut recent_errors: Vec<ErrorView> = consumes
                .iter()
                .flat_map(|g| watched.errors.get(g).cloned().unwrap_or_default())
                .collect();
            recent_errors.sort_by(|a, b| b.at.cmp(&a.at));
            recent_errors.truncate(RECENT_ERRORS);
            let (requests_per_s, error_ratio, p99_ms) = watched
                .http
                .get(&name)
                .copied()
                .unwrap_or((None, None, None));
            services.push(ServiceView {
                caption: caption(&name).into(),
                instances: entries
                    .iter()
                    .map(|entry| InstanceView {
                        id: entry.instance.id.clone(),
                        url: entry.instance.url.clone(),
                        status: if now - entry.last_seen_ms
                            > i64::try_from(entry.heartbeat_ms.saturating_mul(2))
                                .unwrap_or(i64::MAX)
                        {
                            "late".into()
                        } else {
                            "up".into()
                        },
                        version: entry.instance.version.clone(),
                        started_at: rfc3339(entry.instance.started_at_ms),
                        last_seen: rfc3339(entry.last_seen_ms),
                    })
                    .collect(),
                routes: self.routes.get(name.as_str()).cloned().unwrap_or_default(),
                requests_per_s,
                error_ratio,
                p99_ms,
                publishes: watched
                    .publishers
                    .iter()
                    .filter(|(_, who)| who.contains(&name))
                    .map(|(key, _)| key.clone())
                    .collect(),
                reads_from: reads_from(&name, &consumed, &registered),
                consumes,
                recent_errors,
                name,
            });
        }
        SystemView {
            generated_at: rfc3339(now),
            bus,
            services,
            queues,
            trace_url_template: self.system.trace_url_template.clone(),
        }
    }

    fn watched_view(&self, now: i64) -> WatchedView {
        let Ok(watched) = self.watched.lock() else {
            return WatchedView::default();
        };
        let mut http = BTreeMap::new();
        if let (Some((first_at, first)), Some((last_at, last))) =
            (watched.scrapes.front(), watched.scrapes.back())
        {
            let seconds = last_at.duration_since(*first_at).as_secs_f64();
            for (service, latest) in last {
                let earliest = first.get(service).cloned().unwrap_or_default();
                http.insert(service.clone(), latest.since(&earliest, seconds));
            }
        }
        WatchedView {
            published: watched
                .published
                .iter()
                .map(|(k, r)| (k.clone(), r.per_second(now)))
                .collect(),
            delivered: watched
                .delivered
                .iter()
                .map(|(k, r)| (k.clone(), r.per_second(now)))
                .collect(),
            publishers: watched.publishers.clone(),
            errors: watched.errors.clone(),
            http,
        }
    }
}

/// Requests per second, error ratio, p99 in ms.
type HttpStats = (Option<f64>, Option<f64>, Option<f64>);

#[derive(Debug, Default)]
struct WatchedView {
    published: HashMap<String, f64>,
    delivered: HashMap<String, f64>,
    publishers: BTreeMap<String, BTreeSet<String>>,
    errors: HashMap<String, VecDeque<ErrorView>>,
    http: BTreeMap<String, HttpStats>,
}

// ---- /metrics ----

/// One service's request counters as scraped: requests, 5xx, and the duration
/// histogram's cumulative buckets (upper bound in seconds → count).
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    requests: f64,
    errors: f64,
    buckets: BTreeMap<String, f64>,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (le, n) in &other.buckets {
            *self.buckets.entry(le.clone()).or_default() += n;
        }
    }

    /// (requests/s, error ratio, p99 ms) between `earlier` and `self`, `seconds` apart.
    fn since(&self, earlier: &Totals, seconds: f64) -> HttpStats {
        if seconds < 1.0 {
            return (None, None, None);
        }
        let requests = (self.requests - earlier.requests).max(0.0);
        let errors = (self.errors - earlier.errors).max(0.0);
        let rate = Some(requests / seconds);
        if requests == 0.0 {
            return (rate, Some(0.0), None);
        }
        // Buckets by bound, numerically; the count of the window is the difference.
        let mut bounds: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .filter_map(|(le, n)| {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                let before = earlier.buckets.get(le).copied().unwrap_or(0.0);
                Some((bound, (n - before).max(0.0)))
            })
            .collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = bounds.last().map_or(0.0, |b| b.1);
        let wanted = total * 0.99;
        let p99 = bounds
            .iter()
            .find(|(_, n)| *n >= wanted && total > 0.0)
            .map(|(bound, _)| *bound)
            .filter(|b| b.is_finite())
            .map(|b| b * 1000.0);
        (rate, Some(errors / requests), p99)
    }
}

async fn fetch_metrics(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<Bytes>,
    >,
    url: &str,
) -> Option<String> {
    use http_body_util::BodyExt as _;
    let uri: http::Uri = format!("{}/metrics", url.trim_end_matches('/'))
        .parse()
        .ok()?;
    let request = http::Request::get(uri)
        // A timer's request: logged at debug, as probes are.
        .header("x-flotilla-routine", "1")
        .body(http_body_util::Empty::new())
        .ok()?;
    let fetch = async {
        let response = client.request(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = http_body_util::Limited::new(response.into_body(), 8 << 20)
            .collect()
            .await
            .ok()?
            .to_bytes();
        String::from_utf8(body.to_vec()).ok()
    };
    tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .ok()
        .flatten()
}

/// `http_requests_total` and `http_request_duration_seconds_bucket` by `service`.
fn parse_metrics(text: &str) -> BTreeMap<String, Totals> {
    let mut found: BTreeMap<String, Totals> = BTreeMap::new();
    for line in text.lines() {
        let (name, rest) = match line.split_once('{') {
            Some(split) => split,
            None => continue,
        };
        if name != "http_requests_total" && name != "http_request_duration_seconds_bucket" {
            continue;
        }
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |wanted: &str| -> Option<&str> {
            labels.split("\",").find_map(|pair| {
                let (key, value) = pair.split_once("=\"")?;
                (key.trim_start_matches(',') == wanted).then(|| value.trim_end_matches('"'))
            })
        };
        let Some(service) = label("service") else {
            continue;
        };
        let totals = found.entry(service.to_owned()).or_default();
        if name == "http_requests_total" {
            totals.requests += value;
            if label("status").is_some_and(|s| s.starts_with('5')) {
                totals.errors += value;
            }
        } else if let Some(le) = label("le") {
            *totals.buckets.entry(le.to_owned()).or_default() += value;
        }
    }
    found
}

// ---- handlers ----

fn no_bus() -> Response {
    Problem::service_unavailable(
        "this gateway has no bus (FLOTILLA_BUS_URL): it cannot see queues or dead letters",
    )
    .into_response()
}

/// The refusals of every admin route (for the OpenAPI description; the admin check
/// answers them).
#[derive(utoipa::IntoResponses)]
#[expect(
    dead_code,
    reason = "describes the answers; the admin check builds them"
)]
enum AdminOnly {
    #[response(status = 401, description = "No valid Bearer token", content_type = PROBLEM_JSON)]
    Unauthenticated(Problem),
    #[response(status = 403, description = "Not an admin", content_type = PROBLEM_JSON)]
    NotAnAdmin(Problem),
}

/// The system now: services with instances and request rates, queues with depths and
/// consumers, the bus. Admin only.
#[utoipa::path(
    get, path = "/admin/system", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The system", body = SystemView),
        AdminOnly,
    )
)]
async fn system_view(State(state): State<SystemState>) -> Response {
    state.start();
    Json(state.inner.snapshot().await.as_ref().clone()).into_response()
}

/// The system live, as Server-Sent Events: `ready` (says how watching is sampled),
/// `system` (the snapshot of `GET /admin/system`) every 2 s, `message` for every
/// message published, delivered and settled (`outcome`: published, delivered, handled, retried,
/// dead_lettered, requeued; `routing_key`, `message_id`, `trace_id`, `publisher`,
/// `group`), `instance` when one comes or goes, `sampled` (`dropped`: messages this
/// watcher missed because it fell behind). Admin only; send the token in
/// `Authorization` (read the stream with `fetch`).
#[utoipa::path(
    get, path = "/admin/system/stream", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An endless event stream", content_type = "text/event-stream", body = String),
        AdminOnly,
        (status = 503, description = "Too many live streams open (in total or from this client); see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn system_stream(State(state): State<SystemState>, request: Request) -> Response {
    let slot = match state.inner.streams.open(client_ip(&request)) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    state.start();
    let receiver = state.inner.hub.subscribe();
    let mut tick = tokio::time::interval(SNAPSHOT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let notice = serde_json::json!({
        "sampling": format!(
            "every message is sent while this stream keeps up; one that falls {STREAM_BUFFER} \
             events behind skips ahead and gets 'sampled' with the count it missed — \
             watching never slows the bus"
        ),
    })
    .to_string();
    let first = futures::stream::once(async move {
        Ok::<_, Infallible>(Event::default().event("hello").data(notice))
    });
    let inner = state.inner.clone();
    let events = futures::stream::unfold(
        (receiver, tick, slot, inner),
        |(mut receiver, mut tick, slot, inner)| async move {
            let event = tokio::select! {
                _ = tick.tick() => {
                    let view = inner.snapshot().await;
                    Event::default().event("system").data(serde_json::to_string(&*view).unwrap_or_default())
                }
                item = receiver.recv() => match item {
                    Ok(item) => item_event(&item),
                    Err(RecvError::Lagged(n)) => sampled(n),
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((Ok::<_, Infallible>(event), (receiver, tick, slot, inner)))
        },
    );
    sse(first.chain(events), state.inner.shutdown.clone())
}

fn sampled(dropped: u64) -> Event {
    Event::default()
        .event("sampled")
        .data(serde_json::json!({ "dropped": dropped }).to_string())
}

fn item_event(item: &StreamItem) -> Event {
    match item {
        StreamItem::Message(observation) => Event::default()
            .event("message")
            .data(serde_json::to_string(observation).unwrap_or_default()),
        StreamItem::Instance(change) => Event::default()
            .event("instance")
            .data(serde_json::to_string(change).unwrap_or_default()),
        StreamItem::Sampled(n) => sampled(*n),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeadLetterQuery {
    /// The consumer group (a queue name on RabbitMQ): `video`, `mp3`, `notification`, …
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*$"
    )]
    group: String,
    /// At most this many, oldest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A parked message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    pub id: String,
    pub group: String,
    pub routing_key: String,
    pub attempts: u32,
    pub reason: String,
    /// RFC 3339, when known.
    pub dead_at: Option<String>,
    pub trace_id: Option<String>,
    /// The body as text (at most 16 KiB of it).
    pub body: String,
    pub body_truncated: bool,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetters {
    pub group: String,
    pub dead_letters: Vec<DeadLetterView>,
}

fn check_name(what: &str, value: &str) -> Result<(), Box<Problem>> {
    if value.is_empty() || value.len() > MAX_NAME || value.chars().any(char::is_control) {
        return Err(Box::new(Problem::bad_request(format!(
            "{what} must be 1 to {MAX_NAME} characters, without control characters"
        ))));
    }
    Ok(())
}

fn bus_failure(error: &bus::BusError) -> Response {
    match error {
        bus::BusError::Unsupported(detail) => Problem::not_found(detail.clone()).into_response(),
        other => Problem::service_unavailable(format!("the bus did not answer: {other}"))
            .with_retry_after(5)
            .into_response(),
    }
}

/// The dead letters of a consumer group, oldest first (as `flotilla bus dlq list`).
/// Admin only.
#[utoipa::path(
    get, path = "/admin/dead-letters", tag = "admin",
    security(("bearer" = [])),
    params(DeadLetterQuery),
    responses(
        (status = 200, description = "The group's dead letters", body = DeadLetters),
        (status = 400, description = "No or a bad group, or a bad limit", body = Problem, content_type = "application/problem+json"),
        AdminOnly,
        (status = 404, description = "No such consumer group", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No bus, or it did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn dead_letters(
    State(state): State<SystemState>,
    query: Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return Problem::bad_request("name the consumer group: ?group=NAME[&limit=N]")
            .into_response();
    };
    if let Err(refusal) = check_name("group", &query.group) {
        return refusal.into_response();
    }
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_DEAD_LETTERS {
        return Problem::bad_request(format!("limit must be 1 to {MAX_DEAD_LETTERS}"))
            .into_response();
    }
    let Some(bus) = &state.inner.system.bus else {
        return no_bus();
    };
    let listed = tokio::time::timeout(
        Duration::from_secs(20),
        bus.dead_letters(Some(&query.group), limit),
    )
    .await;
    let letters = match listed {
        Ok(Ok(letters)) => letters,
        Ok(Err(error)) => return bus_failure(&error),
        Err(_) => {
            return Problem::service_unavailable("the bus did not answer in time")
                .with_retry_after(5)
                .into_response();
        }
    };
    let dead_letters = letters
        .into_iter()
        .map(|letter| {
            let text = String::from_utf8_lossy(&letter.body);
            let truncated = text.len() > MAX_BODY_SHOWN;
            let mut body = text.into_owned();
            if truncated {
                let mut cut = MAX_BODY_SHOWN;
                while !body.is_char_boundary(cut) {
                    cut -= 1;
                }
                body.truncate(cut);
            }
            DeadLetterView {
                trace_id: letter
                    .headers
                    .get(bus::TRACEPARENT)
                    .and_then(|t| bus::trace::trace_id(t))
                    .map(str::to_owned),
                id: letter.id,
                group: letter.group,
                routing_key: letter.routing_key,
                attempts: letter.attempts,
                reason: letter.reason,
                dead_at: letter.dead_at_ms.map(rfc3339),
                body,
                body_truncated: truncated,
                headers: letter.headers,
            }
        })
        .collect();
    Json(DeadLetters {
        group: query.group,
        dead_letters,
    })
    .into_response()
}

/// Which dead letters to replay: `ids`, or `all`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub group: String,
    /// The message ids to replay (at most 1000).
    #[serde(default)]
    pub ids: Vec<String>,
    /// Replay every dead letter of the group.
    #[serde(default)]
    pub all: bool,
}

/// The schema of a [`ReplayRequest`]: exactly one of the two forms, so that what the
/// schema allows is what the route accepts (a derived schema could not say "ids
/// non-empty, or all true, not both").
struct ReplayBody;

impl utoipa::PartialSchema for ReplayBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::{
            ArrayBuilder, ObjectBuilder, OneOfBuilder, Type, schema::AdditionalProperties,
        };
        // A group or message id: 1 to MAX_NAME characters, no control characters.
        let name = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_NAME))
                .pattern(Some(r"^[^\x00-\x1f\x7f-\x9f]*$"))
                .description(Some(description))
        };
        let group = || name("The consumer group: `video`, `mp3`, `notification`, …");
        let ids = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("group", group())
            .property(
                "ids",
                ArrayBuilder::new()
                    .items(name("A dead letter's message id"))
                    .min_items(Some(1))
                    .max_items(Some(MAX_REPLAY_IDS))
                    .description(Some("The message ids to replay")),
            )
            .required("group")
            .required("ids")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        let all = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("group", group())
            .property(
                "all",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .enum_values(Some([true]))
                    .description(Some("Replay every dead letter of the group")),
            )
            .required("group")
            .required("all")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        OneOfBuilder::new()
            .item(ids)
            .item(all)
            .description(Some(
                "`{\"group\", \"ids\": [...]}` or `{\"group\", \"all\": true}`",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ReplayBody {}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    pub group: String,
    pub replayed: u64,
}

/// Puts dead letters back into their group's queue with a fresh attempt count (as
/// `flotilla bus dlq replay`): `{"group", "ids": [...]}` or `{"group", "all": true}`.
/// Admin only.
#[utoipa::path(
    post, path = "/admin/dead-letters/replay", tag = "admin",
    security(("bearer" = [])),
    request_body = ReplayBody,
    responses(
        (status = 200, description = "How many were replayed", body = Replayed),
        (status = 400, description = "Not a valid request: a group and either ids or all", body = Problem, content_type = "application/problem+json"),
        AdminOnly,
        (status = 404, description = "No such consumer group", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `Content-Type: application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON that is not a replay request (unknown or mistyped fields)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No bus, or it did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replay(
    State(state): State<SystemState>,
    body: Result<Json<ReplayRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => {
            let status = rejection.status();
            return Problem::new(
                status,
                format!(
                    "expected {{\"group\": NAME, \"ids\": [ID, …]}} or {{\"group\": NAME, \"all\": true}}: {}",
                    rejection.body_text()
                ),
            )
            .into_response();
        }
    };
    if let Err(refusal) = check_name("group", &request.group) {
        return refusal.into_response();
    }
    if request.all != request.ids.is_empty() {
        return Problem::bad_request("give either ids (a non-empty list) or all: true")
            .into_response();
    }
    if request.ids.len() > MAX_REPLAY_IDS {
        return Problem::bad_request(format!("at most {MAX_REPLAY_IDS} ids at once"))
            .into_response();
    }
    for id in &request.ids {
        if let Err(refusal) = check_name("each id", id) {
            return refusal.into_response();
        }
    }
    let Some(bus) = &state.inner.system.bus else {
        return no_bus();
    };
    let replayed = tokio::time::timeout(
        Duration::from_secs(60),
        bus.replay_dead_letters(Some(&request.group), &request.ids),
    )
    .await;
    match replayed {
        Ok(Ok(replayed)) => {
            tracing::info!(group = %request.group, replayed, "dead letters replayed by an admin");
            Json(Replayed {
                group: request.group,
                replayed,
            })
            .into_response()
        }
        Ok(Err(error)) => bus_failure(&error),
        Err(_) => Problem::service_unavailable("the bus did not answer in time")
            .with_retry_after(5)
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_service_with_errors_and_buckets() {
        let text = "# TYPE http_requests_total counter\n\
            http_requests_total{service=\"media\",method=\"POST\",route=\"/upload\",status=\"202\"} 8\n\
            http_requests_total{service=\"media\",method=\"GET\",route=\"/jobs\",status=\"503\"} 2\n\
            http_requests_total{service=\"auth\",method=\"POST\",route=\"/login\",status=\"200\"} 1\n\
            http_request_duration_seconds_bucket{service=\"media\",method=\"POST\",route=\"/upload\",status=\"202\",le=\"0.1\"} 5\n\
            http_request_duration_seconds_bucket{service=\"media\",method=\"POST\",route=\"/upload\",status=\"202\",le=\"+Inf\"} 8\n\
            bus_published_total{routing_key=\"video\"} 3\n";
        let found = parse_metrics(text);
        assert_eq!(found["media"].requests, 10.0);
        assert_eq!(found["media"].errors, 2.0);
        assert_eq!(found["media"].buckets["0.1"], 5.0);
        assert_eq!(found["auth"].requests, 1.0);
        let earlier = Totals::default();
        let (rate, errors, p99) = found["media"].since(&earlier, 10.0);
        assert_eq!(rate, Some(1.0));
        assert_eq!(errors, Some(0.2));
        // 99 % of 8 is over the 5 under 0.1 s: only +Inf holds it, which is no bound.
        assert_eq!(p99, None);
        let mut fast = found["media"].clone();
        fast.buckets.insert("0.1".into(), 8.0);
        assert_eq!(fast.since(&earlier, 10.0).2, Some(100.0));
    }

    #[test]
    fn rates_count_the_last_minute() {
        let mut rate = Rate::default();
        let now = 1_000_000_000;
        for i in 0..120 {
            rate.add(now - 119_000 + i * 1000);
        }
        assert!((rate.per_second(now) - 1.0).abs() < 0.02);
    }
}
