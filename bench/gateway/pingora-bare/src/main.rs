//! A bare reverse proxy on Pingora's proxy framework: every request goes to the one
//! upstream over Pingora's keepalive pool, with no filter of ours on the way. It is the
//! floor for a gateway data plane on Pingora (issue 21), measured by bench/gateway/run.sh
//! beside nginx, HAProxy and the flotilla gateway.
//!
//!   pingora-bare LISTEN_ADDR UPSTREAM_ADDR [THREADS] [steal|nosteal]
//!
//! THREADS defaults to 1. `steal` (the default, as Pingora's) runs the threads as one
//! work-stealing tokio runtime; `nosteal` as one single-threaded runtime per thread, the
//! model of the flotilla gateway's HTTP threads.
//!
//! SIGINT stops it at once, SIGTERM after Pingora's graceful drain.

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        // Plain HTTP, no SNI: the peer's key is its address, so every request of a thread
        // finds the same pooled connections.
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: pingora-bare LISTEN_ADDR UPSTREAM_ADDR [THREADS] [steal|nosteal]";
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
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
    let work_stealing = match args.get(3).map(String::as_str) {
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
    // Worker threads of the proxy service; the rest is Pingora's default configuration
    // (upstream keepalive pool of 128 connections).
    let conf = ServerConf {
        threads,
        work_stealing,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever()
}
