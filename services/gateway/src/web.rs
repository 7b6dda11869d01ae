//! The web UI (`GET /`): static files from `web/`, embedded in the binary at build time (native
//! ES modules, a stylesheet and an SVG favicon, no build step),
//! served with a strict Content-Security-Policy (scripts and styles from this origin
//! only, no inline code) and revalidated with ETags.

use axum::{
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use platform::Problem;
use rust_embed::RustEmbed;
use utoipa_axum::{router::OpenApiRouter, routes};

#[derive(RustEmbed)]
#[folder = "../../web"]
struct Assets;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The web app's routes, registered with their descriptions.
pub fn routes() -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(system_map))
        .routes(routes!(favicon))
        .routes(routes!(ui_file))
}

/// The pages at fixed paths, one row each: the handler, its path, the embedded file it
/// serves, its content type and what it is. Each becomes a described `GET` route that
/// answers through [`asset`] (ETag, 304, cache and security headers).
macro_rules! pages {
    ($($handler:ident $path:tt => $file:tt, $content_type:tt, $what:tt;)*) => {$(
        #[doc = $what]
        #[utoipa::path(
            get, path = $path, tag = "web",
            params(("If-None-Match" = Option<String>, Header, description = "The ETag of a copy held")),
            responses(
                (status = 200, description = $what, body = String, content_type = $content_type),
                (status = 304, description = "The copy held is current"),
            )
        )]
        async fn $handler(headers: HeaderMap) -> Response {
            asset($file, &headers)
        }
    )*};
}

pages! {
    index "/" => "index.html", "text/html", "The web app (upload, jobs, blog) in a browser";
    system_map "/system" => "index.html", "text/html",
        "The web app's page, which shows the system map at this path (admins)";
    favicon "/favicon.ico" => "favicon.svg", "image/svg+xml",
        "The web app's icon (SVG), where browsers look for it";
}

/// A file of the web app (script, style sheet, image).
#[utoipa::path(
    get, path = "/ui/{file}", tag = "web",
    params(
        ("file" = String, Path, description = "The file's name, e.g. `app.js`"),
        ("If-None-Match" = Option<String>, Header, description = "The ETag of a copy held"),
    ),
    responses(
        (status = 200, description = "The file", body = String, content(
            ("text/html"), ("text/javascript"), ("text/css"), ("image/svg+xml"), ("application/octet-stream"))),
        (status = 304, description = "The copy held is current"),
        (status = 404, description = "No such file", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn ui_file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    asset(&file, &headers)
}

fn asset(name: &str, request_headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(name) else {
        return Problem::not_found(format!("no UI file named {name}")).into_response();
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let mut response = if request_headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        file.data.into_owned().into_response()
    };
    let headers = response.headers_mut();
    let mime = match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
