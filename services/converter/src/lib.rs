//! Workers that turn uploaded videos into MP3 files.
//!
//! Not built yet: the service answers only its health, readiness and metrics routes.

use platform::{ServiceApp, ServiceContext};

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "converter-args")]
pub struct Args {}

pub const NAME: &str = "converter";

/// Builds the service; `flotilla up`, `flotilla serve converter` and tests all call this.
pub async fn build(_context: &ServiceContext, _args: &Args) -> anyhow::Result<ServiceApp> {
    Ok(ServiceApp::new(NAME, axum::Router::new()))
}
