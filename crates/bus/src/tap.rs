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
//! Observations are process-local; [`crate::registry`] forwards them to other processes
//! (the gateway) over the bus's signals, in batches, when the bus is RabbitMQ.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, LazyLock, Mutex,
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

static TAP: LazyLock<broadcast::Sender<Arc<Observation>>> =
    LazyLock::new(|| broadcast::channel(CAPACITY).0);

/// Starts watching this process's bus; see the module documentation for what a slow
/// receiver gets.
pub fn watch() -> broadcast::Receiver<Arc<Observation>> {
    TAP.subscribe()
}

/// Whether anyone watches now (so that a backend can skip work kept only for the tap).
pub(crate) fn watched() -> bool {
    TAP.receiver_count() > 0
}

fn emit(make: impl FnOnce() -> Observation) {
    // No watcher, no work: this is on every publish and settlement.
    if TAP.receiver_count() > 0 {
        let _ = TAP.send(Arc::new(make()));
    }
}

/// `message` was published by `publisher`; `at_ms` is when the publish began (a
/// consumer may receive it before the broker's confirm is back).
pub(crate) fn published(message: &Message, publisher: Option<&str>, at_ms: i64) {
    emit(|| Observation {
        publisher: publisher.map(str::to_owned),
        ..Observation::of(message, Outcome::Published, at_ms)
    });
}

/// `message` was handed to a consumer of `group`.
pub(crate) fn delivered(message: &Message, group: &str, attempt: u32) {
    emit(|| Observation {
        group: Some(group.to_owned()),
        attempt: Some(attempt),
        ..Observation::of(message, Outcome::Delivered, crate::now_ms())
    });
}

/// A delivery of `message` to `group` was settled with `nack` (`None`: acked).
pub(crate) fn settled(
    message: &Message,
    group: &str,
    attempt: u32,
    max_attempts: u32,
    nack: Option<&Nack>,
) {
    emit(|| {
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

#[derive(Default)]
struct Groups {
    /// service (or "" when the bus handle was not named) → group → routing keys.
    by_service: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    in_flight: HashMap<String, Arc<AtomicI64>>,
}

static GROUPS: LazyLock<Mutex<Groups>> = LazyLock::new(Mutex::default);

/// `service` subscribed to `group` with `routing_keys` (recorded for the registry).
pub(crate) fn subscribed(service: Option<&str>, group: &str, routing_keys: &[String]) {
    if let Ok(mut groups) = GROUPS.lock() {
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

/// The groups `service` consumes in this process.
pub fn consumed_by(service: &str) -> Vec<Consumed> {
    let Ok(groups) = GROUPS.lock() else {
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

/// One delivery of `group` held by this process, from hand-out to settlement or drop.
pub(crate) struct Held(Arc<AtomicI64>);

impl Held {
    pub(crate) fn new(group: &str) -> Self {
        let counter = match GROUPS.lock() {
            Ok(mut groups) => groups
                .in_flight
                .entry(group.to_owned())
                .or_default()
                .clone(),
            Err(_) => Arc::default(),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlements_are_classified_by_attempt() {
        let mut watcher = watch();
        let message = Message::new("video", "{}");
        settled(&message, "video", 1, 5, None);
        settled(&message, "video", 1, 5, Some(&Nack::Retry("x".into())));
        settled(&message, "video", 5, 5, Some(&Nack::Retry("x".into())));
        settled(&message, "video", 1, 5, Some(&Nack::Reject("bad".into())));
        settled(&message, "video", 2, 5, Some(&Nack::Requeue("stop".into())));
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
