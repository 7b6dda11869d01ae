//! The event-bus service's log, as the services that follow it read it (the query service
//! for its view, the comments service for the posts it knows): `GET
//! /events?after=&limit=&wait=` through a tower service. In `flotilla up` that service is
//! the event-bus's own router, called in-process; in `flotilla serve` it is an HTTP client
//! for `FLOTILLA_EVENT_BUS_URL` ([`EventLogClient::remote`]: the `upstream` crate's stack,
//! the gateway's too, under the reader's own [`upstream::Policy`]). No reader links the
//! event-bus or the gateway crate.

use std::convert::Infallible;

use axum::body::Body;
use std::borrow::Cow;

use contracts::blog::{BlogEvent, EVENT_TYPES, Envelope};
use http::{Request, Response, StatusCode};
use serde_json::value::RawValue;
use tower::{ServiceExt, util::BoxCloneSyncService};

/// How the log is reached: anything that answers HTTP requests for the event-bus routes.
pub type EventLogService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The largest page body accepted (a page of 500 events of 10,000 characters each, in
/// four-byte characters, with room to spare).
const MAX_PAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("the event log answered {0}")]
    Status(StatusCode),
    #[error("cannot read the event log's answer: {0}")]
    Body(String),
    #[error("the event log's answer is not a list of events: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
}

/// One page of `GET /events` as it came, read entry by entry ([`LogPage::entries`]):
/// nothing of an event's data is decoded until someone asks for it.
#[derive(Debug, Clone)]
pub struct LogPage {
    body: axum::body::Bytes,
}

impl LogPage {
    /// The page's entries, borrowing their texts and data from the page.
    pub fn entries(&self) -> Result<Vec<LogEntry<'_>>, EventLogError> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// One entry of `GET /events`: its place in the log, its type, its data as JSON text and
/// its trace context.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LogEntry<'a> {
    pub seq: i64,
    #[serde(rename = "type", borrow)]
    pub event_type: Cow<'a, str>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    /// The trace context the event was published in, if the log kept one.
    #[serde(borrow, default)]
    pub traceparent: Option<Cow<'a, str>>,
}

impl LogEntry<'_> {
    /// The blog event and the message id every copy of it has; `None` for types the
    /// view does not use, or data that does not fit its type.
    pub fn event(&self) -> Option<(String, BlogEvent)> {
        if !EVENT_TYPES.contains(&&*self.event_type) {
            return None;
        }
        let data = self.data.map_or(Ok(serde_json::Value::Null), |data| {
            serde_json::from_str(data.get())
        });
        let event = data.and_then(|data| {
            Envelope {
                event_type: self.event_type.clone().into_owned(),
                data,
            }
            .blog_event()
        });
        match event {
            Ok(Some(event)) => Some((event.message_id(), event)),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(seq = self.seq, %error, "log entry skipped: malformed data");
                None
            }
        }
    }
}

#[derive(Clone)]
pub struct EventLogClient {
    service: EventLogService,
}

impl std::fmt::Debug for EventLogClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLogClient").finish_non_exhaustive()
    }
}

impl EventLogClient {
    pub fn new(service: EventLogService) -> Self {
        Self { service }
    }

    /// The event-bus service at `url`, over HTTP through a resilience stack (endpoints
    /// re-resolved, load shed past 1024 requests in flight, retried on another endpoint,
    /// a circuit breaker): [`upstream::Policy::default`], the reader's own. A `registry`
    /// URL takes the instances `directory` lists.
    pub fn remote(
        url: upstream::UpstreamUrl,
        directory: Option<std::sync::Arc<bus::registry::Directory>>,
    ) -> Self {
        Self::new(upstream::remote_upstream(
            "event-bus",
            url,
            &upstream::Policy::default(),
            directory,
        ))
    }

    /// Up to `limit` entries after sequence number `after`; at the end of the log, waits
    /// up to `wait` seconds for one to be appended (`GET /events?wait=`).
    pub async fn read(&self, after: i64, limit: u32, wait: u64) -> Result<LogPage, EventLogError> {
        let request = Request::get(format!("/events?after={after}&limit={limit}&wait={wait}"))
            .header(http::header::ACCEPT, "application/json")
            .header(platform::observe::ROUTINE_HEADER, "1")
            .body(Body::empty())?;
        let Ok(response) = self.service.clone().oneshot(request).await;
        if !response.status().is_success() {
            return Err(EventLogError::Status(response.status()));
        }
        let body = axum::body::to_bytes(response.into_body(), MAX_PAGE_BYTES)
            .await
            .map_err(|e| EventLogError::Body(e.to_string()))?;
        Ok(LogPage { body })
    }
}

/// A page of the log as a follower takes it ([`EventLogClient::take`]).
#[derive(Debug)]
pub struct Taken {
    /// The page's last sequence number: the follower's cursor once it has folded the page.
    pub last_seq: i64,
    /// The blog events of the page it asked for, in log order.
    pub events: Vec<BlogEvent>,
    /// A `message` span per event, of the follower's group and a child of the context
    /// the event was published in ([`bus::processing_span`]), as a delivery of it would
    /// get: they end when the page is dropped, once folded, so a request's trace goes on
    /// into what the follower made of its events.
    pub spans: Vec<tracing::Span>,
}

impl EventLogClient {
    /// The page after `after` ([`read`](Self::read), waiting up to `wait` seconds at
    /// the end), with the blog events whose type `wanted` accepts decoded, each in a span
    /// of consumer group `group`; `None` for an empty page. A short page is not the end
    /// (the log also ends a page at a size): only an empty one is.
    pub async fn take(
        &self,
        after: i64,
        limit: u32,
        wait: u64,
        group: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Option<Taken>, EventLogError> {
        let page = self.read(after, limit, wait).await?;
        let entries = page.entries()?;
        let Some(last_seq) = entries.last().map(|entry| entry.seq) else {
            return Ok(None);
        };
        let (spans, events) = entries
            .iter()
            .filter(|entry| wanted(&entry.event_type))
            .filter_map(|entry| {
                let (message_id, event) = entry.event()?;
                let (span, _) = bus::processing_span(
                    group,
                    &contracts::blog::routing_key(&entry.event_type),
                    &message_id,
                    entry.traceparent.as_deref(),
                );
                Some((span, event))
            })
            .unzip();
        Ok(Some(Taken {
            last_seq,
            events,
            spans,
        }))
    }
}

/// The readiness check of a follower (as `event-log`): ready once [`follow`] has caught
/// up with the log.
pub fn caught_up_check(
    caught_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> impl platform::health::Check {
    move || {
        std::future::ready(if caught_up.load(std::sync::atomic::Ordering::Acquire) {
            Ok(())
        } else {
            Err("catching up with the event log".to_owned())
        })
    }
}

/// Events a follower reads at most per page.
pub const FOLLOW_PAGE: u32 = 500;

/// How long one read of a follower waits at the end of the log for the next event
/// (`GET /events?wait=`), within the event-bus service's limit.
pub const FOLLOW_WAIT_SECONDS: u64 = 15;

/// Follows the log for a reader until `shutdown`: `step(wait)` reads the page after the
/// reader's cursor — waiting up to `wait` seconds at the end of the log — and folds it
/// in, returning how many events it took, or `None` for an empty page. First it reads
/// without waiting until a page is empty (a short page is not the end: the log also ends
/// a page at a size), then sets `caught_up` (the reader's readiness) and from then on
/// waits at the end of the log, so an event reaches the reader a moment after it was
/// logged and an idle system reads once every [`FOLLOW_WAIT_SECONDS`]. A failed read
/// (at start the event-bus service may not be up yet) is tried again after 500 ms.
pub async fn follow<F, Fut>(
    reader: &'static str,
    caught_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shutdown: tokio_util::sync::CancellationToken,
    mut step: F,
) where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<Option<usize>>>,
{
    use std::sync::atomic::Ordering;
    let mut taken = 0;
    while !shutdown.is_cancelled() {
        let ready = caught_up.load(Ordering::Acquire);
        let wait = if ready { FOLLOW_WAIT_SECONDS } else { 0 };
        let outcome = tokio::select! {
            () = shutdown.cancelled() => break,
            outcome = step(wait) => outcome,
        };
        match outcome {
            Ok(Some(events)) => taken += events,
            Ok(None) if !ready => {
                tracing::info!(reader, taken, "caught up with the event log");
                caught_up.store(true, Ordering::Release);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(reader, %error, "cannot read the event log");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_tells_its_message_id_without_decoding_and_decodes_to_the_same() {
        let page = LogPage {
            body: axum::body::Bytes::from_static(
                br#"[
                {"seq": 1, "type": "PostCreated", "data": {"id": "p\"1", "title": "T"}},
                {"seq": 2, "type": "CommentCreated", "data": {"id": "c1", "postId": "p\"1", "content": "x", "status": "pending"}},
                {"seq": 3, "type": "CommentModerated", "data": {"status": "rejected", "id": "c1", "postId": "p\"1", "content": "x"}},
                {"seq": 4, "type": "CommentUpdated", "data": {"id": "c1", "postId": "p\"1", "content": "x", "status": "approved"}},
                {"seq": 5, "type": "Other", "data": {"id": "o1"}},
                {"seq": 6, "type": "PostCreated", "data": {"title": "no id"}},
                {"seq": 7, "type": "PostCreated"}
            ]"#,
            ),
        };
        let entries = page.entries().expect("a page");
        let ids: Vec<_> = entries
            .iter()
            .map(|entry| entry.event().map(|(id, _)| id))
            .collect();
        assert_eq!(
            ids,
            [
                Some("PostCreated:p\"1".to_owned()),
                Some("CommentCreated:c1".to_owned()),
                Some("CommentModerated:c1:rejected".to_owned()),
                Some("CommentUpdated:c1:approved".to_owned()),
                None,
                None,
                None,
            ]
        );
        let bad = LogPage {
            body: axum::body::Bytes::from_static(b"{\"seq\": 1}"),
        };
        assert!(bad.entries().is_err(), "not a list");
    }
}
