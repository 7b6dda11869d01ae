//! What every service's OpenAPI description shares: the one `Problem` schema (RFC 9457),
//! the error answers each route can give, and the routes every service serves
//! (`/healthz`, `/readyz`, `/metrics`), described on their handlers.
//!
//! Services describe their handlers with `#[utoipa::path]` and register them with
//! `utoipa_axum::routes!`, so the router and the description come from one place; the
//! gateway merges the descriptions of the routes it serves (docs/API.md).

use axum::{Json, extract::State, response::Response};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        ContentBuilder, HeaderBuilder, ObjectBuilder, RefOr, Response as ApiResponse,
        ResponseBuilder, Schema, Type,
        schema::{AdditionalProperties, SchemaFormat},
    },
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{Problem, health::Readiness, problem::PROBLEM_JSON};

impl PartialSchema for Problem {
    fn schema() -> RefOr<Schema> {
        let string = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        ObjectBuilder::new()
            .description(Some(
                "RFC 9457 problem details: every error answer of every route.",
            ))
            .property(
                "type",
                string(
                    "A URI naming the kind of problem; `about:blank` when the status says it all.",
                )
                .format(Some(SchemaFormat::Custom("uri-reference".to_owned()))),
            )
            .property(
                "title",
                string("The status's reason phrase, or a short summary."),
            )
            .property(
                "status",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(400))
                    .maximum(Some(599))
                    .description(Some("The HTTP status code.")),
            )
            .property(
                "detail",
                string("What went wrong with this request, in words."),
            )
            .property(
                "request_id",
                string("The request's `x-request-id`; quote it when reporting a problem."),
            )
            .required("type")
            .required("title")
            .required("status")
            .required("detail")
            // Extension members (RFC 9457 §3.2), e.g. `checks` of a failed `/readyz`.
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl ToSchema for Problem {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("Problem".to_owned(), Self::schema()));
    }
}

/// A problem+json answer with `description`, for hand-built descriptions (the gateway's
/// own answers); handlers say the same with `body = Problem, content_type = …`.
pub fn problem_response(description: &str) -> ApiResponse {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new().schema(Some(problem_ref())).build(),
        )
        .build()
}

/// A problem answer that carries `Retry-After` (429, 503).
pub fn problem_response_retry(description: &str) -> ApiResponse {
    let mut response = problem_response(description);
    response.headers.insert(
        "Retry-After".to_owned(),
        RefOr::T(
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                ))
                .description(Some("Seconds to wait before trying again"))
                .build(),
        ),
    );
    response
}

/// A reference to the one `Problem` schema in `components`.
pub fn problem_ref() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem"))
}

/// What `/readyz` needs.
#[derive(Clone)]
pub(crate) struct ReadyState {
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
}

/// The routes every service serves, described.
pub(crate) fn standard_routes() -> OpenApiRouter<ReadyState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The description of the routes every service serves.
pub fn standard_openapi() -> utoipa::openapi::OpenApi {
    standard_routes().into_openapi()
}

/// The process is alive (it answers); says nothing of its dependencies.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Value,
               example = json!({"status": "ok"})))
)]
async fn healthz() -> Json<Value> {
    crate::health::healthz().await
}

/// Every dependency answers (database, broker, upstreams…) and the process is not
/// shutting down: what a load balancer or Kubernetes asks before sending traffic.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready (`status` is `ready`), or serving with a degraded dependency (`degraded`); `checks` says each dependency's state", body = Value,
         example = json!({"status": "ready", "checks": {"db": "ok"}})),
        (status = 503, description = "A dependency is not ready, or the process is shutting down; the problem's `checks` member says which", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn readyz(State(state): State<ReadyState>) -> Response {
    state.readiness.respond(&state.shutdown).await
}

/// Prometheus metrics of this process (text exposition format).
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "The metrics", body = String,
               content_type = "text/plain"))
)]
async fn metrics() -> String {
    crate::metrics::render()
}
