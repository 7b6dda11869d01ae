//! What travels on the bus: messages, what a consumer says of one, its attempts and dead
//! letters (the handle a consumer gets for each delivery is in `delivery`).

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::BusError;

/// The W3C Trace Context header every message carries.
pub const TRACEPARENT: &str = "traceparent";

/// One message: a unique id, a routing key (its type: `video`, `mp3`, `CommentCreated`),
/// string headers and an opaque body (JSON by convention).
///
/// The id is what consumers deduplicate on (see [`crate::Inbox`]); publishing the same
/// id twice is allowed and is how at-least-once publishers (the outbox relay) retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub routing_key: String,
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
}

/// A blog event travels under its type as routing key, with an id derived from its
/// content, so every copy of the same event is recognised as the same message.
impl From<&contracts::blog::BlogEvent> for Message {
    fn from(event: &contracts::blog::BlogEvent) -> Self {
        Message::new(
            contracts::blog::routing_key(event.event_type()),
            event.to_json(),
        )
        .with_id(event.message_id())
    }
}

impl Message {
    /// A message with a fresh time-ordered id, in the current trace (a `traceparent`
    /// header naming the request or delivery being handled, see [`crate::trace`]) or,
    /// outside any, a new one.
    pub fn new(routing_key: impl Into<String>, body: impl Into<Bytes>) -> Self {
        let mut headers = BTreeMap::new();
        let traceparent = crate::trace::current().map_or_else(new_traceparent, |t| t.to_string());
        headers.insert(TRACEPARENT.to_owned(), traceparent);
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            routing_key: routing_key.into(),
            headers,
            body: body.into(),
        }
    }

    /// A message whose body is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(
        routing_key: impl Into<String>,
        value: &T,
    ) -> Result<Self, BusError> {
        let body = serde_json::to_vec(value).map_err(BusError::Encode)?;
        Ok(Self::new(routing_key, body))
    }

    /// Replaces the id (e.g. with an id derived from the business event, so that a
    /// retried publish is recognisably the same message).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Continues the caller's trace: `traceparent` as received on the request or message
    /// that caused this one.
    pub fn with_traceparent(self, traceparent: impl Into<String>) -> Self {
        self.with_header(TRACEPARENT, traceparent)
    }

    pub fn traceparent(&self) -> Option<&str> {
        self.headers.get(TRACEPARENT).map(String::as_str)
    }

    /// The body decoded from JSON. A failure means the message can never be handled:
    /// reject it (dead-letter) rather than retry.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A fresh W3C `traceparent` (version 00, random trace and parent ids, sampled).
pub fn new_traceparent() -> String {
    crate::trace::new_root()
}

/// Which messages a consumer group receives. Every group gets its own copy of each
/// matching message (fan-out); consumers of the same group share the group's messages
/// (competing consumers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The group's name, which is also the queue an operator sees (`video`, `mp3`).
    pub group: String,
    /// Routing-key patterns with AMQP topic semantics: words separated by `.`, `*`
    /// matches one word, `#` zero or more.
    pub routing_keys: Vec<String>,
    /// How many deliveries this consumer may hold unacknowledged at once.
    pub prefetch: u16,
}

impl Subscription {
    /// Group `group` receiving `routing_key`, 16 deliveries in flight.
    pub fn new(group: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            routing_keys: vec![routing_key.into()],
            prefetch: 16,
        }
    }

    pub fn also(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_keys.push(routing_key.into());
        self
    }

    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }
}

/// How failed deliveries are retried: attempt `n` (1-based) that fails is tried again
/// after `initial_backoff × multiplier^(n-1)` (capped at `max_backoff`), and a message
/// whose `max_attempts`-th attempt fails is dead-lettered.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            multiplier: 2,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .max(1)
            .saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// What a consumer decides about a delivery it could not handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nack {
    /// A transient failure: try again after the backoff, dead-letter after the last
    /// attempt.
    Retry(String),
    /// The message can never be handled (undecodable, invalid): dead-letter it now.
    Reject(String),
    /// The handler was interrupted (its process is shutting down), not failed: deliver
    /// the message again at once, to another consumer or after the restart, as the same
    /// attempt — an interruption does not use up an attempt, even the last one.
    Requeue(String),
}

/// Where a delivery stands among its attempts: handed to [`crate::Consumer::run_attempts`]
/// handlers, so that a handler can give up in its own terms on the last attempt (mark
/// its job failed, tell the user) instead of letting the bus park the message silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1 on first delivery.
    pub number: u32,
    /// The last attempt the bus makes: a [`Nack::Retry`] now dead-letters the message.
    pub max: u32,
}

impl Attempt {
    pub fn is_last(self) -> bool {
        self.number >= self.max
    }

    /// Past the last attempt: every attempt so far ended without a settlement (the
    /// consumer process died each time, or its handler crashed). The bus hands such a
    /// delivery out once more so that its handler can settle the matter without doing
    /// the work again (a job marked failed, its user told) rather than leave it
    /// half-done; any `Nack` now dead-letters it. [`crate::Consumer::run`] handlers never
    /// see it: the consumer dead-letters it for them.
    pub fn is_exhausted(self) -> bool {
        self.number > self.max
    }
}

/// A message that exhausted its attempts or was rejected, kept for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The message's id; [`crate::EventBus::replay_dead_letters`] takes these.
    pub id: String,
    pub group: String,
    pub routing_key: String,
    pub attempts: u32,
    /// Why it was dead-lettered (the handler's last error).
    pub reason: String,
    /// Unix milliseconds, when known.
    pub dead_at_ms: Option<i64>,
    #[serde(serialize_with = "body_as_text")]
    pub body: Bytes,
    pub headers: BTreeMap<String, String>,
}

fn body_as_text<S: serde::Serializer>(body: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(body))
}

/// Whether routing key `key` matches topic `pattern` (`*` = one word, `#` = zero or
/// more words), as a RabbitMQ topic exchange decides it.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| go(rest, &key[skip..])),
            Some((&word, rest)) => match key.split_first() {
                Some((&first, key_rest)) => (word == "*" || word == first) && go(rest, key_rest),
                None => false,
            },
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    go(&pattern, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_follow_amqp() {
        assert!(topic_matches("video", "video"));
        assert!(!topic_matches("video", "mp3"));
        assert!(topic_matches("#", "anything.at.all"));
        assert!(topic_matches("blog.*", "blog.PostCreated"));
        assert!(!topic_matches("blog.*", "blog.a.b"));
        assert!(topic_matches("blog.#", "blog"));
        assert!(topic_matches("blog.#", "blog.a.b"));
        assert!(topic_matches("*.created", "post.created"));
        assert!(!topic_matches("*.created", "created"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1), Duration::from_secs(1));
        assert_eq!(policy.backoff(2), Duration::from_secs(2));
        assert_eq!(policy.backoff(4), Duration::from_secs(8));
        assert_eq!(policy.backoff(40), Duration::from_secs(60));
    }

    #[test]
    fn new_messages_carry_an_id_and_a_valid_traceparent() {
        let a = Message::new("video", "x");
        let b = Message::new("video", "x");
        assert_ne!(a.id, b.id);
        let tp = a.traceparent().expect("traceparent");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));
    }
}
