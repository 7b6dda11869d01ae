//! How the gateway protects itself and its upstreams. The stack of a remote upstream is
//! composed in one place, [`remote_stack`]; each piece is a small tower layer here.
//! Per-route timeouts and the per-client rate limit live in the gateway's route table
//! (`services/gateway/src/routes.rs`).

use std::{
    convert::Infallible,
    future::{Future, Ready, ready},
    pin::Pin,
    sync::{Arc, Mutex},
    task::Poll,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::Request,
    response::{IntoResponse, Response},
};
use bus::registry::Directory;
use futures::future::{BoxFuture, Either};
use http::Method;
use http_body::Body as _;
use platform::Problem;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{
    Layer, Service, ServiceBuilder, ServiceExt,
    retry::budget::{Budget, TpsBudget},
    util::BoxCloneSyncService,
};

use crate::{
    Upstream,
    discovery::{Endpoints, UpstreamUrl, spawn_resolver},
    remote::{AvoidEndpoints, Balancer, ServedBy, Unreachable, is_overload},
};

/// Settings of the resilience stack of every remote upstream.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Requests in flight to one upstream beyond which the gateway sheds load (503).
    pub max_in_flight: usize,
    /// Retries of one idempotent request (on other endpoints).
    pub max_retries: u32,
    /// How often DNS names of upstreams are resolved again.
    pub resolve_interval: Duration,
    pub breaker: BreakerSettings,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            max_retries: 2,
            resolve_interval: Duration::from_secs(5),
            breaker: BreakerSettings::default(),
        }
    }
}

/// The stack of a remote upstream, as one concrete type: calling it boxes nothing.
pub type RemoteStack = Shed<CircuitBreaker<Retry<Balancer>>>;

/// [`remote_stack`] as an [`Upstream`].
pub fn remote_upstream(
    name: &'static str,
    url: UpstreamUrl,
    policy: &Policy,
    directory: Option<Arc<Directory>>,
) -> Upstream {
    BoxCloneSyncService::new(remote_stack(name, url, policy, directory))
}

/// The stack of one remote upstream, outermost first. `directory` is the registry an
/// upstream configured as `registry` takes its endpoints from.
pub fn remote_stack(
    name: &'static str,
    url: UpstreamUrl,
    policy: &Policy,
    directory: Option<Arc<Directory>>,
) -> RemoteStack {
    let endpoints = Arc::new(Endpoints::default());
    spawn_resolver(
        name,
        url,
        Arc::downgrade(&endpoints),
        policy.resolve_interval,
        directory,
    );
    ServiceBuilder::new()
        // 1. Load shedding: past `max_in_flight` answer 503 at once instead of queueing
        //    without bound (a queue only adds latency to requests that will time out).
        .layer(ShedLayer::new(name, policy.max_in_flight))
        // 2. Circuit breaker: when most recent requests failed, fail fast with 503 and
        //    `Retry-After` for a while, then let single probes through until one succeeds.
        //    It sits outside the retries, so it judges what clients get: one dead endpoint
        //    among live ones is retried around and ejected (step 4), it does not trip the
        //    breaker for the whole service.
        .layer(BreakerLayer::new(name, policy.breaker.clone()))
        // 3. Retries: only idempotent requests without a body, only when the endpoint was
        //    unreachable or overloaded, and only within a budget (≈20 % extra load), so
        //    retries cannot multiply an outage.
        .layer(RetryLayer::new(name, policy.max_retries))
        // 4. Balancing: power of two choices by outstanding requests, over the endpoints
        //    discovery found, skipping endpoints ejected for repeated failures.
        .service(Balancer::new(name, endpoints))
}

/// `$layer` wraps a service in `$service`: the layer's settings and shared state (cloned,
/// so every copy of the stack shares them) beside the inner service. The same for each
/// layer of the stack; what differs is each `$service`'s `Service` impl.
macro_rules! layer_service {
    ($layer:ident => $(#[$doc:meta])* $service:ident) => {
        impl<S> Layer<S> for $layer {
            type Service = $service<S>;
            fn layer(&self, inner: S) -> $service<S> {
                $service {
                    layer: self.clone(),
                    inner,
                }
            }
        }

        $(#[$doc])*
        #[derive(Clone)]
        pub struct $service<S> {
            layer: $layer,
            inner: S,
        }
    };
}

// ---------------------------------------------------------------------------------------
// Load shedding

#[derive(Clone)]
pub struct ShedLayer {
    name: &'static str,
    permits: Arc<Semaphore>,
}

impl ShedLayer {
    pub fn new(name: &'static str, max_in_flight: usize) -> Self {
        Self {
            name,
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
        }
    }
}

layer_service!(ShedLayer => Shed);

impl<S> Service<Request> for Shed<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future =
        Either<Ready<Result<Response, Infallible>>, Holding<S::Future, OwnedSemaphorePermit>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            let name = self.layer.name;
            metrics::counter!("gateway_shed_total", "upstream" => name).increment(1);
            let response = Problem::service_unavailable(format!(
                "the {name} service has too many requests in flight; try again shortly"
            ))
            .with_title("Overloaded")
            .with_retry_after(1)
            .into_response();
            return Either::Left(ready(Ok(response)));
        };
        // Every service of this stack is always ready, so the inner one is called here and
        // the future only holds its future, not a clone of the stack below.
        Either::Right(Holding {
            inner: self.inner.call(request),
            guard: Some(permit),
        })
    }
}

pin_project_lite::pin_project! {
    /// `inner`, holding `guard` until it is done.
    pub struct Holding<F, G> {
        #[pin]
        inner: F,
        guard: Option<G>,
    }
}

impl<F: Future, G> Future for Holding<F, G> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        this.guard.take();
        Poll::Ready(output)
    }
}

// ---------------------------------------------------------------------------------------
// Retries

#[derive(Clone)]
pub struct RetryLayer {
    name: &'static str,
    max_retries: u32,
    budget: Arc<TpsBudget>,
}

impl RetryLayer {
    pub fn new(name: &'static str, max_retries: u32) -> Self {
        Self {
            name,
            max_retries,
            // Retries may add 20 % to the request rate (at least 10/s), over a 10 s window.
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
        }
    }
}

layer_service!(RetryLayer => Retry);

/// Safe to send twice: idempotent by method and no body that would have to be replayed.
fn is_retryable(request: &Request) -> bool {
    let idempotent = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    );
    idempotent && request.body().size_hint().exact() == Some(0)
}

/// What a retry needs of a request: method, URI, version, headers and the client's
/// address. Kept as parts, not as a `Request`: a request's extensions map is an
/// allocation every retryable request would pay for, and a retry is rare.
struct RetryHead {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    peer: Option<axum::extract::ConnectInfo<std::net::SocketAddr>>,
}

impl RetryHead {
    fn of(request: &Request) -> Self {
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            peer: request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .copied(),
        }
    }

    /// The request again, bodiless, steered away from the endpoints in `avoid`.
    fn request(&self, avoid: Vec<std::net::SocketAddr>) -> Request {
        let mut request = Request::new(Body::empty());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        let extensions = request.extensions_mut();
        if let Some(peer) = self.peer {
            extensions.insert(peer);
        }
        extensions.insert(AvoidEndpoints(avoid));
        request
    }
}

fn should_retry(response: &Response) -> bool {
    response.extensions().get::<Unreachable>().is_some() || is_overload(response.status())
}

impl<S> Service<Request> for Retry<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RetryFuture<S>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.layer.budget.deposit();
        if !is_retryable(&request) {
            return RetryFuture::Once {
                inner: self.inner.call(request),
            };
        }
        // The first attempt sends the request itself; a retry, a copy of its head (no body
        // to replay) with only the extension forwarding needs. The retry loop is a future
        // of its own, made only when the first attempt asks for it.
        let retry_head = RetryHead::of(&request);
        RetryFuture::First {
            inner: self.inner.call(request),
            then: Some(Box::new((
                self.layer.clone(),
                self.inner.clone(),
                retry_head,
            ))),
        }
    }
}

pin_project_lite::pin_project! {
    /// The first attempt of a request; for a retryable one, what a retry needs (boxed: it is
    /// big and rarely used), and then the retry loop.
    #[project = RetryFutureProj]
    pub enum RetryFuture<S: Service<Request>> {
        Once { #[pin] inner: S::Future },
        First {
            #[pin]
            inner: S::Future,
            then: Option<Box<(RetryLayer, S, RetryHead)>>,
        },
        Retrying { inner: BoxFuture<'static, Result<Response, Infallible>> },
    }
}

impl<S> Future for RetryFuture<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let retrying = match self.as_mut().project() {
            RetryFutureProj::Once { inner } => return inner.poll(cx),
            RetryFutureProj::Retrying { inner } => return inner.as_mut().poll(cx),
            RetryFutureProj::First { inner, then } => {
                let Ok(response) = std::task::ready!(inner.poll(cx));
                match then.take() {
                    Some(then) if wants_retry(&then.0, &response, 0) => {
                        let (layer, inner, head) = *then;
                        Box::pin(retry(layer, inner, head, response))
                    }
                    _ => return Poll::Ready(Ok(response)),
                }
            }
        };
        self.set(RetryFuture::Retrying { inner: retrying });
        self.poll(cx)
    }
}

/// Whether the response to attempt `attempt` (0 = the first) should be tried again,
/// spending the budget if so.
fn wants_retry(layer: &RetryLayer, response: &Response, attempt: u32) -> bool {
    attempt < layer.max_retries && should_retry(response) && layer.budget.withdraw()
}

/// Retries after the first attempt's `response`, avoiding the endpoints tried so far.
async fn retry<S>(
    layer: RetryLayer,
    mut inner: S,
    head: RetryHead,
    mut response: Response,
) -> Result<Response, Infallible>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let mut tried = Vec::new();
    let mut attempt = 0;
    loop {
        if let Some(ServedBy(addr)) = response.extensions().get::<ServedBy>() {
            tried.push(*addr);
        }
        attempt += 1;
        metrics::counter!("gateway_retries_total", "upstream" => layer.name).increment(1);
        let backoff = Duration::from_millis(10 * 2u64.pow(attempt) + fastrand::u64(..10));
        tokio::time::sleep(backoff).await;
        response = inner
            .ready()
            .await?
            .call(head.request(tried.clone()))
            .await?;
        if !wants_retry(&layer, &response, attempt) {
            return Ok(response);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Circuit breaker

#[derive(Debug, Clone)]
pub struct BreakerSettings {
    /// Failures are counted over this many one-second buckets.
    pub window_secs: usize,
    /// Fewer requests than this in the window never open the breaker.
    pub min_requests: u32,
    /// Share of failed requests in the window that opens the breaker.
    pub failure_ratio: f64,
    /// How long the breaker stays open before letting a probe through.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            window_secs: 10,
            min_requests: 10,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// `probe_since`: when the probe in flight (if any) was let through.
    HalfOpen {
        probe_since: Option<Instant>,
    },
}

#[derive(Debug)]
struct Breaker {
    name: &'static str,
    settings: BreakerSettings,
    state: State,
    /// (second, successes, failures) per bucket.
    buckets: Vec<(u64, u32, u32)>,
    started: Instant,
}

enum Admission {
    Allowed { probe: bool },
    Rejected { retry_after: Duration },
}

impl Breaker {
    fn new(name: &'static str, settings: BreakerSettings) -> Self {
        let buckets = vec![(u64::MAX, 0, 0); settings.window_secs.max(1)];
        Self {
            name,
            settings,
            state: State::Closed,
            buckets,
            started: Instant::now(),
        }
    }

    fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed => Admission::Allowed { probe: false },
            State::Open { until } if now < until => Admission::Rejected {
                retry_after: until - now,
            },
            // A probe gets `open_for` to answer; one that takes longer (an upload, a hung
            // upstream) does not keep every other request out meanwhile.
            State::HalfOpen {
                probe_since: Some(since),
            } if now.saturating_duration_since(since) < self.settings.open_for => {
                Admission::Rejected {
                    retry_after: Duration::from_secs(1),
                }
            }
            State::Open { .. } | State::HalfOpen { .. } => {
                self.set_state(State::HalfOpen {
                    probe_since: Some(now),
                });
                Admission::Allowed { probe: true }
            }
        }
    }

    fn record(&mut self, now: Instant, probe: bool, failed: bool) {
        if probe {
            if failed {
                self.open(now);
            } else {
                self.buckets.iter_mut().for_each(|b| *b = (u64::MAX, 0, 0));
                self.set_state(State::Closed);
            }
            return;
        }
        let second = now.saturating_duration_since(self.started).as_secs();
        let len = self.buckets.len();
        let slot = &mut self.buckets[(second as usize) % len];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        if failed {
            slot.2 += 1;
        } else {
            slot.1 += 1;
        }
        if matches!(self.state, State::Closed) && failed {
            let window = len as u64;
            let (ok, bad) = self
                .buckets
                .iter()
                .filter(|(s, _, _)| *s != u64::MAX && second.saturating_sub(*s) < window)
                .fold((0u32, 0u32), |(ok, bad), (_, s, f)| (ok + s, bad + f));
            let total = ok + bad;
            if total >= self.settings.min_requests
                && f64::from(bad) / f64::from(total) >= self.settings.failure_ratio
            {
                self.open(now);
            }
        }
    }

    fn open(&mut self, now: Instant) {
        tracing::warn!(upstream = self.name, open_for = ?self.settings.open_for, "circuit breaker opened");
        self.set_state(State::Open {
            until: now + self.settings.open_for,
        });
    }

    fn set_state(&mut self, state: State) {
        let gauge = match state {
            State::Closed => 0.0,
            State::Open { .. } => 1.0,
            State::HalfOpen { .. } => 2.0,
        };
        if matches!(state, State::Closed) && !matches!(self.state, State::Closed) {
            tracing::info!(upstream = self.name, "circuit breaker closed");
        }
        metrics::gauge!("gateway_circuit_state", "upstream" => self.name).set(gauge);
        self.state = state;
    }
}

#[derive(Clone)]
pub struct BreakerLayer {
    breaker: Arc<Mutex<Breaker>>,
}

impl BreakerLayer {
    pub fn new(name: &'static str, settings: BreakerSettings) -> Self {
        Self {
            breaker: Arc::new(Mutex::new(Breaker::new(name, settings))),
        }
    }
}

layer_service!(BreakerLayer => CircuitBreaker);

fn lock(breaker: &Mutex<Breaker>) -> std::sync::MutexGuard<'_, Breaker> {
    match breaker.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A request the breaker let through whose outcome is not known yet. Dropped unanswered —
/// the route's timeout ran out, or the caller went away first — it counts as a failure:
/// an upstream that accepts connections and never answers opens the breaker too.
struct Outcome {
    breaker: Arc<Mutex<Breaker>>,
    probe: bool,
    settled: bool,
}

impl Outcome {
    fn settle(&mut self, failed: bool) {
        self.settled = true;
        lock(&self.breaker).record(Instant::now(), self.probe, failed);
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(true);
        }
    }
}

impl<S> Service<Request> for CircuitBreaker<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, Judged<S::Future>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let admission = lock(&self.layer.breaker).admit(Instant::now());
        let probe = match admission {
            Admission::Allowed { probe } => probe,
            Admission::Rejected { retry_after } => {
                let name = lock(&self.layer.breaker).name;
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let response = Problem::service_unavailable(format!(
                    "the {name} service is failing; the gateway stops sending it requests for a moment"
                ))
                .with_title("Circuit open")
                .with_retry_after(secs)
                .into_response();
                return Either::Left(ready(Ok(response)));
            }
        };
        // The outcome first: should calling the inner service panic, it is recorded (as
        // a failure) while unwinding, and a probe's slot does not stay taken.
        let outcome = Outcome {
            breaker: self.layer.breaker.clone(),
            probe,
            settled: false,
        };
        Either::Right(Judged {
            inner: self.inner.call(request),
            outcome,
        })
    }
}

pin_project_lite::pin_project! {
    /// A request the breaker let through: its outcome is recorded when it is known.
    pub struct Judged<F> {
        #[pin]
        inner: F,
        outcome: Outcome,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Judged<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        let failed =
            response.extensions().get::<Unreachable>().is_some() || is_overload(response.status());
        this.outcome.settle(failed);
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            window_secs: 10,
            min_requests: 4,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(5),
        }
    }

    /// A breaker that has seen requests (no probes) at `at`, failed or not.
    fn breaker_after(at: Instant, failed: &[bool]) -> Breaker {
        let mut breaker = Breaker::new("t", settings());
        for failed in failed {
            breaker.record(at, false, *failed);
        }
        breaker
    }

    /// What `breaker` answers a request at `at`: `Some(probe)` when it lets it through,
    /// `None` when it rejects it.
    fn admitted(breaker: &mut Breaker, at: Instant) -> Option<bool> {
        match breaker.admit(at) {
            Admission::Allowed { probe } => Some(probe),
            Admission::Rejected { .. } => None,
        }
    }

    #[test]
    fn breaker_opens_on_a_failure_ratio_and_closes_after_a_good_probe() {
        let t0 = Instant::now();
        let mut breaker = breaker_after(t0, &[false, false, true]);
        assert_eq!(admitted(&mut breaker, t0), Some(false), "3 < min requests");
        breaker.record(t0, false, true);
        // 2 of 4 failed: open.
        assert_eq!(admitted(&mut breaker, t0), None);
        let later = t0 + Duration::from_secs(6);
        assert_eq!(admitted(&mut breaker, later), Some(true));
        assert_eq!(admitted(&mut breaker, later), None, "one probe at a time");
        breaker.record(later, true, false);
        assert_eq!(admitted(&mut breaker, later), Some(false));
    }

    #[test]
    fn a_failed_probe_opens_again_and_a_slow_one_does_not_block_the_next() {
        let t0 = Instant::now();
        let mut breaker = breaker_after(t0, &[true; 4]);
        let later = t0 + Duration::from_secs(6);
        assert_eq!(admitted(&mut breaker, later), Some(true));
        // The probe is still out, for less than `open_for`: no second one.
        assert_eq!(admitted(&mut breaker, later + Duration::from_secs(4)), None);
        // Past `open_for` it is given up on, and another request probes.
        let much_later = later + Duration::from_secs(6);
        assert_eq!(admitted(&mut breaker, much_later), Some(true));
        breaker.record(much_later, true, true);
        assert_eq!(admitted(&mut breaker, much_later), None);
    }

    /// A request dropped before its answer (the route's timeout) counts as a failure, so an
    /// upstream that never answers opens the breaker.
    #[tokio::test]
    async fn requests_that_never_get_an_answer_open_the_breaker() {
        let never =
            tower::service_fn(|_: Request| std::future::pending::<Result<Response, Infallible>>());
        let mut breaker = BreakerLayer::new("t", settings()).layer(never);
        for _ in 0..4 {
            let call = breaker.call(Request::new(Body::empty()));
            assert!(
                tokio::time::timeout(Duration::from_millis(5), call)
                    .await
                    .is_err()
            );
        }
        let Ok(response) = breaker.call(Request::new(Body::empty())).await;
        assert_eq!(response.status(), 503);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let mut breaker = breaker_after(t0, &[true; 3]);
        let later = t0 + Duration::from_secs(30);
        for failed in [false, false, false, true] {
            breaker.record(later, false, failed);
        }
        assert_eq!(admitted(&mut breaker, later), Some(false));
    }

    #[test]
    fn only_bodiless_idempotent_requests_are_retried() {
        let get = Request::get("/jobs").body(Body::empty()).expect("request");
        assert!(is_retryable(&get));
        let post = Request::post("/login")
            .body(Body::empty())
            .expect("request");
        assert!(!is_retryable(&post));
        let put_with_body = Request::put("/x")
            .body(Body::from("data"))
            .expect("request");
        assert!(!is_retryable(&put_with_body));
    }
}
