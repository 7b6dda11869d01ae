//! One error type for every HTTP answer that is not a success: RFC 9457
//! `application/problem+json` with `type`, `title`, `status`, `detail` and the request id.
//!
//! Handlers return [`Problem`] (or an error type that converts into it). The
//! [`normalize`] middleware makes sure that *every* error response leaving a service has
//! this shape, including the ones produced by the framework itself (unknown route,
//! wrong method, body too large, timeouts, panics), and stamps the request id in.

use axum::{
    body::Body,
    extract::Request,
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::ids::RequestId;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// How much of a non-problem error body is read to turn it into a problem `detail`.
const MAX_FOREIGN_ERROR_BODY: usize = 4 * 1024;

/// An RFC 9457 problem document, and the HTTP response it becomes.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    #[serde(flatten)]
    extensions: Map<String, Value>,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
}

/// `Problem::NAME(detail)`: [`Problem::new`] with one status, for each status the
/// services answer with by name.
macro_rules! by_status {
    ($($name:ident => $status:ident,)*) => {
        impl Problem {
            $(
                #[doc = concat!("[`Problem::new`] with `", stringify!($status), "`.")]
                pub fn $name(detail: impl Into<String>) -> Self {
                    Self::new(StatusCode::$status, detail)
                }
            )*
        }
    };
}

by_status! {
    bad_request => BAD_REQUEST,
    unauthorized => UNAUTHORIZED,
    forbidden => FORBIDDEN,
    not_found => NOT_FOUND,
    conflict => CONFLICT,
    payload_too_large => PAYLOAD_TOO_LARGE,
    service_unavailable => SERVICE_UNAVAILABLE,
}

impl Problem {
    /// A problem with the canonical reason phrase of `status` as its title.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            request_id: None,
            extensions: Map::new(),
            retry_after_secs: None,
        }
    }

    /// 429 with a `Retry-After` header.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many requests; retry after {retry_after_secs} s"),
        )
        .with_retry_after(retry_after_secs)
    }

    /// A 500 whose cause is logged but never shown to the client — or, when the cause is
    /// a full disk (see [`out_of_storage`]), a 507 with `Retry-After`: the server's
    /// condition, which passes, not a bug.
    pub fn internal(cause: &(dyn std::fmt::Display + '_)) -> Self {
        let text = cause.to_string();
        if out_of_storage(&text) {
            tracing::error!(error = %text, "out of storage");
            return Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the server is out of storage space; nothing was changed, try again later",
            )
            .with_retry_after(60);
        }
        tracing::error!(error = %text, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "an internal error occurred; quote the request id when reporting it",
        )
    }

    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// A URI (or `urn:`) naming the kind of problem, for clients that branch on it.
    pub fn with_type(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// An extension member (RFC 9457 §3.2), e.g. per-field validation errors.
    pub fn with_extension(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn title(&self) -> &str {
        &self.title
    }

    fn render(&self) -> Response {
        let body = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.status();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.title, self.detail)
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = self.render();
        // Kept so that `normalize` can re-render with the request id.
        response.extensions_mut().insert(self);
        response
    }
}

/// Middleware: every error response leaves as `application/problem+json` carrying the
/// request id. Responses that already are problems are re-rendered with the id; other
/// error responses (from axum, tower-http, a proxied upstream) are converted, using a
/// short text body, if any, as the `detail`.
/// (The common stack of a service does the same in its observe layer.)
pub async fn normalize(request: Request, next: Next) -> Response {
    let request_id = request.extensions().get::<RequestId>().cloned();
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = next.run(request).await;
    if !is_error(&response) {
        return response;
    }
    to_problem(
        response,
        request_id.as_ref().map(|id| id.0.as_str()),
        &method,
        uri.path(),
    )
    .await
}

/// A 4xx or 5xx response, which must leave as a problem.
pub(crate) fn is_error(response: &Response) -> bool {
    response.status().is_client_error() || response.status().is_server_error()
}

/// The error `response` as problem+json carrying `request_id` (see [`normalize`]).
pub(crate) async fn to_problem(
    response: Response,
    request_id: Option<&str>,
    method: &http::Method,
    path: &str,
) -> Response {
    // What the answer says besides its body (`WWW-Authenticate`, `Allow`, `Content-Range`
    // of a 416, …) stays; only the headers describing the replaced body go.
    let mut headers = response.headers().clone();
    for describes_body in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(describes_body);
    }
    let mut problem = if let Some(problem) = response.extensions().get::<Problem>() {
        problem.clone()
    } else if is_problem(&response) {
        // Already a problem from elsewhere (a remote upstream): leave it as it is.
        return response;
    } else {
        foreign_error_to_problem(response, method, path).await
    };
    problem.request_id = request_id.map(str::to_owned);
    let mut rendered = problem.render();
    // The problem's own headers win over the kept ones of the same name.
    headers.extend(std::mem::take(rendered.headers_mut()));
    *rendered.headers_mut() = headers;
    rendered.extensions_mut().insert(problem);
    rendered
}

fn is_problem(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON))
}

async fn foreign_error_to_problem(
    response: Response,
    method: &http::Method,
    path: &str,
) -> Problem {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let is_text = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"));
    let text = if is_text {
        let limited = http_body_util::Limited::new(response.into_body(), MAX_FOREIGN_ERROR_BODY);
        match limited.collect().await {
            Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
                .trim()
                .to_owned(),
            Err(_) => String::new(),
        }
    } else {
        String::new()
    };
    let detail = if !text.is_empty() {
        text
    } else {
        match status {
            StatusCode::NOT_FOUND => format!("no resource at {path}"),
            StatusCode::METHOD_NOT_ALLOWED => format!("{method} is not allowed on {path}"),
            StatusCode::PAYLOAD_TOO_LARGE => {
                "the request body is larger than this route accepts".to_owned()
            }
            StatusCode::REQUEST_TIMEOUT => "the request took too long".to_owned(),
            _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
        }
    };
    let problem = Problem::new(status, detail);
    match retry_after {
        Some(secs) => problem.with_retry_after(secs),
        None => problem,
    }
}

/// Whether an error's text says the disk (or quota) is full. This crate sits below the
/// storage crates, so causes arrive here as text; these are the operating system's and
/// the databases' own words for it: `ENOSPC`/`EDQUOT` as std renders them, SQLite's
/// `SQLITE_FULL`, PostgreSQL's `could not extend file …: No space left on device` (SQLSTATE
/// 53100), MariaDB's `Errcode: 28` and `The table … is full`.
pub fn out_of_storage(text: &str) -> bool {
    const SIGNS: [&str; 5] = [
        "No space left on device",
        "Disk quota exceeded",
        "database or disk is full",
        "Errcode: 28",
        "could not extend file",
    ];
    SIGNS.iter().any(|sign| text.contains(sign))
        || (text.starts_with("The table") && text.contains("is full"))
}

/// The answer to a handler that panicked: a 500 problem that does not leak the panic's
/// message to the client (`Problem::internal` logs it).
pub(crate) fn panic_to_problem(
    cause: Box<dyn std::any::Any + Send + 'static>,
) -> axum::response::Response {
    let message = cause
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| cause.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".to_owned());
    Problem::internal(&format!("handler panicked: {message}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_507_and_other_causes_500() {
        for full in [
            "error returned from database: (code: 13) database or disk is full",
            "blob file i/o failed: No space left on device (os error 28)",
            "could not extend file \"base/16384/2619\": No space left on device",
            "The table 'comments' is full",
        ] {
            let problem = Problem::internal(&full);
            assert_eq!(problem.status(), StatusCode::INSUFFICIENT_STORAGE, "{full}");
            assert!(
                problem
                    .into_response()
                    .headers()
                    .contains_key("retry-after")
            );
        }
        for other in ["connection refused", "The table 'x' does not exist"] {
            assert_eq!(
                Problem::internal(&other).status(),
                StatusCode::INTERNAL_SERVER_ERROR
            );
        }
    }

    #[test]
    fn serializes_with_rfc9457_members() {
        let mut problem = Problem::not_found("no such job").with_extension("job_id", "j1");
        problem.request_id = Some("abc".into());
        let value = serde_json::to_value(&problem).expect("serializes");
        assert_eq!(value["type"], "about:blank");
        assert_eq!(value["title"], "Not Found");
        assert_eq!(value["status"], 404);
        assert_eq!(value["detail"], "no such job");
        assert_eq!(value["request_id"], "abc");
        assert_eq!(value["job_id"], "j1");
    }

    #[test]
    fn response_has_problem_content_type_and_retry_after() {
        let response = Problem::too_many_requests(7).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }

    #[tokio::test]
    async fn normalizing_keeps_the_headers_that_do_not_describe_the_body() {
        use axum::{Router, middleware, routing::get};
        use tower::ServiceExt;

        let app = Router::new()
            .route(
                "/problem",
                get(|| async {
                    (
                        [(header::WWW_AUTHENTICATE, "Bearer")],
                        Problem::unauthorized("no token"),
                    )
                }),
            )
            .route(
                "/foreign",
                get(|| async {
                    let mut response = (StatusCode::UNAUTHORIZED, "who are you").into_response();
                    let headers = response.headers_mut();
                    headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
                    headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
                    response
                }),
            )
            .layer(middleware::from_fn(normalize));
        let call = |method: &str, path: &str| {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .expect("request");
            app.clone().oneshot(request)
        };

        let response = call("GET", "/problem").await.expect("infallible");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);

        let response = call("GET", "/foreign").await.expect("infallible");
        let challenges: Vec<_> = response
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .collect();
        assert_eq!(challenges, ["Basic", "Bearer"]);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        // The length of the text body it replaced must not stay.
        let length = response.headers().get(header::CONTENT_LENGTH).cloned();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(length.is_none_or(|length| length == body.len().to_string().as_str()));
        assert_ne!(body.len(), 11);
        let problem: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(problem["detail"], "who are you");

        // axum's own 405 names the allowed methods.
        let response = call("POST", "/problem").await.expect("infallible");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(response.headers().contains_key(header::ALLOW));
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let problem = Problem::internal(&"password=hunter2 at db.rs:42");
        assert_eq!(problem.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!problem.detail().contains("hunter2"));
    }
}
