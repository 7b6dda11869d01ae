//! `/healthz` says the process is alive; `/readyz` says every dependency of the service
//! (database, broker, blob store, upstreams …) answers, and that it is not draining.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use futures::{FutureExt, future::BoxFuture};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::Problem;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFn = dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync;

/// A readiness check: an async function answering `Err(reason)` while its dependency
/// does not answer. Implemented by every such closure, so the bound is written once.
pub trait Check: Fn() -> Self::Answer + Send + Sync + 'static {
    type Answer: Future<Output = Result<(), String>> + Send + 'static;
}

impl<F, Fut> Check for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    type Answer = Fut;
}

/// `check` under `name`, as [`Readiness`] keeps it.
fn named(name: impl Into<String>, check: impl Check) -> (String, Arc<CheckFn>) {
    (name.into(), Arc::new(move || check().boxed()))
}

/// The named readiness checks of a service. A *required* check failing makes the
/// service not ready (503); a *degraded* check failing is reported but the service stays
/// ready, for dependencies it can work without for a while (the broker: writes go to the
/// outbox and are published when it returns).
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(String, Arc<CheckFn>)>,
    degraded: Vec<(String, Arc<CheckFn>)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check; `Err` carries a short reason shown in `/readyz`.
    pub fn with_check(mut self, name: impl Into<String>, check: impl Check) -> Self {
        self.checks.push(named(name, check));
        self
    }

    /// Adds a check that is reported but does not make the service unready.
    pub fn with_degraded_check(mut self, name: impl Into<String>, check: impl Check) -> Self {
        self.degraded.push(named(name, check));
        self
    }

    /// Runs every check concurrently; `Ok` lists them, `Err` lists the failures too.
    pub async fn run(&self) -> Result<Map<String, Value>, Map<String, Value>> {
        let (report, required_ok, _) = self.report().await;
        if required_ok { Ok(report) } else { Err(report) }
    }

    /// (all results, every required check passed, every degraded check passed)
    async fn report(&self) -> (Map<String, Value>, bool, bool) {
        async fn outcome(name: &str, check: &Arc<CheckFn>) -> (String, Result<(), String>) {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
            };
            (name.to_owned(), outcome)
        }
        let (required, degraded) = futures::future::join(
            futures::future::join_all(self.checks.iter().map(|(n, c)| outcome(n, c))),
            futures::future::join_all(self.degraded.iter().map(|(n, c)| outcome(n, c))),
        )
        .await;
        let mut report = Map::new();
        let mut fold = |results: Vec<(String, Result<(), String>)>| {
            let mut all_ok = true;
            for (name, outcome) in results {
                let value = match outcome {
                    Ok(()) => Value::from("ok"),
                    Err(reason) => {
                        all_ok = false;
                        Value::from(reason)
                    }
                };
                report.insert(name, value);
            }
            all_ok
        };
        let required_ok = fold(required);
        let degraded_ok = fold(degraded);
        (report, required_ok, degraded_ok)
    }

    /// The `/readyz` answer: 200 with the checks, or a 503 problem listing them.
    pub async fn respond(&self, shutdown: &CancellationToken) -> Response {
        if shutdown.is_cancelled() {
            return Problem::service_unavailable("shutting down").into_response();
        }
        match self.report().await {
            (checks, true, true) => {
                Json(json!({"status": "ready", "checks": checks})).into_response()
            }
            (checks, true, false) => {
                Json(json!({"status": "degraded", "checks": checks})).into_response()
            }
            (checks, false, _) => Problem::service_unavailable("a dependency is not ready")
                .with_title("Not ready")
                .with_extension("checks", checks)
                .into_response(),
        }
    }
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failing_check_makes_the_service_not_ready() {
        let readiness = Readiness::new()
            .with_check("db", || async { Ok(()) })
            .with_check("broker", || async { Err("connection refused".to_owned()) });
        let report = readiness.run().await.expect_err("broker is down");
        assert_eq!(report["db"], "ok");
        assert_eq!(report["broker"], "connection refused");
    }

    #[tokio::test]
    async fn a_failing_degraded_check_is_reported_but_keeps_the_service_ready() {
        let readiness = Readiness::new()
            .with_check("db", || async { Ok(()) })
            .with_degraded_check("broker", || async { Err("connection refused".to_owned()) });
        let response = readiness.respond(&CancellationToken::new()).await;
        assert_eq!(response.status(), http::StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let body: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["checks"]["broker"], "connection refused");
        assert_eq!(body["checks"]["db"], "ok");
    }

    #[tokio::test]
    async fn draining_service_is_not_ready() {
        let token = CancellationToken::new();
        token.cancel();
        let response = Readiness::new().respond(&token).await;
        assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    }
}
