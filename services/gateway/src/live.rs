//! Live updates for browsers: Server-Sent Events from the gateway.
//!
//! * `GET /live/blog` (open): the blog's changes — `PostCreated`, `CommentCreated`,
//!   `CommentUpdated` (a moderation decision), each with the event's JSON as `data` —
//!   and `resync` when the client should read `GET /posts` again (it fell behind, or the
//!   gateway lost its upstream stream and may have missed events). The gateway holds
//!   **one** upstream stream, the query service's `GET /posts/changes` (which sends an
//!   event once the read model holds it), and fans it out to every browser through a
//!   bounded tokio broadcast channel: a browser that falls [`BLOG_BUFFER`] events behind
//!   gets `resync` instead of an ever-growing buffer. The upstream stream is opened on
//!   the first subscriber and reopened with backoff when it ends.
//! * `GET /live/jobs` (Bearer token): the caller's jobs as they move `queued →
//!   converting → done | failed` (every user's, with the owner, for an admin): the
//!   media service's `GET /jobs/stream`, called with the caller's credentials and
//!   passed through. Media filters the jobs by caller and sends `resync` on lag.
//!
//! Both are reached the way every route is — through the [`Upstream`] of the service, an
//! in-process router in `flotilla up`, HTTP in `flotilla serve gateway` — so they work
//! in both modes. Each stream starts with a `ready` event and carries a comment line
//! every 15 s (proxies and clients see it alive). Streams open at once are capped, in
//! total and per client address (503 + `Retry-After` beyond), and all end when the
//! gateway shuts down, so they never hold up its drain.
//!
//! The token: `EventSource` cannot send an `Authorization` header, so the web app reads
//! the stream with `fetch` (whose body is a stream) and sends the token as it does on
//! every other call. Nothing secret ever goes into a URL (where access logs, proxies and
//! history would keep it), and no ticket state is needed that several gateway replicas
//! would have to share.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, Once},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, Uri, header},
    middleware,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::{Stream, StreamExt as _};
use identity::Verifier;
use platform::Problem;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::Upstream;

/// Blog events a browser's stream may fall behind by before it is sent `resync`.
pub const BLOG_BUFFER: usize = 256;
/// A comment line on an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Time for an upstream to answer a stream's headers.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest event read from the upstream stream (posts and comments are ≤ 10,000
/// characters, so their JSON is well below this).
const MAX_UPSTREAM_EVENT: usize = 256 * 1024;
/// Pauses between attempts to reopen the upstream stream.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// The limits on live streams (`FLOTILLA_GATEWAY_MAX_STREAMS[_PER_CLIENT]`).
#[derive(Debug, Clone, Copy)]
pub struct StreamCaps {
    pub total: usize,
    pub per_client: usize,
}

/// The live routes, sharing one blog hub and one count of open streams.
pub(crate) fn routes(
    query: Upstream,
    media: Upstream,
    verifier: &Verifier,
    streams: Arc<OpenStreams>,
    shutdown: CancellationToken,
) -> OpenApiRouter {
    let state = LiveState {
        hub: Arc::new(Hub {
            sender: broadcast::channel(BLOG_BUFFER).0,
            query,
            started: Once::new(),
            shutdown: shutdown.clone(),
        }),
        media,
        streams,
        shutdown,
    };
    api(Some(verifier)).with_state(state)
}

/// The live routes with their descriptions (one source for the router and the
/// OpenAPI). `verifier` checks `/live/jobs`'s caller; without one (describing only)
/// the route has no check.
fn api(verifier: Option<&Verifier>) -> OpenApiRouter<LiveState> {
    let (schemas, paths, mut jobs) = routes!(jobs_stream);
    if let Some(verifier) = verifier {
        jobs = jobs.layer(middleware::from_fn_with_state(
            verifier.clone(),
            identity::require_caller,
        ));
    }
    OpenApiRouter::new()
        .routes(routes!(blog_stream))
        .routes((schemas, paths, jobs))
}

/// The description of the live routes.
pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    api(None).into_openapi()
}

#[derive(Clone)]
struct LiveState {
    hub: Arc<Hub>,
    media: Upstream,
    streams: Arc<OpenStreams>,
    shutdown: CancellationToken,
}

/// The blog's changes as Server-Sent Events: `ready`, then `PostCreated`,
/// `CommentCreated`, `CommentUpdated` (a moderation decision; `data` is the event's
/// JSON) and `resync` (read `GET /posts` again); a comment line every 15 s.
#[utoipa::path(
    get, path = "/live/blog", tag = "live",
    responses(
        (status = 200, description = "An endless event stream", content_type = "text/event-stream", body = String),
        (status = 503, description = "Too many live streams open (in total or from this client); see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn blog_stream(State(state): State<LiveState>, request: Request) -> Response {
    let slot = match state.streams.open(client_ip(&request)) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    let receiver = state.hub.subscribe();
    let events = futures::stream::unfold((receiver, slot), |(mut receiver, slot)| async move {
        let event = match receiver.recv().await {
            Ok(event) => Event::default().event(&event.name).data(&event.data),
            Err(RecvError::Lagged(_)) => resync(),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(event), (receiver, slot)))
    });
    sse(events, state.shutdown.clone())
}

/// The caller's conversion jobs as Server-Sent Events: `ready`, then `job` (the job
/// as `GET /jobs/{id}` shows it, with `owner` for an admin, who sees every user's)
/// each time one changes status, `resync` (list `GET /jobs` again); a comment line
/// every 15 s. Send the token in `Authorization` (read the stream with `fetch`). It is
/// media's `GET /jobs/stream` for the verified caller.
#[utoipa::path(
    get, path = "/live/jobs", tag = "live",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An endless event stream", content_type = "text/event-stream", body = String),
        (status = 401, description = "No valid Bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many live streams open (in total or from this client), or media did not answer in time; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn jobs_stream(State(state): State<LiveState>, request: Request) -> Response {
    let slot = match state.streams.open(client_ip(&request)) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    // The caller's own request (its token, its verified caller, its address) with the
    // upstream's path: the upstream checks it as it checks any other.
    let (mut parts, body) = request.into_parts();
    parts.uri = Uri::from_static("/jobs/stream");
    let upstream = state
        .media
        .clone()
        .oneshot(Request::from_parts(parts, body));
    let response = match tokio::time::timeout(UPSTREAM_TIMEOUT, upstream).await {
        Ok(Ok(response)) => response,
        Err(_) => {
            return Problem::service_unavailable("the media service did not answer in time")
                .with_retry_after(5)
                .into_response();
        }
    };
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let shutdown = state.shutdown.clone();
    // The slot is held as long as the body streams.
    let body = body
        .into_data_stream()
        .map(move |chunk| {
            let _held = &slot;
            chunk
        })
        .take_until(async move { shutdown.cancelled().await });
    Response::from_parts(parts, Body::from_stream(body))
}

pub(crate) fn sse<S>(events: S, shutdown: CancellationToken) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let ready = futures::stream::once(async { Ok(Event::default().event("ready").data("{}")) });
    let events = ready
        .chain(events)
        .take_until(async move { shutdown.cancelled().await });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // No proxy may hold events back to buffer them (nginx honours this header).
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn resync() -> Event {
    Event::default().event("resync").data("{}")
}

/// The client's address (absent when the router is called without a connection, as
/// tests do: they share one count).
pub(crate) fn client_ip(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// One event of the upstream stream, as it is sent on.
#[derive(Debug)]
struct LiveEvent {
    name: String,
    data: String,
}

/// The one upstream blog stream and its subscribers.
struct Hub {
    sender: broadcast::Sender<Arc<LiveEvent>>,
    query: Upstream,
    started: Once,
    shutdown: CancellationToken,
}

impl Hub {
    fn subscribe(self: &Arc<Self>) -> broadcast::Receiver<Arc<LiveEvent>> {
        let receiver = self.sender.subscribe();
        self.started.call_once(|| {
            tokio::spawn(Arc::clone(self).follow());
        });
        receiver
    }

    /// Keeps the upstream stream open until shutdown.
    async fn follow(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        let mut opened_before = false;
        while !self.shutdown.is_cancelled() {
            match self.read_upstream(&mut opened_before).await {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(reason) => tracing::warn!(%reason, "the blog's live stream is down; retrying"),
            }
            // Jittered, so gateway replicas do not reconnect in step.
            let pause = backoff.mul_f64(0.5 + fastrand::f64());
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Reads one upstream stream to its end. `Ok` if it had been open and ended.
    async fn read_upstream(&self, opened_before: &mut bool) -> Result<(), String> {
        let request = Request::get("/posts/changes")
            .header(header::ACCEPT, "text/event-stream")
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(UPSTREAM_TIMEOUT, self.query.clone().oneshot(request))
            .await
            .map_err(|_| "no answer in time".to_owned())?;
        let Ok(response) = response;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        if *opened_before {
            // Whatever happened while it was down is unknown: everyone reads again.
            let _ = self.sender.send(Arc::new(LiveEvent {
                name: "resync".into(),
                data: "{}".into(),
            }));
        }
        *opened_before = true;
        let mut body = response.into_body().into_data_stream();
        let mut parser = SseParser::default();
        loop {
            let chunk = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(()),
                chunk = body.next() => chunk,
            };
            match chunk {
                Some(Ok(bytes)) => {
                    for event in parser.push(&bytes)? {
                        // `ready` is the upstream's own greeting; browsers get ours.
                        if event.name != "ready" {
                            let _ = self.sender.send(Arc::new(event));
                        }
                    }
                }
                Some(Err(error)) => return Err(error.to_string()),
                None => return Ok(()),
            }
        }
    }
}

/// Splits an event stream (`text/event-stream`) into events: `event:` and `data:`
/// fields up to a blank line; comments and other fields are skipped.
#[derive(Debug, Default)]
struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<LiveEvent>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = find_blank_line(&self.buffer) {
            let block: Vec<u8> = self.buffer.drain(..end.1).collect();
            let text = String::from_utf8_lossy(&block[..end.0]);
            let mut name = String::new();
            let mut data: Option<String> = None;
            for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => name = value.to_owned(),
                    "data" => match &mut data {
                        Some(data) => {
                            data.push('\n');
                            data.push_str(value);
                        }
                        None => data = Some(value.to_owned()),
                    },
                    _ => {}
                }
            }
            if let Some(data) = data {
                let name = if name.is_empty() {
                    "message".to_owned()
                } else {
                    name
                };
                events.push(LiveEvent { name, data });
            }
        }
        if self.buffer.len() > MAX_UPSTREAM_EVENT {
            return Err(format!("an event over {MAX_UPSTREAM_EVENT} bytes"));
        }
        Ok(events)
    }
}

/// Where the first blank line is: (end of the block, end of the blank line).
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buffer.len() {
        if buffer[i] == b'\n' {
            if buffer.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if buffer.get(i + 1) == Some(&b'\r') && buffer.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// The streams open now, in total and per client address.
#[derive(Debug)]
pub(crate) struct OpenStreams {
    caps: StreamCaps,
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

impl OpenStreams {
    /// Shared by every live stream of the gateway (blog, jobs, the system map).
    pub(crate) fn new(caps: StreamCaps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            by_client: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more stream of `client`, or the 503 that refuses it.
    pub(crate) fn open(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Refused> {
        let mut by_client = self
            .by_client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total: usize = by_client.values().sum();
        let mine = by_client.get(&client).copied().unwrap_or(0);
        if total >= self.caps.total {
            return Err(Refused::Total);
        }
        if mine >= self.caps.per_client {
            return Err(Refused::PerClient(self.caps.per_client));
        }
        *by_client.entry(client).or_insert(0) += 1;
        Ok(Slot {
            streams: Arc::clone(self),
            client,
        })
    }
}

/// Why a stream was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Total,
    PerClient(usize),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        metrics::counter!("gateway_live_streams_refused_total").increment(1);
        let detail = match self {
            Refused::Total => "too many live streams are open; try again shortly".to_owned(),
            Refused::PerClient(cap) => {
                format!("at most {cap} live streams per client; close another tab")
            }
        };
        Problem::service_unavailable(detail)
            .with_retry_after(5)
            .into_response()
    }
}

/// One open stream; closing it (dropping the response body) frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    streams: Arc<OpenStreams>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_client = self
            .streams
            .by_client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = by_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_splits_events_across_chunks_and_skips_comments() {
        let mut parser = SseParser::default();
        assert!(parser.push(b":\n\nevent: Post").expect("ok").is_empty());
        let events = parser
            .push(b"Created\ndata: {\"id\":\"1\"}\n\ndata: a\ndata: b\r\n\r\n")
            .expect("ok");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].name, "PostCreated");
        assert_eq!(events[0].data, "{\"id\":\"1\"}");
        assert_eq!(events[1].name, "message");
        assert_eq!(events[1].data, "a\nb");
        assert!(parser.buffer.is_empty());
        let mut parser = SseParser::default();
        assert!(parser.push(&vec![b'x'; MAX_UPSTREAM_EVENT + 1]).is_err());
    }

    #[test]
    fn streams_are_capped_per_client_and_in_total() {
        let streams = Arc::new(OpenStreams {
            caps: StreamCaps {
                total: 3,
                per_client: 2,
            },
            by_client: Mutex::new(HashMap::new()),
        });
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let first = streams.open(a).expect("first");
        let _second = streams.open(a).expect("second");
        assert_eq!(
            streams.open(a).expect_err("third of a"),
            Refused::PerClient(2)
        );
        let _third = streams.open(b).expect("b's first");
        assert_eq!(streams.open(b).expect_err("over the total"), Refused::Total);
        drop(first);
        assert!(streams.open(b).is_ok(), "a slot was freed");
    }
}
