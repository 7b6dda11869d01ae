//! Calling another service over HTTP, as one cloneable tower service per upstream
//! ([`Upstream`]). Layered bottom-up: [`discovery`] (the endpoints behind a URL, DNS
//! re-resolved) → [`pool`] (HTTP/1 connections per endpoint) → [`remote`] (pick an
//! endpoint, forward with `X-Forwarded-*`) → [`resilience`] (the stack composed in one
//! place: load shedding, circuit breaker, retries on other endpoints).
//!
//! The gateway reaches every remote upstream through it, and the query service its
//! event log (`FLOTILLA_EVENT_BUS_URL`); each with its own [`Policy`].

use std::convert::Infallible;

use axum::{extract::Request, response::Response};
use tower::util::BoxCloneSyncService;

pub mod discovery;
pub mod pool;
pub mod remote;
pub mod resilience;

pub use discovery::{UpstreamUrl, parse_upstream_url};
pub use resilience::{Policy, RemoteStack, remote_stack, remote_upstream};

/// One upstream service, however it is reached (in-process router or remote stack).
pub type Upstream = BoxCloneSyncService<Request, Response, Infallible>;
