//! How this service's events leave it: written to the outbox inside the transaction
//! that makes the change, then published by the outbox relay (woken at once after the
//! commit, polling otherwise, retrying while the bus is away).

use std::sync::Arc;

use bus::{BusOptions, EventBus, Message, Outbox, OutboxRelay};
use contracts::blog::{self, BlogEvent};
use platform::ServiceContext;
use sqlx::AnyConnection;
use storage::Database;

/// Enqueues events in a transaction and nudges the relay after the commit.
#[derive(Debug, Clone)]
pub struct Publisher {
    outbox: Outbox,
    relay: OutboxRelay,
}

impl Publisher {
    /// Adds the bus tables to `db`, connects to the process's bus and starts the relay.
    pub async fn start(
        context: &ServiceContext,
        db: &Database,
    ) -> anyhow::Result<(Self, Arc<dyn EventBus>)> {
        db.migrate("bus", bus::outbox_migrations()).await?;
        let bus = bus::connect(&context.bus_url_or_embedded(), BusOptions::default()).await?;
        let relay = OutboxRelay::new(crate::NAME, db.clone(), bus.clone());
        context
            .tasks
            .spawn(relay.clone().run(context.shutdown.clone()));
        let publisher = Self {
            outbox: Outbox::new(db),
            relay,
        };
        Ok((publisher, bus))
    }

    /// Writes `event` to the outbox as part of the transaction on `conn`. Its message id
    /// is derived from the event, so every copy of it is recognised as the same message.
    pub async fn enqueue(
        &self,
        conn: &mut AnyConnection,
        event: &BlogEvent,
    ) -> Result<(), bus::BusError> {
        let message = Message::new(blog::routing_key(event.event_type()), event.to_json())
            .with_id(event.message_id());
        self.outbox.enqueue(conn, &message).await
    }

    /// Call after committing a transaction that enqueued events.
    pub fn committed(&self) {
        self.relay.wake();
    }
}

/// Deliveries handled at once. The handlers do not depend on delivery order (each is
/// keyed by its post or comment and deduplicated by the inbox), and overlapping them
/// overlaps the acknowledgements, which otherwise bound throughput.
const CONSUMER_CONCURRENCY: usize = 8;

/// The consumer group of this service.
pub const GROUP: &str = "comments";

/// Consumes `PostCreated` (to learn posts) and `CommentModerated` (to apply decisions).
pub fn start_consumer(
    context: &ServiceContext,
    bus: Arc<dyn EventBus>,
    store: crate::CommentStore,
    post_learned: Arc<tokio::sync::Notify>,
) {
    let subscription = bus::Subscription::new(GROUP, blog::routing_key(blog::POST_CREATED))
        .also(blog::routing_key(blog::COMMENT_MODERATED))
        .with_prefetch(128);
    let consumer = bus::Consumer::new(bus, subscription)
        .concurrency(CONSUMER_CONCURRENCY)
        .run(context.shutdown.clone(), move |message| {
            let store = store.clone();
            let post_learned = post_learned.clone();
            async move {
                let event: BlogEvent = message
                    .decode()
                    .map_err(|e| bus::Nack::Reject(format!("not a blog event: {e}")))?;
                apply(&store, &post_learned, &message.id, &event)
                    .await
                    .map_err(|e| bus::Nack::Retry(e.to_string()))
            }
        });
    context.tasks.spawn(async move {
        if let Err(error) = consumer.await {
            tracing::error!(%error, "the comments consumer stopped");
        }
    });
}

/// Applies `event` once per `message_id`: the inbox record, the effect and any event it
/// causes commit together.
pub async fn apply(
    store: &crate::CommentStore,
    post_learned: &tokio::sync::Notify,
    message_id: &str,
    event: &BlogEvent,
) -> Result<(), crate::CommentError> {
    let learned = store.apply_once(GROUP, message_id, event).await?;
    if learned {
        post_learned.notify_waiters();
    }
    Ok(())
}
