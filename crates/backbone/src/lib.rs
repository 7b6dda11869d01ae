//! What the services that keep state open at start, written once: the database pooled
//! for writers, the bus with the outbox publisher, the `db` readiness check; and the
//! blog's `POST /events` endpoint (the course's push style) over any [`PushTarget`].
//! Each service's `build()` calls these instead of repeating the sequence.

pub mod event_log;

use std::sync::Arc;

use axum::{
    Json,
    extract::{FromRef, State},
};
use bus::{EventBus, OutboxPublisher, PushError, PushTarget};
use contracts::{blog::Envelope, schema::EventEnvelope};
use platform::{Problem, ServiceContext, extract::JsonBody, health::Readiness};
use storage::{Database, PoolSettings};
use utoipa_axum::{router::OpenApiRouter, routes};

/// The database of service `name`, pooled so that writers take turns
/// ([`PoolSettings::fair_writers`]: one connection on SQLite, whose writers lock the file).
pub async fn database(context: &ServiceContext, name: &str) -> anyhow::Result<Database> {
    let url = context.database_url_for(name);
    Ok(Database::connect_with(&url, &PoolSettings::fair_writers(&url)).await?)
}

/// The bus for the service's consumers, and the publisher that relays what the service's
/// transactions write to its outbox in `db`; both stop with the service.
pub async fn outbox(
    context: &ServiceContext,
    name: &str,
    db: &Database,
) -> anyhow::Result<(Arc<dyn EventBus>, OutboxPublisher)> {
    Ok(OutboxPublisher::connect(
        name,
        db,
        &context.bus_url_or_embedded(),
        &context.tasks,
        context.shutdown.clone(),
    )
    .await?)
}

/// A readiness whose `db` check pings `db`: what every service with a database reports.
pub fn readiness(db: &Database) -> Readiness {
    let db = db.clone();
    Readiness::new().with_check("db", move || {
        let db = db.clone();
        async move { db.ping().await.map_err(|e| e.to_string()) }
    })
}

/// `POST /events` for a service whose state yields its [`PushTarget`] (its
/// [`bus::Runner`], or [`bus::IgnorePushes`] for a service that reacts to no event).
pub fn push_route<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<dyn PushTarget>: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(receive_event))
}

/// The course's push style: an event posted here is applied exactly as if the bus had
/// delivered it (same inbox, so a pushed copy and a delivered copy count once); a type
/// the service does not consume is taken and ignored.
#[utoipa::path(
    post, path = "/events", tag = "internal",
    request_body = EventEnvelope,
    responses(
        (status = 200, description = "Applied (or already applied, or of a type this service ignores)", body = Object, example = json!({})),
        (status = 400, description = "Not JSON, not an envelope, or a blog event whose data does not fit its type", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn receive_event(
    State(target): State<Arc<dyn PushTarget>>,
    JsonBody(envelope): JsonBody<Envelope>,
) -> Result<Json<serde_json::Value>, Problem> {
    match target.push_event(&envelope).await {
        Ok(()) => Ok(Json(serde_json::json!({}))),
        Err(PushError::BadRequest(detail)) => Err(Problem::bad_request(detail)),
        Err(failed @ PushError::Failed(_)) => Err(Problem::internal(&failed)),
    }
}
