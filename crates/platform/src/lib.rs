//! What every Flotilla service shares, used the same way by all of them.
//!
//! A service crate builds a [`service::ServiceApp`] (its routes, its readiness checks)
//! and hands it to [`service::ServiceApp::into_router`], which adds `/healthz`,
//! `/readyz`, `/metrics` and the common layer stack (request ids, access logs, metrics,
//! `application/problem+json` errors, panic catching, timeouts, body limits). The binary
//! then serves that router with [`http::serve`], which drains gracefully on shutdown.
//! Configuration errors are explained in one line by [`config::explain_clap_error`].

pub mod config;
pub mod cors;
pub mod entry;
pub mod extract;
pub mod forwarded;
pub mod health;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod observe;
pub mod openapi;
pub mod problem;
pub mod sched;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use problem::Problem;
pub use service::{ServiceApp, ServiceContext};
