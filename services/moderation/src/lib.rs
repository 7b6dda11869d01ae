//! Moderation of blog comments, as the course's moderation service: on every
//! `CommentCreated` it decides `approved` or `rejected` and emits `CommentModerated`.
//! The rule is a list of blocked words (`--blocked-words`, default `orange`): a comment
//! whose content contains one anywhere, in any letter case, is rejected.
//!
//! The decision and its event are written in one transaction together with the
//! message's inbox record, so a redelivered `CommentCreated` is not moderated twice.
//! `POST /events` accepts the course's pushed events through the same path.

pub mod events;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
    routing::post,
};
use contracts::blog::{BlogEvent, CommentCreated, CommentModerated, CommentStatus, Envelope};
use platform::{Problem, ServiceApp, ServiceContext, extract::JsonBody, health::Readiness};

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "moderation-args")]
pub struct Args {
    /// Words that get a comment rejected, comma-separated; matched anywhere in the
    /// content, ignoring letter case.
    #[arg(
        long,
        env = "FLOTILLA_BLOCKED_WORDS",
        default_value = "orange",
        value_delimiter = ','
    )]
    pub blocked_words: Vec<String>,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            blocked_words: vec!["orange".to_owned()],
        }
    }
}

pub const NAME: &str = "moderation";

/// The moderation rule.
#[derive(Debug, Clone)]
pub struct Moderator {
    /// Lower-cased, blanks removed.
    blocked: Vec<String>,
}

impl Moderator {
    pub fn new<S: AsRef<str>>(blocked_words: &[S]) -> Self {
        Self {
            blocked: blocked_words
                .iter()
                .map(|word| word.as_ref().trim().to_lowercase())
                .filter(|word| !word.is_empty())
                .collect(),
        }
    }

    pub fn decide(&self, content: &str) -> CommentStatus {
        let content = content.to_lowercase();
        if self
            .blocked
            .iter()
            .any(|word| content.contains(word.as_str()))
        {
            CommentStatus::Rejected
        } else {
            CommentStatus::Approved
        }
    }

    /// The `CommentModerated` answering `comment`.
    pub fn moderate(&self, comment: &CommentCreated) -> BlogEvent {
        BlogEvent::CommentModerated(CommentModerated {
            id: comment.id.clone(),
            post_id: comment.post_id.clone(),
            status: self.decide(&comment.content),
            content: comment.content.clone(),
        })
    }
}

/// Builds the service; `flotilla up`, `flotilla serve moderation` and tests all call this.
pub async fn build(context: &ServiceContext, args: &Args) -> anyhow::Result<ServiceApp> {
    let url = context.database_url_for(NAME);
    let db =
        storage::Database::connect_with(&url, &storage::PoolSettings::fair_writers(&url)).await?;
    let moderator = Moderator::new(&args.blocked_words);
    tracing::info!(blocked_words = ?moderator.blocked, "moderation rule");
    let (bus, publisher) = bus::OutboxPublisher::connect(
        NAME,
        &db,
        &context.bus_url_or_embedded(),
        &context.tasks,
        context.shutdown.clone(),
    )
    .await?;
    let store = bus::Store::database(&db).await?.with_outbox(publisher);
    let runner = Arc::new(bus::Runner::new(store, events::Moderation { moderator }));
    let consumer = runner
        .clone()
        .serve(bus, &context.tasks, context.shutdown.clone());
    let readiness = Readiness::new()
        .with_check("db", move || {
            let db = db.clone();
            async move { db.ping().await.map_err(|e| e.to_string()) }
        })
        .with_check("consumers", consumer.check_fn());
    let routes = Router::new()
        .route("/events", post(receive_event))
        .with_state(runner);
    Ok(ServiceApp::new(NAME, routes).with_readiness(readiness))
}

/// The course's push style: handled exactly like a delivery from the bus.
async fn receive_event(
    State(runner): State<Arc<bus::Runner<events::Moderation>>>,
    JsonBody(envelope): JsonBody<Envelope>,
) -> Result<Json<serde_json::Value>, ApiError> {
    runner.push_blog_event(&envelope).await?;
    Ok(Json(serde_json::json!({})))
}

/// What the service's one route can fail with once its input is parsed, turned into
/// problem+json in one place.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error(transparent)]
    Push(#[from] bus::PushError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Push(bus::PushError::BadRequest(detail)) => Problem::bad_request(detail),
            other => Problem::internal(&other),
        }
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_words_reject_in_any_case_anywhere() {
        let moderator = Moderator::default_rule();
        assert_eq!(moderator.decide("I like apples"), CommentStatus::Approved);
        assert_eq!(moderator.decide("Orange"), CommentStatus::Rejected);
        assert_eq!(moderator.decide("an ORANGE cat"), CommentStatus::Rejected);
        assert_eq!(moderator.decide("blood-oranges!"), CommentStatus::Rejected);
    }

    #[test]
    fn the_list_is_configurable() {
        let moderator = Moderator::new(&[" Spam ", "", "Ärger"]);
        assert_eq!(moderator.decide("orange"), CommentStatus::Approved);
        assert_eq!(moderator.decide("buy SPAM now"), CommentStatus::Rejected);
        assert_eq!(moderator.decide("viel ärger"), CommentStatus::Rejected);
        let nothing = Moderator::new::<&str>(&[]);
        assert_eq!(nothing.decide("orange"), CommentStatus::Approved);
    }

    impl Moderator {
        fn default_rule() -> Self {
            Moderator::new(&Args::default().blocked_words)
        }
    }
}
