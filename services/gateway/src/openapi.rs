//! The public API description: `GET /openapi.json` (OpenAPI 3.1) and `GET /docs`
//! (Swagger UI, vendored into the binary: no CDN, no validator badge, works offline).
//!
//! Nothing here describes a route by hand. Each service describes its handlers where
//! they are written (`#[utoipa::path]`) and registers them with `utoipa_axum::routes!`,
//! so its router and its description come from one place; the gateway's own routes
//! (this module's, the web UI's, `/healthz`, `/readyz`, `/metrics`) are registered the
//! same way. [`document`] walks the route table (routes.rs) and takes, for each row, the
//! operation its upstream describes, then adds what the gateway itself may answer on
//! that route: 401/403 of its token check, 429 of its rate limit, 503 when the upstream
//! is down, overloaded or not configured, 413 past its body limit — and 507 on a
//! writing route, which any service answers when its store's disk is full. A row whose upstream
//! describes no such operation makes [`document`] fail — and the gateway's tests with
//! it, so a new route cannot go undocumented (docs/API.md).

use std::sync::{Arc, OnceLock};

use axum::{
    body::Body,
    extract::{Path, State},
    http::header,
    response::{IntoResponse, Redirect, Response},
};
use platform::{
    Problem,
    openapi::{problem_response, problem_response_retry},
};
use utoipa::openapi::{
    ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathItem, Tag,
    path::{HttpMethod, Operation},
    security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};
use utoipa_swagger_ui::Config;

use crate::{
    descriptions::Descriptions,
    routes::{Guard, table_rows},
};

/// Where the description is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The serialised description, set once the whole router (and so the description) is
/// known: `/openapi.json` describes itself too.
#[derive(Clone, Default)]
pub(crate) struct Served(Arc<OnceLock<bytes::Bytes>>);

impl Served {
    pub(crate) fn set(&self, document: &OpenApi) {
        let json = serde_json::to_vec(document).unwrap_or_default();
        let _ = self.0.set(json.into());
    }
}

/// `/openapi.json` and `/docs`, registered with their descriptions.
pub(crate) fn routes(served: Served) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(docs_redirect))
        .routes(routes!(docs_index))
        .routes(routes!(docs_file))
        .with_state(served)
}

/// This description (OpenAPI 3.1, JSON).
#[utoipa::path(
    get, path = "/openapi.json", tag = "documentation",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"))
)]
async fn openapi_json(State(served): State<Served>) -> Response {
    match served.0.get() {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response(),
        None => Problem::service_unavailable("the API description is being built").into_response(),
    }
}

/// Swagger UI's address without its slash: a redirect to `/docs/`.
#[utoipa::path(
    get, path = "/docs", tag = "documentation",
    responses((status = 303, description = "See `/docs/`", headers(("Location" = String, description = "`/docs/`"))))
)]
async fn docs_redirect() -> Redirect {
    Redirect::to("/docs/")
}

/// Swagger UI over this description, served from the binary (works offline).
#[utoipa::path(
    get, path = "/docs/", tag = "documentation",
    responses((status = 200, description = "Swagger UI", body = String, content_type = "text/html"))
)]
async fn docs_index() -> Response {
    swagger_file("")
}

/// One file of Swagger UI (scripts, styles, its initializer pointing at `/openapi.json`).
#[utoipa::path(
    get, path = "/docs/{file}", tag = "documentation",
    params(("file" = String, Path, description = "A file of Swagger UI, e.g. `swagger-ui.css`")),
    responses(
        (status = 200, description = "The file", body = String, content(
            ("text/html"), ("text/css"), ("text/javascript"), ("image/png"), ("application/octet-stream"))),
        (status = 404, description = "No such file", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn docs_file(Path(file): Path<String>) -> Response {
    swagger_file(&file)
}

/// Swagger UI's configuration: this origin's description only, and no validator (the
/// default sends the description to validator.swagger.io and shows its badge).
fn swagger_config() -> Arc<Config<'static>> {
    static CONFIG: OnceLock<Arc<Config<'static>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| Arc::new(Config::new([OPENAPI_PATH]).validator_url("none")))
        .clone()
}

fn swagger_file(path: &str) -> Response {
    match utoipa_swagger_ui::serve(path, swagger_config()) {
        Ok(Some(file)) => {
            let mut response = (
                [(header::CONTENT_TYPE, file.content_type)],
                Body::from(file.bytes.into_owned()),
            )
                .into_response();
            if file.gzpipped {
                response.headers_mut().insert(
                    header::CONTENT_ENCODING,
                    http::HeaderValue::from_static("gzip"),
                );
            }
            response
        }
        Ok(None) => Problem::not_found(format!("Swagger UI has no file {path}")).into_response(),
        Err(error) => Problem::internal(&error).into_response(),
    }
}

/// What a route of the table lacks in its upstream's description.
#[derive(Debug, thiserror::Error)]
#[error("{method} {pattern} is served (by {upstream}) but its handler describes no such operation")]
pub struct Undocumented {
    pub method: String,
    pub pattern: &'static str,
    pub upstream: &'static str,
}

const METHODS: [(HttpMethod, &str); 5] = [
    (HttpMethod::Get, "GET"),
    (HttpMethod::Post, "POST"),
    (HttpMethod::Put, "PUT"),
    (HttpMethod::Patch, "PATCH"),
    (HttpMethod::Delete, "DELETE"),
];

fn operation_mut<'a>(item: &'a mut PathItem, method: &HttpMethod) -> Option<&'a mut Operation> {
    match method {
        HttpMethod::Get => item.get.as_mut(),
        HttpMethod::Post => item.post.as_mut(),
        HttpMethod::Put => item.put.as_mut(),
        HttpMethod::Patch => item.patch.as_mut(),
        HttpMethod::Delete => item.delete.as_mut(),
        _ => None,
    }
}

/// The whole description: the route table's rows as their upstreams describe them,
/// plus the gateway's own routes (`own`: the web UI, the documentation; `live`: the
/// event streams) and the routes every service serves.
pub(crate) fn document(
    own: OpenApi,
    mut live: OpenApi,
    mut admin: OpenApi,
    descriptions: &Descriptions,
) -> Result<OpenApi, Undocumented> {
    let mut document = base();
    document.merge(own);
    // The live streams are behind the table's client resolution and rate limit.
    for item in live.paths.paths.values_mut() {
        if let Some(operation) = item.get.as_mut() {
            add_gateway_answers(operation, Guard::Open, "GET");
        }
    }
    document.merge(live);
    // The admin routes: the same, and the token of an admin (401, 403).
    for item in admin.paths.paths.values_mut() {
        if let Some(operation) = item.get.as_mut() {
            add_gateway_answers(operation, Guard::Admin, "GET");
        }
        if let Some(operation) = item.post.as_mut() {
            add_gateway_answers(operation, Guard::Admin, "POST");
        }
    }
    document.merge(admin);
    document.merge(platform::openapi::standard_openapi());
    for row in table_rows() {
        let mut upstream = descriptions.of(row.upstream);
        let item = upstream.paths.paths.get_mut(row.pattern);
        let undocumented = |method: &str| Undocumented {
            method: method.to_owned(),
            pattern: row.pattern,
            upstream: row.upstream,
        };
        let Some(item) = item else {
            return Err(undocumented(row.methods.name()));
        };
        let mut found = false;
        for (method, name) in &METHODS {
            if !row.methods.covers(name) {
                continue;
            }
            let Some(operation) = operation_mut(item, method) else {
                continue;
            };
            found = true;
            let mut operation = operation.clone();
            add_gateway_answers(&mut operation, row.guard, name);
            document
                .paths
                .add_path_operation(row.pattern, vec![method.clone()], operation);
        }
        if !found {
            return Err(undocumented(row.methods.name()));
        }
        // The schemas the operations name.
        if let Some(components) = upstream.components.take() {
            let into = document.components.get_or_insert_with(Default::default);
            for (name, schema) in components.schemas {
                into.schemas.entry(name).or_insert(schema);
            }
        }
    }
    Ok(document)
}

/// The answers the gateway gives on a proxied route before or instead of its upstream.
fn add_gateway_answers(operation: &mut Operation, guard: Guard, method: &str) {
    let responses = &mut operation.responses.responses;
    let mut add = |status: &str, response: utoipa::openapi::Response| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| response.into());
    };
    if guard != Guard::Open {
        add(
            "401",
            problem_response(
                "No Bearer token, or one that is invalid or expired (checked by the gateway)",
            ),
        );
        operation.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
    if guard == Guard::Admin {
        add("403", problem_response("The token is not an admin's"));
    }
    if method == "POST" {
        add(
            "413",
            problem_response("The body is larger than the route allows"),
        );
    }
    add(
        "429",
        problem_response_retry(
            "Too many requests from this client address (the gateway's limit, FLOTILLA_GATEWAY_RATE_LIMIT); see Retry-After",
        ),
    );
    add(
        "503",
        problem_response_retry(
            "The service behind this route is unavailable, overloaded, slow to answer, or not configured on this gateway",
        ),
    );
}

fn base() -> OpenApi {
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.bearer_format = Some("JWT".to_owned());
    let tag = |name: &str, description: &str| {
        let mut tag = Tag::new(name);
        tag.description = Some(description.to_owned());
        tag
    };
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Flotilla")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The public API of Flotilla, served by the gateway: every route the gateway \
                     serves, generated from the handlers. Every error is an RFC 9457 \
                     `application/problem+json` body (the `Problem` schema). The prose \
                     reference, with the messages on the bus, is docs/API.md.",
                )),
        )
        .components(Some(
            ComponentsBuilder::new()
                .schema("Problem", <Problem as utoipa::PartialSchema>::schema())
                .security_scheme(
                    "basic",
                    SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
                )
                .security_scheme("bearer", SecurityScheme::Http(bearer))
                .build(),
        ))
        .tags(Some([
            tag("auth", "Accounts and access tokens"),
            tag("media", "Video uploads, conversion jobs and MP3 downloads"),
            tag("blog", "Posts, comments and the blog's event log"),
            tag(
                "live",
                "Server-Sent Events for the web app: blog changes and a user's jobs",
            ),
            tag(
                "admin",
                "The system map's data: services, instances, queues, messages, dead letters",
            ),
            tag("web", "The web app"),
            tag("documentation", "This description and Swagger UI"),
            tag("operations", "Liveness, readiness and metrics"),
        ]))
        .build()
}

/// The description of the gateway's API as `build` serves it, given its upstreams'
/// descriptions (for tools and tests).
pub fn openapi(descriptions: &Descriptions) -> Result<OpenApi, Undocumented> {
    let own = crate::own_routes(Served::default()).into_openapi();
    document(
        own,
        crate::live::openapi(),
        crate::system::openapi(),
        descriptions,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `flotilla` hands them in (the service crates are dev-dependencies here).
    fn descriptions() -> Descriptions {
        Descriptions::default()
            .with("auth", auth::openapi())
            .with("media", media::routes::openapi())
            .with("posts", posts::openapi())
            .with("comments", comments::openapi())
            .with("query", query::openapi())
            .with("event-bus", event_bus::openapi())
    }

    fn doc() -> serde_json::Value {
        serde_json::to_value(openapi(&descriptions()).expect("every row documented")).expect("json")
    }

    #[test]
    fn a_row_whose_upstream_gave_no_description_is_named() {
        let Err(missing) = openapi(&Descriptions::default()) else {
            panic!("a document without the upstreams' descriptions");
        };
        assert!(!missing.pattern.is_empty(), "{missing}");
    }

    #[test]
    fn every_row_of_the_route_table_is_described_with_the_gateway_answers() {
        let doc = doc();
        for row in table_rows() {
            let item = &doc["paths"][row.pattern];
            assert!(item.is_object(), "{} missing", row.pattern);
            for (_, name) in METHODS {
                if !row.methods.covers(name) {
                    continue;
                }
                let Some(operation) = item.get(name.to_lowercase()) else {
                    continue;
                };
                let responses = &operation["responses"];
                assert!(responses["429"].is_object(), "{name} {}", row.pattern);
                assert!(responses["503"].is_object(), "{name} {}", row.pattern);
                if row.guard != Guard::Open {
                    assert!(responses["401"].is_object(), "{name} {}", row.pattern);
                    assert_eq!(operation["security"][0]["bearer"], serde_json::json!([]));
                }
                if row.guard == Guard::Admin {
                    assert!(responses["403"].is_object(), "{name} {}", row.pattern);
                }
            }
        }
        assert_eq!(
            doc["paths"]["/login"]["post"]["security"][0]["basic"],
            serde_json::json!([])
        );
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        assert!(doc["components"]["schemas"]["Problem"].is_object());
    }

    #[test]
    fn formats_and_limits_are_the_servers() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["SignupRequest"]["properties"]["email"]["format"],
            "email"
        );
        assert_eq!(
            schemas["SignupRequest"]["properties"]["password"]["maxLength"],
            256
        );
        assert_eq!(
            schemas["NewPost"]["properties"]["title"]["maxLength"],
            10_000
        );
        assert_eq!(schemas["Job"]["properties"]["job_id"]["format"], "uuid");
        let upload = &doc["paths"]["/upload"]["post"]["requestBody"];
        assert!(upload["content"]["multipart/form-data"].is_object());
        assert!(
            upload["description"]
                .as_str()
                .is_some_and(|d| d.contains("FLOTILLA_MAX_UPLOAD_BYTES"))
        );
    }

    /// Every (method, path) of the description.
    fn described() -> std::collections::BTreeSet<(String, String)> {
        let doc = doc();
        let mut described = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("item").keys() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    described.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        described
    }

    #[test]
    fn docs_api_md_lists_every_route_of_the_description() {
        let text = include_str!("../../../docs/API.md");
        let table = text
            .split("<!-- routes:begin")
            .nth(1)
            .and_then(|rest| rest.split("<!-- routes:end -->").next())
            .expect("docs/API.md has the route list between its markers");
        let code = |cell: Option<&&str>| {
            cell.and_then(|c| c.strip_prefix('`'))
                .and_then(|c| c.strip_suffix('`'))
                .map(str::to_owned)
        };
        let listed: std::collections::BTreeSet<(String, String)> = table
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                Some((code(cells.get(1))?, code(cells.get(2))?))
            })
            .collect();
        assert_eq!(
            listed,
            described(),
            "docs/API.md §2 and /openapi.json list different routes"
        );
    }

    /// The other direction of the table check: every described route is one the
    /// gateway's router serves (not its fallback, not 405), with the router built by
    /// `build` itself.
    #[tokio::test]
    async fn every_described_route_is_served_by_the_gateway() {
        use tower::ServiceExt as _;
        let app = crate::build(crate::Upstreams::new(), &crate::Args::default());
        let router = app.into_router(tokio_util::sync::CancellationToken::new());
        for (method, path) in described() {
            let uri = path.replace("{id}", "x").replace("{file}", "x");
            let request = axum::extract::Request::builder()
                .method(method.as_str())
                .uri(&uri)
                .body(Body::empty())
                .expect("request");
            let response = router.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            // An event stream never ends: its answer is enough.
            if response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
            {
                assert!(status.is_success(), "{method} {path}: {status}");
                continue;
            }
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            let body = String::from_utf8_lossy(&body);
            assert_ne!(
                status,
                http::StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert!(!body.contains("no such route"), "{method} {path}: {body}");
        }
    }

    #[test]
    fn swagger_ui_calls_no_validator() {
        let Ok(Some(file)) = utoipa_swagger_ui::serve("swagger-initializer.js", swagger_config())
        else {
            panic!("the initializer is vendored");
        };
        let text = String::from_utf8_lossy(&file.bytes);
        assert!(text.contains("\"validatorUrl\": \"none\""), "{text}");
        assert!(text.contains(OPENAPI_PATH));
        assert!(!text.contains("https://"), "{text}");
    }
}
