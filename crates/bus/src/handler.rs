//! The one way a service consumes: it says *what a message means* in a [`Handler`], and
//! a [`Runner`] does everything that makes that happen exactly once.
//!
//! A handler names its group and routing keys ([`Handler::subscription`]), decodes a body
//! into its event type and applies the event inside a database transaction it is handed
//! ([`Handler::apply`]), returning the messages the event causes. It never sees the
//! delivery (so it cannot acknowledge it), the inbox or the outbox: the runner
//!
//! 1. decodes the body (undecodable → dead letter at once);
//! 2. runs the handler's [`effect`](Handler::effect) outside the database, if it has one
//!    (an email, a conversion: effects that cannot join a transaction and so must be
//!    idempotent by a key of their own);
//! 3. begins the transaction, records the message in the inbox — an id already there
//!    means "applied before": nothing is applied, the delivery is acknowledged —, applies
//!    the event, enqueues the returned messages in the outbox and commits, so the effect,
//!    the "applied" mark and the caused messages are durable together;
//! 4. wakes the outbox relay, calls [`after_commit`](Handler::after_commit) (live
//!    streams), and acknowledges;
//! 5. maps a [`Failure`] to the bus's settlement: [`Retry::Later`] retries with backoff,
//!    [`Retry::Never`] dead-letters, [`Retry::Requeue`] (shutdown) hands it out again as
//!    the same attempt;
//! 6. settles a delivery past its last attempt ([`Attempt::is_exhausted`]: the consumer
//!    died during each) by asking the inbox whether it was applied — applied → ack;
//!    otherwise the handler may still settle it ([`Handler::exhausted`]), else it is
//!    dead-lettered;
//!
//! under one span per delivery (see [`crate::Consumer`]) and the metrics
//! `bus_handled_total{group, outcome}` and `bus_handle_seconds{group}`.
//!
//! A service without a database (the converter) runs on a [`Store::keyed`]: no
//! transaction and no inbox — its effect is keyed by the message (same object key, same
//! outgoing message ids), and the messages it returns are published before the ack.
//!
//! The blog's push endpoints (`POST /events`) hand a pushed event to the same runner
//! ([`Runner::push`]), so a pushed copy and a delivered copy count once.

use std::{sync::Arc, time::Duration};

use serde::de::DeserializeOwned;
use sqlx::{Any, Transaction};
use std::future::Future;
use storage::{Database, Statements, StorageError};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Attempt, BusError, Consumer, ConsumerHealth, EventBus, Inbox, Message, Nack, OutboxPublisher,
    Subscription,
};

/// Deliveries a service's consumer handles at once unless its handler says otherwise
/// ([`Handler::concurrency`]). The handlers do not depend on delivery order (each is
/// keyed by its post, comment or job and deduplicated by the inbox), and overlapping
/// them overlaps the acknowledgements and lets their writes share one commit and one
/// request to SQLite (`Database::commit_statements`): with 8, a consumer's throughput
/// was bounded at 8 per commit (about 5,000 messages/s here, behind a writer at 9,000).
/// A batch commits at most 64 writes.
pub const CONSUMER_CONCURRENCY: usize = 64;

/// Whether another attempt can help a message whose handling failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Transient (the database or the bus away): try again after the backoff;
    /// dead-lettered after the last attempt.
    Later,
    /// Permanent (the message contradicts itself, the recipient does not exist):
    /// dead-letter it now.
    Never,
    /// Interrupted by shutdown, not failed: the same attempt again, at once.
    Requeue,
}

/// A handler's error: says whether a retry can help.
pub trait Failure: std::fmt::Display + Send {
    fn retry(&self) -> Retry;
}

/// A ready-made [`Failure`]; storage and bus errors are transient.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
    #[error("{0}")]
    Interrupted(String),
}

impl Failure for HandlerError {
    fn retry(&self) -> Retry {
        match self {
            HandlerError::Transient(_) => Retry::Later,
            HandlerError::Permanent(_) => Retry::Never,
            HandlerError::Interrupted(_) => Retry::Requeue,
        }
    }
}

impl From<BusError> for HandlerError {
    fn from(error: BusError) -> Self {
        HandlerError::Transient(error.to_string())
    }
}

impl From<StorageError> for HandlerError {
    fn from(error: StorageError) -> Self {
        HandlerError::Transient(error.to_string())
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        HandlerError::Transient(error.to_string())
    }
}

/// What a handler may know about the delivery it handles — read only: it cannot settle
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub message_id: String,
    pub routing_key: String,
    pub attempt: Attempt,
    /// The W3C `traceparent` the message was published in, if it carries one: the work
    /// that caused it (a handler that keeps the event keeps its cause's trace with it).
    pub traceparent: Option<String>,
}

/// The transaction a handler applies its event in.
pub type Tx = Transaction<'static, Any>;

/// What a message means to a service. A [`Runner`] does the rest: decoding, the
/// transaction, the inbox record, the outbox, the commit, the acknowledgement and the
/// retry mapping (see `crates/bus/src/handler.rs`).
pub trait Handler: Send + Sync + 'static {
    /// The decoded body.
    type Event: Send + Sync + 'static;
    type Error: Failure + 'static;

    /// The group (also the inbox's consumer name) and its routing keys.
    fn subscription(&self) -> Subscription;

    /// Deliveries handled at once.
    fn concurrency(&self) -> usize {
        CONSUMER_CONCURRENCY
    }

    /// The event in `message` (most handlers: [`decode_json`]); `Err` dead-letters the
    /// message at once.
    fn decode(&self, message: &Message) -> Result<Self::Event, String>;

    /// An effect outside the database, before the transaction (an email, a conversion).
    /// It must be idempotent by a key of its own, as it runs again for a redelivered
    /// message. Returns messages to send along with the transaction's.
    fn effect(
        &self,
        _event: &Self::Event,
        _delivered: &Delivered,
    ) -> impl Future<Output = Result<Vec<Message>, Self::Error>> + Send {
        async { Ok(Vec::new()) }
    }

    /// How long the runner keeps trying to commit a message whose
    /// [`effect`](Self::effect) is done before it gives up (a retry repeats the effect).
    fn effect_patience(&self) -> Duration {
        Duration::ZERO
    }

    /// Applies the event in `tx`; returns the messages it causes (enqueued in the same
    /// transaction). What it writes commits once per message id: a redelivered message
    /// may be applied again, but its inbox record then fails on its key and the whole
    /// write is undone, so keep effects outside the database in
    /// [`effect`](Self::effect) and [`after_commit`](Self::after_commit). Not called on
    /// a [`Store::keyed`].
    fn apply(
        &self,
        tx: &mut Tx,
        event: &Self::Event,
        delivered: &Delivered,
    ) -> impl Future<Output = Result<Vec<Message>, Self::Error>> + Send;

    /// What the runner calls: [`apply`](Self::apply), with `last` — statements the
    /// runner sends with the end of the write, in one request (on SQLite every statement
    /// sent alone is a hand-off to its thread while the other writers wait). A handler
    /// whose changes need no answer from the database puts them in `last` instead of
    /// running them; they run after everything it runs in `tx`, in the order pushed.
    /// By default, `apply`.
    fn apply_with_last(
        &self,
        tx: &mut Tx,
        _last: &mut Statements,
        event: &Self::Event,
        delivered: &Delivered,
    ) -> impl Future<Output = Result<Vec<Message>, Self::Error>> + Send {
        self.apply(tx, event, delivered)
    }

    /// Applies the event with statements alone, when that needs no answer from the
    /// database: pushes them to `last` and returns `Some` with the messages it causes.
    /// The runner then sends them with the other statement-only writes arriving at once,
    /// in one request ([`storage::Database::commit_statements`]). `None` (the default,
    /// and nothing pushed): applied in a transaction by
    /// [`apply_with_last`](Self::apply_with_last).
    fn apply_statements(
        &self,
        _last: &mut Statements,
        _event: &Self::Event,
        _delivered: &Delivered,
    ) -> Option<Result<Vec<Message>, Self::Error>> {
        None
    }

    /// Whether the runner may apply several deliveries in one write
    /// ([`apply_batch`](Self::apply_batch)): for a handler whose writes are serial anyway
    /// (the blog's event log takes a lock row), so one read and one request serve all
    /// the deliveries that queued up meanwhile instead of a turn each. Deliveries from
    /// the bus only; pushed ones ([`Runner::push`]) go one by one.
    fn batched(&self) -> bool {
        false
    }

    /// Applies `events` in order in `tx`, as [`apply_with_last`](Self::apply_with_last)
    /// would one after the other (by default, exactly that); returns the messages each
    /// causes, in the same order. If it fails, or the write does, nothing of the batch is
    /// kept and each delivery is applied alone.
    fn apply_batch(
        &self,
        tx: &mut Tx,
        last: &mut Statements,
        events: &[(&Self::Event, &Delivered)],
    ) -> impl Future<Output = Result<Vec<Vec<Message>>, Self::Error>> + Send {
        async move {
            let mut caused = Vec::with_capacity(events.len());
            for (event, delivered) in events {
                caused.push(self.apply_with_last(tx, last, event, delivered).await?);
            }
            Ok(caused)
        }
    }

    /// After the commit of a message applied for the first time (not a duplicate).
    fn after_commit(&self, _event: Self::Event) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// A delivery past its last attempt that the inbox does not know: every attempt
    /// ended without a settlement. `Some(messages)` settles it (the messages are sent, the
    /// message recorded as applied) without doing the work again; `None` (the default)
    /// dead-letters it.
    fn exhausted(
        &self,
        _event: &Self::Event,
        _delivered: &Delivered,
    ) -> impl Future<Output = Result<Option<Vec<Message>>, Self::Error>> + Send {
        async { Ok(None) }
    }
}

/// Decodes a JSON body, for [`Handler::decode`].
pub fn decode_json<T: DeserializeOwned>(message: &Message) -> Result<T, String> {
    message
        .decode()
        .map_err(|e| format!("bad {} body: {e}", message.routing_key))
}

/// Where a runner keeps what it applied: a service's database with its inbox (and its
/// outbox, for handlers that cause messages), or nothing ([`Store::keyed`]).
#[derive(Debug, Clone)]
pub struct Store {
    kind: StoreKind,
}

#[derive(Debug, Clone)]
enum StoreKind {
    Database {
        db: Database,
        inbox: Inbox,
        outbox: Option<OutboxPublisher>,
    },
    Keyed(Arc<dyn EventBus>),
}

impl Store {
    /// The service's database; adds the inbox (and outbox) tables if missing. Caused
    /// messages need an outbox: see [`with_outbox`](Self::with_outbox).
    pub async fn database(db: &Database) -> Result<Self, StorageError> {
        db.migrate("bus", crate::outbox_migrations()).await?;
        Ok(Self {
            kind: StoreKind::Database {
                db: db.clone(),
                inbox: Inbox::new(db),
                outbox: None,
            },
        })
    }

    /// Caused messages go to `publisher`'s outbox (on the same database).
    pub fn with_outbox(mut self, publisher: OutboxPublisher) -> Self {
        if let StoreKind::Database { outbox, .. } = &mut self.kind {
            *outbox = Some(publisher);
        }
        self
    }

    /// No database: the handler's effect is keyed by the message, nothing is recorded,
    /// and caused messages are published to `bus` before the acknowledgement.
    pub fn keyed(bus: Arc<dyn EventBus>) -> Self {
        Self {
            kind: StoreKind::Keyed(bus),
        }
    }
}

/// How a message was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Applied now.
    Applied,
    /// Applied before (the inbox holds its id): nothing done.
    Duplicate,
}

/// A [`Handler`] with its [`Store`]: handles deliveries from the bus ([`Runner::serve`])
/// and pushed events ([`Runner::push`]) the same way.
#[derive(Debug)]
pub struct Runner<H> {
    handler: H,
    store: Store,
    group: String,
    metrics: std::sync::OnceLock<RunnerMetrics>,
}

/// The handles of the runner's metrics for its group, looked up once: every delivery
/// records two, and looking a labelled metric up builds and hashes its key each time.
/// Taken at the first delivery, so a recorder installed at start-up is the one used.
struct RunnerMetrics {
    applied: metrics::Counter,
    duplicate: metrics::Counter,
    seconds: metrics::Histogram,
}

impl std::fmt::Debug for RunnerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunnerMetrics")
    }
}

impl<H: Handler> Runner<H> {
    pub fn new(store: Store, handler: H) -> Self {
        let group = handler.subscription().group;
        Self {
            handler,
            store,
            group,
            metrics: std::sync::OnceLock::new(),
        }
    }

    fn metrics(&self) -> &RunnerMetrics {
        self.metrics.get_or_init(|| {
            let counter = |outcome: &'static str| {
                metrics::counter!("bus_handled_total", "group" => self.group.clone(), "outcome" => outcome)
            };
            RunnerMetrics {
                applied: counter("applied"),
                duplicate: counter("duplicate"),
                seconds: metrics::histogram!("bus_handle_seconds", "group" => self.group.clone()),
            }
        })
    }

    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Consumes the handler's subscription on `bus` until `shutdown` (spawned on
    /// `tasks`). The returned health is the consumer's readiness: add it to the
    /// service's as the `consumers` check.
    pub fn serve(
        self: Arc<Self>,
        bus: Arc<dyn EventBus>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> ConsumerHealth {
        let consumer =
            Consumer::new(bus, self.handler.subscription()).concurrency(self.handler.concurrency());
        let health = consumer.health();
        let group = self.group.clone();
        // A handler that applies deliveries in batches gets the task that gathers them.
        let batches = (self.handler.batched()
            && matches!(self.store.kind, StoreKind::Database { .. }))
        .then(|| {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            tasks.spawn(self.clone().apply_batches(receiver));
            sender
        });
        let runner = self;
        // Only for handlers that did not ask for a concurrency of their own: a batch's
        // deliveries that go one by one run concurrently, which a handler that wants
        // them in order (media, 1) or few at once (notification's emails, 4) must not get.
        let task = if runner.handler.concurrency() == CONSUMER_CONCURRENCY
            && matches!(runner.store.kind, StoreKind::Database { .. })
        {
            // Every delivery ready at once in one call: one task and, when each is applied
            // by statements alone (or by a batched handler's queue), one write for all
            // of them.
            consumer.run_batches(shutdown, MOST_PER_BATCH, move |items| {
                let runner = runner.clone();
                let batches = batches.clone();
                async move { runner.handle_many(items, batches.as_ref()).await }
            })
        } else {
            consumer.run_attempts(shutdown, move |message, attempt| {
                let runner = runner.clone();
                let batches = batches.clone();
                async move {
                    runner
                        .handle_via(&message, attempt, batches.as_ref())
                        .await
                        .map(|_| ())
                }
            })
        };
        tasks.spawn(async move {
            if let Err(error) = task.await {
                tracing::error!(%group, %error, "a consumer stopped abnormally");
            }
        });
        health
    }

    /// Handles deliveries that came together: in one write when each is a first attempt
    /// whose handler applies it by statements alone, else one by one (concurrently, so
    /// their writes still share commits).
    ///
    /// A batched handler's deliveries go through its queue ([`apply_batches`]), which
    /// writes them together.
    async fn handle_many(
        &self,
        items: Vec<crate::Ready>,
        batches: Option<&BatchQueue<H::Event>>,
    ) -> Vec<Result<(), Nack>> {
        if batches.is_none()
            && items.len() > 1
            && let Some(outcomes) = self.apply_together(&items).await
        {
            return outcomes;
        }
        futures::future::join_all(items.iter().map(|item| {
            item.within(async move {
                self.handle_via(&item.message, item.attempt, batches)
                    .await
                    .map(|_| ())
            })
        }))
        .await
    }

    /// `items` applied in one write — their inbox records, the handler's statements and
    /// the messages they cause — or `None` (nothing written) when one of them needs more
    /// than that (an exhausted attempt, an undecodable body, a handler that reads) or the
    /// write fails (a duplicate's inbox record fails it whole): then each goes alone.
    async fn apply_together(&self, items: &[crate::Ready]) -> Option<Vec<Result<(), Nack>>> {
        let StoreKind::Database { db, inbox, outbox } = &self.store.kind else {
            return None;
        };
        let started = std::time::Instant::now();
        let mut last = db.statements();
        let mut events = Vec::with_capacity(items.len());
        let mut caused = Vec::new();
        for item in items {
            if item.attempt.is_exhausted() {
                return None;
            }
            // In the delivery's span and trace, so the messages it causes continue it.
            let (event, mine) = item
                .within(async {
                    let event = self.handler.decode(&item.message).ok()?;
                    let delivered = Delivered {
                        message_id: item.message.id.clone(),
                        routing_key: item.message.routing_key.clone(),
                        attempt: item.attempt,
                        traceparent: item.message.traceparent().map(str::to_owned),
                    };
                    inbox.stage(&mut last, &self.group, &delivered.message_id);
                    // A handler that reads goes one by one before any effect runs.
                    let applied = self
                        .handler
                        .apply_statements(&mut last, &event, &delivered)?
                        .ok()?;
                    let mut mine = self.handler.effect(&event, &delivered).await.ok()?;
                    mine.extend(applied);
                    Some((event, mine))
                })
                .await?;
            caused.extend(mine);
            events.push(event);
        }
        if !caused.is_empty() {
            let outbox = outbox.as_ref()?;
            for message in &caused {
                outbox.stage(&mut last, message.clone()).ok()?;
            }
        }
        db.commit_statements(last).await.ok()?;
        if let Some(outbox) = outbox
            && !caused.is_empty()
        {
            outbox.committed_with(caused);
        }
        let handles = self.metrics();
        let seconds = started.elapsed().as_secs_f64();
        let mut outcomes = Vec::with_capacity(events.len());
        for (event, item) in events.into_iter().zip(items) {
            item.within(self.handler.after_commit(event)).await;
            handles.applied.increment(1);
            handles.seconds.record(seconds);
            outcomes.push(Ok(()));
        }
        Some(outcomes)
    }

    /// Handles one message as delivered for the `attempt`-th time; `Err` says how to
    /// settle it. The bus's deliveries and pushed events both come through here.
    pub async fn handle(&self, message: &Message, attempt: Attempt) -> Result<Handled, Nack> {
        self.handle_via(message, attempt, None).await
    }

    /// [`handle`](Self::handle), through the batches of [`apply_batches`] when given.
    async fn handle_via(
        &self,
        message: &Message,
        attempt: Attempt,
        batches: Option<&BatchQueue<H::Event>>,
    ) -> Result<Handled, Nack> {
        let started = std::time::Instant::now();
        let outcome = self.handle_timed(message, attempt, batches).await;
        let handles = self.metrics();
        let failed = match &outcome {
            Ok(Handled::Applied) => {
                handles.applied.increment(1);
                None
            }
            Ok(Handled::Duplicate) => {
                handles.duplicate.increment(1);
                None
            }
            Err(Nack::Retry(_)) => Some("retried"),
            Err(Nack::Reject(_)) => Some("rejected"),
            Err(Nack::Requeue(_)) => Some("requeued"),
        };
        if let Some(label) = failed {
            metrics::counter!("bus_handled_total", "group" => self.group.clone(), "outcome" => label)
                .increment(1);
        }
        handles.seconds.record(started.elapsed().as_secs_f64());
        outcome
    }

    /// A pushed message (the course's `POST /events`): handled as a first delivery of
    /// one attempt; a transient failure is the pusher's to retry.
    pub async fn push(&self, message: &Message) -> Result<Handled, Nack> {
        self.handle(message, Attempt { number: 1, max: 1 }).await
    }

    async fn handle_timed(
        &self,
        message: &Message,
        attempt: Attempt,
        batches: Option<&BatchQueue<H::Event>>,
    ) -> Result<Handled, Nack> {
        let event = self.handler.decode(message).map_err(Nack::Reject)?;
        let delivered = Delivered {
            message_id: message.id.clone(),
            routing_key: message.routing_key.clone(),
            attempt,
            traceparent: message.traceparent().map(str::to_owned),
        };
        if attempt.is_exhausted() {
            return self.settle_exhausted(event, &delivered).await;
        }
        let mut caused = self
            .handler
            .effect(&event, &delivered)
            .await
            .map_err(nack)?;
        let mut event = event;
        if let Some(batches) = batches {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let queued = Queued {
                event,
                delivered: delivered.clone(),
                caused,
                reply,
            };
            (event, caused) = match batches.send(queued) {
                Err(tokio::sync::mpsc::error::SendError(queued)) => (queued.event, queued.caused),
                Ok(()) => match answer.await {
                    Ok(Batched::Applied(event)) => {
                        self.handler.after_commit(event).await;
                        return Ok(Handled::Applied);
                    }
                    Ok(Batched::Alone(event, caused)) => (event, caused),
                    Err(_) => return Err(transient("the batch it was in stopped")),
                },
            };
        }
        match &self.store.kind {
            StoreKind::Keyed(bus) => {
                publish(bus.as_ref(), caused).await?;
                self.handler.after_commit(event).await;
                Ok(Handled::Applied)
            }
            StoreKind::Database { .. } => {
                let give_up = tokio::time::Instant::now() + self.handler.effect_patience();
                let mut pause = Duration::from_millis(250);
                loop {
                    match self.commit(&event, &delivered, caused.clone(), true).await {
                        Err(Nack::Retry(reason)) if tokio::time::Instant::now() < give_up => {
                            tracing::warn!(group = %self.group, message_id = %message.id, %reason,
                                "effect done but not yet recorded; trying the database again");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(2));
                        }
                        Ok(Handled::Applied) => {
                            self.handler.after_commit(event).await;
                            return Ok(Handled::Applied);
                        }
                        other => return other,
                    }
                }
            }
        }
    }

    /// In one transaction: `apply` when `apply` is set, then — sent with the write's end,
    /// in one request — the inbox record, the handler's last statements and the caused
    /// messages in the outbox. An inbox record already there (a message applied before)
    /// fails the write, which is undone whole: a duplicate.
    async fn commit(
        &self,
        event: &H::Event,
        delivered: &Delivered,
        mut caused: Vec<Message>,
        apply: bool,
    ) -> Result<Handled, Nack> {
        let StoreKind::Database { db, inbox, outbox } = &self.store.kind else {
            return Ok(Handled::Applied);
        };
        // The inbox record goes first among the statements sent with the write's end: a
        // message applied before fails there on its key, and everything this write did
        // is undone (see `duplicate_or`).
        let mut last = db.statements();
        inbox.stage(&mut last, &self.group, &delivered.message_id);
        // Shares its commit with the other deliveries and requests writing at once
        // (group commit); acknowledged only once that commit is on disk. A write of
        // statements alone needs no transaction of its own until it is sent.
        let mut write = None;
        if apply {
            let applied = match self.handler.apply_statements(&mut last, event, delivered) {
                Some(applied) => applied,
                None => {
                    let mut open = db.write().await.map_err(transient)?;
                    let tx = open.tx().map_err(transient)?;
                    let applied = self
                        .handler
                        .apply_with_last(tx, &mut last, event, delivered)
                        .await;
                    if applied.is_ok() {
                        write = Some(open);
                    } else {
                        open.rollback().await.map_err(transient)?;
                    }
                    applied
                }
            };
            match applied {
                Ok(messages) => caused.extend(messages),
                // A redelivered message may fail in `apply` because it was applied.
                Err(error) => return self.duplicate_or(delivered, nack(error)).await,
            }
        }
        if !caused.is_empty() {
            let Some(outbox) = outbox else {
                // A wiring mistake, not the message's fault: keep it for a fixed build.
                tracing::error!(group = %self.group, "the handler caused messages but its store has no outbox");
                return Err(Nack::Retry(format!(
                    "consumer group {} has no outbox for the messages it causes",
                    self.group
                )));
            };
            // In one request with the write's end.
            for message in &caused {
                outbox
                    .stage(&mut last, message.clone())
                    .map_err(transient)?;
            }
        }
        let committed = match write {
            Some(write) => write.commit_with(last).await,
            None => db.commit_statements(last).await,
        };
        if let Err(error) = committed {
            return self.duplicate_or(delivered, transient(error)).await;
        }
        if let Some(outbox) = outbox
            && !caused.is_empty()
        {
            outbox.committed_with(caused);
        }
        Ok(Handled::Applied)
    }

    /// Applies the deliveries queued by [`handle_via`](Self::handle_via) in batches: one
    /// write for every delivery that queued up while the last batch was applied (at most
    /// [`MOST_PER_BATCH`]): their inbox records, the handler's
    /// [`apply_batch`](Handler::apply_batch) and their caused messages, sent with the
    /// write's end in one request; the next batch is what queued up until that commit
    /// was durable. If anything of a batch fails — a duplicate's
    /// inbox record, the handler, the commit — it is undone whole and each of its
    /// deliveries is applied alone, which tells a duplicate from a failure.
    async fn apply_batches(
        self: Arc<Self>,
        mut queue: tokio::sync::mpsc::UnboundedReceiver<Queued<H::Event>>,
    ) {
        let StoreKind::Database { db, inbox, outbox } = &self.store.kind else {
            return;
        };
        while let Some(first) = queue.recv().await {
            let write = db.write().await;
            let mut entries = vec![first];
            while entries.len() < MOST_PER_BATCH {
                match queue.try_recv() {
                    Ok(entry) => entries.push(entry),
                    Err(_) => break,
                }
            }
            let mut write = match write {
                Ok(write) => write,
                Err(error) => {
                    tracing::debug!(group = %self.group, %error, "no batch; each delivery alone");
                    alone(entries);
                    continue;
                }
            };
            let mut last = db.statements();
            for entry in &entries {
                inbox.stage(&mut last, &self.group, &entry.delivered.message_id);
            }
            let applied = match write.tx() {
                Ok(tx) => {
                    let events: Vec<(&H::Event, &Delivered)> = entries
                        .iter()
                        .map(|entry| (&entry.event, &entry.delivered))
                        .collect();
                    self.handler
                        .apply_batch(tx, &mut last, &events)
                        .await
                        .map_err(|error| error.to_string())
                }
                Err(error) => Err(error.to_string()),
            };
            let staged = applied.and_then(|caused| {
                if caused.len() != entries.len() {
                    return Err("the handler answered for another number of events".to_owned());
                }
                let mut all = Vec::new();
                for (entry, caused) in entries.iter_mut().zip(caused) {
                    entry.caused.extend(caused);
                    all.extend(entry.caused.iter().cloned());
                }
                if !all.is_empty() {
                    let outbox = outbox.as_ref().ok_or_else(|| {
                        format!(
                            "consumer group {} has no outbox for the messages it causes",
                            self.group
                        )
                    })?;
                    for message in &all {
                        outbox
                            .stage(&mut last, message.clone())
                            .map_err(|error| error.to_string())?;
                    }
                }
                Ok(all)
            });
            let caused = match staged {
                Ok(caused) => caused,
                Err(error) => {
                    tracing::debug!(group = %self.group, %error, deliveries = entries.len(),
                        "a batch failed; each delivery alone");
                    let _ = write.rollback().await;
                    alone(entries);
                    continue;
                }
            };
            match write.commit_with(last).await {
                Ok(()) => {
                    if let Some(outbox) = outbox
                        && !caused.is_empty()
                    {
                        outbox.committed_with(caused);
                    }
                    for entry in entries {
                        let _ = entry.reply.send(Batched::Applied(entry.event));
                    }
                }
                Err(error) => {
                    tracing::debug!(group = %self.group, %error, deliveries = entries.len(),
                        "a batch's write failed; each delivery alone");
                    alone(entries);
                }
            }
        }
    }

    /// After a failed write (undone whole): a duplicate if the inbox holds the message
    /// — applied by an earlier delivery — else `failure`.
    async fn duplicate_or(&self, delivered: &Delivered, failure: Nack) -> Result<Handled, Nack> {
        let StoreKind::Database { db, inbox, .. } = &self.store.kind else {
            return Err(failure);
        };
        match inbox.contains(db, &self.group, &delivered.message_id).await {
            Ok(true) => {
                tracing::debug!(group = %self.group, message_id = %delivered.message_id, "already applied; skipped");
                Ok(Handled::Duplicate)
            }
            Ok(false) => Err(failure),
            Err(error) => Err(transient(error)),
        }
    }

    /// Past the last attempt: applied (the inbox knows) → settled; otherwise the
    /// handler's [`Handler::exhausted`] decides.
    async fn settle_exhausted(
        &self,
        event: H::Event,
        delivered: &Delivered,
    ) -> Result<Handled, Nack> {
        if let StoreKind::Database { db, inbox, .. } = &self.store.kind
            && inbox
                .contains(db, &self.group, &delivered.message_id)
                .await
                .map_err(transient)?
        {
            tracing::info!(group = %self.group, message_id = %delivered.message_id,
                "applied already; only its acknowledgement was lost");
            return Ok(Handled::Duplicate);
        }
        let settled = self
            .handler
            .exhausted(&event, delivered)
            .await
            .map_err(nack)?;
        let Some(caused) = settled else {
            return Err(Nack::Reject(format!(
                "its handler never finished: the consumer stopped during each of its {} attempts",
                delivered.attempt.max
            )));
        };
        match &self.store.kind {
            StoreKind::Keyed(bus) => {
                publish(bus.as_ref(), caused).await?;
                Ok(Handled::Applied)
            }
            StoreKind::Database { .. } => self.commit(&event, delivered, caused, false).await,
        }
    }
}

/// Deliveries a batch applies at most ([`Handler::apply_batch`]).
pub const MOST_PER_BATCH: usize = 64;

/// Where a delivery goes to be applied in a batch.
type BatchQueue<E> = tokio::sync::mpsc::UnboundedSender<Queued<E>>;

/// A delivery waiting for its batch, with the messages its effect caused.
struct Queued<E> {
    event: E,
    delivered: Delivered,
    caused: Vec<Message>,
    reply: tokio::sync::oneshot::Sender<Batched<E>>,
}

/// How a delivery's batch ended.
enum Batched<E> {
    /// Applied and durable.
    Applied(E),
    /// Not applied: apply it alone (with the messages its effect caused).
    Alone(E, Vec<Message>),
}

/// Sends each of `entries` back to be applied alone.
fn alone<E>(entries: Vec<Queued<E>>) {
    for entry in entries {
        let _ = entry.reply.send(Batched::Alone(entry.event, entry.caused));
    }
}

async fn publish(bus: &dyn EventBus, messages: Vec<Message>) -> Result<(), Nack> {
    if messages.is_empty() {
        return Ok(());
    }
    bus.publish_all(messages)
        .await
        .map_err(|e| Nack::Retry(format!("could not publish: {e}")))
}

fn transient(error: impl std::fmt::Display) -> Nack {
    Nack::Retry(error.to_string())
}

fn nack<E: Failure>(error: E) -> Nack {
    match error.retry() {
        Retry::Later => Nack::Retry(error.to_string()),
        Retry::Never => Nack::Reject(error.to_string()),
        Retry::Requeue => Nack::Requeue(error.to_string()),
    }
}
