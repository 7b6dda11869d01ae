//! The course's push style: an event `POST`ed to a blog service's `/events` is handed to
//! the service's [`Runner`] as if the bus had delivered it (same inbox: a pushed copy and
//! a delivered copy count once). One implementation for every blog service; each only
//! turns a [`PushError`] into its problem+json answer.

use contracts::blog::Envelope;
use futures::future::BoxFuture;

use crate::{Handler, Message, Nack, Runner, topic_matches};

/// Why a pushed event was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Not JSON, not an envelope, or a blog event whose data does not fit its type:
    /// the pusher's mistake (400).
    #[error("{0}")]
    BadRequest(String),
    /// The service could not apply it now (its database away): the pusher may retry
    /// (500).
    #[error("{0}")]
    Failed(String),
}

impl<H: Handler> Runner<H> {
    /// Applies the blog event in `envelope` (parsed at the edge, e.g. by the services'
    /// `JsonBody<Envelope>`), if this handler's group consumes its type; other and
    /// unknown types are taken and ignored, as the course's services do.
    pub async fn push_blog_event(&self, envelope: &Envelope) -> Result<(), PushError> {
        let event = envelope.blog_event().map_err(|e| {
            PushError::BadRequest(format!("invalid {} data: {e}", envelope.event_type))
        })?;
        let Some(event) = event else {
            return Ok(());
        };
        let message = Message::from(&event);
        let consumed = self
            .handler()
            .subscription()
            .routing_keys
            .iter()
            .any(|pattern| topic_matches(pattern, &message.routing_key));
        if !consumed {
            return Ok(());
        }
        match self.push(&message).await {
            Ok(_) => Ok(()),
            Err(Nack::Reject(reason)) => Err(PushError::BadRequest(reason)),
            Err(Nack::Retry(reason) | Nack::Requeue(reason)) => Err(PushError::Failed(reason)),
        }
    }
}

/// What a `POST /events` endpoint hands a pushed envelope to, whatever the service's
/// handler: one endpoint for every blog service (a `dyn PushTarget` in its state).
pub trait PushTarget: Send + Sync {
    /// As [`Runner::push_blog_event`].
    fn push_event<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), PushError>>;
}

impl<H: Handler> PushTarget for Runner<H> {
    fn push_event<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), PushError>> {
        Box::pin(self.push_blog_event(envelope))
    }
}

/// The target of a service that reacts to no event: every push is taken and ignored,
/// as the course's services answer a push they have nothing to do with.
#[derive(Debug, Clone, Copy, Default)]
pub struct IgnorePushes;

impl PushTarget for IgnorePushes {
    fn push_event<'a>(&'a self, _: &'a Envelope) -> BoxFuture<'a, Result<(), PushError>> {
        Box::pin(async { Ok(()) })
    }
}
