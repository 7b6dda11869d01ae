//! The blog read model, built only from events.
//!
//! Not built yet: the service answers only its health, readiness and metrics routes.

use platform::{ServiceApp, ServiceContext};

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "query-args")]
pub struct Args {}

pub const NAME: &str = "query";

/// Builds the service; `flotilla up`, `flotilla serve query` and tests all call this.
pub async fn build(_context: &ServiceContext, _args: &Args) -> anyhow::Result<ServiceApp> {
    Ok(ServiceApp::new(NAME, axum::Router::new()))
}
