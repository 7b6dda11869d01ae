//! An upstream reached over HTTP (`flotilla serve gateway`): the request is forwarded
//! with its body streaming through, hop-by-hop headers removed and `X-Forwarded-*` set.

use std::{convert::Infallible, net::SocketAddr, task::Poll};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    response::{IntoResponse, Response},
};
use futures::future::BoxFuture;
use http::{HeaderName, HeaderValue, Uri, header, uri::PathAndQuery};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use platform::Problem;

/// The base URL of an upstream, `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl(Uri);

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

pub fn parse_upstream_url(value: &str) -> Result<UpstreamUrl, String> {
    let uri: Uri = value
        .parse()
        .map_err(|_| "expected a URL such as http://auth:8080".to_owned())?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(UpstreamUrl(uri)),
        (Some(other), Some(_)) => Err(format!(
            "scheme '{other}' is not supported for upstreams; use http://"
        )),
        _ => Err("expected a URL with scheme and host, such as http://auth:8080".to_owned()),
    }
}

/// Headers that belong to one connection and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

#[derive(Clone)]
pub struct HttpUpstream {
    name: &'static str,
    base: UpstreamUrl,
    client: Client<HttpConnector, Body>,
}

impl HttpUpstream {
    pub fn new(name: &'static str, base: UpstreamUrl) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { name, base, client }
    }

    fn target(&self, original: &Uri) -> Result<Uri, http::Error> {
        let base_path = self.base.0.path().trim_end_matches('/');
        let path_and_query = original
            .path_and_query()
            .map(PathAndQuery::as_str)
            .unwrap_or("/");
        let mut parts = self.base.0.clone().into_parts();
        parts.path_and_query = Some(
            format!("{base_path}{path_and_query}")
                .parse()
                .map_err(http::Error::from)?,
        );
        Uri::from_parts(parts).map_err(http::Error::from)
    }
}

impl tower::Service<Request> for HttpUpstream {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let target = match this.target(request.uri()) {
                Ok(uri) => uri,
                Err(error) => {
                    return Ok(
                        Problem::bad_request(format!("cannot forward this URI: {error}"))
                            .into_response(),
                    );
                }
            };
            *request.uri_mut() = target;
            prepare_forwarded_headers(&mut request);
            match this.client.request(request).await {
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Ok(Response::from_parts(parts, Body::new(body)))
                }
                Err(error) => {
                    tracing::warn!(upstream = this.name, %error, "upstream request failed");
                    Ok(Problem::new(
                        http::StatusCode::BAD_GATEWAY,
                        format!("the {} service could not be reached", this.name),
                    )
                    .into_response())
                }
            }
        })
    }
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn prepare_forwarded_headers(request: &mut Request) {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string());
    let host = request.headers().get(header::HOST).cloned();
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    if let Some(client) = client {
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(previous) => format!("{previous}, {client}"),
            None => client,
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert("x-forwarded-for", value);
        }
    }
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_are_checked() {
        assert!(parse_upstream_url("http://auth:8080").is_ok());
        assert!(parse_upstream_url("https://auth:8080").is_err());
        assert!(parse_upstream_url("auth:8080").is_err());
        assert!(parse_upstream_url("not a url").is_err());
    }

    #[test]
    fn target_keeps_path_and_query_under_the_base() {
        let upstream = HttpUpstream::new(
            "media",
            parse_upstream_url("http://media:8080/base/").expect("valid"),
        );
        let target = upstream
            .target(&"/download?fid=abc".parse().expect("valid"))
            .expect("forwardable");
        assert_eq!(
            target.to_string(),
            "http://media:8080/base/download?fid=abc"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::AUTHORIZATION));
    }
}
