//! The public API description: `GET /openapi.json` (OpenAPI 3.1) and `GET /docs`
//! (Swagger UI, vendored into the binary: no CDN, works offline).
//!
//! The gateway is the one origin, so it describes the routes clients call. The
//! functions below are never called; they carry the `utoipa` description of each route
//! that the services implement.

#![allow(dead_code)]

use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};
use utoipa_swagger_ui::SwaggerUi;

/// `/openapi.json` and `/docs`.
pub(crate) fn routes() -> Router {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Flotilla",
        description = "The public API of Flotilla, served by the gateway. Errors are RFC 9457 `application/problem+json`."
    ),
    paths(signup, login, validate, jwks, crate::live::doc::live_blog, crate::live::doc::live_jobs),
    components(schemas(Credentials, Account, Claims, Problem, JwkSet, Jwk)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "auth", description = "Accounts and access tokens"),
        (name = "live", description = "Server-Sent Events for the web app: blog changes and a user's jobs"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
    }
}

/// A signup request.
#[derive(Serialize, Deserialize, ToSchema)]
struct Credentials {
    #[schema(example = "ada@example.com")]
    email: String,
    /// At least 8 characters.
    #[schema(example = "correct horse battery staple", min_length = 8)]
    password: String,
}

/// An account.
#[derive(Serialize, Deserialize, ToSchema)]
struct Account {
    /// The user id (the `sub` of their tokens).
    id: String,
    /// Lower-cased.
    email: String,
}

/// The claims of an access token.
#[derive(Serialize, Deserialize, ToSchema)]
struct Claims {
    /// User id.
    sub: String,
    /// The user's email.
    username: String,
    admin: bool,
    /// Issued at (Unix seconds).
    iat: i64,
    /// Expires at (Unix seconds).
    exp: i64,
    #[schema(example = "flotilla-auth")]
    iss: String,
}

/// RFC 9457 problem details.
#[derive(Serialize, Deserialize, ToSchema)]
struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    request_id: Option<String>,
}

/// A JSON Web Key Set (RFC 7517).
#[derive(Serialize, Deserialize, ToSchema)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// An Ed25519 public key (RFC 8037).
#[derive(Serialize, Deserialize, ToSchema)]
struct Jwk {
    #[schema(example = "OKP")]
    kty: String,
    #[schema(example = "Ed25519")]
    crv: String,
    /// The public key, base64url.
    x: String,
    /// RFC 7638 thumbprint; tokens name their key with it in the `kid` header.
    kid: String,
    #[schema(example = "EdDSA")]
    alg: String,
    #[serde(rename = "use")]
    #[schema(example = "sig")]
    key_use: String,
}

/// Create an account.
#[utoipa::path(
    post, path = "/signup", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 201, description = "Account created", body = Account),
        (status = 400, description = "Invalid email, password shorter than 8 characters, or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An account with this email exists", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this address; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
fn signup() {}

/// Log in with HTTP Basic credentials; the answer is the access token as plain text.
#[utoipa::path(
    post, path = "/login", tag = "auth",
    security(("basic" = [])),
    responses(
        (status = 200, description = "The access token (an EdDSA JWT, valid 24 h by default)", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing credentials, or wrong email or password (one answer for both)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts for this account or from this address; see Retry-After", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
fn login() {}

/// Check a token online and read its claims. (The gateway and services check tokens
/// locally with the JWKS; this is for clients and tools.)
#[utoipa::path(
    post, path = "/validate", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The token is valid", body = Claims),
        (status = 401, description = "No Bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is invalid or expired", body = Problem, content_type = "application/problem+json"),
    )
)]
fn validate() {}

/// The public keys that verify access tokens.
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "The key set", body = JwkSet))
)]
fn jwks() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_names_every_auth_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        for path in [
            "/signup",
            "/login",
            "/validate",
            "/.well-known/jwks.json",
            "/live/blog",
            "/live/jobs",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert_eq!(
            doc["paths"]["/login"]["post"]["responses"]["429"]["description"]
                .as_str()
                .map(|d| d.contains("Retry-After")),
            Some(true)
        );
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
