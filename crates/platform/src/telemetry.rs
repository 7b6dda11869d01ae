//! Logging, set up once per process: human-readable lines on a terminal, JSON lines
//! otherwise (containers, files), filtered by `RUST_LOG` (default `info`). Logs go to
//! stderr; stdout is kept for what a user or script reads (the `ready` line).

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// Installs the global subscriber; later calls (tests) are no-ops.
pub fn init() {
    let (filter, bad_filter) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(error) => {
            let bad = std::env::var("RUST_LOG").ok().map(|value| (value, error));
            (EnvFilter::new("info"), bad)
        }
    };
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if std::io::stderr().is_terminal() {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    if installed.is_ok()
        && let Some((value, error)) = bad_filter
    {
        tracing::warn!(rust_log = %value, %error, "RUST_LOG is not a valid filter; using info");
    }
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
