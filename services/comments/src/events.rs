//! The events this service consumes (it publishes through [`bus::OutboxPublisher`]):
//! `PostCreated` teaches it posts, `CommentModerated` applies decisions; each is applied
//! once per message id (inbox).

use std::sync::Arc;

use bus::EventBus;
use contracts::blog::{self, BlogEvent};
use platform::ServiceContext;

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
