//! A bare reverse proxy on monoio: monoio-http's HTTP/1 server codec (`RequestDecoder`,
//! `GenericEncoder`) in front of monoio-transports' `HttpConnector` (HTTP/1 only, its
//! per-thread keep-alive pool keyed by the upstream address), with nothing between them:
//! no routing, no header added or removed, no timeout, no logging. The server loop is
//! monolake's `HttpCoreService::h1_svc` without its timeouts and the client call its
//! `UpstreamHandler::send_http_request` without the `Forwarded` header, so this is the
//! engine under the monolake proxy as monolake runs it. The peer of bench/gateway/hyper-bare
//! (issue 21).
//!
//!   monoio-bare LISTEN_ADDR UPSTREAM_ADDR [THREADS] [legacy|uring]
//!
//! THREADS (default 1) event loops of monoio's thread-per-core runtime, each accepting from
//! the same listening socket with a connector (so a pool) of its own: the model of
//! hyper-bare's `nosteal` and of the flotilla gateway's HTTP threads. The driver is
//! monoio's `legacy` one (epoll, the default) or `uring`
//! (io_uring, what monoio is made for). Timers are enabled, as monolake has them.
//!
//! One difference from hyper-bare that is monoio-transports' design, not ours: its HTTP/1
//! client reads the upstream's whole response body before it hands the response over, and
//! the connection goes back to the pool then; the body is not streamed to the client as it
//! arrives.
//!
//! SIGINT or SIGTERM ends it at once (the process exits, so callgrind writes its file).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use monoio::io::sink::SinkExt;
use monoio::io::stream::Stream;
use monoio::io::Splitable;
use monoio::net::{TcpListener, TcpStream};
use monoio_http::common::body::{FixedBody, HttpBody};
use monoio_http::h1::codec::decoder::{FillPayload, RequestDecoder};
use monoio_http::h1::codec::encoder::GenericEncoder;
use monoio_transports::connectors::{Connector, TcpConnector};
use monoio_transports::http::HttpConnector;

/// monolake's `PooledHttpConnector`, HTTP/1 only (`HttpVersion::Http11`).
type Upstream = HttpConnector<TcpConnector, SocketAddr, TcpStream>;
type Request = http::Request<HttpBody>;
type Response = http::Response<HttpBody>;

/// Sends `request` to the upstream as it came (method, path, version, headers, body) on a
/// pooled connection or a new one, and answers with the upstream's response as it came;
/// 502 if the upstream cannot be reached or fails.
async fn forward(upstream: &Upstream, addr: SocketAddr, request: Request) -> Response {
    let mut connection = match upstream.connect(addr).await {
        Ok(connection) => connection,
        Err(_) => return status(StatusCode::BAD_GATEWAY),
    };
    match connection.send_request(request).await {
        (Ok(response), _) => response,
        (Err(_), _) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(code: StatusCode) -> Response {
    let mut response = http::Response::new(HttpBody::fixed_body(None));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// Polls `main` to its end while also driving `fill` (the request body's reader) until it
/// ends; returns `main`'s output. What monolake's `AccompanyPair` does, without moving a
/// polled future.
async fn accompanied<M: Future, F: Future>(
    main: M,
    fill: &mut std::pin::Pin<&mut F>,
    filled: &mut Option<F::Output>,
) -> M::Output {
    let mut main = pin!(main);
    poll_fn(|cx| {
        if filled.is_none() {
            if let Poll::Ready(output) = fill.as_mut().poll(cx) {
                *filled = Some(output);
            }
        }
        main.as_mut().poll(cx)
    })
    .await
}

/// One client connection: monolake's HTTP/1 loop (decode a request head; forward it while
/// its body is read; write the response while the body may still be read; the next).
async fn serve_connection(stream: TcpStream, upstream: Rc<Upstream>, addr: SocketAddr) {
    let (reader, writer) = stream.into_split();
    let mut decoder = RequestDecoder::new(reader);
    let mut encoder = GenericEncoder::new(writer);
    loop {
        let request = match decoder.next().await {
            Some(Ok(request)) => HttpBody::request(request),
            // A bad head or the client gone: no concern of a bench proxy.
            Some(Err(_)) | None => return,
        };
        let mut fill = pin!(decoder.fill_payload());
        let mut filled = None;
        let response = accompanied(forward(&upstream, addr, request), &mut fill, &mut filled).await;
        let sent = accompanied(encoder.send_and_flush(response), &mut fill, &mut filled).await;
        if sent.is_err() {
            return;
        }
        let filled = match filled {
            Some(filled) => filled,
            None => fill.await,
        };
        if filled.is_err() {
            return;
        }
    }
}

/// Accepts connections and serves each on this thread with this thread's connector. With
/// `stop`, the thread also looks at it every 100 ms and ends the process once it is set.
async fn serve(listener: TcpListener, addr: SocketAddr, stop: Option<Arc<AtomicBool>>) {
    if let Some(stop) = stop {
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(Duration::from_millis(100)).await;
                if stop.load(Ordering::Relaxed) {
                    std::process::exit(0);
                }
            }
        });
    }
    let upstream = Rc::new(Upstream::build_tcp_http1_only());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: back off instead of spinning.
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        monoio::spawn(serve_connection(stream, upstream.clone(), addr));
    }
}

#[derive(Clone, Copy)]
enum Driver {
    Legacy,
    Uring,
}

/// One HTTP thread: a monoio runtime with `driver` and timers serving `listener`.
///
/// With io_uring the thread also watches `stop` itself: under valgrind (callgrind), a
/// thread waiting in `io_uring_enter` keeps valgrind's lock, so the main thread never runs
/// to see the signal; a wait with a timeout lets it go. The epoll driver needs none of it.
fn thread(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    driver: Driver,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    match driver {
        Driver::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .block_on(async move {
                serve(TcpListener::from_std(listener)?, addr, None).await;
                Ok(())
            }),
        Driver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()?
            .block_on(async move {
                serve(TcpListener::from_std(listener)?, addr, Some(stop)).await;
                Ok(())
            }),
    }
}

fn run(listen: SocketAddr, addr: SocketAddr, threads: usize, driver: Driver) -> std::io::Result<()> {
    // The handlers first (a signal sent as soon as the proxy listens is not lost); they
    // replace the SIGINT that a background job of a shell inherits ignored.
    let stopping = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
    let mut signals = signal_hook::iterator::Signals::new(stopping)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in stopping {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    for index in 0..threads {
        let listener = listener.try_clone()?;
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("http-{index}"))
            .spawn(move || {
                if let Err(error) = thread(listener, addr, driver, stop) {
                    eprintln!("monoio-bare: HTTP thread {index}: {error}");
                    std::process::exit(1);
                }
            })?;
    }
    // The main thread only waits for the signal.
    let _ = signals.forever().next();
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: monoio-bare LISTEN_ADDR UPSTREAM_ADDR [THREADS] [legacy|uring]";
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
    let driver = match args.get(3).map(String::as_str) {
        None | Some("legacy") => Driver::Legacy,
        Some("uring") => Driver::Uring,
        Some(other) => {
            eprintln!("the driver is legacy or uring, got {other:?}\n{usage}");
            return ExitCode::from(2);
        }
    };
    if args.len() > 4 {
        eprintln!("{usage}");
        return ExitCode::from(2);
    }
    match run(listen, upstream, threads, driver) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("monoio-bare: {error}");
            ExitCode::FAILURE
        }
    }
}
