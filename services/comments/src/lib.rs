//! Blog comments: the write side.
//!
//! Not built yet: the service answers only its health, readiness and metrics routes.

use platform::{ServiceApp, ServiceContext};

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "comments-args")]
pub struct Args {}

pub const NAME: &str = "comments";

/// Builds the service; `flotilla up`, `flotilla serve comments` and tests all call this.
pub async fn build(_context: &ServiceContext, _args: &Args) -> anyhow::Result<ServiceApp> {
    Ok(ServiceApp::new(NAME, axum::Router::new()))
}
