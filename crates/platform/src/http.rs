//! The HTTP side of a service: binding (port 0 allowed), serving with graceful drain,
//! request ids and W3C trace context (their types; [`crate::observe`] sets them on each
//! request) and the timeout of the common stack.

use std::{
    cell::RefCell, future::Future as _, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    middleware::Next,
    response::Response,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::Service as _;

use crate::{Problem, entry::Entry};

pub use crate::ids::{REQUEST_ID_HEADER, RequestId, TRACEPARENT_HEADER, TraceContext, TraceParent};

/// How long in-flight requests get to finish once shutdown starts.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Binds a listener; port 0 picks a free port (read it back with `local_addr`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// The number of header fields hyper accepts unless told otherwise.
const HYPER_MAX_HEADERS: usize = 100;

/// Limits of the connection layer, below HTTP routing: what a client can make the
/// server hold before a request even exists, and how slowly it may send a body.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A client must send its complete request head within this time (slowloris).
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers); larger → 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more → 431.
    pub max_headers: usize,
    /// Open connections beyond this are closed at accept.
    pub max_connections: usize,
    /// Open connections from one client address beyond this are closed at accept (at
    /// most `max_connections`).
    pub max_connections_per_client: usize,
    /// The minimum rate of a request body: while the server waits for it, each
    /// `body_window` of waiting must bring at least `body_min_bytes`, or the body ends
    /// with [`BodyTooSlow`] (a handler answers 408). Time the server spends not reading
    /// (a handler busy writing what it got) does not count.
    pub body_window: Duration,
    pub body_min_bytes: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: HYPER_MAX_HEADERS,
            max_connections: 10_000,
            max_connections_per_client: 256,
            body_window: Duration::from_secs(10),
            body_min_bytes: 1024,
        }
    }
}

/// Serves `service` (a router, or a service's [`Entry`]) until `shutdown` is cancelled,
/// then stops accepting, lets in-flight requests finish (at most `drain_timeout`) and
/// returns.
pub async fn serve(
    listener: TcpListener,
    service: impl Into<Entry>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    serve_on_threads(
        listener,
        service,
        shutdown,
        drain_timeout,
        ConnectionLimits::default(),
        0,
    )
    .await
}

/// [`serve`] with explicit connection limits, on `threads` threads of their own, each an event loop (a
/// single-threaded runtime) accepting from the same listening socket and serving its
/// connections to the end: a request, the upstream calls it makes and their connections
/// stay on one thread, with no wake-ups across threads. For a proxy that is most of its
/// work (the gateway in `serve`). `threads == 0` serves on the calling runtime instead.
/// Returns once every thread has drained.
pub async fn serve_on_threads(
    listener: TcpListener,
    service: impl Into<Entry>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    limits: ConnectionLimits,
    threads: usize,
) -> std::io::Result<()> {
    // One connection limit for all threads.
    let server = AcceptLoop::new(service.into(), shutdown, drain_timeout, limits);
    if threads == 0 {
        return server.run(listener).await;
    }
    let listener = listener.into_std()?;
    let mut finished = Vec::with_capacity(threads);
    for index in 0..threads {
        let listener = listener.try_clone()?;
        let server = server.clone();
        let (done, finished_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("http-{index}"))
            .spawn(move || {
                let outcome = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| {
                        runtime.block_on(async move {
                            server.run(TcpListener::from_std(listener)?).await
                        })
                    });
                let _ = done.send(outcome);
            })?;
        finished.push(finished_rx);
    }
    drop(listener);
    for thread in finished {
        thread
            .await
            .map_err(|_| std::io::Error::other("an HTTP thread panicked"))??;
    }
    Ok(())
}

/// What an accept loop serves and how; cloned into each HTTP thread.
#[derive(Clone)]
struct AcceptLoop {
    entry: Entry,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    limits: ConnectionLimits,
    /// Permits for open connections (`limits.max_connections`).
    connections: Arc<Semaphore>,
    /// Open connections per client address, when that limit is below the global one.
    per_client: Option<Arc<PerClient>>,
}

impl AcceptLoop {
    fn new(
        entry: Entry,
        shutdown: CancellationToken,
        drain_timeout: Duration,
        limits: ConnectionLimits,
    ) -> Self {
        Self {
            entry,
            shutdown,
            drain_timeout,
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_client: (limits.max_connections_per_client < limits.max_connections)
                .then(|| Arc::new(PerClient::new(limits.max_connections_per_client.max(1)))),
        }
    }

    async fn run(self, listener: TcpListener) -> std::io::Result<()> {
        let Self {
            entry,
            shutdown,
            drain_timeout,
            limits,
            connections,
            per_client,
        } = self;
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // The head limit itself: the buffer limit alone lets a head through that
            // arrives in one read, however far it overshoots (100 KB passed a 64 KiB one).
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .keep_alive(true);
        // hyper's own limit is 100 fields; setting it at all (even to 100) makes every
        // request head parse into a buffer built element by element.
        if limits.max_headers != HYPER_MAX_HEADERS {
            http.max_headers(limits.max_headers);
        }
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection limit reached; closing new connection");
                drop(stream);
                continue;
            };
            let client = match &per_client {
                Some(per_client) => match per_client.enter(peer.ip()) {
                    Some(entered) => Some(entered),
                    None => {
                        tracing::warn!(%peer, "per-client connection limit reached; closing new connection");
                        drop(stream);
                        continue;
                    }
                },
                None => None,
            };
            let _ = stream.set_nodelay(true);
            // One entry per connection, called in place: nothing of it is cloned per
            // request (the router clones what it needs itself).
            let entry = RefCell::new(entry.clone());
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    entry
                        .borrow_mut()
                        .call(request.map(|body| min_rate_body(body, &limits)))
                },
            );
            let linger = Linger::of(&stream);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let watched = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = watched.await {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                if let Some(linger) = linger {
                    linger.close().await;
                }
                drop(client);
                drop(permit);
            });
        }
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(drain_timeout) => {
                tracing::warn!(?drain_timeout, "requests still running after the drain timeout; closing them");
            }
        }
        Ok(())
    }
}

/// Counts of open connections per client address (shared by all HTTP threads).
struct PerClient {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl PerClient {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: std::sync::Mutex::default(),
        }
    }

    /// Counts one more connection of `client`, or `None` if it has `max` open already.
    fn enter(self: &Arc<Self>, client: std::net::IpAddr) -> Option<ClientConnection> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientConnection {
            counts: Arc::clone(self),
            client,
        })
    }
}

/// One open connection of a client; counted down when dropped.
struct ClientConnection {
    counts: Arc<PerClient>,
    client: std::net::IpAddr,
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// A request body held to the minimum rate of `limits`; a request without a body (most)
/// is passed on as it is.
fn min_rate_body(body: hyper::body::Incoming, limits: &ConnectionLimits) -> Body {
    use hyper::body::Body as _;
    if body.is_end_stream() || limits.body_window.is_zero() {
        Body::new(body)
    } else {
        Body::new(MinRateBody::new(
            body,
            limits.body_window,
            limits.body_min_bytes,
        ))
    }
}

/// A request body arrived too slowly: less than the minimum in a window of waiting.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "less than {min_bytes} bytes of the request body arrived in {} s of waiting for it",
    window.as_secs_f64()
)]
pub struct BodyTooSlow {
    min_bytes: u64,
    window: Duration,
}

impl BodyTooSlow {
    /// The `BodyTooSlow` in `error`'s chain of sources, if the error came from a body too
    /// slow (as read by a handler, or by a proxy sending it on).
    pub fn in_chain<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if let Some(slow) = error.downcast_ref::<Self>() {
                return Some(slow);
            }
            cause = error.source();
        }
        None
    }
}

pin_project_lite::pin_project! {
    /// A body that must bring `min_bytes` in every `window` the reader spends waiting
    /// for it (an idle-read timeout and a minimum rate in one): a client trickling its
    /// upload at 1 byte/s cannot hold a connection and a request slot for an hour. Only
    /// time spent in `Pending` counts, so a server slow to read is not blamed on the
    /// client. The timer exists only while waiting.
    struct MinRateBody<B> {
        #[pin]
        inner: B,
        window: Duration,
        min_bytes: u64,
        // Waiting time and bytes of the current window.
        waited: Duration,
        bytes: u64,
        // Since when the reader has been waiting, if it is.
        waiting_since: Option<tokio::time::Instant>,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<B> MinRateBody<B> {
    fn new(inner: B, window: Duration, min_bytes: u64) -> Self {
        Self {
            inner,
            window,
            min_bytes,
            waited: Duration::ZERO,
            bytes: 0,
            waiting_since: None,
            sleep: None,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> hyper::body::Body for MinRateBody<B>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(since) = this.waiting_since.take() {
                    *this.waited += since.elapsed();
                }
                *this.bytes += frame.data_ref().map_or(0, |data| data.len() as u64);
                if *this.waited >= *this.window {
                    if *this.bytes < *this.min_bytes {
                        return Poll::Ready(Some(Err(too_slow(*this.min_bytes, *this.window))));
                    }
                    *this.waited = Duration::ZERO;
                    *this.bytes = 0;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                let now = tokio::time::Instant::now();
                let since = *this.waiting_since.get_or_insert(now);
                if *this.waited + (now - since) >= *this.window {
                    if *this.bytes < *this.min_bytes {
                        return Poll::Ready(Some(Err(too_slow(*this.min_bytes, *this.window))));
                    }
                    // A window passed with enough bytes: the next starts now.
                    *this.waited = Duration::ZERO;
                    *this.bytes = 0;
                    *this.waiting_since = Some(now);
                }
                let deadline = this.waiting_since.unwrap_or(now) + (*this.window - *this.waited);
                let sleep = match this.sleep {
                    Some(sleep) => {
                        sleep.as_mut().reset(deadline);
                        sleep
                    }
                    None => this
                        .sleep
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn too_slow(min_bytes: u64, window: Duration) -> BoxError {
    Box::new(BodyTooSlow { min_bytes, window })
}

/// How long a closing connection may go on receiving what the client still sends.
const LINGER_TIME: Duration = Duration::from_secs(5);
/// A closing connection that receives nothing for this long is closed.
const LINGER_IDLE: Duration = Duration::from_secs(2);
/// At most this much is read and dropped from a closing connection.
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// A second handle on a connection's socket, so that it is closed gently once hyper is
/// done with it (a *lingering close*, as nginx does). A server that answers before
/// reading the whole request — 413 for a declared length over the limit, 401 for an
/// upload without a valid token, a 4xx for a malformed head — closes a connection the
/// client is still writing to. Closing a socket with unread data makes the kernel send a
/// reset, and a reset can destroy the answer in the client's receive buffer before the
/// client has read it: the client sees "connection reset" instead of the 413. So the
/// server shuts down its sending side (the client sees the end of the answer), then
/// reads and drops whatever still arrives until the client closes too, for at most
/// [`LINGER_TIME`] (and [`LINGER_IDLE`] without data, [`LINGER_BYTES`] in all).
struct Linger(std::net::TcpStream);

impl Linger {
    fn of(stream: &tokio::net::TcpStream) -> Option<Self> {
        use std::os::fd::AsFd as _;
        let fd = stream.as_fd().try_clone_to_owned().ok()?;
        Some(Self(std::net::TcpStream::from(fd)))
    }

    /// After hyper has let go of the connection. The socket is non-blocking (the flag
    /// belongs to the socket, shared with hyper's handle).
    async fn close(self) {
        use std::io::Read as _;
        let mut stream = self.0;
        // hyper shut down writing if it ended the connection cleanly; not after an error.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        match stream.read(&mut [0u8; 512]) {
            // The client has closed its side already (the usual end of a connection).
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        // Boxed: only closes that need it pay for the buffer.
        Box::pin(Self::drain(stream)).await;
    }

    async fn drain(stream: std::net::TcpStream) {
        use tokio::io::AsyncReadExt as _;
        let Ok(mut stream) = tokio::net::TcpStream::from_std(stream) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + LINGER_TIME;
        let mut buffer = vec![0u8; 64 * 1024];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            let wait = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(LINGER_IDLE);
            match tokio::time::timeout(wait, stream.read(&mut buffer)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
}

/// [`timeout`] as a middleware with state, for per-route limits:
/// `route.layer(middleware::from_fn_with_state(limit, enforce_timeout))`.
pub async fn enforce_timeout(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    timeout(limit, request, next).await
}

/// Ends requests that take longer than `limit` to produce response headers with a 503
/// problem. Streaming bodies are not cut: the limit covers time to first byte.
pub async fn timeout(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => timed_out(limit),
    }
}

/// [`timeout`] as a tower layer (one boxed future, no middleware plumbing):
/// `route.layer(TimeoutLayer::new(limit))`.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    limit: Duration,
}

impl<S> tower::Service<Request> for Timeout<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The inner service is called here, not inside the future: no clone of it needed.
        TimeoutFuture {
            inner: tokio::time::timeout(self.limit, self.inner.call(request)),
            limit: self.limit,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of the inner service, or a 503 problem once the limit has passed.
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        limit: Duration,
    }
}

impl<F> std::future::Future for TimeoutFuture<F>
where
    F: std::future::Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        match std::task::ready!(this.inner.poll(cx)) {
            Ok(response) => std::task::Poll::Ready(response),
            Err(_) => std::task::Poll::Ready(Ok(timed_out(*this.limit))),
        }
    }
}

fn timed_out(limit: Duration) -> Response {
    axum::response::IntoResponse::into_response(
        Problem::service_unavailable(format!(
            "the request did not complete within {} s",
            limit.as_secs_f64()
        ))
        .with_title("Request timed out"),
    )
}
