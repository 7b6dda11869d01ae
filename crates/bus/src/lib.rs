//! The event bus every Flotilla service publishes to and consumes from: one object-safe
//! [`EventBus`] trait, chosen at start-up from a URL by [`connect`], with two backends —
//! an embedded, durable SQLite file (`sqlite://<data>/bus.db`, the default of
//! `flotilla up`; no server) and RabbitMQ (`amqp://user:pw@host:5672/%2f`).
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo() -> Result<(), bus::BusError> {
//! use std::sync::Arc;
//! use bus::{BusOptions, EventBus, Message, Nack, Subscription};
//!
//! let bus: Arc<dyn EventBus> = bus::connect("sqlite:///tmp/bus.db", BusOptions::default()).await?;
//! // Publish: returns once the message is durable (committed / confirmed by the broker).
//! bus.publish(Message::json("video", &serde_json::json!({"job_id": "j1"}))?).await?;
//!
//! // Consume as group `video`: every group gets every matching message, consumers of one
//! // group share them. Settle each delivery explicitly.
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let worker = bus::Consumer::new(bus.clone(), Subscription::new("video", "video").with_prefetch(8))
//!     .concurrency(2)
//!     .run(shutdown.clone(), |message| async move {
//!         let job: serde_json::Value = message.decode().map_err(|e| Nack::Reject(e.to_string()))?;
//!         // … do the work; an Err(Nack::Retry(reason)) retries with backoff …
//!         let _ = job;
//!         Ok(())
//!     });
//! # let _ = worker; Ok(()) }
//! ```
//!
//! * **Publishing** — [`Message::new`]/[`Message::json`] give a unique time-ordered id and a
//!   W3C `traceparent` header (continue a trace with [`Message::with_traceparent`]).
//!   Delivery is at least once, so a message may arrive twice: consumers make effects
//!   idempotent with the [`Inbox`].
//! * **Consuming** — [`EventBus::subscribe`] gives a stream of [`Delivery`]s (at most
//!   `prefetch` unsettled); [`Consumer`] runs a handler over it with a concurrency limit,
//!   acks on `Ok`, and on `Err(`[`Nack`]`)` retries with exponential backoff
//!   ([`RetryPolicy`], default 5 attempts) or dead-letters at once ([`Nack::Reject`], for
//!   bodies that can never be handled); [`Nack::Requeue`] (interrupted by shutdown) hands
//!   the message out again as the same attempt. A consumer that dies without settling
//!   gets its deliveries redelivered.
//! * **Dead letters** — [`EventBus::dead_letters`] lists them with the reason;
//!   [`EventBus::replay_dead_letters`] puts them back in their group's queue
//!   (`flotilla bus dlq list|replay`).
//! * **Transactional outbox** — write business rows and the outgoing message in one
//!   transaction with [`Outbox::enqueue`]; an [`OutboxRelay`] publishes them in order and
//!   marks them sent, retrying while the bus is away.
//! * **Inbox** — the message id is inserted in the same transaction as the consumer's
//!   effects: [`Inbox::record`] says `false` for "already processed, skip and ack";
//!   [`Inbox::stage`] (the runner's way) puts a plain insert with the write's last
//!   statements, which fails on the key for a message processed before, undoing the write.
//! * **Handlers** — services do not write that sequence themselves: a [`Handler`] says
//!   what a message means, and a [`Runner`] (handler.rs) owns decoding, the transaction,
//!   the inbox, the outbox, the commit, the acknowledgement and the retry mapping.
//!
//! Metrics (`metrics` facade; the process installs the recorder): `bus_published_total`,
//! `bus_delivered_total`, `bus_acked_total`, `bus_retried_total`,
//! `bus_dead_lettered_total` (label `group`), `bus_queue_depth` (gauge per group),
//! `bus_outbox_lag` and `bus_outbox_lag_seconds` (per outbox table).
//!
//! Backend details: [`embedded`] (SQLite: WAL, group commit, leases) and [`amqp`]
//! (RabbitMQ topology, confirms, reconnects).
//!
//! Operating notes:
//! * Group names are queue names on RabbitMQ, so they must be unique per system: a
//!   service names its group after what it consumes (`video` for the converters, as the
//!   reference system's queue) or after itself (`query`, `notification`).
//! * A group's patterns accumulate: subscribing with a new pattern adds a binding, it
//!   does not remove old ones.
//! * RabbitMQ fixes queue arguments at declaration: changing `max_attempts` or the backoff
//!   of an existing group (or upgrading from a version that declared them otherwise)
//!   needs its queues deleted first. The broker refuses a redeclaration with other
//!   arguments; the [`Consumer`] reports it as a permanent [`SubscriptionFailure`]
//!   ([`BusError::Topology`], with the queues to delete) on its [`ConsumerHealth`],
//!   which the service adds to its readiness as the `consumers` check.
//! * In one process every [`connect`] to the same embedded file shares one writer and the
//!   options of the first caller.

#[cfg(feature = "rabbitmq")]
pub mod amqp;
mod consumer;
mod delivery;
pub mod embedded;
mod handler;
mod message;
mod outbox;
mod push;
pub mod registry;
pub mod tap;
pub mod trace;

use std::{fmt, pin::Pin, sync::Arc, task, time::Duration};

use bytes::Bytes;
use futures::{Stream, future::BoxFuture, stream::BoxStream};

pub use consumer::{Consumer, ConsumerHealth, Ready, SubscriptionFailure, processing_span};
pub use delivery::Delivery;
pub use handler::{
    CONSUMER_CONCURRENCY, Delivered, Failure, Handled, Handler, HandlerError, Retry, Runner, Store,
    Tx, decode_json,
};
pub use message::{
    Attempt, DeadLetter, Message, Nack, RetryPolicy, Subscription, TRACEPARENT, new_traceparent,
    topic_matches,
};
pub use outbox::{Inbox, Outbox, OutboxPublisher, OutboxRelay, migrations as outbox_migrations};
pub use push::{IgnorePushes, PushError, PushTarget};
pub use storage::Statements;

/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "unsupported bus URL '{0}': expected sqlite://PATH (embedded) or amqp://HOST (RabbitMQ)"
    )]
    UnsupportedUrl(String),
    #[error("invalid bus setting: {0}")]
    InvalidSetting(String),
    #[error("cannot encode the message body: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("embedded bus storage failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("embedded bus transaction failed: {0}")]
    Embedded(String),
    #[error("the embedded bus is closed")]
    Closed,
    #[cfg(feature = "rabbitmq")]
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{0}")]
    NotBuiltIn(storage::NotBuiltIn),
    #[error("RabbitMQ refused (nacked) message {0}")]
    PublishRefused(String),
    /// No consumer group is bound to the routing key yet, so nothing would keep the
    /// message. Publishers keep it (an outbox retries) until a consumer subscribes.
    #[error(
        "no consumer group is bound to routing key '{0}' yet; the message was not taken (start its consumer)"
    )]
    Unroutable(String),
    #[error("RabbitMQ is unreachable: {0}")]
    Unavailable(String),
    /// The broker holds a queue of this group declared differently (an earlier version,
    /// other retry settings): nothing consumes until an operator resolves it.
    #[error("{0}")]
    Topology(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error("{0}")]
    Unsupported(String),
}

/// A stream of deliveries for one consumer of a group. Dropping it stops consuming;
/// deliveries already handed out stay valid until settled.
pub struct Subscriber {
    pub(crate) inner: BoxStream<'static, Result<Delivery, BusError>>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber").finish_non_exhaustive()
    }
}

impl Stream for Subscriber {
    type Item = Result<Delivery, BusError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
    ) -> task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// [`EventBus::publish_in_order`] one message at a time: each awaited before the next,
/// stopping at the first the bus does not take.
pub async fn publish_one_by_one<B: EventBus + ?Sized>(
    bus: &B,
    messages: Vec<Message>,
) -> (usize, Option<BusError>) {
    let mut published = 0;
    for message in messages {
        if let Err(error) = bus.publish(message).await {
            return (published, Some(error));
        }
        published += 1;
    }
    (published, None)
}

/// The bus. Object safe: services hold an `Arc<dyn EventBus>`.
pub trait EventBus: Send + Sync + fmt::Debug {
    /// Publishes `message`; returns once it is durable (committed to the embedded store
    /// or confirmed by the broker), so an `Ok` is never lost. A message whose routing key
    /// no consumer group is bound to yet is refused with [`BusError::Unroutable`] rather
    /// than accepted and dropped.
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<(), BusError>>;

    /// Publishes several messages, each durable when this returns `Ok`; cheaper than one
    /// call each (one transaction / pipelined confirms).
    fn publish_all(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            futures::future::try_join_all(messages.into_iter().map(|m| self.publish(m))).await?;
            Ok(())
        })
    }

    /// Publishes `messages` in order and stops at the first one the bus does not take
    /// (say, [`BusError::Unroutable`]): returns how many from the front are durable, and
    /// the error that stopped it. An outbox marks exactly those sent. Messages after the
    /// stopping one may have been published as well (duplicates, which consumers
    /// deduplicate). The default publishes one at a time.
    fn publish_in_order(&self, messages: Vec<Message>) -> BoxFuture<'_, (usize, Option<BusError>)> {
        Box::pin(publish_one_by_one(self, messages))
    }

    /// Declares the group (durably: messages published from now on are kept for it even
    /// while no consumer runs) and starts one consumer of it.
    fn subscribe(&self, subscription: Subscription) -> BoxFuture<'_, Result<Subscriber, BusError>>;

    /// Dead letters of `group` (every group when `None`, if the backend can list them all),
    /// oldest first, at most `limit`.
    fn dead_letters<'a>(
        &'a self,
        group: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, BusError>>;

    /// Puts dead letters back into their group's queue with a fresh attempt count: those
    /// with the given message `ids`, or all of `group` when `ids` is empty. Returns how
    /// many were replayed.
    fn replay_dead_letters<'a>(
        &'a self,
        group: Option<&'a str>,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, BusError>>;

    /// Messages waiting in `group` (not yet acknowledged), when the backend knows.
    fn queue_depth<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Result<Option<u64>, BusError>>;

    /// Flushes and closes; later calls fail.
    fn close(&self) -> BoxFuture<'_, ()>;

    /// Sends `body` to whoever [`listen`](EventBus::listen)s to `topic` right now —
    /// not durably, not to anyone who listens later: heartbeats of the service registry
    /// and batches of the system map's observations. Embedded: a table of the bus file
    /// pruned after a minute (other processes sharing the file see it within the poll
    /// interval); RabbitMQ: the topic exchange `<exchange>.signals`, unconfirmed.
    fn signal<'a>(&'a self, topic: &'a str, body: Bytes) -> BoxFuture<'a, Result<(), BusError>> {
        let _ = (topic, body);
        Box::pin(async { Err(BusError::Unsupported("this bus has no signals".to_owned())) })
    }

    /// The signals sent on `topic` from now on (see [`EventBus::signal`]). The stream
    /// ends when the connection is lost: listen again.
    fn listen<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Bytes>, BusError>> {
        let _ = topic;
        Box::pin(async { Err(BusError::Unsupported("this bus has no signals".to_owned())) })
    }

    /// What the bus knows of `group` now: messages waiting, delivered and unsettled,
    /// consumers, dead letters. On RabbitMQ from passive declares of the group's queue
    /// and its parking queue (one channel, no management API).
    fn group_stats<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Result<GroupStats, BusError>> {
        Box::pin(async move {
            Ok(GroupStats {
                depth: self.queue_depth(group).await?,
                dead_letters: Some(self.dead_letters(Some(group), 10_000).await?.len() as u64),
                ..GroupStats::default()
            })
        })
    }

    /// The tap of this bus: every message its handles in this process publish and
    /// settle, and the groups they consume (see [`tap`]).
    fn tap(&self) -> Arc<tap::Tap>;

    /// Which backend this is: `embedded` or `rabbitmq`.
    fn backend(&self) -> &'static str {
        "unknown"
    }

    /// Whether the broker is reachable right now (`Err` says why). Services report it as
    /// a *degraded* readiness check: while it fails, writes still go to their outboxes
    /// and are published once it is back.
    fn health(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// A consumer group as the bus sees it ([`EventBus::group_stats`]); `None` where the
/// backend cannot tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupStats {
    /// Messages waiting to be delivered (RabbitMQ: ready; embedded: not yet settled).
    pub depth: Option<u64>,
    /// Delivered and not yet settled (embedded: leased).
    pub in_flight: Option<u64>,
    /// Consumers attached (RabbitMQ).
    pub consumers: Option<u64>,
    pub dead_letters: Option<u64>,
}

/// Settings shared by both backends (URL query parameters override some, see
/// [`connect`]).
#[derive(Debug, Clone)]
pub struct BusOptions {
    pub retry: RetryPolicy,
    /// Embedded: how long a delivery stays leased to a consumer before it is given to
    /// another (the consumer is presumed dead).
    pub lease: Duration,
    /// RabbitMQ: the topic exchange all messages go through.
    pub exchange: String,
    /// RabbitMQ: how long a publish keeps retrying while the broker is unreachable.
    pub publish_timeout: Duration,
    /// The service using this handle: the publisher of what it publishes and the owner
    /// of what it subscribes to, as the system map shows them ([`tap`], [`registry`]).
    pub service: Option<String>,
}

impl BusOptions {
    /// The defaults, for `service`.
    pub fn for_service(service: &str) -> Self {
        Self {
            service: Some(service.to_owned()),
            ..Self::default()
        }
    }
}

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            lease: Duration::from_secs(30),
            exchange: "flotilla".to_owned(),
            publish_timeout: Duration::from_secs(30),
            service: None,
        }
    }
}

/// Opens the bus named by `url`:
///
/// * `sqlite://PATH` (or `sqlite:PATH`) — the embedded bus in that file, created if
///   missing. Query: `synchronous=full|normal` (default `full`: an acknowledged publish
///   survives power loss; `normal` only process crashes).
/// * `amqp://…` / `amqps://…` — RabbitMQ. Query parameters other than the broker's own:
///   `exchange=NAME` (default `flotilla`).
pub async fn connect(url: &str, options: BusOptions) -> Result<Arc<dyn EventBus>, BusError> {
    check_url(url)?;
    match scheme(url).as_deref() {
        Some("sqlite") => Ok(Arc::new(
            embedded::EmbeddedBus::open_url(url, options).await?,
        )),
        #[cfg(feature = "rabbitmq")]
        Some("amqp" | "amqps") => Ok(Arc::new(amqp::AmqpBus::connect(url, options).await?)),
        _ => Err(BusError::UnsupportedUrl(storage::redact(url))),
    }
}

/// Refuses, before anything is opened, a URL no bus could ever open: a scheme no backend
/// speaks, or a backend this build was compiled without.
pub fn check_url(url: &str) -> Result<(), BusError> {
    match scheme(url).as_deref() {
        Some("sqlite") => Ok(()),
        Some("amqp" | "amqps") if cfg!(feature = "rabbitmq") => Ok(()),
        Some("amqp" | "amqps") => Err(BusError::NotBuiltIn(storage::NotBuiltIn {
            backend: "RabbitMQ",
            feature: "rabbitmq",
        })),
        _ => Err(BusError::UnsupportedUrl(storage::redact(url))),
    }
}

fn scheme(url: &str) -> Option<String> {
    url.split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase())
}

/// The default bus URL of `flotilla up`: the embedded bus in `data_dir`.
pub fn default_url(data_dir: &std::path::Path) -> String {
    format!("sqlite://{}", data_dir.join("bus.db").display())
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build without RabbitMQ (`--no-default-features`, as CI builds it once) refuses an
    /// AMQP URL by name and says which feature builds it in.
    #[cfg(not(feature = "rabbitmq"))]
    #[tokio::test]
    async fn an_amqp_url_needs_the_rabbitmq_feature() {
        let options = BusOptions::default();
        match connect("amqp://guest:guest@127.0.0.1:5672/%2f", options).await {
            Err(BusError::NotBuiltIn(missing)) => {
                assert_eq!(missing.feature, "rabbitmq");
                assert!(missing.to_string().contains("RabbitMQ"), "{missing}");
            }
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("an AMQP bus opened without the rabbitmq feature"),
        }
    }

    /// Whatever the features, an unknown scheme is refused as unsupported.
    #[tokio::test]
    async fn an_unknown_scheme_is_unsupported() {
        let refused = connect("kafka://broker:9092", BusOptions::default()).await;
        assert!(matches!(refused, Err(BusError::UnsupportedUrl(_))));
    }
}
