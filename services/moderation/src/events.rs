//! Moderation's consumer: each `CommentCreated` is decided once per message id, the
//! inbox record and the `CommentModerated` decision (outbox) committed together.

use std::sync::Arc;

use bus::EventBus;
use contracts::blog::{self, BlogEvent};
use platform::ServiceContext;
use storage::Database;

/// Deliveries handled at once. The handlers do not depend on delivery order (each is
/// keyed by its post or comment and deduplicated by the inbox), and overlapping them
/// overlaps the acknowledgements, which otherwise bound throughput.
const CONSUMER_CONCURRENCY: usize = 8;

/// The consumer group of this service.
pub const GROUP: &str = "moderation";

/// What moderation needs to answer a comment: its database, outbox and rule.
#[derive(Debug, Clone)]
pub struct Moderation {
    pub db: Database,
    pub publisher: bus::OutboxPublisher,
    pub moderator: crate::Moderator,
}

#[derive(Debug, thiserror::Error)]
pub enum ModerationError {
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

impl Moderation {
    /// Consumes `CommentCreated`.
    pub fn start_consumer(&self, context: &ServiceContext, bus: Arc<dyn EventBus>) {
        let subscription = bus::Subscription::new(GROUP, blog::routing_key(blog::COMMENT_CREATED))
            .with_prefetch(128);
        let moderation = self.clone();
        let consumer = bus::Consumer::new(bus, subscription)
            .concurrency(CONSUMER_CONCURRENCY)
            .run(context.shutdown.clone(), move |message| {
                let moderation = moderation.clone();
                async move {
                    let event: BlogEvent = message
                        .decode()
                        .map_err(|e| bus::Nack::Reject(format!("not a blog event: {e}")))?;
                    let BlogEvent::CommentCreated(comment) = event else {
                        return Ok(());
                    };
                    moderation
                        .moderate(&message.id, &comment)
                        .await
                        .map_err(|e| bus::Nack::Retry(e.to_string()))
                }
            });
        context.tasks.spawn(async move {
            if let Err(error) = consumer.await {
                tracing::error!(%error, "the moderation consumer stopped");
            }
        });
    }

    /// Decides on `comment` once per `message_id`: inbox record and `CommentModerated`
    /// commit together.
    pub async fn moderate(
        &self,
        message_id: &str,
        comment: &blog::CommentCreated,
    ) -> Result<(), ModerationError> {
        let mut tx = self.db.begin().await?;
        if !bus::Inbox::new(&self.db)
            .record(&mut tx, GROUP, message_id)
            .await?
        {
            return Ok(());
        }
        let decision = self.moderator.moderate(comment);
        self.publisher.enqueue(&mut tx, &decision).await?;
        tx.commit().await?;
        self.publisher.committed();
        Ok(())
    }
}
