//! Emails the uploader when a conversion finishes or fails.
//!
//! Not built yet: the service answers only its health, readiness and metrics routes.

use platform::{ServiceApp, ServiceContext};

pub const NAME: &str = "notification";

/// Builds the service; `flotilla up`, `flotilla serve notification` and tests all call this.
pub async fn build(_context: &ServiceContext) -> anyhow::Result<ServiceApp> {
    Ok(ServiceApp::new(NAME, axum::Router::new()))
}
