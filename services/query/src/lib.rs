//! The blog's read model, as the course's query service: `GET /posts` answers
//! `{"<id>": {"id", "title", "comments": [{"id", "content", "status"}]}}`, built only
//! from events — `PostCreated`, `CommentCreated`, `CommentUpdated` read from the
//! event-bus service's durable log, or pushed to `POST /events`.
//!
//! The view is stored (it survives restarts) and follows the log: the store keeps a
//! cursor into it, and a follower reads `GET /events?after=CURSOR` until the end (the
//! service is ready only once caught up), then `GET /events?after=CURSOR&wait=15`, which
//! the event-bus service answers as soon as an event is appended. Each page is folded
//! into the view in one write with the cursor moved to its end; every change the fold
//! makes can be made twice without effect, so a page folded again after a crash changes
//! nothing. An empty store — a new instance, a deleted file, `flotilla query rebuild` —
//! has cursor 0 and so replays the whole log. The log is in causal order (a comment
//! after its post), so the view never sees an effect before its cause.
//!
//! Without a log (`serve query` with no `FLOTILLA_EVENT_BUS_URL`) the service consumes
//! the events from the bus as group `query` instead, through the handler runner's inbox,
//! and its view cannot be rebuilt.
//!
//! `GET /posts?limit=N&after=ID` pages through posts in creation order; without
//! parameters the whole map is returned, as the course's client expects, rendered a
//! page of posts at a time into a streamed body, so no request holds the whole view.
//! A view whose rendering is small (at most [`KEPT_RENDERING_BYTES`]) is kept and reused
//! while the view has not changed; a larger one is streamed every time.

pub mod store;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{FromRef, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use contracts::blog::{self, BlogEvent};
use futures::StreamExt as _;
use platform::{Problem, ServiceApp, ServiceContext, extract::Query};
use serde::Deserialize;
use store::ViewPost;
use tokio::sync::Mutex;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use backbone::event_log::{self, EventLogClient, EventLogError, EventLogService};
pub use store::{View, ViewStore};

/// Settings of the service: none of its own (`FLOTILLA_EVENT_BUS_URL`, where the log is,
/// is `serve`'s).
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "query-args")]
pub struct Args {}

pub const NAME: &str = "query";

/// The consumer group of the view.
pub const GROUP: &str = "query";

/// Posts rendered per chunk of a streamed `GET /posts`.
const POSTS_PER_CHUNK: u32 = 100;

/// The largest full rendering of `GET /posts` kept in memory for reuse.
pub const KEPT_RENDERING_BYTES: usize = 2 * 1024 * 1024;

/// What `GET /posts/changes` streams: an event the view just applied, or `Resync` when
/// the view changed in a way not told event by event (a catch-up from the log).
#[derive(Debug, Clone)]
pub enum Change {
    Applied(Arc<BlogEvent>),
    Resync,
}

/// Changes a stream may fall behind by before it is told to resync.
const LIVE_BUFFER: usize = 256;
/// A comment line on an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

type Changes = tokio::sync::broadcast::Sender<Change>;

#[derive(Debug, Clone)]
struct AppState {
    store: ViewStore,
    events: Arc<bus::Runner<ViewEvents>>,
    changes: Changes,
    shutdown: tokio_util::sync::CancellationToken,
    /// The last full rendering of `GET /posts` and the view version it shows, if it
    /// was at most [`KEPT_RENDERING_BYTES`].
    rendered: Arc<Mutex<Option<(i64, Bytes)>>>,
}

/// Builds the service without access to the event log (it then cannot rebuild).
pub async fn build(context: &ServiceContext, args: &Args) -> anyhow::Result<ServiceApp> {
    build_with_event_log(context, args, None).await
}

/// Builds the service; `flotilla up` passes the event-bus service's router, `flotilla
/// serve query` an HTTP client for `FLOTILLA_EVENT_BUS_URL`.
pub async fn build_with_event_log(
    context: &ServiceContext,
    _args: &Args,
    event_log: Option<EventLogClient>,
) -> anyhow::Result<ServiceApp> {
    let db = backbone::database(context, NAME).await?;
    // Reads (the rendering of `GET /posts`) get their own pool: WAL readers do not wait
    // for the writer.
    let reader = storage::Database::connect(&context.database_url_for(NAME)).await?;
    let store = ViewStore::open(db.clone(), reader).await?;
    let (changes, _) = tokio::sync::broadcast::channel(LIVE_BUFFER);
    let events = Arc::new(bus::Runner::new(
        bus::Store::database(&db).await?,
        ViewEvents {
            store: store.clone(),
            changes: changes.clone(),
        },
    ));
    let caught_up = Arc::new(AtomicBool::new(false));
    // The view follows the event log; only without one does it consume the events from
    // the bus itself (and then cannot be rebuilt).
    let consumer = match event_log {
        Some(log) => {
            // Folds in what the log has beyond the store's cursor (ready once it has),
            // then follows it: an event is in the view a moment after it was logged.
            let (store, changes) = (store.clone(), changes.clone());
            let (caught_up, shutdown) = (caught_up.clone(), context.shutdown.clone());
            context.tasks.spawn(async move {
                backbone::event_log::follow(NAME, caught_up, shutdown, |wait| {
                    fold_next_page(&store, &log, wait, Some(&changes))
                })
                .await;
            });
            None
        }
        None => {
            tracing::warn!(
                "no event log configured (FLOTILLA_EVENT_BUS_URL): the view consumes the bus as group {GROUP} and cannot be rebuilt"
            );
            caught_up.store(true, Ordering::Release);
            let bus = bus::connect(
                &context.bus_url_or_embedded(),
                bus::BusOptions::for_service(NAME),
            )
            .await?;
            Some(
                events
                    .clone()
                    .serve(bus, &context.tasks, context.shutdown.clone()),
            )
        }
    };
    let readiness = backbone::readiness(&db)
        .with_check("event-log", backbone::event_log::caught_up_check(caught_up));
    let readiness = match consumer {
        Some(consumer) => readiness.with_check("consumers", consumer.check_fn()),
        None => readiness,
    };
    let state = AppState {
        store,
        events,
        changes,
        shutdown: context.shutdown.clone(),
        rendered: Arc::new(Mutex::new(None)),
    };
    let (routes, _) = api().with_state(state).split_for_parts();
    Ok(ServiceApp::new(NAME, routes).with_readiness(readiness))
}

/// The routes with their descriptions (one source for the router and the OpenAPI).
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(read_posts))
        .routes(routes!(stream_changes))
        .merge(backbone::push_route())
}

/// The OpenAPI description of the service's routes, from the handlers themselves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// Empties the view at `database_url` and, when the log is given, rebuilds it now
/// (otherwise the query service rebuilds it when it next starts, or within one poll
/// interval if it is running). Returns how many events were folded in.
pub async fn rebuild(
    database_url: &str,
    event_log: Option<EventLogClient>,
) -> anyhow::Result<usize> {
    let db = storage::Database::connect_with(
        database_url,
        &storage::PoolSettings::fair_writers(database_url),
    )
    .await?;
    let store = ViewStore::open(db.clone(), db.clone()).await?;
    store.clear().await?;
    let applied = match event_log {
        Some(log) => catch_up(&store, &log).await?,
        None => 0,
    };
    db.close().await;
    Ok(applied)
}

/// What the view's events mean: a change of the view, told to the live streams once
/// committed.
#[derive(Debug, Clone)]
pub struct ViewEvents {
    pub store: ViewStore,
    pub changes: tokio::sync::broadcast::Sender<Change>,
}

impl bus::Handler for ViewEvents {
    type Event = BlogEvent;
    type Error = bus::HandlerError;

    fn subscription(&self) -> bus::Subscription {
        bus::Subscription::new(GROUP, blog::routing_key(blog::POST_CREATED))
            .also(blog::routing_key(blog::COMMENT_CREATED))
            .also(blog::routing_key(blog::COMMENT_UPDATED))
            .with_prefetch(128)
    }

    fn decode(&self, message: &bus::Message) -> Result<BlogEvent, String> {
        bus::decode_json(message)
    }

    async fn apply(
        &self,
        tx: &mut bus::Tx,
        event: &BlogEvent,
        _delivered: &bus::Delivered,
    ) -> Result<Vec<bus::Message>, bus::HandlerError> {
        self.store.apply(tx, event).await?;
        Ok(Vec::new())
    }

    // Folding an event in reads nothing: the runner sends these statements with the
    // other deliveries' (`apply` is for the trait's other callers).
    fn apply_statements(
        &self,
        last: &mut bus::Statements,
        event: &BlogEvent,
        _delivered: &bus::Delivered,
    ) -> Option<Result<Vec<bus::Message>, bus::HandlerError>> {
        self.store.apply_last(last, event);
        Some(Ok(Vec::new()))
    }

    async fn after_commit(&self, event: BlogEvent) {
        // No receiver is not an error: nobody is watching.
        let _ = self.changes.send(Change::Applied(Arc::new(event)));
    }
}

/// Reads the log from the store's cursor to its end; returns how many events were new.
async fn catch_up(store: &ViewStore, log: &EventLogClient) -> anyhow::Result<usize> {
    let mut applied = 0;
    while let Some(page) = fold_next_page(store, log, 0, None).await? {
        applied += page;
    }
    Ok(applied)
}

/// Folds the page of the log after the store's cursor into the view, waiting up to
/// `wait` seconds at the end of the log; `None` when the page was empty. The live
/// streams are told each event of a small page, and to read the view again after a
/// large one (a catch-up).
async fn fold_next_page(
    store: &ViewStore,
    log: &EventLogClient,
    wait: u64,
    changes: Option<&Changes>,
) -> anyhow::Result<Option<usize>> {
    let cursor = store.log_cursor().await?;
    // `CommentModerated` is not folded into the view (the course's query service
    // ignores it too: `CommentUpdated` follows).
    let Some(page) = log
        .take(
            cursor,
            backbone::event_log::FOLLOW_PAGE,
            wait,
            GROUP,
            |event_type| event_type != contracts::blog::COMMENT_MODERATED,
        )
        .await?
    else {
        return Ok(None);
    };
    let applied = store.fold_log_page(&page.events, page.last_seq).await?;
    let events = page.events;
    if let Some(changes) = changes {
        // No receiver is not an error: nobody is watching.
        if events.len() <= LIVE_BUFFER / 2 {
            for event in events {
                let _ = changes.send(Change::Applied(Arc::new(event)));
            }
        } else {
            let _ = changes.send(Change::Resync);
        }
    }
    Ok(Some(applied))
}

/// `?limit=N&after=ID`: at most N posts created after post ID.
/// Most posts in one page of `GET /posts?limit=`.
const MAX_PAGE_POSTS: u32 = 1_000;

/// `?limit=N&after=ID`: a page of the view. Without either, the whole view.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// At most this many posts (1 to 1,000; 100 when only `after` is given).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only posts after this id (the `Link: rel="next"` of a page).
    after: Option<String>,
}

/// Every post with its comments, by post id — the course's `GET /posts`. With `limit`
/// or `after`, one page (`Link: rel="next"` when there may be more).
#[utoipa::path(
    get, path = "/posts", tag = "blog",
    params(Page),
    responses(
        (status = 200, description = "Posts by id, each with its comments", body = BTreeMap<String, ViewPost>,
            headers(("Link" = String, description = "`</posts?limit=N&after=ID>; rel=\"next\"` when a page is full"))),
        (status = 400, description = "`limit` is not a number from 1 to 1,000", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn read_posts(
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    if page.limit.is_none() && page.after.is_none() {
        return full_view(&state).await;
    }
    let limit = page.limit.unwrap_or(100);
    if !(1..=MAX_PAGE_POSTS).contains(&limit) {
        return Err(ApiError::Limit);
    }
    let view = state.store.view(page.after.as_deref(), Some(limit)).await?;
    let next = (view.len() == limit as usize)
        .then(|| view.keys().next_back().cloned())
        .flatten();
    let mut response = Json(view).into_response();
    if let Some(next) = next
        && let Ok(link) = HeaderValue::from_str(&format!(
            "</posts?limit={limit}&after={next}>; rel=\"next\""
        ))
    {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// The whole view: the kept rendering if it shows the current version, else rendered
/// page by page — kept if it turns out small, streamed as it is rendered if not.
async fn full_view(state: &AppState) -> Result<Response, ApiError> {
    let version = state.store.version().await?;
    // Held while the head is rendered, so concurrent requests for a new version render
    // it once; released before a large view streams.
    let mut rendered = state.rendered.lock().await;
    if let Some((at, body)) = rendered.as_ref()
        && *at == version
    {
        return Ok(json_response(Body::from(body.clone())));
    }
    // Read after the version: the rendering is at least as new as the version it is
    // kept under, so a later change always shows a different version.
    let mut renderer = Renderer::new(state.store.clone());
    let mut head = Vec::new();
    while head.len() <= KEPT_RENDERING_BYTES {
        match renderer.next_chunk().await? {
            Some(chunk) => head.extend_from_slice(&chunk),
            None => {
                let body = Bytes::from(head);
                *rendered = Some((version, body.clone()));
                return Ok(json_response(Body::from(body)));
            }
        }
    }
    drop(rendered);
    let rest = futures::stream::try_unfold(renderer, |mut renderer| async move {
        let chunk = renderer.next_chunk().await.inspect_err(|error| {
            tracing::warn!(%error, "GET /posts cut short: the view could not be read");
        })?;
        Ok::<_, RenderError>(chunk.map(|chunk| (chunk, renderer)))
    });
    let head = futures::stream::once(std::future::ready(Ok(Bytes::from(head))));
    Ok(json_response(Body::from_stream(head.chain(rest))))
}

fn json_response(body: Body) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

#[derive(Debug, thiserror::Error)]
enum RenderError {
    #[error(transparent)]
    Store(#[from] storage::StorageError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Renders the course's `{"<id>": post, …}` map a page of posts at a time.
struct Renderer {
    store: ViewStore,
    /// The last post rendered; `None` before the first chunk.
    after: Option<String>,
    done: bool,
}

impl Renderer {
    fn new(store: ViewStore) -> Self {
        Self {
            store,
            after: None,
            done: false,
        }
    }

    /// The next piece of the JSON text, `None` after the closing brace.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, RenderError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .view(
                Some(self.after.as_deref().unwrap_or("")),
                Some(POSTS_PER_CHUNK),
            )
            .await?;
        let mut chunk = Vec::new();
        for (id, post) in &page {
            chunk.push(if self.after.is_none() && chunk.is_empty() {
                b'{'
            } else {
                b','
            });
            serde_json::to_writer(&mut chunk, id)?;
            chunk.push(b':');
            serde_json::to_writer(&mut chunk, post)?;
        }
        if page.len() < POSTS_PER_CHUNK as usize {
            if self.after.is_none() && chunk.is_empty() {
                chunk.push(b'{');
            }
            chunk.push(b'}');
            self.done = true;
        }
        if let Some(last) = page.keys().next_back() {
            self.after = Some(last.clone());
        }
        Ok(Some(Bytes::from(chunk)))
    }
}

/// Everything a route of this service can fail with once its input is parsed (the
/// extractors refuse bad input themselves), turned into problem+json in one place.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("'limit' must be 1 to {MAX_PAGE_POSTS}")]
    Limit,
    #[error(transparent)]
    Store(#[from] storage::StorageError),
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl FromRef<AppState> for Arc<dyn bus::PushTarget> {
    fn from_ref(state: &AppState) -> Self {
        state.events.clone()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Limit => Problem::bad_request(self.to_string()),
            other => Problem::internal(&other),
        }
        .into_response()
    }
}

/// `GET /posts/changes`: Server-Sent Events of the view's changes, each sent once the
/// view holds it (a client that reads `GET /posts` after an event sees it): the event
/// as the bus carries it (`event:` its type — `PostCreated`, `CommentCreated`,
/// `CommentUpdated` —, `data:` its JSON), `resync` when the stream fell more than
/// [`LIVE_BUFFER`] behind or the view caught up from the log (read `GET /posts` again),
/// a comment every 15 s. The gateway holds one such stream and fans it out to browsers
/// (`GET /live/blog`); the stream ends when the service stops.
#[utoipa::path(
    get, path = "/posts/changes", tag = "internal",
    responses((status = 200, description = "An endless event stream", body = String, content_type = "text/event-stream"))
)]
async fn stream_changes(State(state): State<AppState>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let receiver = state.changes.subscribe();
    let events = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(Change::Applied(event)) => {
                let data = match event.as_ref() {
                    BlogEvent::PostCreated(e) => serde_json::to_string(e),
                    BlogEvent::CommentCreated(e) => serde_json::to_string(e),
                    BlogEvent::CommentModerated(e) => serde_json::to_string(e),
                    BlogEvent::CommentUpdated(e) => serde_json::to_string(e),
                };
                match data {
                    Ok(data) => Event::default().event(event.event_type()).data(data),
                    Err(_) => Event::default().event("resync").data("{}"),
                }
            }
            Ok(Change::Resync) | Err(RecvError::Lagged(_)) => {
                Event::default().event("resync").data("{}")
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(event), receiver))
    });
    let ready = futures::stream::once(async {
        Ok::<_, std::convert::Infallible>(Event::default().event("ready").data("{}"))
    });
    let shutdown = state.shutdown.clone();
    let events = ready
        .chain(events)
        .take_until(async move { shutdown.cancelled().await });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}
