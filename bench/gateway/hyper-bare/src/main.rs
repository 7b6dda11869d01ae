//! A bare reverse proxy on hyper: hyper 1's HTTP/1 server in front of hyper-util's legacy
//! client and its keep-alive pool, with nothing of ours between them: no routing, no
//! header added or removed, no timeout, no logging. It is the ceiling of the engine the
//! flotilla gateway is built on (issue 21): what the gateway costs beyond it is our
//! layers. Measured by bench/gateway/run.sh beside nginx, HAProxy, bare Pingora and the
//! gateway.
//!
//!   hyper-bare LISTEN_ADDR UPSTREAM_ADDR [THREADS] [steal|nosteal]
//!
//! THREADS defaults to 1. `steal` (the default, as pingora-bare's) runs the threads as one
//! work-stealing tokio runtime with one client; `nosteal` as one single-threaded runtime
//! per thread, each with its own client (so its own pool), accepting from the same
//! socket: the model of the flotilla gateway's HTTP threads.
//!
//! SIGINT or SIGTERM ends it at once (the process exits, so callgrind writes its file).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

type Upstream = Client<HttpConnector, Incoming>;
type Answer = Response<Either<Incoming, Empty<Bytes>>>;

/// The client the proxy forwards with: hyper-util's defaults (its pool keeps idle
/// connections per host), TCP_NODELAY as on the accepted side.
fn client() -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends `request` to the upstream as it came (method, path, headers, streaming body) and
/// answers with the upstream's response as it came; 502 if the upstream cannot be reached.
async fn forward(
    client: Upstream,
    upstream: Authority,
    mut request: Request<Incoming>,
) -> Result<Answer, Infallible> {
    // The client's pool is keyed by scheme and authority, so the request gets an
    // absolute URI; the client sends it in origin form and keeps the request's Host.
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(upstream);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    let Ok(uri) = Uri::from_parts(parts) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    *request.uri_mut() = uri;
    Ok(match client.request(request).await {
        Ok(response) => response.map(Either::Left),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    })
}

fn status(code: StatusCode) -> Answer {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = code;
    response
}

/// Accepts connections from `listener` and serves each with hyper's HTTP/1 server
/// (its defaults: keep-alive, no header timeout) on the current runtime.
async fn serve(listener: TcpListener, upstream: Authority, client: Upstream) {
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
        let client = client.clone();
        let upstream = upstream.clone();
        let service = hyper::service::service_fn(move |request| {
            forward(client.clone(), upstream.clone(), request)
        });
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

fn run(
    listen: SocketAddr,
    upstream: Authority,
    threads: usize,
    steal: bool,
) -> std::io::Result<()> {
    if steal {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let stop = stop_signal()?;
            let listener = TcpListener::bind(listen).await?;
            tokio::spawn(serve(listener, upstream, client()));
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
                let upstream = upstream.clone();
                std::thread::Builder::new()
                    .name(format!("http-{index}"))
                    .spawn(move || {
                        let served = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .and_then(|runtime| {
                                runtime.block_on(async move {
                                    let listener = TcpListener::from_std(listener)?;
                                    serve(listener, upstream, client()).await;
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
    let usage = "usage: hyper-bare LISTEN_ADDR UPSTREAM_ADDR [THREADS] [steal|nosteal]";
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let Ok(listen) = listen.parse::<SocketAddr>() else {
        eprintln!("LISTEN_ADDR must be IP:PORT, got {listen:?}\n{usage}");
        return ExitCode::from(2);
    };
    let Some(upstream) = upstream
        .parse::<SocketAddr>()
        .ok()
        .and_then(|addr| Authority::try_from(addr.to_string()).ok())
    else {
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
    if args.len() > 4 {
        eprintln!("{usage}");
        return ExitCode::from(2);
    }
    match run(listen, upstream, threads, steal) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hyper-bare: {error}");
            ExitCode::FAILURE
        }
    }
}
