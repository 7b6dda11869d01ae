//! Cross-origin requests from browser clients served from another origin — the
//! course's React client runs on its dev server (`http://localhost:3000`) and calls the
//! gateway directly. The allowed origins come from `--gateway-cors-origins`
//! (`FLOTILLA_CORS_ORIGINS`, comma-separated; `*` allows any origin, an empty list none).

use http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The CORS layer for `origins`. Preflight requests are answered here, before routing
/// and rate limiting.
pub fn layer(origins: &[String]) -> CorsLayer {
    let origins: Vec<&str> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    let allow_origin = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|origin| {
            HeaderValue::from_str(origin)
                .inspect_err(|_| tracing::warn!(origin, "ignored: not a valid CORS origin"))
                .ok()
        }))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::ACCEPT,
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([header::LINK, HeaderName::from_static("x-request-id")])
}
