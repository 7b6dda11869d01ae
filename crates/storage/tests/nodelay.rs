//! The TCP connections sqlx opens to PostgreSQL and MySQL send without Nagle's delay.
//!
//! sqlx-core 0.9.0 stopped setting `TCP_NODELAY` (upstream issue 4335); the workspace
//! patches it back (vendor/README.md). Without it a message sqlx writes in two parts waits
//! for the server's delayed ACK: on the `serve` path that was `GET /posts` answers of
//! 100–200 ms while posts were being created (BENCHMARKS.md). Both drivers open their
//! sockets through `sqlx_core::net::connect_tcp`, which this asks directly.

use std::any::Any;

use sqlx_core::net::{Socket, WithSocket, connect_tcp};

/// Reports whether the stream `connect_tcp` opened has `TCP_NODELAY` set.
struct NoDelay;

impl WithSocket for NoDelay {
    type Output = Option<bool>;

    fn with_socket<S: Socket>(self, socket: S) -> impl Future<Output = Option<bool>> + Send {
        let socket: &dyn Any = &socket;
        let nodelay = socket
            .downcast_ref::<tokio::net::TcpStream>()
            .and_then(|stream| stream.nodelay().ok());
        async move { nodelay }
    }
}

#[tokio::test]
async fn database_connections_are_opened_with_tcp_nodelay() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let port = listener.local_addr().expect("address").port();
    let nodelay = connect_tcp("127.0.0.1", port, NoDelay)
        .await
        .expect("connect");
    assert_eq!(
        nodelay,
        Some(true),
        "sqlx opened a tokio TCP stream with Nagle's algorithm on (None: not a tokio stream)"
    );
}
