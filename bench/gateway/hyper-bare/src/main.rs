//! A bare reverse proxy on hyper: hyper 1's HTTP/1 server in front of hyper-util's legacy
//! client and its keep-alive pool, with nothing of ours between them: no routing, no
//! header added or removed, no timeout, no logging. It is the ceiling of the engine the
//! flotilla gateway is built on (issue 21): what the gateway costs beyond it is our
//! layers. Measured by bench/gateway/run.sh beside nginx, HAProxy, bare Pingora and the
//! gateway.
//!
//!   hyper-bare LISTEN_ADDR UPSTREAM_ADDR [THREADS] [steal|nosteal] [legacy|conn]
//!
//! The client is hyper-util's legacy `Client` (`legacy`, the default), or (`conn`) hyper's
//! own HTTP/1 client connections (`hyper::client::conn::http1`) in a per-thread pool
//! without lock or hash, handed back when the response body ends: the way the gateway's
//! `upstream::pool` uses hyper, so that mode is the engine exactly as the gateway runs it.
//!
//! THREADS defaults to 1. `steal` (the default, as pingora-bare's) runs the threads as one
//! work-stealing tokio runtime with one client; `nosteal` as one single-threaded runtime
//! per thread, each with its own client (so its own pool), accepting from the same
//! socket: the model of the flotilla gateway's HTTP threads.
//!
//! SIGINT or SIGTERM ends it at once (the process exits, so callgrind writes its file).

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

type Legacy = Client<HttpConnector, Incoming>;
type Answer = Response<Either<Either<Incoming, Returning>, Empty<Bytes>>>;

/// How requests reach the upstream (the last argument).
#[derive(Clone)]
enum Upstream {
    /// hyper-util's legacy client, its pool keyed by scheme and authority.
    Legacy(Legacy, Authority),
    /// hyper's HTTP/1 client connections to this address, pooled per thread ([`IDLE`]).
    Conn(SocketAddr),
}

/// The client the proxy forwards with: hyper-util's defaults (its pool keeps idle
/// connections per host), TCP_NODELAY as on the accepted side.
fn legacy() -> Legacy {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn forward(upstream: Upstream, request: Request<Incoming>) -> Result<Answer, Infallible> {
    Ok(match upstream {
        Upstream::Legacy(client, authority) => forward_legacy(client, authority, request).await,
        Upstream::Conn(addr) => forward_conn(addr, request).await,
    })
}

/// Sends `request` to the upstream as it came (method, path, headers, streaming body) and
/// answers with the upstream's response as it came; 502 if the upstream cannot be reached.
async fn forward_legacy(
    client: Legacy,
    upstream: Authority,
    mut request: Request<Incoming>,
) -> Answer {
    // The client's pool is keyed by scheme and authority, so the request gets an
    // absolute URI; the client sends it in origin form and keeps the request's Host.
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(upstream);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    let Ok(uri) = Uri::from_parts(parts) else {
        return status(StatusCode::BAD_REQUEST);
    };
    *request.uri_mut() = uri;
    match client.request(request).await {
        Ok(response) => response.map(|body| Either::Left(Either::Left(body))),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

thread_local! {
    /// This thread's idle upstream connections (`conn`), most recent last. One upstream,
    /// so no key: a scan from the end, as the gateway's pool scans its few endpoints.
    static IDLE: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

/// Sends `request` as it came (origin form, its Host) on an idle connection of this
/// thread that can take it now, or on a new one.
async fn forward_conn(addr: SocketAddr, request: Request<Incoming>) -> Answer {
    let idle = IDLE.with_borrow_mut(|idle| {
        // Closed connections go; one still finishing its last exchange stays for later.
        idle.retain(|sender| !sender.is_closed());
        let ready = idle.iter().rposition(SendRequest::is_ready)?;
        Some(idle.swap_remove(ready))
    });
    let mut sender = match idle {
        Some(sender) => sender,
        None => match connect(addr).await {
            Ok(sender) => sender,
            Err(_) => return status(StatusCode::BAD_GATEWAY),
        },
    };
    match sender.send_request(request).await {
        Ok(response) => response.map(|body| {
            Either::Left(Either::Right(Returning {
                body,
                sender: Some(sender),
            }))
        }),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Incoming>, Box<dyn std::error::Error>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.ready().await?;
    Ok(sender)
}

/// A response body that hands its connection back to [`IDLE`] when it ends.
struct Returning {
    body: Incoming,
    sender: Option<SendRequest<Incoming>>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some(sender) = self.sender.take() {
            IDLE.with_borrow_mut(|idle| idle.push(sender));
        }
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // Ended (hyper's server stops polling a body that says it has ended): reusable.
        // Dropped half-way, its unread bytes make the connection useless: it closes.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() {
            self.give_back();
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

fn status(code: StatusCode) -> Answer {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = code;
    response
}

/// Accepts connections from `listener` and serves each with hyper's HTTP/1 server
/// (its defaults: keep-alive, no header timeout) on the current runtime.
async fn serve(listener: TcpListener, upstream: Upstream) {
    let http = hyper::server::conn::http1::Builder::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let upstream = upstream.clone();
        let service = hyper::service::service_fn(move |request| forward(upstream.clone(), request));
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            // A client that goes away mid-request is no concern of a bench proxy.
            let _ = connection.await;
        });
    }
}

/// Resolves when SIGINT or SIGTERM arrives. The handlers are installed before this
/// returns its future, so a signal sent as soon as the proxy listens is not lost.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// The upstream as `client` reaches it: each call a client of its own (a pool of its own).
fn upstream(addr: SocketAddr, authority: &Authority, client: Mode) -> Upstream {
    match client {
        Mode::Legacy => Upstream::Legacy(legacy(), authority.clone()),
        Mode::Conn => Upstream::Conn(addr),
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Legacy,
    Conn,
}

fn run(
    listen: SocketAddr,
    addr: SocketAddr,
    threads: usize,
    steal: bool,
    client: Mode,
) -> std::io::Result<()> {
    let authority = Authority::try_from(addr.to_string())
        .map_err(|error| std::io::Error::other(error.to_string()))?;
    if steal {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let stop = stop_signal()?;
            let listener = TcpListener::bind(listen).await?;
            tokio::spawn(serve(listener, upstream(addr, &authority, client)));
            stop.await;
            Ok(())
        })
    } else {
        // The main thread only waits for the signal; each HTTP thread is an event loop
        // of its own with its own client, as the gateway's.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let stop = stop_signal()?;
            let listener = TcpListener::bind(listen).await?.into_std()?;
            for index in 0..threads {
                let listener = listener.try_clone()?;
                let authority = authority.clone();
                std::thread::Builder::new()
                    .name(format!("http-{index}"))
                    .spawn(move || {
                        let served = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .and_then(|runtime| {
                                runtime.block_on(async move {
                                    let listener = TcpListener::from_std(listener)?;
                                    serve(listener, upstream(addr, &authority, client)).await;
                                    Ok::<_, std::io::Error>(())
                                })
                            });
                        if let Err(error) = served {
                            eprintln!("hyper-bare: HTTP thread {index}: {error}");
                            std::process::exit(1);
                        }
                    })?;
            }
            stop.await;
            Ok(())
        })
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: hyper-bare LISTEN_ADDR UPSTREAM_ADDR [THREADS] [steal|nosteal] [legacy|conn]";
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let Ok(listen) = listen.parse::<SocketAddr>() else {
        eprintln!("LISTEN_ADDR must be IP:PORT, got {listen:?}\n{usage}");
        return ExitCode::from(2);
    };
    let Ok(upstream) = upstream.parse::<SocketAddr>() else {
        eprintln!("UPSTREAM_ADDR must be IP:PORT, got {upstream:?}\n{usage}");
        return ExitCode::from(2);
    };
    let threads = match args.get(2).map(|t| t.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if (1..=256).contains(&n) => n,
        Some(_) => {
            eprintln!("THREADS must be 1..=256\n{usage}");
            return ExitCode::from(2);
        }
    };
    let steal = match args.get(3).map(String::as_str) {
        None | Some("steal") => true,
        Some("nosteal") => false,
        Some(other) => {
            eprintln!("the runtime is steal or nosteal, got {other:?}\n{usage}");
            return ExitCode::from(2);
        }
    };
    let client = match args.get(4).map(String::as_str) {
        None | Some("legacy") => Mode::Legacy,
        Some("conn") => Mode::Conn,
        Some(other) => {
            eprintln!("the client is legacy or conn, got {other:?}\n{usage}");
            return ExitCode::from(2);
        }
    };
    if args.len() > 5 {
        eprintln!("{usage}");
        return ExitCode::from(2);
    }
    match run(listen, upstream, threads, steal, client) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hyper-bare: {error}");
            ExitCode::FAILURE
        }
    }
}
