//! A wiretap on the bus of this process: every message as a backend publishes it and
//! every delivery as it is settled (handled, retried, dead-lettered, requeued), for the
//! system map (`GET /admin/system/stream`) and its learners.
//!
//! The tap sits where both backends publish and settle, not in any consumer loop, so it
//! sees every message whoever handles it. It is a bounded tokio broadcast channel
//! ([`CAPACITY`] observations): a watcher that falls behind loses the oldest and learns
//! how many (`Lagged`), and the bus never waits for it. With no watcher nothing is built
//! at all (one atomic load per publish or settlement).
//!
//! Each bus has its own tap ([`Tap`], from [`EventBus::tap`](crate::EventBus::tap)),
//! shared by every handle on that bus in this process. Observations are process-local; [`crate::registry`] forwards them to other processes
//! (the gateway) over the bus's signals, in batches, when the bus is RabbitMQ.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, LazyLock, Mutex, Weak,
        atomic::{AtomicI64, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{Message, Nack};

/// Observations a watcher may fall behind by before it loses the oldest.
pub const CAPACITY: usize = 4096;

/// What happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The bus took it (committed / confirmed).
    Published,
    /// A consumer of `group` received it and works on it.
    Delivered,
    /// A consumer of `group` handled it (acked).
    Handled,
    /// Its handler failed; it will be delivered again after a backoff.
    Retried,
    /// Its handler rejected it or it failed its last attempt: parked for an operator.
    DeadLettered,
    /// Its handler was interrupted (shutdown); delivered again as the same attempt.
    Requeued,
}

/// One thing that happened on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub outcome: Outcome,
    pub routing_key: String,
    pub message_id: String,
    /// The W3C trace id of the message's `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The service that published it (for `published`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// The consumer group that settled it (for every other outcome).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Why it was retried or dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// The tap of one bus in this process: what its backends publish and settle, and which
/// groups its services consume. Every handle on the same bus (the same embedded file, or
/// the same broker and exchange) shares one, whoever connected it; two systems in one
/// process (tests) see only their own messages. [`EventBus::tap`](crate::EventBus::tap).
#[derive(Debug)]
pub struct Tap {
    sender: broadcast::Sender<Arc<Observation>>,
    groups: Mutex<Groups>,
}

/// The taps of the buses this process uses, by where the bus is.
static TAPS: LazyLock<Mutex<HashMap<String, Weak<Tap>>>> = LazyLock::new(Mutex::default);

/// The tap of the bus at `location` (an embedded file's absolute path, or a broker's URL
/// with its exchange), shared with every other handle on it while one lives.
pub(crate) fn of_bus(location: &str) -> Arc<Tap> {
    let Ok(mut taps) = TAPS.lock() else {
        return Arc::new(Tap::new());
    };
    if let Some(tap) = taps.get(location).and_then(Weak::upgrade) {
        return tap;
    }
    taps.retain(|_, tap| tap.strong_count() > 0);
    let tap = Arc::new(Tap::new());
    taps.insert(location.to_owned(), Arc::downgrade(&tap));
    tap
}

impl Default for Tap {
    fn default() -> Self {
        Self::new()
    }
}

impl Tap {
    /// A tap of its own, shared with nobody.
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
            groups: Mutex::default(),
        }
    }

    /// Starts watching this bus; see the module documentation for what a slow receiver
    /// gets.
    pub fn watch(&self) -> broadcast::Receiver<Arc<Observation>> {
        self.sender.subscribe()
    }

    /// Whether anyone watches now (so that a backend can skip work kept only for the tap).
    pub(crate) fn watched(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    fn emit(&self, make: impl FnOnce() -> Observation) {
        // No watcher, no work: this is on every publish and settlement.
        if self.watched() {
            let _ = self.sender.send(Arc::new(make()));
        }
    }

    /// `message` was published by `publisher`; `at_ms` is when the publish began (a
    /// consumer may receive it before the broker's confirm is back).
    pub(crate) fn published(&self, message: &Message, publisher: Option<&str>, at_ms: i64) {
        self.emit(|| Observation {
            publisher: publisher.map(str::to_owned),
            ..Observation::of(message, Outcome::Published, at_ms)
        });
    }

    /// `message` was handed to a consumer of `group`; the returned [`Held`] counts it in
    /// flight until it is settled or dropped.
    pub(crate) fn delivered(
        self: &Arc<Self>,
        message: &Message,
        group: &str,
        attempt: u32,
    ) -> Held {
        self.emit(|| Observation {
            group: Some(group.to_owned()),
            attempt: Some(attempt),
            ..Observation::of(message, Outcome::Delivered, crate::now_ms())
        });
        let counter = match self.groups.lock() {
            Ok(mut groups) => groups
                .in_flight
                .entry(group.to_owned())
                .or_default()
                .clone(),
            Err(_) => Arc::default(),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Held {
            tap: Arc::clone(self),
            counter,
        }
    }

    /// A delivery of `message` to `group` was settled with `nack` (`None`: acked).
    pub(crate) fn settled(
        &self,
        message: &Message,
        group: &str,
        attempt: u32,
        max_attempts: u32,
        nack: Option<&Nack>,
    ) {
        self.emit(|| {
            let (outcome, reason) = match nack {
                None => (Outcome::Handled, None),
                Some(Nack::Requeue(reason)) => (Outcome::Requeued, Some(reason.clone())),
                Some(Nack::Retry(reason)) if attempt < max_attempts => {
                    (Outcome::Retried, Some(reason.clone()))
                }
                Some(Nack::Retry(reason) | Nack::Reject(reason)) => {
                    (Outcome::DeadLettered, Some(reason.clone()))
                }
            };
            Observation {
                group: Some(group.to_owned()),
                attempt: Some(attempt),
                reason,
                ..Observation::of(message, outcome, crate::now_ms())
            }
        });
    }

    /// `service` subscribed to `group` with `routing_keys` (recorded for the registry).
    pub(crate) fn subscribed(&self, service: Option<&str>, group: &str, routing_keys: &[String]) {
        if let Ok(mut groups) = self.groups.lock() {
            let keys = groups
                .by_service
                .entry(service.unwrap_or_default().to_owned())
                .or_default()
                .entry(group.to_owned())
                .or_default();
            for key in routing_keys {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
        }
    }

    /// The groups `service` consumes on this bus in this process.
    pub fn consumed_by(&self, service: &str) -> Vec<Consumed> {
        let Ok(groups) = self.groups.lock() else {
            return Vec::new();
        };
        groups
            .by_service
            .get(service)
            .map(|by_group| {
                by_group
                    .iter()
                    .map(|(group, keys)| Consumed {
                        group: group.clone(),
                        routing_keys: keys.clone(),
                        in_flight: groups
                            .in_flight
                            .get(group)
                            .map_or(0, |n| n.load(Ordering::Relaxed)),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Observation {
    /// What every observation of `message` says: its key, id and trace; the rest empty.
    fn of(message: &Message, outcome: Outcome, at_ms: i64) -> Self {
        Observation {
            outcome,
            routing_key: message.routing_key.clone(),
            message_id: message.id.clone(),
            trace_id: message
                .traceparent()
                .and_then(crate::trace::trace_id)
                .map(str::to_owned),
            publisher: None,
            group: None,
            attempt: None,
            reason: None,
            at_ms,
        }
    }
}

/// A consumer group this process consumes, and for which service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumed {
    pub group: String,
    pub routing_keys: Vec<String>,
    /// Deliveries handed to this process's consumers and not yet settled.
    pub in_flight: i64,
}

#[derive(Debug, Default)]
struct Groups {
    /// service (or "" when the bus handle was not named) → group → routing keys.
    by_service: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    in_flight: HashMap<String, Arc<AtomicI64>>,
}

/// One delivery held by this process, from hand-out to settlement or drop: counted in
/// flight, and the tap its settlement is reported to.
pub(crate) struct Held {
    pub(crate) tap: Arc<Tap>,
    counter: Arc<AtomicI64>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlements_are_classified_by_attempt() {
        let tap = Tap::new();
        let mut watcher = tap.watch();
        let message = Message::new("video", "{}");
        tap.settled(&message, "video", 1, 5, None);
        tap.settled(&message, "video", 1, 5, Some(&Nack::Retry("x".into())));
        tap.settled(&message, "video", 5, 5, Some(&Nack::Retry("x".into())));
        tap.settled(&message, "video", 1, 5, Some(&Nack::Reject("bad".into())));
        tap.settled(&message, "video", 2, 5, Some(&Nack::Requeue("stop".into())));
        let outcomes: Vec<Outcome> = (0..5)
            .map(|_| watcher.try_recv().expect("observed").outcome)
            .collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Handled,
                Outcome::Retried,
                Outcome::DeadLettered,
                Outcome::DeadLettered,
                Outcome::Requeued
            ]
        );
    }
}
