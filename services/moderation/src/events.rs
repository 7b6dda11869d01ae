//! Moderation's consumer: each `CommentCreated` is decided once per message id — the
//! [`bus::Runner`] commits the inbox record and the `CommentModerated` decision (outbox)
//! together.

use bus::{Delivered, Handler, HandlerError, Message, Statements, Subscription, Tx};
use contracts::blog::{self, BlogEvent};

/// The consumer group of this service.
pub const GROUP: &str = "moderation";

/// What a `CommentCreated` means here: a decision.
#[derive(Debug, Clone)]
pub struct Moderation {
    pub moderator: crate::Moderator,
}

impl Handler for Moderation {
    type Event = BlogEvent;
    type Error = HandlerError;

    fn subscription(&self) -> Subscription {
        Subscription::new(GROUP, blog::routing_key(blog::COMMENT_CREATED)).with_prefetch(128)
    }

    fn decode(&self, message: &Message) -> Result<BlogEvent, String> {
        bus::decode_json(message)
    }

    async fn apply(
        &self,
        _tx: &mut Tx,
        event: &BlogEvent,
        _delivered: &Delivered,
    ) -> Result<Vec<Message>, HandlerError> {
        Ok(self.decide(event))
    }

    /// A decision reads nothing: the runner sends its inbox record and outbox row with
    /// the other statement-only writes.
    fn apply_statements(
        &self,
        _last: &mut Statements,
        event: &BlogEvent,
        _delivered: &Delivered,
    ) -> Option<Result<Vec<Message>, HandlerError>> {
        Some(Ok(self.decide(event)))
    }
}

impl Moderation {
    fn decide(&self, event: &BlogEvent) -> Vec<Message> {
        let BlogEvent::CommentCreated(comment) = event else {
            return Vec::new();
        };
        vec![Message::from(&self.moderator.moderate(comment))]
    }
}
