//! The events this service consumes (it publishes through [`bus::OutboxPublisher`]):
//! `PostCreated` teaches it posts (from the bus only when it has no event log to follow,
//! see the crate's documentation), `CommentModerated` applies decisions (and causes
//! `CommentUpdated`); the [`bus::Runner`] applies each once per message id.

use std::sync::Arc;

use bus::{Delivered, Handler, Message, Subscription, Tx};
use contracts::blog::{self, BlogEvent};

use crate::{CommentError, CommentStore};

/// The consumer group of this service.
pub const GROUP: &str = "comments";

/// What `PostCreated` and `CommentModerated` mean here.
#[derive(Debug, Clone)]
pub struct CommentEvents {
    pub store: CommentStore,
    /// Woken whenever this process learns a post.
    pub post_learned: Arc<tokio::sync::Notify>,
    /// Posts are learned from the event-bus service's log (the service's log follower),
    /// so the group takes only `CommentModerated` from the bus.
    pub posts_from_log: bool,
}

impl Handler for CommentEvents {
    type Event = BlogEvent;
    type Error = CommentError;

    fn subscription(&self) -> Subscription {
        let moderated = blog::routing_key(blog::COMMENT_MODERATED);
        if self.posts_from_log {
            return Subscription::new(GROUP, moderated).with_prefetch(128);
        }
        Subscription::new(GROUP, blog::routing_key(blog::POST_CREATED))
            .also(moderated)
            .with_prefetch(128)
    }

    fn decode(&self, message: &Message) -> Result<BlogEvent, String> {
        bus::decode_json(message)
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        event: &BlogEvent,
        _delivered: &Delivered,
    ) -> Result<Vec<Message>, CommentError> {
        self.store.apply(tx, event).await
    }

    async fn apply_with_last(
        &self,
        tx: &mut Tx,
        last: &mut bus::Statements,
        event: &BlogEvent,
        _delivered: &Delivered,
    ) -> Result<Vec<Message>, CommentError> {
        self.store.apply_with_last(tx, last, event).await
    }

    fn apply_statements(
        &self,
        last: &mut bus::Statements,
        event: &BlogEvent,
        _delivered: &Delivered,
    ) -> Option<Result<Vec<Message>, CommentError>> {
        self.store.apply_statements(last, event).map(Ok)
    }

    async fn after_commit(&self, event: BlogEvent) {
        if matches!(event, BlogEvent::PostCreated(_)) {
            self.post_learned.notify_waiters();
        }
    }
}
