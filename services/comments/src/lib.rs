//! Comments of blog posts, as the course's comments service: `POST /posts/{id}/comments`
//! stores a `pending` comment and its `CommentCreated` in one transaction (the outbox)
//! and answers 201 with the post's comments; `GET /posts/{id}/comments` lists them.
//! Consuming `CommentModerated`, it stores the moderator's status and emits
//! `CommentUpdated`, again in one transaction, with the message recorded in its inbox
//! so a redelivery changes nothing.
//!
//! A comment on an unknown post is a 404. The service learns posts from `PostCreated`
//! events into its own table instead of asking the posts service, so it keeps working
//! while posts is down. The price is a short window after a post is created in which
//! the event has not arrived yet; a request in that window waits for the event (woken
//! as soon as it is applied, and re-checking the database for events applied by another
//! replica) for at most `--comments-post-wait`, and only then answers 404.

pub mod events;
pub mod store;

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{FromRef, Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use contracts::blog::NewComment;
use platform::{Problem, ServiceApp, ServiceContext, extract::JsonBody};
use storage::StorageError;
use tokio::sync::Notify;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use store::{Comment, CommentError, CommentStore};

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "comments-args")]
pub struct Args {
    /// How long a comment on a post this service has not heard of yet waits for the
    /// post's `PostCreated` before the answer is 404.
    #[arg(long, env = "FLOTILLA_COMMENTS_POST_WAIT", default_value = "10s",
          value_parser = platform::config::parse_duration)]
    pub comments_post_wait: Duration,
}

platform::default_from_flags!(Args);

pub const NAME: &str = "comments";

/// How often a waiting request looks at the database again, for posts learned by
/// another replica (whose wake-up does not reach this process).
const RECHECK_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct AppState {
    store: CommentStore,
    events: Arc<bus::Runner<events::CommentEvents>>,
    /// Woken whenever this process learns a post.
    post_learned: Arc<Notify>,
    post_wait: Duration,
}

/// Builds the service; `flotilla up`, `flotilla serve comments` and tests all call this.
pub async fn build(context: &ServiceContext, args: &Args) -> anyhow::Result<ServiceApp> {
    let db = backbone::database(context, NAME).await?;
    db.migrate(NAME, store::MIGRATIONS).await?;
    let (bus, publisher) = backbone::outbox(context, NAME, &db).await?;
    let store = CommentStore::new(db.clone(), publisher.clone());
    let handler = events::CommentEvents {
        store: store.clone(),
        post_learned: Arc::new(Notify::new()),
    };
    let post_learned = handler.post_learned.clone();
    let events = Arc::new(bus::Runner::new(
        bus::Store::database(&db).await?.with_outbox(publisher),
        handler,
    ));
    let consumer = events
        .clone()
        .serve(bus, &context.tasks, context.shutdown.clone());
    let state = AppState {
        store,
        events,
        post_learned,
        post_wait: args.comments_post_wait,
    };
    let readiness = backbone::readiness(&db).with_check("consumers", consumer.check_fn());
    let (routes, _) = api().with_state(state).split_for_parts();
    Ok(ServiceApp::new(NAME, routes).with_readiness(readiness))
}

/// The routes with their descriptions (one source for the router and the OpenAPI).
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_comments, create_comment))
        .merge(backbone::push_route())
}

/// The OpenAPI description of the service's routes, from the handlers themselves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// Comment on a post. The comment starts `pending`; moderation decides (a comment
/// containing "orange" is rejected) and `GET /posts` shows the outcome.
#[utoipa::path(
    post, path = "/posts/{id}/comments", tag = "blog",
    params(("id" = String, Path, description = "The post's id")),
    request_body = NewComment,
    responses(
        (status = 201, description = "Every comment of the post, the new one included", body = Vec<Comment>),
        (status = 400, description = "Not JSON, or a content that is missing, not a string, over 10,000 characters, without a visible character or with a control character", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such post (after waiting `FLOTILLA_COMMENTS_POST_WAIT` for it to arrive)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 1 MiB", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_comment(
    State(state): State<AppState>,
    Path(post_id): Path<String>,
    JsonBody(new): JsonBody<NewComment>,
) -> Result<(StatusCode, Json<Vec<Comment>>), ApiError> {
    wait_for_post(&state, &post_id).await?;
    let comments = state.store.create(&post_id, new.content).await?;
    Ok((StatusCode::CREATED, Json(comments)))
}

/// The comments of a post, oldest first, with their moderation status.
#[utoipa::path(
    get, path = "/posts/{id}/comments", tag = "blog",
    params(("id" = String, Path, description = "The post's id")),
    responses(
        (status = 200, description = "The comments", body = Vec<Comment>),
        (status = 404, description = "No such post (after waiting `FLOTILLA_COMMENTS_POST_WAIT` for it to arrive)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_comments(
    State(state): State<AppState>,
    Path(post_id): Path<String>,
) -> Result<Json<Vec<Comment>>, ApiError> {
    wait_for_post(&state, &post_id).await?;
    Ok(Json(state.store.list(&post_id).await?))
}

/// Returns once `post_id` is known, or 404 after the configured wait.
async fn wait_for_post(state: &AppState, post_id: &str) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + state.post_wait;
    loop {
        // Registered before the check, so a post learned in between still wakes us.
        let learned = state.post_learned.notified();
        tokio::pin!(learned);
        learned.as_mut().enable();
        if state.store.post_is_known(post_id).await? {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(CommentError::UnknownPost(post_id.to_owned()).into());
        }
        let _ = tokio::time::timeout((deadline - now).min(RECHECK_INTERVAL), learned).await;
    }
}

/// Everything a route of this service can fail with once its input is parsed (the
/// extractors refuse bad input themselves), turned into problem+json in one place.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error(transparent)]
    Comment(#[from] CommentError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<ApiError> for Problem {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::Comment(CommentError::UnknownPost(id)) => {
                Problem::not_found(format!("there is no post {id}"))
            }
            other => Problem::internal(&other),
        }
    }
}

impl FromRef<AppState> for Arc<dyn bus::PushTarget> {
    fn from_ref(state: &AppState) -> Self {
        state.events.clone()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}
