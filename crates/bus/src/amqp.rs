//! The RabbitMQ backend (lapin).
//!
//! Topology, declared on start and again after every reconnect (declarations are
//! idempotent), for exchange `E` (default `flotilla`) and each consumer group `G`:
//!
//! | name | kind | purpose |
//! |---|---|---|
//! | `E` | topic exchange, durable | every message is published here with its routing key |
//! | `G` | quorum queue, bound to `E` by the group's patterns | the group's work queue — `video`, `notification`, `media-jobs`, … as an operator expects |
//! | `G.retry.N` | quorum queue, TTL = backoff after attempt N | delayed retry: expired messages go back to `G` through `E.requeue` |
//! | `E.requeue` | direct exchange | routes expired retries back to their group queue (key `G`) |
//! | `G.dead` | quorum queue, bound to `E.dlx` with key `G` | parking queue: dead letters for an operator to list and replay |
//! | `E.dlx` | direct exchange | `G`'s dead-letter exchange: messages the broker gives up on (more than `max_attempts` + 1 deliveries without an ack — a consumer that crashes on them; the extra one is exhausted, for the handler to settle) land in `G.dead` |
//!
//! Quorum queues dead-letter *at least once* (`x-dead-letter-strategy`), so a retry or a
//! dead letter is never dropped on the way. Messages are persistent; every publish waits
//! for the broker's confirm and is *mandatory*: a message no queue is bound for comes
//! back as [`BusError::Unroutable`] instead of being confirmed and dropped. Retrying a delivery publishes a copy to `G.retry.N` (confirmed)
//! and then acks the original; dead-lettering publishes to `G.dead` with the reason in the
//! `x-flotilla-reason` header, then acks; requeueing ([`Nack::Requeue`], a handler
//! interrupted by shutdown) publishes a copy straight to `G` carrying the same attempt
//! number, then acks. A consumer that dies leaves its deliveries unacked
//! and RabbitMQ redelivers them.
//!
//! Long handlers: RabbitMQ has no lease to renew; a delivery stays with its consumer
//! until acked or until the channel closes. The one limit is the broker's delivery
//! acknowledgement timeout (`consumer_timeout`, 30 minutes by default since 3.8.17):
//! a delivery unacked for longer makes the broker close the channel and requeue it,
//! so a handler that may run longer (the converter's `--converter-timeout` plus its
//! transfers) needs `consumer_timeout` raised in `rabbitmq.conf` (or, from 3.12, the
//! queue's `consumer-timeout` policy).
//!
//! Reconnects: one connection per bus with one confirm-mode channel for publishing
//! (lapin channels are safe to share between tasks); each subscriber has its own
//! channel with `basic.qos(prefetch)`. When the connection drops, publishes retry on a
//! fresh connection (with backoff, up to `publish_timeout`) and every subscriber
//! re-declares its topology and consumes again.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt, future::BoxFuture};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    message::BasicGetMessage,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    BusError, BusOptions, DeadLetter, Delivery, EventBus, Message, Nack, RetryPolicy, Subscriber,
    Subscription, delivery::Settle, now_ms,
};

/// Header with our attempt count (1 on first publish; retries carry the next number).
const ATTEMPT: &str = "x-flotilla-attempt";
/// The routing key a message was first published with (a retry travels under another).
const ORIGINAL_KEY: &str = "x-flotilla-routing-key";
const REASON: &str = "x-flotilla-reason";
const DEAD_AT: &str = "x-flotilla-dead-at";
/// Headers that describe a delivery's history rather than the message.
const BOOKKEEPING: &[&str] = &[
    ATTEMPT,
    ORIGINAL_KEY,
    REASON,
    DEAD_AT,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
];

/// The RabbitMQ bus; see the module documentation.
#[derive(Debug, Clone)]
pub struct AmqpBus {
    shared: Arc<Shared>,
    /// The service using this handle ([`BusOptions::service`]).
    service: Option<Arc<str>>,
}

struct Shared {
    uri: String,
    exchange: String,
    options: BusOptions,
    /// The live connection, replaced after a failure.
    link: Mutex<Option<Link>>,
    /// Serialises reconnecting, so one failure makes one new connection.
    reconnecting: tokio::sync::Mutex<()>,
    closed: CancellationToken,
    /// The channel signals are sent on (no confirms), opened on first use.
    signals: tokio::sync::Mutex<Option<Channel>>,
    /// The tap of this broker and exchange in this process.
    tap: Arc<crate::tap::Tap>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBus")
            .field("uri", &storage::redact(&self.uri))
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    publisher: Channel,
    generation: u64,
}

impl Link {
    fn healthy(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

impl AmqpBus {
    /// Connects to `amqp://…[?exchange=NAME]` and declares the exchanges. Fails at once
    /// if the broker is unreachable (a wrong URL should stop start-up); later outages are
    /// survived.
    pub async fn connect(url: &str, mut options: BusOptions) -> Result<Self, BusError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("exchange", name)) if !name.is_empty() => options.exchange = name.to_owned(),
                _ => kept.push(pair),
            }
        }
        let uri = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let shared = Arc::new(Shared {
            tap: crate::tap::of_bus(&format!("{uri}#{}", options.exchange)),
            uri,
            exchange: options.exchange.clone(),
            options,
            link: Mutex::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
            closed: CancellationToken::new(),
            signals: tokio::sync::Mutex::new(None),
        });
        shared.connect_once(0).await?;
        let service = shared.options.service.as_deref().map(Arc::from);
        Ok(Self { shared, service })
    }

    /// A channel of its own for one question on the side (declares, depths, dead
    /// letters), the connection waited for at most the publish timeout.
    async fn side_channel(&self) -> Result<Channel, BusError> {
        let link = self
            .shared
            .link(Some(self.shared.options.publish_timeout))
            .await?;
        Ok(link.connection.create_channel().await?)
    }

    /// The name of group `group`'s parking (dead-letter) queue.
    pub fn parking_queue(group: &str) -> String {
        format!("{group}.dead")
    }
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn queue_arguments(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(ShortString::from(*key), value.clone());
    }
    table
}

impl Shared {
    fn current(&self) -> Option<Link> {
        self.link
            .lock()
            .ok()
            .and_then(|link| link.clone())
            .filter(Link::healthy)
    }

    /// A healthy connection, reconnecting with backoff while the broker is away, for at
    /// most `patience` (forever when `None`).
    async fn link(&self, patience: Option<Duration>) -> Result<Link, BusError> {
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let deadline = patience.map(|p| tokio::time::Instant::now() + p);
        let _one_at_a_time = self.reconnecting.lock().await;
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Some(link) = self.current() {
                return Ok(link);
            }
            if self.closed.is_cancelled() {
                return Err(BusError::Closed);
            }
            let generation = self
                .link
                .lock()
                .ok()
                .and_then(|l| l.as_ref().map(|l| l.generation + 1))
                .unwrap_or(1);
            match self.connect_once(generation).await {
                Ok(link) => {
                    tracing::info!(generation, "reconnected to RabbitMQ");
                    return Ok(link);
                }
                Err(error) => {
                    if deadline.is_some_and(|d| tokio::time::Instant::now() + backoff > d) {
                        return Err(BusError::Unavailable(error.to_string()));
                    }
                    tracing::warn!(%error, retry_in = ?backoff, "RabbitMQ unreachable");
                    tokio::select! {
                        () = self.closed.cancelled() => return Err(BusError::Closed),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn connect_once(&self, generation: u64) -> Result<Link, BusError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("flotilla-{}", std::process::id()).into());
        let connection = Connection::connect(&self.uri, properties).await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        publisher
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        for suffix in ["dlx", "requeue"] {
            publisher
                .exchange_declare(
                    format!("{}.{suffix}", self.exchange).into(),
                    ExchangeKind::Direct,
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }
        let link = Link {
            connection: Arc::new(connection),
            publisher,
            generation,
        };
        if let Ok(mut slot) = self.link.lock() {
            *slot = Some(link.clone());
        }
        Ok(link)
    }

    /// Declares group `group`'s queues and bindings (idempotent).
    async fn declare_group(
        &self,
        channel: &Channel,
        group: &str,
        patterns: &[String],
    ) -> Result<u32, BusError> {
        let retry = &self.options.retry;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let quorum = ("x-queue-type", long_string("quorum"));
        let at_least_once = [
            ("x-dead-letter-strategy", long_string("at-least-once")),
            ("x-overflow", long_string("reject-publish")),
        ];
        let dlx = format!("{}.dlx", self.exchange);
        let requeue = format!("{}.requeue", self.exchange);
        let parking = AmqpBus::parking_queue(group);

        channel
            .queue_declare(
                parking.as_str().into(),
                durable,
                queue_arguments(std::slice::from_ref(&quorum)),
            )
            .await
            .map_err(|error| declared_differently(group, &parking, error))?;
        channel
            .queue_bind(
                parking.as_str().into(),
                dlx.as_str().into(),
                group.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let mut main_args = vec![
            quorum.clone(),
            ("x-dead-letter-exchange", long_string(&dlx)),
            ("x-dead-letter-routing-key", long_string(group)),
            // A message whose consumer keeps crashing on it (returned unacked more than
            // this many times, i.e. delivered `max_attempts + 1` times: the last one
            // exhausted, for its handler to settle) is dead-lettered by the broker.
            (
                "x-delivery-limit",
                AMQPValue::LongInt(i32::try_from(retry.max_attempts).unwrap_or(i32::MAX)),
            ),
        ];
        main_args.extend(at_least_once.iter().cloned());
        let queue = channel
            .queue_declare(group.into(), durable, queue_arguments(&main_args))
            .await
            .map_err(|error| declared_differently(group, group, error))?;
        for pattern in patterns {
            channel
                .queue_bind(
                    group.into(),
                    self.exchange.as_str().into(),
                    pattern.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .queue_bind(
                group.into(),
                requeue.as_str().into(),
                group.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        for attempt in 1..retry.max_attempts {
            let ttl = i64::try_from(retry.backoff(attempt).as_millis()).unwrap_or(i64::MAX);
            let mut args = vec![
                quorum.clone(),
                ("x-message-ttl", AMQPValue::LongLongInt(ttl)),
                ("x-dead-letter-exchange", long_string(&requeue)),
                ("x-dead-letter-routing-key", long_string(group)),
            ];
            args.extend(at_least_once.iter().cloned());
            let queue = retry_queue(group, attempt);
            channel
                .queue_declare(queue.as_str().into(), durable, queue_arguments(&args))
                .await
                .map_err(|error| declared_differently(group, &queue, error))?;
        }
        Ok(queue.message_count())
    }

    /// Publishes and waits for the broker's confirm, retrying on a new connection while
    /// the broker is away (for up to `publish_timeout`).
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + self.options.publish_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let link = self.link(Some(remaining)).await?;
            let attempt = async {
                link.publisher
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        MANDATORY,
                        body,
                        properties.clone(),
                    )
                    .await?
                    .await
            };
            // A broker that blocks publishers (memory or disk alarm) never answers;
            // give up at the deadline rather than hang the caller.
            let Ok(outcome) = tokio::time::timeout(remaining, attempt).await else {
                return Err(BusError::Unavailable(
                    "no publisher confirm before the publish timeout (is the broker blocking publishers?)"
                        .to_owned(),
                ));
            };
            match outcome {
                Ok(confirmation) => {
                    let id = properties
                        .message_id()
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    return settled(confirmation, routing_key, &id);
                }
                Err(error) => {
                    // The confirm is unknown: publish again (a duplicate is harmless,
                    // consumers deduplicate by id).
                    tracing::warn!(%error, "publish failed; retrying on a new connection");
                    if tokio::time::Instant::now() >= deadline {
                        return Err(error.into());
                    }
                    self.forget(&link);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Drops `link` if it is still the current one, so the next caller reconnects.
    fn forget(&self, link: &Link) {
        if let Ok(mut slot) = self.link.lock()
            && slot
                .as_ref()
                .is_some_and(|l| l.generation == link.generation)
            && !link.healthy()
        {
            *slot = None;
        }
    }
}

/// Every publish is mandatory. RabbitMQ confirms a message that no queue is bound for
/// and then drops it, so without the flag a message published before its consumers
/// first declared their queue (a fresh broker, services starting in any order) would be
/// lost while its outbox marked it sent. Returned, it is an error: the outbox keeps the
/// message and publishes it again once a consumer group is bound.
const MANDATORY: BasicPublishOptions = BasicPublishOptions {
    mandatory: true,
    immediate: false,
};

/// What the broker's confirm means for message `id`: stored, returned unroutable, or
/// refused.
fn settled(confirmation: Confirmation, routing_key: &str, id: &str) -> Result<(), BusError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
            Err(BusError::Unroutable(routing_key.to_owned()))
        }
        Confirmation::Nack(None) | Confirmation::NotRequested => {
            Err(BusError::PublishRefused(id.to_owned()))
        }
    }
}

/// A declaration the broker refused because `queue` (of `group`) exists with other
/// arguments becomes [`BusError::Topology`], saying what to do; other errors pass
/// unchanged.
fn declared_differently(group: &str, queue: &str, error: lapin::Error) -> BusError {
    let text = error.to_string();
    if !text.contains("PRECONDITION_FAILED") {
        return error.into();
    }
    BusError::Topology(format!(
        "RabbitMQ holds queue '{queue}' with other arguments than this version declares \
         ({text}): it was declared by an earlier Flotilla or with other retry settings. \
         Group '{group}' consumes nothing until an operator deletes its queues once they \
         are empty (`rabbitmqctl delete_queue {queue}`; the group's are '{group}' and \
         '{group}.retry.N') and the consumers subscribe again"
    ))
}

fn retry_queue(group: &str, attempt: u32) -> String {
    format!("{group}.retry.{attempt}")
}

fn properties_for(message: &Message, extra: &[(&str, String)]) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        headers.insert(name.as_str().into(), long_string(value));
    }
    for (name, value) in extra {
        headers.insert((*name).into(), long_string(value));
    }
    BasicProperties::default()
        .with_message_id(message.id.as_str().into())
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_timestamp(u64::try_from(now_ms() / 1000).unwrap_or(0))
        .with_headers(headers)
}

fn header_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::ShortInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        AMQPValue::ShortShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortShortUInt(n) => Some(n.to_string()),
        AMQPValue::ShortUInt(n) => Some(n.to_string()),
        AMQPValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A received AMQP message as ours, with its raw bookkeeping headers beside it.
fn decode_delivery(
    routing_key: &str,
    properties: &BasicProperties,
    data: &[u8],
) -> (Message, BTreeMap<String, String>) {
    let mut headers = BTreeMap::new();
    let mut bookkeeping = BTreeMap::new();
    if let Some(table) = properties.headers() {
        for (name, value) in table {
            let Some(text) = header_text(value) else {
                continue;
            };
            if BOOKKEEPING.contains(&name.as_str()) {
                bookkeeping.insert(name.to_string(), text);
            } else {
                headers.insert(name.to_string(), text);
            }
        }
    }
    let message = Message {
        id: properties
            .message_id()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        routing_key: bookkeeping
            .get(ORIGINAL_KEY)
            .cloned()
            .unwrap_or_else(|| routing_key.to_owned()),
        headers,
        body: Bytes::copy_from_slice(data),
    };
    (message, bookkeeping)
}

/// What a consumer makes of a delivery: the message and its attempt number. Public for
/// the fuzz targets (fuzz/), which feed it properties parsed from arbitrary wire bytes.
#[doc(hidden)]
pub fn decode_delivery_for_fuzzing(
    routing_key: &str,
    properties: &BasicProperties,
    data: &[u8],
) -> (Message, u32) {
    let (message, bookkeeping) = decode_delivery(routing_key, properties, data);
    (message, attempt_of(&bookkeeping))
}

/// Attempt number of a delivery: our count from retries plus the broker's count of
/// redeliveries (consumers that died holding it).
fn attempt_of(bookkeeping: &BTreeMap<String, String>) -> u32 {
    let ours = bookkeeping
        .get(ATTEMPT)
        .and_then(|a| a.parse::<u32>().ok())
        .unwrap_or(1);
    let redelivered = bookkeeping
        .get("x-delivery-count")
        .and_then(|a| a.parse::<u32>().ok())
        .unwrap_or(0);
    ours.saturating_add(redelivered)
}

struct AmqpSettle {
    shared: Arc<Shared>,
    /// Keeps the consumer's channel open until this delivery is settled.
    channel: Channel,
    /// Taken when settled; an unsettled drop requeues it.
    acker: Option<lapin::Acker>,
    group: String,
    message: Message,
    attempt: u32,
    retry: RetryPolicy,
}

impl AmqpSettle {
    async fn ack_original(&mut self) -> Result<(), BusError> {
        if let Some(acker) = self.acker.take() {
            // A channel that died with a broker restart may never answer; the broker
            // redelivers what this channel held, so giving up here loses nothing.
            tokio::time::timeout(SETTLE_TIMEOUT, acker.ack(BasicAckOptions::default()))
                .await
                .map_err(|_| {
                    BusError::Unavailable(
                        "no answer to an acknowledgement; it will be redelivered".into(),
                    )
                })??;
        }
        Ok(())
    }
}

impl Drop for AmqpSettle {
    fn drop(&mut self) {
        // The handler failed without deciding (it panicked): give the message back now,
        // as the broker would if this consumer died. The broker counts the delivery, so
        // a message that keeps crashing its handler reaches x-delivery-limit.
        if let Some(acker) = self.acker.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let channel = self.channel.clone();
            runtime.spawn(async move {
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                if let Err(error) = acker.nack(requeue).await {
                    tracing::debug!(%error, "cannot requeue a dropped delivery; the channel's close will");
                }
                drop(channel);
            });
        }
    }
}

impl Settle for AmqpSettle {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(async move { self.ack_original().await })
    }

    fn nack(mut self: Box<Self>, nack: Nack) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(async move {
            let original_key = (ORIGINAL_KEY, self.message.routing_key.clone());
            let requeue = matches!(nack, Nack::Requeue(_));
            let dead_reason = match nack {
                Nack::Requeue(reason) => {
                    // Back to the group's queue, carrying the same attempt number: the
                    // copy has no delivery count of its own.
                    tracing::debug!(group = %self.group, attempt = self.attempt, %reason, "requeued");
                    None
                }
                Nack::Retry(reason) if self.attempt < self.retry.max_attempts => {
                    metrics::counter!("bus_retried_total", "group" => self.group.clone())
                        .increment(1);
                    tracing::debug!(group = %self.group, attempt = self.attempt, %reason, "retrying later");
                    None
                }
                Nack::Retry(reason) => Some(format!(
                    "failed {} attempts; last error: {reason}",
                    self.attempt
                )),
                Nack::Reject(reason) => Some(reason),
            };
            let (queue, extra) = match (dead_reason, requeue) {
                (None, true) => (
                    self.group.clone(),
                    vec![(ATTEMPT, self.attempt.to_string()), original_key],
                ),
                (None, false) => (
                    retry_queue(&self.group, self.attempt),
                    vec![(ATTEMPT, (self.attempt + 1).to_string()), original_key],
                ),
                (Some(reason), _) => {
                    tracing::warn!(group = %self.group, message_id = %self.message.id, %reason, "message dead-lettered");
                    metrics::counter!("bus_dead_lettered_total", "group" => self.group.clone())
                        .increment(1);
                    (
                        AmqpBus::parking_queue(&self.group),
                        vec![
                            (ATTEMPT, self.attempt.to_string()),
                            original_key,
                            (REASON, reason),
                            (DEAD_AT, now_ms().to_string()),
                        ],
                    )
                }
            };
            // The copy is safely stored before the original goes: a crash in between
            // duplicates the message, never loses it.
            self.shared
                .publish_confirmed(
                    "",
                    &queue,
                    &self.message.body,
                    properties_for(&self.message, &extra),
                )
                .await?;
            self.ack_original().await
        })
    }
}

impl EventBus for AmqpBus {
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let started = now_ms();
            self.shared
                .publish_confirmed(
                    &self.shared.exchange,
                    &message.routing_key,
                    &message.body,
                    properties_for(&message, &[]),
                )
                .await?;
            (self.shared.tap).published(&message, self.service.as_deref(), started);
            metrics::counter!("bus_published_total", "routing_key" => message.routing_key)
                .increment(1);
            Ok(())
        })
    }

    fn publish_all(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            match self.publish_in_order(messages).await {
                (_, None) => Ok(()),
                (_, Some(error)) => Err(error),
            }
        })
    }

    /// Pipelined: every message is sent on the confirm channel in order, then the
    /// confirms are awaited together; after a lost connection the unconfirmed rest is sent
    /// again one by one (in order; the broker may then hold a duplicate, never a gap). A
    /// message the broker returns or refuses stops it there: the messages after it were
    /// sent too and may be published again by the caller (duplicates, harmless).
    fn publish_in_order(&self, messages: Vec<Message>) -> BoxFuture<'_, (usize, Option<BusError>)> {
        Box::pin(async move {
            let started = now_ms();
            let link = match self
                .shared
                .link(Some(self.shared.options.publish_timeout))
                .await
            {
                Ok(link) => link,
                Err(error) => return (0, Some(error)),
            };
            let mut confirms = Vec::with_capacity(messages.len());
            for message in &messages {
                let sent = link
                    .publisher
                    .basic_publish(
                        self.shared.exchange.as_str().into(),
                        message.routing_key.as_str().into(),
                        MANDATORY,
                        &message.body,
                        properties_for(message, &[]),
                    )
                    .await;
                match sent {
                    Ok(confirm) => confirms.push(confirm),
                    Err(_) => break,
                }
            }
            let mut confirmed = 0;
            let mut refused = None;
            for confirm in confirms {
                match confirm.await {
                    Ok(confirmation) => {
                        let message = &messages[confirmed];
                        if let Err(error) = settled(confirmation, &message.routing_key, &message.id)
                        {
                            refused = Some(error);
                            break;
                        }
                        confirmed += 1;
                    }
                    Err(_) => break,
                }
            }
            for message in &messages[..confirmed] {
                (self.shared.tap).published(message, self.service.as_deref(), started);
                metrics::counter!("bus_published_total", "routing_key" => message.routing_key.clone())
                    .increment(1);
            }
            if refused.is_some() {
                return (confirmed, refused);
            }
            for message in &messages[confirmed..] {
                if let Err(error) = self.publish(message.clone()).await {
                    return (confirmed, Some(error));
                }
                confirmed += 1;
            }
            (confirmed, None)
        })
    }

    fn subscribe(&self, subscription: Subscription) -> BoxFuture<'_, Result<Subscriber, BusError>> {
        Box::pin(async move {
            if subscription.group.is_empty() || subscription.routing_keys.is_empty() {
                return Err(BusError::InvalidSetting(
                    "a subscription needs a group name and at least one routing key".to_owned(),
                ));
            }
            // Declare now, so messages published after `subscribe` returns are kept.
            let channel = self.side_channel().await?;
            self.shared
                .declare_group(&channel, &subscription.group, &subscription.routing_keys)
                .await?;
            self.shared.tap.subscribed(
                self.service.as_deref(),
                &subscription.group,
                &subscription.routing_keys,
            );
            let (sender, receiver) = mpsc::channel(1);
            tokio::spawn(consume(
                self.shared.clone(),
                subscription,
                Some(channel),
                sender,
            ));
            let stream = futures::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|item| (item, receiver))
            });
            Ok(Subscriber {
                inner: stream.boxed(),
            })
        })
    }

    fn dead_letters<'a>(
        &'a self,
        group: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, BusError>> {
        Box::pin(async move {
            let group = named(group, "list")?;
            // Take the messages without acking, then close the channel: RabbitMQ puts
            // them all back.
            let channel = self.side_channel().await?;
            parking_depth(&channel, group).await?;
            let mut letters = Vec::new();
            while letters.len() < limit {
                let Some(got) = next_parked(&channel, group).await? else {
                    break;
                };
                let (message, bookkeeping) =
                    decode_delivery(got.routing_key.as_str(), &got.properties, &got.data);
                letters.push(dead_letter(group, message, &bookkeeping));
            }
            channel.close(200, "listed".into()).await?;
            Ok(letters)
        })
    }

    fn replay_dead_letters<'a>(
        &'a self,
        group: Option<&'a str>,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, BusError>> {
        Box::pin(async move {
            let group = named(group, "replay")?;
            let channel = self.side_channel().await?;
            let waiting = parking_depth(&channel, group).await?;
            let mut replayed = 0;
            // Look at each waiting message once; those not chosen stay unacked until the
            // channel closes and so go back to the parking queue.
            for _ in 0..waiting {
                let Some(got) = next_parked(&channel, group).await? else {
                    break;
                };
                let (message, _) =
                    decode_delivery(got.routing_key.as_str(), &got.properties, &got.data);
                if !ids.is_empty() && !ids.contains(&message.id) {
                    continue;
                }
                self.shared
                    .publish_confirmed(
                        "",
                        group,
                        &message.body,
                        properties_for(&message, &[(ORIGINAL_KEY, message.routing_key.clone())]),
                    )
                    .await?;
                got.acker.ack(BasicAckOptions::default()).await?;
                tracing::info!(%group, message_id = %message.id, "dead letter replayed");
                replayed += 1;
            }
            channel.close(200, "replayed".into()).await?;
            Ok(replayed)
        })
    }

    fn queue_depth<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Result<Option<u64>, BusError>> {
        Box::pin(async move {
            let channel = self.side_channel().await?;
            let queue = channel
                .queue_declare(
                    group.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let _ = channel.close(200, "depth".into()).await;
            let depth = queue.message_count();
            metrics::gauge!("bus_queue_depth", "group" => group.to_owned()).set(f64::from(depth));
            Ok(Some(u64::from(depth)))
        })
    }

    /// Two passive declares on one channel: the group's queue (ready messages,
    /// consumers) and its parking queue (dead letters).
    fn group_stats<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<crate::GroupStats, BusError>> {
        Box::pin(async move {
            let channel = self.side_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let queue = channel
                .queue_declare(group.into(), passive, FieldTable::default())
                .await;
            // A failed passive declare closes the channel: nothing more to ask on it.
            let Ok(queue) = queue else {
                return Ok(crate::GroupStats::default());
            };
            let dead = parking_depth(&channel, group).await.ok();
            let _ = channel.close(200, "stats".into()).await;
            Ok(crate::GroupStats {
                depth: Some(u64::from(queue.message_count())),
                in_flight: None,
                consumers: Some(u64::from(queue.consumer_count())),
                dead_letters: dead.map(u64::from),
            })
        })
    }

    fn signal<'a>(&'a self, topic: &'a str, body: Bytes) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let mut slot = self.shared.signals.lock().await;
            let channel = match slot.as_ref() {
                Some(channel) if channel.status().connected() => channel.clone(),
                _ => {
                    let link = self.shared.link(Some(SETTLE_TIMEOUT)).await?;
                    let channel = link.connection.create_channel().await?;
                    declare_signals(&channel, &self.shared.exchange).await?;
                    *slot = Some(channel.clone());
                    channel
                }
            };
            drop(slot);
            channel
                .basic_publish(
                    signals_exchange(&self.shared.exchange).as_str().into(),
                    topic.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await?;
            Ok(())
        })
    }

    /// A server-named, exclusive queue bound to `topic`, gone with the channel.
    fn listen<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<futures::stream::BoxStream<'static, Bytes>, BusError>> {
        Box::pin(async move {
            let link = self.shared.link(Some(SETTLE_TIMEOUT)).await?;
            let channel = link.connection.create_channel().await?;
            declare_signals(&channel, &self.shared.exchange).await?;
            let queue = channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    queue.name().as_str().into(),
                    signals_exchange(&self.shared.exchange).as_str().into(),
                    topic.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.name().as_str().into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        exclusive: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let stream = futures::stream::unfold(
                (channel, consumer),
                |(channel, mut consumer)| async move {
                    match consumer.next().await {
                        Some(Ok(delivery)) => {
                            Some((Bytes::from(delivery.data), (channel, consumer)))
                        }
                        _ => None,
                    }
                },
            );
            Ok(stream.boxed())
        })
    }

    fn tap(&self) -> Arc<crate::tap::Tap> {
        Arc::clone(&self.shared.tap)
    }

    fn backend(&self) -> &'static str {
        "rabbitmq"
    }

    fn health(&self) -> BoxFuture<'_, Result<(), String>> {
        // The current link only: reconnecting is the background tasks' job, and a probe
        // must answer at once.
        let healthy = self.shared.current().is_some();
        Box::pin(async move {
            if healthy {
                Ok(())
            } else {
                Err("RabbitMQ is unreachable; reconnecting (writes wait in the outbox)".to_owned())
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shared.closed.cancel();
            let link = self.shared.link.lock().ok().and_then(|mut l| l.take());
            if let Some(link) = link {
                // A connection the broker already dropped may never answer its close.
                let closing = link.connection.close(200, "closing".into());
                let _ = tokio::time::timeout(SETTLE_TIMEOUT, closing).await;
            }
        })
    }
}

/// The exchange signals go through (`EventBus::signal`).
fn signals_exchange(exchange: &str) -> String {
    format!("{exchange}.signals")
}

async fn declare_signals(channel: &Channel, exchange: &str) -> Result<(), BusError> {
    // Not durable: signals are for whoever listens now.
    channel
        .exchange_declare(
            signals_exchange(exchange).as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Messages in `group`'s parking queue; a clear error when there is no such group.
/// `group` itself: RabbitMQ can only `doing` (list, replay) the dead letters of a named
/// group, not of every group at once.
fn named<'a>(group: Option<&'a str>, doing: &str) -> Result<&'a str, BusError> {
    group.ok_or_else(|| {
        BusError::Unsupported(format!(
            "RabbitMQ cannot {doing} every group's dead letters; name the group"
        ))
    })
}

/// The next message parked for `group` (a dead letter), taken unacknowledged: it goes
/// back to the parking queue unless acked before the channel closes.
async fn next_parked(channel: &Channel, group: &str) -> Result<Option<BasicGetMessage>, BusError> {
    Ok(channel
        .basic_get(
            AmqpBus::parking_queue(group).into(),
            BasicGetOptions { no_ack: false },
        )
        .await?)
}

async fn parking_depth(channel: &Channel, group: &str) -> Result<u32, BusError> {
    let parking = AmqpBus::parking_queue(group);
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(parking.as_str().into(), passive, FieldTable::default())
        .await
    {
        Ok(queue) => Ok(queue.message_count()),
        Err(error) => Err(BusError::Unsupported(format!(
            "no parking queue '{parking}' on this broker: is '{group}' a consumer group? ({error})"
        ))),
    }
}

fn dead_letter(
    group: &str,
    message: Message,
    bookkeeping: &BTreeMap<String, String>,
) -> DeadLetter {
    let reason = bookkeeping.get(REASON).cloned().unwrap_or_else(|| {
        // Dead-lettered by the broker itself (x-delivery-limit).
        let why = bookkeeping
            .get("x-first-death-reason")
            .map_or("unknown", String::as_str);
        format!(
            "dead-lettered by RabbitMQ ({why}): delivered too many times without an acknowledgement"
        )
    });
    DeadLetter {
        id: message.id,
        group: group.to_owned(),
        routing_key: message.routing_key,
        attempts: attempt_of(bookkeeping),
        reason,
        dead_at_ms: bookkeeping.get(DEAD_AT).and_then(|t| t.parse().ok()),
        body: message.body,
        headers: message.headers,
    }
}

/// How often a consumer reports its queue's depth (`bus_queue_depth`).
const DEPTH_INTERVAL: Duration = Duration::from_secs(15);

/// How long an acknowledgement or a connection close may wait for the broker.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

async fn report_depth(channel: &Channel, group: &str) {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    if let Ok(queue) = channel
        .queue_declare(group.into(), passive, FieldTable::default())
        .await
    {
        metrics::gauge!("bus_queue_depth", "group" => group.to_owned())
            .set(f64::from(queue.message_count()));
    }
}

/// One subscriber's consuming loop: (re)declares, consumes, forwards deliveries, and
/// starts over on a new connection after a failure, until the subscriber is dropped.
async fn consume(
    shared: Arc<Shared>,
    subscription: Subscription,
    mut declared: Option<Channel>,
    sender: mpsc::Sender<Result<Delivery, BusError>>,
) {
    let group = subscription.group.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        let channel = match declared.take() {
            Some(channel) => Ok(channel),
            None => {
                let setup = async {
                    let link = shared.link(None).await?;
                    let channel = link.connection.create_channel().await?;
                    shared
                        .declare_group(&channel, &group, &subscription.routing_keys)
                        .await?;
                    Ok::<_, BusError>(channel)
                };
                tokio::select! {
                    () = sender.closed() => return,
                    channel = setup => channel,
                }
            }
        };
        let consumer = match channel {
            Ok(channel) => {
                let started = async {
                    channel
                        .basic_qos(subscription.prefetch, BasicQosOptions::default())
                        .await?;
                    let consumer = channel
                        .basic_consume(
                            group.as_str().into(),
                            "".into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                    Ok::<_, BusError>((channel, consumer))
                };
                started.await
            }
            Err(error) => Err(error),
        };
        let (channel, mut consumer) = match consumer {
            Ok(pair) => pair,
            Err(BusError::Closed) => return,
            Err(error) => {
                tracing::warn!(%group, %error, retry_in = ?backoff, "cannot consume; retrying");
                tokio::select! {
                    () = sender.closed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut depth_tick = tokio::time::interval(DEPTH_INTERVAL);
        loop {
            let next = tokio::select! {
                _ = depth_tick.tick() => {
                    report_depth(&channel, &group).await;
                    continue;
                }
                () = sender.closed() => {
                    // Stop new deliveries; those held by the handler keep the channel
                    // open until settled, the rest return to the queue when it closes.
                    let _ = channel.basic_cancel(consumer.tag(), Default::default()).await;
                    return;
                }
                () = shared.closed.cancelled() => return,
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    tracing::warn!(%group, %error, "consumer channel failed; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!(%group, "consumer cancelled by the broker; reconnecting");
                    break;
                }
            };
            let (message, bookkeeping) = decode_delivery(
                delivery.routing_key.as_str(),
                &delivery.properties,
                &delivery.data,
            );
            metrics::counter!("bus_delivered_total", "group" => group.clone()).increment(1);
            let held = shared
                .tap
                .delivered(&message, &group, attempt_of(&bookkeeping));
            let ours = Delivery {
                attempt: attempt_of(&bookkeeping),
                max_attempts: shared.options.retry.max_attempts,
                group: group.clone(),
                held,
                settle: Box::new(AmqpSettle {
                    shared: shared.clone(),
                    channel: channel.clone(),
                    acker: Some(delivery.acker),
                    group: group.clone(),
                    message: message.clone(),
                    attempt: attempt_of(&bookkeeping),
                    retry: shared.options.retry.clone(),
                }),
                message,
            };
            if sender.send(Ok(ours)).await.is_err() {
                let _ = channel
                    .basic_cancel(consumer.tag(), Default::default())
                    .await;
                return;
            }
        }
        if let Some(link) = shared.current() {
            shared.forget(&link);
        }
        tokio::select! {
            () = sender.closed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
    }
}
