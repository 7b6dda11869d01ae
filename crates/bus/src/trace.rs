//! Traces that cross the bus (the W3C context itself lives in the `trace-context` crate,
//! shared with the HTTP stack).
//!
//! A message carries the W3C `traceparent` of the work that published it, so the trace of
//! a request continues in whatever its messages cause: an upload's trace holds the
//! conversion, and the conversion's the email.
//!
//! * Producers: [`Message::new`](crate::Message::new) takes the **current** trace context
//!   — the one [`scope`] set for the task (the HTTP layer sets it for each request, the
//!   [`Consumer`](crate::Consumer) for each delivery) — and starts a new trace only
//!   outside any.
//! * Consumers: the [`Consumer`](crate::Consumer) runs each handler in a `message` span
//!   whose trace id is the message's, with a span id of its own ([`for_delivery`]), and
//!   sets that context as current, so the messages the handler publishes continue the
//!   trace.
//! * Export: the bus does not know OpenTelemetry. A process that exports spans installs
//!   a [`SpanParent`] hook ([`set_span_parent`]) that makes the message's context the
//!   exported span's parent and tells the bus the span's own context.

pub use trace_context::{SpanParent, current, for_delivery, scope, set_span_parent, trace_id};

/// A new trace: random trace and span ids, sampled.
pub fn new_root() -> String {
    trace_context::TraceParent::new_root().0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[tokio::test]
    async fn messages_made_in_a_scope_carry_its_context() {
        assert!(current().is_none());
        let made = scope(Arc::from(PARENT), async {
            crate::Message::new("k", "body")
                .traceparent()
                .map(str::to_owned)
        })
        .await;
        assert_eq!(made.as_deref(), Some(PARENT));
        let outside = crate::Message::new("k", "body");
        assert_ne!(outside.traceparent(), Some(PARENT));
        assert!(trace_id(outside.traceparent().expect("a traceparent")).is_some());
    }
}
