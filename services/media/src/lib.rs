//! Video uploads, conversion jobs and MP3 downloads (docs/API.md §4).
//!
//! `POST /upload` streams the one file of a multipart form into the blob store and then,
//! in one transaction, writes the job row and the `video` message into the outbox
//! ([`bus::Outbox`]); a relay publishes it for the converter workers. The service
//! consumes `converting` and `mp3` to move the job along ([`events`]), and serves the
//! finished MP3 with `GET /download?fid=` (ranges supported). Every route needs a valid
//! token: behind the in-process gateway the caller arrives already verified, reached
//! over HTTP (`flotilla serve media`) the service checks the token itself against the
//! auth service's keys (`FLOTILLA_AUTH_URL`).

pub mod download;
pub mod events;
pub mod jobs;
pub mod routes;
pub mod upload;

use std::{sync::Arc, time::Duration};

use identity::{JwksSource, SourceError, Verifier};
use platform::{ServiceApp, ServiceContext, service::HttpLimits};
use storage::{Database, blob::BlobStore};

use crate::{jobs::JobStore, routes::MediaState};

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "media-args")]
pub struct Args {
    /// Largest file accepted by `POST /upload` (bytes, or with a unit: 512MiB, 2GiB).
    #[arg(long, env = "FLOTILLA_MAX_UPLOAD_BYTES", default_value = "2GiB",
          value_parser = platform::config::parse_byte_size)]
    pub max_upload_bytes: u64,
    /// Where the auth service's public keys are fetched from when media runs on its own
    /// (`flotilla serve media`): the auth service's base URL, e.g. `http://auth:8080`.
    /// In `flotilla up` the gateway verifies tokens and this is not needed.
    #[arg(
        id = "media_auth_url",
        long = "media-auth-url",
        env = "FLOTILLA_AUTH_URL"
    )]
    pub auth_url: Option<String>,
}

platform::default_from_flags!(Args);

pub const NAME: &str = "media";

/// Builds the service; `flotilla up`, `flotilla serve media` and tests all call this.
pub async fn build(context: &ServiceContext, args: &Args) -> anyhow::Result<ServiceApp> {
    let db = Database::connect(&context.database_url_for(NAME)).await?;
    db.migrate(NAME, jobs::MIGRATIONS).await?;
    let blobs = BlobStore::from_url(&context.blob_url_or_local())?;
    tracing::info!(
        blobs = blobs.url(),
        max_upload_bytes = args.max_upload_bytes,
        "media store"
    );

    let (bus, publisher) = backbone::outbox(context, NAME, &db).await?;
    let jobs = JobStore::new(db.clone());
    // Bounded: a live stream that falls this far behind is told to resync instead.
    let (changes, _) = tokio::sync::broadcast::channel(routes::LIVE_BUFFER);
    let runner = bus::Runner::new(
        bus::Store::database(&db).await?,
        events::JobEvents {
            jobs: jobs.clone(),
            changes: changes.clone(),
        },
    );
    let consumer = Arc::new(runner).serve(bus, &context.tasks, context.shutdown.clone());

    let state = Arc::new(MediaState {
        jobs,
        blobs,
        publisher,
        max_upload_bytes: args.max_upload_bytes,
        changes,
        shutdown: context.shutdown.clone(),
    });
    let verifier = Verifier::new(jwks_source(args.auth_url.as_deref())?);
    let routes = routes::router(state).layer(verifier.layer());
    let readiness = backbone::readiness(&db).with_check("consumers", consumer.check_fn());
    let limits = HttpLimits {
        // Route-level timeouts (routes.rs) are the real limits; this is the backstop
        // for the slowest route, a large upload.
        request_timeout: Some(routes::UPLOAD_TIMEOUT + Duration::from_secs(5)),
        ..HttpLimits::default()
    };
    Ok(ServiceApp::new(NAME, routes)
        .with_readiness(readiness)
        .with_limits(limits))
}

/// The auth service's keys, from its URL; without one, only callers already verified
/// by the in-process gateway get through and a bare token is answered 503 (there is
/// nothing to check it against), never accepted.
fn jwks_source(auth_url: Option<&str>) -> anyhow::Result<JwksSource> {
    match auth_url.map(str::trim).filter(|url| !url.is_empty()) {
        Some(url) => Ok(JwksSource::via_url(url)?),
        None => Ok(JwksSource::from_fn(|| async {
            Err(SourceError(
                "media cannot verify tokens on its own: set FLOTILLA_AUTH_URL".to_owned(),
            ))
        })),
    }
}
