//! The event-bus service's log, as the query service reads it: `GET /events?after=&limit=`
//! through a tower service. In `flotilla up` that service is the event-bus's own router,
//! called in-process; in `flotilla serve query` it is an HTTP client for
//! `FLOTILLA_EVENT_BUS_URL` ([`EventLogClient::remote`]: the `upstream` crate's stack,
//! the gateway's too, under the query service's own [`upstream::Policy`]). The query
//! service never links the event-bus or the gateway crate.

use std::convert::Infallible;

use axum::body::Body;
use contracts::blog::{BlogEvent, Envelope};
use http::{Request, Response, StatusCode};
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

/// One entry of `GET /events`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LogEntry {
    pub seq: i64,
    #[serde(flatten)]
    pub envelope: Envelope,
}

impl LogEntry {
    /// The blog event and the message id every copy of it has; `None` for types the
    /// view does not use, or data that does not fit its type.
    pub fn event(&self) -> Option<(String, BlogEvent)> {
        match self.envelope.blog_event() {
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
    /// a circuit breaker): [`upstream::Policy::default`], the query service's own. A
    /// `registry` URL takes the instances `directory` lists.
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

    /// Up to `limit` entries after sequence number `after`.
    pub async fn read(&self, after: i64, limit: u32) -> Result<Vec<LogEntry>, EventLogError> {
        let request = Request::get(format!("/events?after={after}&limit={limit}"))
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
        Ok(serde_json::from_slice(&body)?)
    }
}
