//! Where a [`crate::Verifier`] gets the key set: a fixed set, a tower service (the
//! gateway's in-process or remote auth upstream), or an HTTP base URL.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{body::Body, extract::Request, response::Response};
use futures::future::BoxFuture;
use http::{StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::jwk::JwkSet;
use tower::{Service, ServiceExt};

use crate::JWKS_PATH;

/// Why the key set could not be fetched.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// The largest JWKS document accepted; a real one is a few hundred bytes per key.
const MAX_JWKS_BYTES: usize = 64 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

type Fetch = Arc<dyn Fn() -> BoxFuture<'static, Result<JwkSet, SourceError>> + Send + Sync>;

/// A way to fetch the current key set.
#[derive(Clone)]
pub struct JwksSource {
    fetch: Fetch,
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwksSource")
    }
}

impl JwksSource {
    /// Any async function returning the key set.
    pub fn from_fn<F, Fut>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<JwkSet, SourceError>> + Send + 'static,
    {
        Self {
            fetch: Arc::new(move || Box::pin(fetch())),
        }
    }

    /// Always the same keys (tests; the auth service checking its own tokens).
    pub fn fixed(keys: JwkSet) -> Self {
        Self::from_fn(move || {
            let keys = keys.clone();
            async move { Ok(keys) }
        })
    }

    /// `GET /.well-known/jwks.json` through a tower service that serves the auth
    /// routes — the gateway's auth upstream, in-process or remote.
    pub fn via_service<S>(service: S) -> Self
    where
        S: Service<Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Self::from_fn(move || {
            let service = service.clone();
            async move {
                let request = jwks_request(JWKS_PATH)?;
                let response = tokio::time::timeout(FETCH_TIMEOUT, service.oneshot(request))
                    .await
                    .map_err(too_slow)?;
                let Ok(response) = response;
                read_jwks(response).await
            }
        })
    }

    /// `GET <base>/.well-known/jwks.json` over HTTP, e.g. `http://auth:8080` in a
    /// deployment where each service runs on its own.
    pub fn via_url(base: &str) -> Result<Self, SourceError> {
        let uri: Uri = format!("{}{JWKS_PATH}", base.trim_end_matches('/'))
            .parse()
            .map_err(|_| SourceError(format!("not a URL: {base}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(SourceError(format!(
                "only http:// is supported for the auth URL, got {base}"
            )));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(FETCH_TIMEOUT));
        let client: Client<HttpConnector, Body> =
            Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self::from_fn(move || {
            let client = client.clone();
            let uri = uri.clone();
            async move {
                let request = jwks_request(uri)?;
                let response = tokio::time::timeout(FETCH_TIMEOUT, client.request(request))
                    .await
                    .map_err(too_slow)?
                    .map_err(|e| SourceError(format!("the auth service is unreachable: {e}")))?;
                read_jwks(response.map(Body::new)).await
            }
        }))
    }

    pub(crate) async fn fetch(&self) -> Result<JwkSet, SourceError> {
        (self.fetch)().await
    }
}

async fn read_jwks(response: Response) -> Result<JwkSet, SourceError> {
    if response.status() != StatusCode::OK {
        return Err(SourceError(format!(
            "the auth service answered {} for {JWKS_PATH}",
            response.status()
        )));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| SourceError(format!("cannot read the key set: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| SourceError(format!("not a JWK set: {e}")))
}

/// `GET uri` asking for the key set as JSON.
fn jwks_request<U>(uri: U) -> Result<Request<Body>, SourceError>
where
    Uri: TryFrom<U>,
    <Uri as TryFrom<U>>::Error: Into<http::Error>,
{
    Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(Body::empty())
        .map_err(|e| SourceError(e.to_string()))
}

/// The error of a fetch that ran past [`FETCH_TIMEOUT`].
fn too_slow(_: tokio::time::error::Elapsed) -> SourceError {
    SourceError("the auth service did not answer in time".into())
}
