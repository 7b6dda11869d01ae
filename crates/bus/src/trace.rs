//! Traces that cross the bus.
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
//!   whose trace id is the message's, with a span id of its own, and sets that context
//!   as current, so the messages the handler publishes continue the trace.
//! * Export: the bus does not know OpenTelemetry. A process that exports spans installs
//!   a [`SpanParent`] hook ([`set_span_parent`]) that makes the message's context the
//!   exported span's parent and tells the bus the span's own context.

use std::{future::Future, sync::Arc, sync::OnceLock};

tokio::task_local! {
    static CURRENT: Arc<str>;
}

/// The `traceparent` of the work the calling task does, if a [`scope`] set one.
pub fn current() -> Option<Arc<str>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Runs `future` with `traceparent` as the current trace context.
pub fn scope<F: Future>(traceparent: Arc<str>, future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(traceparent, future)
}

/// Makes `span` (a delivery's) a child of `parent` (the message's `traceparent`, if it
/// has a well-formed one) in the exported trace, and returns the `traceparent` of `span`
/// itself — or `None` when the span is not exported.
pub type SpanParent = fn(span: &tracing::Span, parent: Option<&str>) -> Option<String>;

static SPAN_PARENT: OnceLock<SpanParent> = OnceLock::new();

/// Installs the process's [`SpanParent`] hook (once; later calls are ignored).
pub fn set_span_parent(hook: SpanParent) {
    let _ = SPAN_PARENT.set(hook);
}

/// The trace context a delivery's handler runs in: the exported span's, else a new span
/// id under the message's context, else (no usable `traceparent`) a new trace.
pub(crate) fn for_delivery(span: &tracing::Span, parent: Option<&str>) -> String {
    let parent = parent.filter(|p| is_well_formed(p));
    if let Some(hook) = SPAN_PARENT.get()
        && let Some(own) = hook(span, parent)
    {
        return own;
    }
    match parent {
        Some(parent) => format!("{}{:016x}{}", &parent[..36], span_id(), &parent[52..]),
        None => new_root(),
    }
}

/// A new trace: random trace and span ids, sampled.
pub fn new_root() -> String {
    let trace = fastrand::u128(1..);
    format!("00-{trace:032x}-{:016x}-01", span_id())
}

/// The trace id of a well-formed `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    is_well_formed(traceparent).then(|| &traceparent[3..35])
}

fn span_id() -> u64 {
    fastrand::u64(1..)
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lower case, ids not all zero.
fn is_well_formed(value: &str) -> bool {
    let b = value.as_bytes();
    let hex = |range: std::ops::Range<usize>| {
        b[range.clone()]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            && b[range].iter().any(|c| *c != b'0')
    };
    b.len() == 55
        && b.starts_with(b"00-")
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(3..35)
        && hex(36..52)
        && b[53..55].iter().all(u8::is_ascii_hexdigit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_delivery_continues_the_message_trace_with_a_span_of_its_own() {
        let own = for_delivery(&tracing::Span::none(), Some(PARENT));
        assert!(is_well_formed(&own), "{own}");
        assert_eq!(trace_id(&own), trace_id(PARENT));
        assert_ne!(&own[36..52], &PARENT[36..52]);
        assert_eq!(&own[52..], "-01");
    }

    #[test]
    fn a_malformed_parent_starts_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let own = for_delivery(&tracing::Span::none(), Some(bad));
            assert!(is_well_formed(&own), "{own}");
            assert_ne!(trace_id(&own), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        }
        assert!(is_well_formed(&new_root()));
    }

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
        assert!(is_well_formed(
            outside.traceparent().expect("a traceparent")
        ));
    }
}
