//! The blog's event bus facade and durable event log.
//!
//! Not built yet: the service answers only its health, readiness and metrics routes.

use platform::{ServiceApp, ServiceContext};

pub const NAME: &str = "event-bus";

/// Builds the service; `flotilla up`, `flotilla serve event-bus` and tests all call this.
pub async fn build(_context: &ServiceContext) -> anyhow::Result<ServiceApp> {
    Ok(ServiceApp::new(NAME, axum::Router::new()))
}
