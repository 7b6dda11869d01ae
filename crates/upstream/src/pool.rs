//! Upstream HTTP/1 connections, pooled per thread and per endpoint.
//!
//! The gateway's HTTP threads (`platform::http::serve_on_threads`) each serve their
//! connections to the end, so each keeps its own idle upstream connections: a request,
//! the upstream connection it uses and that connection's task stay on one thread, and no
//! lock or hash is taken to find a connection (endpoints are few; they are found by a
//! scan). A connection goes back to the pool when its response body has been read to the
//! end (or there was none); a body dropped half-way closes it, as HTTP/1 cannot reuse it.
//!
//! A request that never reached a connection — an idle connection that the upstream
//! closed meanwhile — is given back by hyper and sent on another one; a connection that
//! cannot be opened is [`SendError::Connect`], which says the request was not sent.

use std::{
    cell::RefCell,
    collections::VecDeque,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;

/// How long an upstream gets to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections older than this are closed rather than reused: shorter than the
/// upstreams' own idle limits (our services close a connection that sends no request
/// head for 10 s; nginx after 60 s), so a request is not written onto a connection the
/// upstream is closing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per endpoint and thread; more are closed.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened: the request was not sent.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Reading the client's request body failed (cut off, malformed): the client's doing.
    #[error("{0}")]
    ClientBody(hyper::Error),
    /// The request was (perhaps partly) sent and the exchange failed.
    #[error("{0}")]
    Exchange(hyper::Error),
}

impl From<hyper::Error> for SendError {
    fn from(error: hyper::Error) -> Self {
        // hyper calls errors of the body it was given to send "user" errors.
        if error.is_user() {
            Self::ClientBody(error)
        } else {
            Self::Exchange(error)
        }
    }
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

thread_local! {
    /// This thread's idle connections, by endpoint.
    static IDLE: RefCell<Vec<(SocketAddr, VecDeque<Idle>)>> = const { RefCell::new(Vec::new()) };
}

/// Sends `request` (origin-form URI, `Host` set) to `addr` on an idle connection of this
/// thread, or a new one.
pub async fn send(
    addr: SocketAddr,
    mut request: Request<Body>,
) -> Result<Response<Body>, SendError> {
    while let Some(mut sender) = checkout(addr) {
        match sender.try_send_request(request).await {
            Ok(response) => return Ok(returning(addr, sender, response)),
            Err(mut error) => match error.take_message() {
                // Not sent (closed or busy meanwhile): the next connection gets it.
                Some(unsent) => request = unsent,
                None => return Err(error.into_error().into()),
            },
        }
    }
    let mut sender = connect(addr).await?;
    let response = sender.send_request(request).await?;
    Ok(returning(addr, sender, response))
}

/// An idle connection to `addr` that can take a request now, if this thread has one.
/// Connections closed by the upstream or idle too long are dropped on the way; one that
/// is still finishing its last exchange (hyper has not yet seen it through) is left for
/// later.
fn checkout(addr: SocketAddr) -> Option<SendRequest<Body>> {
    IDLE.with_borrow_mut(|idle| {
        let (_, connections) = idle.iter_mut().find(|(a, _)| *a == addr)?;
        // Most recent first; `swap_remove_back` brings in an element already looked at.
        let mut i = connections.len();
        while i > 0 {
            i -= 1;
            let connection = &connections[i];
            if connection.sender.is_closed() || connection.since.elapsed() >= IDLE_TIMEOUT {
                connections.swap_remove_back(i);
            } else if connection.sender.is_ready() {
                return connections.swap_remove_back(i).map(|c| c.sender);
            }
        }
        None
    })
}

/// Puts `sender` back as the most recent idle connection to `addr`, and closes what has
/// been idle too long — of every endpoint, so those that discovery dropped go too.
fn checkin(addr: SocketAddr, sender: SendRequest<Body>) {
    if sender.is_closed() {
        return;
    }
    let now = Instant::now();
    IDLE.with_borrow_mut(|idle| {
        for (_, connections) in idle.iter_mut() {
            while connections
                .front()
                .is_some_and(|c| now.duration_since(c.since) >= IDLE_TIMEOUT)
            {
                connections.pop_front();
            }
        }
        idle.retain(|(a, connections)| *a == addr || !connections.is_empty());
        let position = match idle.iter().position(|(a, _)| *a == addr) {
            Some(position) => position,
            None => {
                idle.push((addr, VecDeque::new()));
                idle.len() - 1
            }
        };
        let connections = &mut idle[position].1;
        if connections.len() < MAX_IDLE_PER_ENDPOINT {
            connections.push_back(Idle { sender, since: now });
        }
    });
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Body>, SendError> {
    let connecting = tokio::net::TcpStream::connect(addr);
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(SendError::Connect(error.to_string())),
        Err(_) => {
            return Err(SendError::Connect(format!(
                "no connection within {} s",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| SendError::Connect(error.to_string()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%addr, %error, "upstream connection ended with an error");
        }
    });
    sender
        .ready()
        .await
        .map_err(|error| SendError::Connect(error.to_string()))?;
    Ok(sender)
}

/// `response`, whose connection goes back to the pool once its body has been read.
fn returning(
    addr: SocketAddr,
    sender: SendRequest<Body>,
    response: Response<Incoming>,
) -> Response<Body> {
    response.map(|body| {
        Body::new(Returning {
            body,
            connection: Some((addr, sender)),
        })
    })
}

pin_project_lite::pin_project! {
    /// A response body that hands its connection back when it ends.
    struct Returning {
        #[pin]
        body: Incoming,
        connection: Option<(SocketAddr, SendRequest<Body>)>,
    }

    impl PinnedDrop for Returning {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body dropped before its end leaves unread bytes on the connection, which
            // then cannot carry another request: it is closed with the sender.
            if this.body.is_end_stream()
                && let Some((addr, sender)) = this.connection.take()
            {
                checkin(addr, sender);
            }
        }
    }
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if frame.is_none()
            && let Some((addr, sender)) = this.connection.take()
        {
            checkin(addr, sender);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
