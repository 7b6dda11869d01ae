//! The blog's event bus facade and its durable event log.
//!
//! The course's event bus is an in-memory array that `POST /events` appends to and
//! forwards to every service. Here the bus is the real, durable one (`crates/bus`), and
//! this service keeps the course's two routes on top of it:
//!
//! * `POST /events` with `{"type", "data"}` publishes the event on the bus (routing key
//!   `blog.<type>`) and answers `{"status": "OK"}` once it is durable; every service
//!   subscribed to that type receives it. A body is at most [`MAX_EVENT_BYTES`] (413);
//!   an event of one of the blog's types is checked as the services check their own
//!   input ([`contracts::blog::Envelope::validated`], 400). This port stays open, as the
//!   course's bus is, for the services inside the cluster; the gateway lets only admins
//!   reach it.
//! * `GET /events` answers the ordered log of blog events, which this service builds by
//!   consuming `blog.#` as its own consumer group, in a causally valid order (see
//!   [`log`]). It answers one page: `?after=SEQ&limit=N`, at most [`MAX_PAGE_EVENTS`]
//!   events (the default) and about [`PAGE_BYTES`] characters of event data, with a `Link:
//!   rel="next"` header while more follow, so no answer grows with the log. The query
//!   service rebuilds its view by following the pages. `&wait=S` (up to [`MAX_WAIT`])
//!   makes a read at the end of the log wait until an event is appended, S seconds at
//!   most, instead of answering an empty page at once: a reader tails the log without
//!   polling it.

pub mod log;

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{DefaultBodyLimit, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use contracts::blog::{self, CheckedEvent, Envelope};
use contracts::schema::EventEnvelope;
use platform::{
    Problem, ServiceApp, ServiceContext,
    extract::{JsonBody, Query},
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use log::{Arrival, EventLog, LogPage, LoggedEvent, Recorded};

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "event-bus-args")]
pub struct Args {}

pub const NAME: &str = "event-bus";

/// The largest `POST /events` body: a blog event of 10,000 four-byte characters with
/// room to spare. Larger bodies are refused with 413 before they are read whole.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Events in one page of `GET /events`: the default and the largest `limit`.
pub const MAX_PAGE_EVENTS: u32 = 1_000;

/// Event data in one page of `GET /events`: a page ends after the event whose data
/// reaches this many characters (so it holds at least one event however large; events
/// published through `POST /events` are at most [`MAX_EVENT_BYTES`]).
pub const PAGE_BYTES: usize = 1024 * 1024;

/// The longest `?wait=` of `GET /events`: below the 30 s every server and the gateway
/// give a request.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// How often a read waiting at the end of the log looks again, for events appended by
/// another instance of this service (whose commits do not wake this one's readers).
const WAIT_RECHECK: Duration = Duration::from_secs(1);

/// The longest message id the bus's inbox tables keep.
const MAX_MESSAGE_ID: usize = 64;

/// The consumer group that feeds the log.
pub const GROUP: &str = "event-bus";

#[derive(Debug, Clone)]
struct AppState {
    log: EventLog,
    bus: Arc<dyn bus::EventBus>,
    /// Ends the waits of `GET /events?wait=` when the service stops.
    shutdown: tokio_util::sync::CancellationToken,
}

/// Builds the service; `flotilla up`, `flotilla serve event-bus` and tests all call this.
pub async fn build(context: &ServiceContext, _args: &Args) -> anyhow::Result<ServiceApp> {
    let db = backbone::database(context, NAME).await?;
    db.migrate(NAME, log::MIGRATIONS).await?;
    let log = EventLog::new(db.clone());
    let bus = bus::connect(
        &context.bus_url_or_embedded(),
        bus::BusOptions::for_service(NAME),
    )
    .await?;
    let runner = bus::Runner::new(
        bus::Store::database(&db).await?,
        LogEvents { log: log.clone() },
    );
    let consumer = Arc::new(runner).serve(bus.clone(), &context.tasks, context.shutdown.clone());
    let readiness = backbone::readiness(&db).with_check("consumers", consumer.check_fn());
    let state = AppState {
        log,
        bus,
        shutdown: context.shutdown.clone(),
    };
    let (routes, _) = api().with_state(state).split_for_parts();
    Ok(ServiceApp::new(NAME, routes).with_readiness(readiness))
}

/// The routes with their descriptions (one source for the router and the OpenAPI).
fn api() -> OpenApiRouter<AppState> {
    let (schemas, paths, methods) = routes!(read_events, publish_event);
    OpenApiRouter::new().routes((
        schemas,
        paths,
        methods.layer(DefaultBodyLimit::max(MAX_EVENT_BYTES)),
    ))
}

/// The OpenAPI description of the service's routes, from the handlers themselves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// What the blog's events mean here: an entry of the log. The appends are serialised
/// in the database (see [`log`]), so the runner's several deliveries in flight only
/// overlap their acknowledgements. The log keys entries by message id besides the
/// runner's inbox.
#[derive(Debug, Clone)]
pub struct LogEvents {
    pub log: EventLog,
}

impl bus::Handler for LogEvents {
    type Event = Envelope;
    type Error = bus::HandlerError;

    fn subscription(&self) -> bus::Subscription {
        bus::Subscription::new(GROUP, blog::ALL_EVENTS).with_prefetch(128)
    }

    fn decode(&self, message: &bus::Message) -> Result<Envelope, String> {
        bus::decode_json(message)
    }

    async fn apply(
        &self,
        tx: &mut bus::Tx,
        envelope: &Envelope,
        delivered: &bus::Delivered,
    ) -> Result<Vec<bus::Message>, bus::HandlerError> {
        let mut last = self.log.database().statements();
        let caused = self
            .apply_with_last(tx, &mut last, envelope, delivered)
            .await?;
        last.execute(tx).await?;
        Ok(caused)
    }

    async fn apply_with_last(
        &self,
        tx: &mut bus::Tx,
        last: &mut bus::Statements,
        envelope: &Envelope,
        delivered: &bus::Delivered,
    ) -> Result<Vec<bus::Message>, bus::HandlerError> {
        let recorded = self
            .log
            .record(tx, last, arrival(envelope, delivered))
            .await?;
        trace(&delivered.message_id, recorded);
        Ok(Vec::new())
    }

    /// Appends are serial (the lock row), so the deliveries that queue up meanwhile are
    /// recorded together: one read and one request for all of them.
    fn batched(&self) -> bool {
        true
    }

    async fn apply_batch(
        &self,
        tx: &mut bus::Tx,
        last: &mut bus::Statements,
        events: &[(&Envelope, &bus::Delivered)],
    ) -> Result<Vec<Vec<bus::Message>>, bus::HandlerError> {
        let batch: Vec<Arrival<'_>> = events
            .iter()
            .map(|(envelope, delivered)| arrival(envelope, delivered))
            .collect();
        let recorded = self.log.record_batch(tx, last, &batch).await?;
        for (event, recorded) in batch.iter().zip(recorded) {
            trace(event.message_id, recorded);
        }
        Ok(vec![Vec::new(); events.len()])
    }

    // Once per event applied for the first time: readers waiting at the end of the log
    // read again (an event that was parked wakes them too; they find nothing new).
    async fn after_commit(&self, _event: Envelope) {
        self.log.committed_appends();
    }
}

/// A delivered event as the log keeps it: with its message's id and trace context.
fn arrival<'a>(envelope: &'a Envelope, delivered: &'a bus::Delivered) -> Arrival<'a> {
    Arrival::new(&delivered.message_id, envelope).in_trace(delivered.traceparent.as_deref())
}

fn trace(message: &str, recorded: Recorded) {
    match recorded {
        Recorded::Parked => {
            tracing::debug!(%message, "event parked until its cause is in the log");
        }
        Recorded::Appended { released } if released > 0 => {
            tracing::debug!(%message, released, "parked events released");
        }
        Recorded::Appended { .. } | Recorded::Duplicate => {}
    }
}

/// `?after=SEQ&limit=N&wait=S`: the events after sequence number SEQ, at most N of
/// them, waiting up to S seconds for one if there are none yet.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Only events after this sequence number (0, the default, is the start).
    after: Option<i64>,
    /// At most this many events (1 to 1,000; 1,000 by default). A page also stops at
    /// about 1 MiB of event data.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// When no event follows `after` yet: wait up to this many seconds (0 to 20; 0, the
    /// default, answers at once) and answer as soon as one is appended — an empty page
    /// only when none was. Tails the log without polling it.
    #[param(minimum = 0, maximum = 20)]
    wait: Option<u64>,
}

/// The blog's event log, in order, in pages (`Link: rel="next"` when more follow).
#[utoipa::path(
    get, path = "/events", tag = "blog",
    params(Page),
    responses(
        (status = 200, description = "Events in log order", body = Vec<LoggedEvent>,
            headers(("Link" = String, description = "`</events?after=SEQ&limit=N>; rel=\"next\"` when more events follow"))),
        (status = 400, description = "`limit` outside 1 to 1,000, `wait` above 20, or a parameter that is not a number", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn read_events(
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let limit = page.limit.unwrap_or(MAX_PAGE_EVENTS);
    if !(1..=MAX_PAGE_EVENTS).contains(&limit) {
        return Err(ApiError::Limit);
    }
    let wait = Duration::from_secs(page.wait.unwrap_or(0));
    if wait > MAX_WAIT {
        return Err(ApiError::Wait);
    }
    let after = page.after.unwrap_or(0);
    let page = read_or_wait(&state, after, limit, wait).await?;
    let next = page
        .more
        .then(|| page.events.last().map(|event| event.seq))
        .flatten();
    let mut response = Json(page.events).into_response();
    if let Some(next) = next
        && let Ok(link) = HeaderValue::from_str(&format!(
            "</events?after={next}&limit={limit}>; rel=\"next\""
        ))
    {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// The page after `after`; if it is empty, the first non-empty one within `wait` (woken
/// by this process's appends, and looking again every [`WAIT_RECHECK`] for other
/// instances'), else the empty one.
async fn read_or_wait(
    state: &AppState,
    after: i64,
    limit: u32,
    wait: Duration,
) -> Result<LogPage, ApiError> {
    // Subscribed before the read: an append committed after it is seen as a change.
    let mut appends = state.log.appends();
    let mut page = state.log.read_page(after, limit, PAGE_BYTES).await?;
    let deadline = tokio::time::Instant::now() + wait;
    while page.events.is_empty() && tokio::time::Instant::now() < deadline {
        let recheck = (tokio::time::Instant::now() + WAIT_RECHECK).min(deadline);
        tokio::select! {
            changed = appends.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(recheck) => {}
            () = state.shutdown.cancelled() => break,
        }
        page = state.log.read_page(after, limit, PAGE_BYTES).await?;
    }
    Ok(page)
}

/// Publish an event on the bus (the course's event bus): it is logged and delivered to
/// every service that subscribes to its type.
#[utoipa::path(
    post, path = "/events", tag = "blog",
    request_body = EventEnvelope,
    responses(
        (status = 200, description = "Published", body = Object, example = json!({"status": "OK"})),
        (status = 400, description = "Not a `{\"type\", \"data\"}` envelope, an invalid type name, or a blog event whose data does not fit its type", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The event is larger than 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The bus did not take the event", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn publish_event(
    State(state): State<AppState>,
    JsonBody(CheckedEvent { envelope, event }): JsonBody<CheckedEvent>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if event.is_none() {
        // As the course's bus: carried to whoever subscribes, ignored by the blog.
        tracing::info!(event_type = %envelope.event_type, "event of a type the blog does not know published");
    }
    let body = serde_json::to_vec(&envelope)?;
    let mut message = bus::Message::new(blog::routing_key(&envelope.event_type), body);
    // A known event keeps the id every other copy of it has, so consumers that already
    // saw it (from its service's outbox) recognise it; others get a fresh one.
    // (Unless the id is longer than inboxes store: then it is only deduplicated by
    // content, as every consumer's effects are keyed by the post or comment id.)
    if let Some(event) = event
        && event.message_id().len() <= MAX_MESSAGE_ID
    {
        message = message.with_id(event.message_id());
    }
    state.bus.publish(message).await?;
    Ok(Json(serde_json::json!({"status": "OK"})))
}

/// Everything a route of this service can fail with once its input is parsed (the
/// extractors refuse bad input themselves), turned into problem+json in one place.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("'limit' must be 1 to {MAX_PAGE_EVENTS}")]
    Limit,
    #[error("'wait' must be 0 to {} seconds", MAX_WAIT.as_secs())]
    Wait,
    #[error(transparent)]
    Log(#[from] storage::StorageError),
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    #[error("the bus did not take the event: {0}")]
    Bus(#[from] bus::BusError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Limit | ApiError::Wait => Problem::bad_request(self.to_string()),
            ApiError::Bus(_) => Problem::service_unavailable(self.to_string()),
            other => Problem::internal(&other),
        }
        .into_response()
    }
}
