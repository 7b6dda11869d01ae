//! What identifies a request across services: its id and its W3C trace context (the
//! types and headers; [`crate::observe`] sets them on each request). The bottom of the
//! crate: it uses no other module.

use http::HeaderName;

/// The header that carries a request's id across services and back to the client.
pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served, put in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The W3C trace context of the request being served (`TraceParent`, a request
/// extension) and its parser: one implementation (`trace-context`), shared with the bus.
pub use trace_context::{TraceContext, TraceParent};

pub static TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");
