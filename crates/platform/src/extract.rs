//! Request extractors whose refusals are problem+json, so that a handler takes its input
//! already parsed and writes no error mapping of its own: [`JsonBody`] (a JSON body into
//! a type that checks itself) and [`Query`] (a query string).

use std::fmt::Display;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
};
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// A JSON request body, whatever its content type (the course's client sends
/// `application/json`, curl users often forget it), made into `T` by
/// `T::try_from(serde_json::Value)`. Refused with 400 when the body is not JSON or `T`
/// refuses it (the detail is `T`'s error), 413 past the route's body limit.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: TryFrom<serde_json::Value>,
    T::Error: Display,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| Problem::new(rejection.status(), rejection.body_text()))?;
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|error| Problem::bad_request(format!("the body is not JSON: {error}")))?;
        T::try_from(value)
            .map(JsonBody)
            .map_err(|error| Problem::bad_request(error.to_string()))
    }
}

/// The query string deserialised into `T`; refused with 400 saying which parameter is
/// wrong.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection| Problem::bad_request(rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, extract::DefaultBodyLimit, routing::post};
    use http::StatusCode;
    use tower::ServiceExt;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Page {
        limit: Option<u32>,
    }

    /// A body type that checks itself, as the services' request types do.
    struct NewPost {
        title: String,
    }

    impl TryFrom<serde_json::Value> for NewPost {
        type Error = String;

        fn try_from(body: serde_json::Value) -> Result<Self, String> {
            match body.get("title") {
                Some(serde_json::Value::String(title)) if !title.trim().is_empty() => Ok(NewPost {
                    title: title.clone(),
                }),
                Some(serde_json::Value::String(_)) | None => {
                    Err("'title' is missing or empty".to_owned())
                }
                Some(_) => Err("'title' must be a string".to_owned()),
            }
        }
    }

    async fn title(JsonBody(post): JsonBody<NewPost>) -> String {
        post.title
    }

    async fn limit(Query(page): Query<Page>) -> String {
        format!("{:?}", page.limit)
    }

    fn app() -> Router {
        Router::new()
            .route("/posts", post(title).get(limit))
            .layer(DefaultBodyLimit::max(64))
    }

    async fn call(request: http::Request<Body>) -> (StatusCode, String, String) {
        let response = app().oneshot(request).await.expect("answered");
        let status = response.status();
        let kind = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, kind, String::from_utf8_lossy(&body).into_owned())
    }

    fn posting(body: &'static str) -> http::Request<Body> {
        http::Request::post("/posts")
            .body(Body::from(body))
            .expect("request")
    }

    #[tokio::test]
    async fn a_body_is_parsed_whatever_its_content_type() {
        let (status, _, body) = call(posting(r#"{"title":"hello"}"#)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    }

    #[tokio::test]
    async fn each_refusal_is_problem_json_with_its_reason() {
        for (body, status, detail) in [
            ("{", StatusCode::BAD_REQUEST, "the body is not JSON"),
            (
                r#"{"title":7}"#,
                StatusCode::BAD_REQUEST,
                "'title' must be a string",
            ),
            (
                r#"{"title":" "}"#,
                StatusCode::BAD_REQUEST,
                "'title' is missing or empty",
            ),
            (
                r#"{"title":"a very long title that does not fit in sixty-four bytes at all"}"#,
                StatusCode::PAYLOAD_TOO_LARGE,
                "length limit",
            ),
        ] {
            let (got, kind, text) = call(posting(body)).await;
            assert_eq!(got, status, "{body}: {text}");
            assert_eq!(kind, "application/problem+json", "{body}");
            assert!(text.contains(detail), "{body}: {text}");
        }
        let (status, kind, text) = call(
            http::Request::get("/posts?limit=many")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(kind, "application/problem+json");
        assert!(text.contains("limit"), "{text}");
        let (status, _, text) = call(
            http::Request::get("/posts?limit=3")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "Some(3)"));
    }
}
