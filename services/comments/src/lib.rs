//! Comments of blog posts, as the course's comments service: `POST /posts/{id}/comments`
//! stores a `pending` comment and its `CommentCreated` in one transaction (the outbox)
//! and answers 201 with the post's comments; `GET /posts/{id}/comments` lists them.
//! Consuming `CommentModerated`, it stores the moderator's status and emits
//! `CommentUpdated`, again in one transaction, with the message recorded in its inbox
//! so a redelivery changes nothing.
//!
//! A comment on an unknown post is a 404. The service learns posts from `PostCreated`
//! events into its own table instead of asking the posts service, so it keeps working
//! while posts is down. It reads them from the event-bus service's log, as the query
//! service does (`GET /events?wait=`, answered as soon as an event is appended; a page
//! learned in one write with the service's cursor into the log, and ready only once
//! caught up), so a post costs the bus no delivery of its own; without a log (`serve
//! comments` with no `FLOTILLA_EVENT_BUS_URL`) its consumer group takes `PostCreated`
//! from the bus. The price is a short window after a post is created in which the event
//! has not arrived yet; a request in that window waits for the event (woken as soon as
//! it is learned, and re-checking the database for posts learned by another replica)
//! for at most `--comments-post-wait`, and only then answers 404.

pub mod events;
pub mod store;

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

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

pub use backbone::event_log::EventLogClient;
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

/// Builds the service with no event log to follow (posts are learned from the bus).
pub async fn build(context: &ServiceContext, args: &Args) -> anyhow::Result<ServiceApp> {
    build_with_event_log(context, args, None).await
}

/// Builds the service; `flotilla up` hands it the event-bus router in-process, `flotilla
/// serve comments` an HTTP client for `FLOTILLA_EVENT_BUS_URL`.
pub async fn build_with_event_log(
    context: &ServiceContext,
    args: &Args,
    event_log: Option<EventLogClient>,
) -> anyhow::Result<ServiceApp> {
    let db = backbone::database(context, NAME).await?;
    db.migrate(NAME, store::MIGRATIONS).await?;
    let (bus, publisher) = backbone::outbox(context, NAME, &db).await?;
    let store = CommentStore::new(db.clone(), publisher.clone());
    let handler = events::CommentEvents {
        store: store.clone(),
        post_learned: Arc::new(Notify::new()),
        posts_from_log: event_log.is_some(),
    };
    let post_learned = handler.post_learned.clone();
    let events = Arc::new(bus::Runner::new(
        bus::Store::database(&db).await?.with_outbox(publisher),
        handler,
    ));
    let consumer = events
        .clone()
        .serve(bus, &context.tasks, context.shutdown.clone());
    let caught_up = Arc::new(AtomicBool::new(event_log.is_none()));
    let (caught_up_flag, shutdown) = (caught_up.clone(), context.shutdown.clone());
    if let Some(log) = event_log {
        // Learns the posts the log has beyond the store's cursor (ready once it has),
        // then follows it, waking the requests that wait for a post just created.
        let (store, post_learned) = (store.clone(), post_learned.clone());
        context.tasks.spawn(async move {
            backbone::event_log::follow(NAME, caught_up_flag, shutdown, |wait| {
                let (store, log, post_learned) = (&store, &log, &post_learned);
                async move {
                    let learned = learn_next_page(store, log, wait).await?;
                    if learned.is_some_and(|posts| posts > 0) {
                        post_learned.notify_waiters();
                    }
                    Ok(learned)
                }
            })
            .await;
        });
    }
    let state = AppState {
        store,
        events,
        post_learned,
        post_wait: args.comments_post_wait,
    };
    let readiness = backbone::readiness(&db)
        .with_check("consumers", consumer.check_fn())
        .with_check("event-log", backbone::event_log::caught_up_check(caught_up));
    let (routes, _) = api().with_state(state).split_for_parts();
    Ok(ServiceApp::new(NAME, routes).with_readiness(readiness))
}

/// Learns the posts of the page of the log after the store's cursor, waiting up to
/// `wait` seconds at the end of the log; `None` when the page was empty, else how many
/// posts it held. Each is learned in a `message` span of this service's group, as a
/// delivery of it would be, so a post's trace shows it.
async fn learn_next_page(
    store: &CommentStore,
    log: &EventLogClient,
    wait: u64,
) -> anyhow::Result<Option<usize>> {
    let cursor = store.log_cursor().await?;
    let Some(page) = log
        .take(
            cursor,
            backbone::event_log::FOLLOW_PAGE,
            wait,
            events::GROUP,
            |event_type| event_type == contracts::blog::POST_CREATED,
        )
        .await?
    else {
        return Ok(None);
    };
    let posts: Vec<&str> = page
        .events
        .iter()
        .filter_map(|event| match event {
            contracts::blog::BlogEvent::PostCreated(post) => Some(post.id.as_str()),
            _ => None,
        })
        .collect();
    store.learn_from_log(&posts, page.last_seq).await?;
    Ok(Some(posts.len()))
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
