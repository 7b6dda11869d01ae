//! Per-client rate limiting at the edge: each client address gets a token bucket
//! (governor's GCRA); past it the gateway answers 429 with `Retry-After` before any
//! upstream sees the request. The client address is the connection's peer, or behind
//! `FLOTILLA_GATEWAY_TRUSTED_PROXIES` the client they forwarded for, which
//! `platform::forwarded::adopt_client` has put in its place by then (routes.rs).

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use platform::Problem;

/// The limiter shared by every route.
pub type ClientLimiter = Arc<DefaultKeyedRateLimiter<IpAddr>>;

/// A limiter allowing `per_second` requests per client (bursts of twice that);
/// 0 turns limiting off (`None`).
pub fn client_limiter(per_second: u32) -> Option<ClientLimiter> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
    let limiter = Arc::new(DefaultKeyedRateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ));
    // Forget idle clients now and then so memory stays bounded.
    let weak = Arc::downgrade(&limiter);
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
    }
    Some(limiter)
}

pub async fn enforce(
    State(limiter): State<ClientLimiter>,
    request: Request,
    next: Next,
) -> Response {
    match refusal(&limiter, &request) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// The 429 answer if `request`'s client has used up its requests for now.
pub fn refusal(limiter: &ClientLimiter, request: &Request) -> Option<Response> {
    let ConnectInfo(addr) = request.extensions().get::<ConnectInfo<SocketAddr>>()?;
    let not_until = limiter.check_key(&addr.ip()).err()?;
    let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
    metrics::counter!("gateway_rate_limited_total").increment(1);
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    Some(Problem::too_many_requests(secs).into_response())
}
