//! The handle a consumer gets for each delivery: settles it exactly once and tells the
//! tap (`tap`) how it ended. Above `message` and `tap`, which both stay below it.

use std::fmt;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::{Attempt, BusError, Message, Nack};

/// Backend side of one delivery: settles it exactly once.
pub(crate) trait Settle: Send + Sync {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>>;
    fn nack(self: Box<Self>, nack: Nack) -> BoxFuture<'static, Result<(), BusError>>;

    /// Acks this delivery and `others` together. By default one by one; a backend that
    /// can settle many in one request (the embedded bus) does so for those of its own.
    fn ack_with(
        self: Box<Self>,
        others: Vec<Box<dyn Settle>>,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        let all = std::iter::once(self.ack()).chain(others.into_iter().map(|other| other.ack()));
        let all: Vec<_> = all.collect();
        Box::pin(async move {
            futures::future::join_all(all)
                .await
                .into_iter()
                .collect::<Result<(), BusError>>()
        })
    }

    /// The backend's own handle, for its [`Settle::ack_with`] to recognise its kind
    /// among `others` (a backend that batches answers `Some(self)`).
    fn as_any(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// A message handed to a consumer. Settle it with [`Delivery::ack`] once its effects
/// are durable, or [`Delivery::nack`]; a delivery dropped unsettled (the consumer died)
/// is redelivered — by the broker when the channel closes, by the embedded bus when its
/// lease expires.
pub struct Delivery {
    pub message: Message,
    /// 1 on first delivery, incremented on every redelivery and retry.
    pub attempt: u32,
    /// The bus's [`RetryPolicy::max_attempts`]: when `attempt` reaches it, a
    /// [`Nack::Retry`] dead-letters the message instead of retrying it.
    pub max_attempts: u32,
    /// The consumer group it was delivered to.
    pub group: String,
    pub(crate) settle: Box<dyn Settle>,
    /// Counts the delivery as in flight in this process until it is settled or dropped,
    /// and reports its settlement to the bus's tap.
    pub(crate) held: crate::tap::Held,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Done: the message will not be delivered to this group again.
    pub async fn ack(self) -> Result<(), BusError> {
        metrics::counter!("bus_acked_total", "group" => self.group.clone()).increment(1);
        let (message, group) = (self.message, self.group);
        self.settle.ack().await?;
        (self.held.tap).settled(&message, &group, self.attempt, self.max_attempts, None);
        Ok(())
    }

    /// [`Delivery::ack`] for each of `deliveries`, in one request to the bus where the
    /// backend can (the embedded bus: one command for the lot, where one each cost a
    /// hand-off and a reply per delivery). `Err` if any could not be settled; the
    /// unsettled ones are redelivered later, which the consumer's inbox makes harmless.
    pub async fn ack_all(deliveries: Vec<Delivery>) -> Result<(), BusError> {
        let (settles, settled): (Vec<_>, Vec<_>) = deliveries
            .into_iter()
            .map(|d| {
                (
                    d.settle,
                    (d.message, d.group, d.attempt, d.max_attempts, d.held),
                )
            })
            .unzip();
        let mut settles = settles.into_iter();
        let Some(first) = settles.next() else {
            return Ok(());
        };
        first.ack_with(settles.collect()).await?;
        for (message, group, attempt, max_attempts, held) in &settled {
            held.tap
                .settled(message, group, *attempt, *max_attempts, None);
        }
        // One counter update per run of a group (a consumer's batch is one group).
        for run in settled.chunk_by(|a, b| a.1 == b.1) {
            metrics::counter!("bus_acked_total", "group" => run[0].1.clone())
                .increment(run.len() as u64);
        }
        Ok(())
    }

    /// Not done: retry later or dead-letter, as `nack` says.
    pub async fn nack(self, nack: Nack) -> Result<(), BusError> {
        let (message, group) = (self.message, self.group);
        let observed = nack.clone();
        self.settle.nack(nack).await?;
        self.held.tap.settled(
            &message,
            &group,
            self.attempt,
            self.max_attempts,
            Some(&observed),
        );
        Ok(())
    }

    /// The body decoded from JSON.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.message.decode()
    }

    /// Which attempt this is, and how many there are.
    pub fn attempt(&self) -> Attempt {
        Attempt {
            number: self.attempt,
            max: self.max_attempts,
        }
    }
}
