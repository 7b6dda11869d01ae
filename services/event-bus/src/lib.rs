//! The blog's event bus facade and its durable event log.
//!
//! The course's event bus is an in-memory array that `POST /events` appends to and
//! forwards to every service. Here the bus is the real, durable one (`crates/bus`), and
//! this service keeps the course's two routes on top of it:
//!
//! * `POST /events` with `{"type", "data"}` publishes the event on the bus (routing key
//!   `blog.<type>`) and answers `{"status": "OK"}` once it is durable; every service
//!   subscribed to that type receives it.
//! * `GET /events` answers the ordered log of every blog event (`?after=SEQ&limit=N`
//!   to page), which this service builds by consuming `blog.#` as its own consumer
//!   group, in a causally valid order (see [`log`]). The query service rebuilds its view
//!   from it.

pub mod log;

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Query, State},
    routing::get,
};
use contracts::blog::{self, Envelope};
use platform::{Problem, ServiceApp, ServiceContext, health::Readiness};
use serde::Deserialize;

pub use log::{EventLog, LoggedEvent, Recorded};

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "event-bus-args")]
pub struct Args {}

pub const NAME: &str = "event-bus";

/// The longest message id the bus's inbox tables keep.
const MAX_MESSAGE_ID: usize = 64;

/// Deliveries handled at once by the log's consumer.
const CONSUMER_CONCURRENCY: usize = 8;

/// The consumer group that feeds the log.
pub const GROUP: &str = "event-bus";

#[derive(Debug, Clone)]
struct AppState {
    log: EventLog,
    bus: Arc<dyn bus::EventBus>,
}

/// Builds the service; `flotilla up`, `flotilla serve event-bus` and tests all call this.
pub async fn build(context: &ServiceContext, _args: &Args) -> anyhow::Result<ServiceApp> {
    let url = context.database_url_for(NAME);
    let db =
        storage::Database::connect_with(&url, &storage::PoolSettings::fair_writers(&url)).await?;
    db.migrate(NAME, log::MIGRATIONS).await?;
    let log = EventLog::new(db.clone());
    let bus = bus::connect(&context.bus_url_or_embedded(), bus::BusOptions::default()).await?;
    start_log_consumer(context, bus.clone(), log.clone());
    let readiness = Readiness::new().with_check("db", move || {
        let db = db.clone();
        async move { db.ping().await.map_err(|e| e.to_string()) }
    });
    let routes = Router::new()
        .route("/events", get(read_events).post(publish_event))
        .with_state(AppState { log, bus });
    Ok(ServiceApp::new(NAME, routes).with_readiness(readiness))
}

/// Several deliveries in flight, so that acknowledgements overlap; the appends
/// themselves are serialised in the database (see [`log`]).
fn start_log_consumer(context: &ServiceContext, bus: Arc<dyn bus::EventBus>, log: EventLog) {
    let subscription = bus::Subscription::new(GROUP, blog::ALL_EVENTS).with_prefetch(128);
    let consumer = bus::Consumer::new(bus, subscription)
        .concurrency(CONSUMER_CONCURRENCY)
        .run(context.shutdown.clone(), move |message| {
            let log = log.clone();
            async move { append(&log, &message).await }
        });
    context.tasks.spawn(async move {
        if let Err(error) = consumer.await {
            tracing::error!(%error, "the event log consumer stopped");
        }
    });
}

async fn append(log: &EventLog, message: &bus::Message) -> Result<(), bus::Nack> {
    let envelope: Envelope = message
        .decode()
        .map_err(|e| bus::Nack::Reject(format!("not an event envelope: {e}")))?;
    let retry = |e: &dyn std::fmt::Display| bus::Nack::Retry(e.to_string());
    let mut tx = log.database().begin().await.map_err(|e| retry(&e))?;
    let recorded = log
        .record(&mut tx, &message.id, &envelope)
        .await
        .map_err(|e| retry(&e))?;
    tx.commit().await.map_err(|e| retry(&e))?;
    match recorded {
        Recorded::Parked => tracing::debug!(
            message = %message.id,
            "event parked until its cause is in the log"
        ),
        Recorded::Appended { released } if released > 0 => {
            tracing::debug!(message = %message.id, released, "parked events released")
        }
        Recorded::Appended { .. } | Recorded::Duplicate => {}
    }
    Ok(())
}

/// `?after=SEQ&limit=N`: events with a sequence number above SEQ, at most N.
#[derive(Debug, Deserialize)]
struct Page {
    after: Option<i64>,
    limit: Option<u32>,
}

async fn read_events(
    State(state): State<AppState>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<LoggedEvent>>, Problem> {
    let Query(page) = page.map_err(|e| Problem::bad_request(e.body_text()))?;
    let events = state
        .log
        .read(page.after.unwrap_or(0), page.limit)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(Json(events))
}

async fn publish_event(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Problem> {
    let envelope: Envelope = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("expected {{\"type\", \"data\"}}: {e}")))?;
    if !blog::is_valid_event_type(&envelope.event_type) {
        return Err(Problem::bad_request(
            "'type' must be 1 to 100 characters without '.', '*', '#' or blanks",
        ));
    }
    let body = serde_json::to_vec(&envelope).map_err(|e| Problem::internal(&e))?;
    let mut message = bus::Message::new(blog::routing_key(&envelope.event_type), body);
    // A known event keeps the id every other copy of it has, so consumers that already
    // saw it (from its service's outbox) recognise it; others get a fresh one.
    match envelope.blog_event() {
        // (Unless the id is longer than inboxes store: then it is only deduplicated by
        // content, as every consumer's effects are keyed by the post or comment id.)
        Ok(Some(event)) if event.message_id().len() <= MAX_MESSAGE_ID => {
            message = message.with_id(event.message_id());
        }
        Ok(Some(_) | None) => {}
        Err(e) => {
            return Err(Problem::bad_request(format!(
                "invalid data for {}: {e}",
                envelope.event_type
            )));
        }
    }
    state.bus.publish(message).await.map_err(|e| {
        Problem::service_unavailable(format!("the bus did not take the event: {e}"))
    })?;
    Ok(Json(serde_json::json!({"status": "OK"})))
}
