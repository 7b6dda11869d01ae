//! Logging and trace export, set up once per process.
//!
//! Logs: human-readable lines on a terminal, JSON lines otherwise (containers, files),
//! filtered by `RUST_LOG` (default `warn` on a terminal, `info` otherwise). Logs go to stderr; stdout is kept for what a
//! user or script reads (the `ready` line).
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, spans are exported over OTLP/HTTP (protobuf, `POST {endpoint}/v1/traces`) in
//! batches from a background thread; `OTEL_SERVICE_NAME` names the process (default: the
//! served service, or `flotilla` for `up`). `RUST_LOG` does not limit what is exported:
//! every span at `info` and above is, so a quiet log does not mean a blind trace. The
//! server span of each request takes the trace id and parent of the request's W3C
//! `traceparent` (see [`crate::ids::TraceParent`]), so a trace crosses processes; the span
//! of each bus delivery takes the message's (see [`trace_context::for_delivery`]), so it
//! crosses the bus too: an upload's trace holds its conversion and its email. Without
//! the variables no exporter exists and the request path does no tracing work beyond logs.

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::trace::TracerProvider as _;

use crate::ids::TraceContext;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer, Registry, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt,
};

/// Set once the OTLP exporter is part of the process's subscriber.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans leave the process (an OTLP endpoint is configured and the exporter runs).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The environment variables that turn trace export on (standard OpenTelemetry names).
pub const OTLP_ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long shutdown waits for the last spans to be sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`init`] set up; [`Telemetry::shutdown`] sends the spans still buffered.
#[must_use = "call shutdown() at exit, or the last spans are lost"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (at most a few seconds) and stops the exporter.
    /// Call it after the runtime has stopped serving, outside async code.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(error) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
                tracing::warn!(%error, "could not export the last spans");
            }
        }
    }
}

/// Installs the global subscriber (logs, and the OTLP exporter when configured);
/// later calls (tests) are no-ops. `default_service_name` is the `service.name` of the
/// exported spans unless `OTEL_SERVICE_NAME` says otherwise.
pub fn init(default_service_name: &str) -> Telemetry {
    let terminal = std::io::stderr().is_terminal();
    // A person at a terminal sees warnings and errors; routine work (requests, starts)
    // is for log pipelines, which get `info` as JSON. RUST_LOG decides when set.
    let default_level = if terminal { "warn" } else { "info" };
    let (filter, bad_filter) = match std::env::var("RUST_LOG") {
        Err(_) => (EnvFilter::new(default_level), None),
        Ok(value) => match EnvFilter::try_new(&value) {
            Ok(filter) => (filter, None),
            Err(error) => (EnvFilter::new(default_level), Some((value, error))),
        },
    };
    let filter = quiet_input_libraries(filter, std::env::var("RUST_LOG").ok().as_deref());
    let (exporter, export_error) = match otlp_endpoint_configured() {
        false => (None, None),
        true => match tracer_provider(default_service_name) {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        },
    };
    let installed = match &exporter {
        // The usual case: one layer, one global filter, exactly as cheap as it was.
        None => tracing_subscriber::registry()
            .with(log_layer(terminal))
            .with(filter)
            .try_init(),
        // With export, `RUST_LOG` filters only the log; the exporter takes `info` and up.
        Some(provider) => {
            let tracer = provider.tracer("flotilla");
            let export = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_threads(false)
                .with_filter(LevelFilter::INFO);
            tracing_subscriber::registry()
                .with(log_layer(terminal).with_filter(filter))
                .with(export)
                .try_init()
        }
    };
    if installed.is_err() {
        return Telemetry::default();
    }
    if let Some((value, error)) = bad_filter {
        tracing::warn!(rust_log = %value, %error, "RUST_LOG is not a valid filter; using the default");
    }
    if let Some(error) = export_error {
        tracing::warn!(%error, "traces will not be exported: the OTLP exporter could not be set up");
    }
    if exporter.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
        trace_context::set_span_parent(export_delivery_span);
    }
    Telemetry { provider: exporter }
}

/// Libraries whose own log lines describe a user's input, not the server: symphonia logs
/// "probe reach EOF" at ERROR for every upload that is not media (issue 14). The
/// converter logs each outcome itself (INFO), so theirs are off unless `RUST_LOG` names
/// them (`RUST_LOG=info,symphonia_core=debug`). Matched as target prefixes.
const INPUT_LIBRARIES: [&str; 1] = ["symphonia"];

fn quiet_input_libraries(mut filter: EnvFilter, rust_log: Option<&str>) -> EnvFilter {
    for library in INPUT_LIBRARIES {
        if rust_log.is_some_and(|value| value.contains(library)) {
            continue;
        }
        match format!("{library}=off").parse() {
            Ok(directive) => filter = filter.add_directive(directive),
            Err(error) => tracing::warn!(%error, library, "cannot quiet a library's log"),
        }
    }
    filter
}

fn log_layer(terminal: bool) -> Box<dyn Layer<Registry> + Send + Sync> {
    if terminal {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    }
}

fn otlp_endpoint_configured() -> bool {
    OTLP_ENDPOINT_VARS
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()))
}

/// A tracer provider exporting in batches over OTLP/HTTP with protobuf bodies. The
/// exporter reads the endpoint, headers, timeout and compression from the standard
/// `OTEL_EXPORTER_OTLP_*` variables.
fn tracer_provider(default_service_name: &str) -> Result<SdkTracerProvider, String> {
    // The exporter's HTTP client is reqwest on rustls, which needs the process's provider.
    crate::tls::install_crypto_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|error| error.to_string())?;
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty());
    let resource = if named_by_env {
        Resource::builder().build()
    } else {
        Resource::builder()
            .with_service_name(default_service_name.to_owned())
            .build()
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// For tests: logs through the test harness's capture, once.
pub fn init_for_tests() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Makes `parent` (a caller's context) the parent of `span` in the exported trace, and
/// returns the exported span's own context — `None` when the exporter does not see it.
pub(crate) fn export_under(
    span: &tracing::Span,
    parent: Option<&TraceContext>,
) -> Option<TraceContext> {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    if let Some(parent) = parent {
        let parent = SpanContext::new(
            TraceId::from_bytes(parent.trace_id.to_be_bytes()),
            SpanId::from_bytes(parent.span_id.to_be_bytes()),
            TraceFlags::new(parent.flags),
            true,
            TraceState::NONE,
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    let otel = span.context();
    let own = otel.span().span_context().clone();
    own.is_valid().then(|| TraceContext {
        trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(own.span_id().to_bytes()),
        flags: own.trace_flags().to_u8(),
    })
}

/// The [`trace_context::SpanParent`] hook (the bus calls it per delivery), installed when
/// spans are exported: a delivery's span becomes a child of the context its message
/// carries.
pub(crate) fn export_delivery_span(span: &tracing::Span, parent: Option<&str>) -> Option<String> {
    let parent = parent.and_then(TraceContext::parse);
    export_under(span, parent.as_ref()).map(|own| own.to_traceparent().0)
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tracing_subscriber::layer::Context;

    use super::*;

    /// Counts the events that pass the filter.
    struct Count(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn passed(rust_log: Option<&str>, emit: impl FnOnce()) -> usize {
        let count = Arc::new(AtomicUsize::new(0));
        let filter = quiet_input_libraries(EnvFilter::new(rust_log.unwrap_or("info")), rust_log);
        let subscriber = tracing_subscriber::registry()
            .with(Count(count.clone()))
            .with(filter);
        tracing::subscriber::with_default(subscriber, emit);
        count.load(Ordering::Relaxed)
    }

    #[test]
    fn a_decoder_library_logging_errors_about_an_upload_is_quiet_unless_asked_for() {
        // What symphonia's `log::error!` becomes through the log bridge.
        let symphonia = || tracing::error!(target: "symphonia_core::probe", "probe reach EOF");
        assert_eq!(passed(None, symphonia), 0);
        assert_eq!(passed(Some("info"), symphonia), 0);
        assert_eq!(passed(Some("info,symphonia_core=debug"), symphonia), 1);
        // Everything else is as before.
        assert_eq!(
            passed(
                None,
                || tracing::error!(target: "converter", "real trouble")
            ),
            1
        );
    }
}
