//! The W3C trace context (`traceparent`), in one place: the HTTP stack (`platform`)
//! continues a caller's trace with it and the bus (`bus`) carries it on every message,
//! so a request's trace holds the work its messages cause.
//!
//! * [`TraceContext`] parses (strictly) and writes a version-00 `traceparent`.
//! * [`scope`] / [`current`]: the context of the work a task does. The HTTP layer sets it
//!   for each request and the bus consumer for each delivery; a message made inside takes
//!   it, so it continues the trace.
//! * [`SpanParent`]: this crate does not know OpenTelemetry. A process that exports spans
//!   installs a hook ([`set_span_parent`]) that makes a delivery's span a child of the
//!   message's context and returns the span's own; [`for_delivery`] uses it.

use std::{fmt, future::Future, sync::Arc, sync::OnceLock};

/// A parsed W3C trace context: trace id, span id (of the caller, or of this work once it
/// is continued with [`TraceContext::child`]) and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

impl TraceContext {
    /// A new trace: random non-zero ids, sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: fastrand::u128(1..),
            span_id: fastrand::u64(1..),
            flags: 1,
        }
    }

    /// The context of a new span in the same trace, under this one.
    pub fn child(&self) -> Self {
        Self {
            span_id: fastrand::u64(1..),
            ..*self
        }
    }

    /// Accepts only a well-formed version-00 `traceparent` (surrounding whitespace
    /// aside): `00-<32 hex>-<16 hex>-<2 hex>`, lower-case hex, non-zero ids.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim().as_bytes();
        if value.len() != 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let hex = |bytes: &[u8]| -> Option<u128> {
            bytes.iter().try_fold(0u128, |acc, &b| {
                let digit = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    _ => return None,
                };
                Some(acc << 4 | u128::from(digit))
            })
        };
        if hex(&value[0..2])? != 0 {
            return None;
        }
        let trace_id = hex(&value[3..35])?;
        let span_id = u64::try_from(hex(&value[36..52])?).ok()?;
        let flags = u8::try_from(hex(&value[53..55])?).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> impl fmt::Display + use<> {
        let id = self.trace_id;
        DisplayWith(move |f: &mut fmt::Formatter<'_>| write!(f, "{id:032x}"))
    }

    /// `00-<trace id>-<span id>-<flags>` (written directly: this runs per request).
    pub fn to_traceparent(&self) -> TraceParent {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let mut put = |at: usize, value: u128, digits: usize| {
            for i in 0..digits {
                let shift = 4 * (digits - 1 - i);
                out[at + i] = HEX[((value >> shift) & 0xf) as usize];
            }
        };
        put(3, self.trace_id, 32);
        put(36, u128::from(self.span_id), 16);
        put(53, u128::from(self.flags), 2);
        // Hex digits and dashes only: always UTF-8.
        TraceParent(std::str::from_utf8(&out).unwrap_or_default().to_owned())
    }
}

struct DisplayWith<F>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for DisplayWith<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

/// A well-formed `traceparent` as text (the HTTP stack puts the request's in its
/// extensions), so that work it causes — messages published, calls made — carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(pub String);

impl TraceParent {
    /// A new root trace context: random trace id and span id, sampled.
    pub fn new_root() -> Self {
        TraceContext::new_root().to_traceparent()
    }

    /// Accepts a value only if it is a well-formed version-00 traceparent.
    pub fn parse(value: &str) -> Option<Self> {
        TraceContext::parse(value).map(|_| Self(value.trim().to_owned()))
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        self.0.get(3..35).unwrap_or("")
    }

    /// The 16-hex-digit id of the span this context names as the parent.
    pub fn span_id(&self) -> &str {
        self.0.get(36..52).unwrap_or("")
    }
}

/// The trace id of a well-formed `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    TraceContext::parse(traceparent).and_then(|_| traceparent.trim().get(3..35))
}

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

/// Makes `span` (a delivery's) a child of `parent` (the message's context, if it has a
/// well-formed one) in the exported trace, and returns the `traceparent` of `span`
/// itself — or `None` when the span is not exported.
pub type SpanParent = fn(span: &tracing::Span, parent: Option<&str>) -> Option<String>;

static SPAN_PARENT: OnceLock<SpanParent> = OnceLock::new();

/// Installs the process's [`SpanParent`] hook (once; later calls are ignored).
pub fn set_span_parent(hook: SpanParent) {
    let _ = SPAN_PARENT.set(hook);
}

/// The trace context a delivery's handler runs in: the exported span's, else a new span
/// id under the message's context, else (no usable `traceparent`) a new trace.
pub fn for_delivery(span: &tracing::Span, parent: Option<&str>) -> String {
    let parent = parent.and_then(|p| TraceContext::parse(p).map(|c| (p, c)));
    if let Some(hook) = SPAN_PARENT.get()
        && let Some(own) = hook(span, parent.map(|(p, _)| p))
    {
        return own;
    }
    parent
        .map_or_else(TraceContext::new_root, |(_, c)| c.child())
        .to_traceparent()
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    const BAD: [&str; 9] = [
        "",
        "garbage",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0F",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ];

    #[test]
    fn trace_contexts_are_parsed_strictly() {
        let parsed = TraceParent::parse(GOOD).expect("valid");
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.span_id(), "00f067aa0ba902b7");
        assert_eq!(trace_id(GOOD), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            TraceParent::parse(&format!(" {GOOD}\t")).map(|t| t.0),
            Some(GOOD.to_owned())
        );
        for bad in BAD {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?}");
            assert!(trace_id(bad).is_none(), "{bad:?}");
        }
        let root = TraceParent::new_root();
        assert!(TraceParent::parse(&root.0).is_some(), "{}", root.0);
    }

    #[test]
    fn a_context_written_is_the_context_parsed() {
        let context = TraceContext::parse(GOOD).expect("valid");
        assert_eq!(context.to_traceparent().0, GOOD);
        assert_eq!(
            context.trace_id_hex().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for _ in 0..100 {
            let root = TraceContext::new_root();
            assert_eq!(TraceContext::parse(&root.to_traceparent().0), Some(root));
        }
        let child = context.child();
        assert_eq!(child.trace_id, context.trace_id);
        assert_ne!(child.span_id, context.span_id);
    }

    #[test]
    fn a_delivery_continues_the_message_trace_with_a_span_of_its_own() {
        let own = for_delivery(&tracing::Span::none(), Some(GOOD));
        assert!(TraceContext::parse(&own).is_some(), "{own}");
        assert_eq!(trace_id(&own), trace_id(GOOD));
        assert_ne!(&own[36..52], &GOOD[36..52]);
        assert_eq!(&own[52..], "-01");
    }

    #[test]
    fn a_delivery_with_a_malformed_parent_starts_a_new_trace() {
        for bad in BAD {
            let own = for_delivery(&tracing::Span::none(), Some(bad));
            assert!(TraceContext::parse(&own).is_some(), "{own}");
            assert_ne!(trace_id(&own), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        }
        let own = for_delivery(&tracing::Span::none(), None);
        assert!(TraceContext::parse(&own).is_some(), "{own}");
    }

    #[tokio::test]
    async fn a_scope_sets_the_current_context() {
        assert!(current().is_none());
        let inside = scope(Arc::from(GOOD), async { current() }).await;
        assert_eq!(inside.as_deref(), Some(GOOD));
        assert!(current().is_none());
    }
}
