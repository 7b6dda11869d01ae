//! The HTTP face of the media service: upload, jobs, download. Every route needs a
//! caller ([`identity::Caller`]); a job and its MP3 are visible to their owner and to
//! admins only — to anyone else they do not exist (404, not 403, so ids cannot be
//! probed).

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt as _;

use axum::{
    Json, Router,
    body::Body,
    extract::{DefaultBodyLimit, Path, Query, State},
    middleware,
    response::{IntoResponse, Response},
};
use contracts::media::{VIDEO, VideoMessage};
use http::{HeaderMap, header};
use identity::Caller;
use platform::{Problem, problem::PROBLEM_JSON};
use serde::Serialize;
use storage::blob::BlobStore;
use utoipa::ToSchema;
use utoipa_axum::{
    router::{OpenApiRouter, UtoipaMethodRouter},
    routes,
};

use crate::{
    download,
    jobs::{Job, JobStore, NewJob},
    upload,
};

/// Time to response headers for every route but the upload.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The upload answers once the whole file is stored; the gateway allows as long.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Jobs listed by one `GET /jobs`: the default and the largest `limit`. A longer
/// listing is paged (`?before=JOB_ID`, `Link: rel="next"`).
const MAX_LISTED_JOBS: u32 = 500;

/// What the handlers share.
#[derive(Clone)]
pub struct MediaState {
    pub jobs: JobStore,
    pub blobs: BlobStore,
    /// The `video` message is enqueued with the job row and goes out after the commit.
    pub publisher: bus::OutboxPublisher,
    pub max_upload_bytes: u64,
    /// Jobs that changed in this instance, for `GET /jobs/stream`.
    pub changes: crate::events::Changes,
    /// Ends the live streams when the service stops (they would hold the drain).
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Job changes a live stream may fall behind by before it is sent `resync`.
pub const LIVE_BUFFER: usize = 256;
/// A comment line on an idle live stream, so proxies and the gateway see it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A job as a listing shows it: with its owner's email for an admin.
#[derive(Debug, Serialize, ToSchema)]
struct JobView<'a> {
    #[serde(flatten)]
    #[schema(value_type = Job)]
    job: &'a Job,
    /// The owner's email (shown to admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Email)]
    owner: Option<&'a str>,
}

impl<'a> JobView<'a> {
    fn for_caller(caller: &Caller, job: &'a Job) -> Self {
        Self {
            job,
            owner: caller.admin.then_some(job.owner_email.as_str()),
        }
    }
}

pub fn router(state: Arc<MediaState>) -> Router {
    let (router, _) = api().with_state(state).split_for_parts();
    router
}

/// The routes with their descriptions (one source for the router and the OpenAPI).
fn api() -> OpenApiRouter<Arc<MediaState>> {
    let limited = |timeout: Duration| {
        middleware::from_fn_with_state(timeout, platform::http::enforce_timeout)
    };
    let within = |(schemas, paths, methods): UtoipaMethodRouter<Arc<MediaState>>,
                  timeout: Duration| {
        (schemas, paths, methods.layer(limited(timeout)))
    };
    let (schemas, paths, upload) = routes!(upload_video);
    // The platform's 1 MiB default is for JSON; an upload is bounded by
    // `max_upload_bytes`, counted while it streams (upload.rs).
    let upload = (schemas, paths, upload.layer(DefaultBodyLimit::disable()));
    OpenApiRouter::new()
        .routes(within(upload, UPLOAD_TIMEOUT))
        .routes(within(routes!(list_jobs), DEFAULT_TIMEOUT))
        .routes(within(routes!(get_job), DEFAULT_TIMEOUT))
        .routes(within(routes!(stream_jobs), DEFAULT_TIMEOUT))
        .routes(within(routes!(download_mp3), DEFAULT_TIMEOUT))
}

/// The OpenAPI description of media's routes, from the handlers themselves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// The job an upload created (with `Accept: application/json`).
#[derive(Debug, Serialize, ToSchema)]
struct Uploaded {
    #[schema(format = Uuid)]
    job_id: String,
    video_fid: String,
    /// Where to follow the job: `/jobs/{job_id}`.
    status_url: String,
}

/// The form of an upload: exactly one file part (its field name is free) and, beside it,
/// optional text fields (read and dropped, at most 64 KiB each) whose names hold no
/// control character, quote or backslash (they could not be framed in a part header).
struct UploadForm;

impl utoipa::PartialSchema for UploadForm {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::{
            ObjectBuilder, Type,
            extensions::Extensions,
            schema::{AdditionalProperties, KnownFormat, SchemaFormat},
        };
        // utoipa's builder has no `propertyNames`; its extensions are a flattened map.
        let mut names = Extensions::default();
        names.insert(
            "propertyNames".to_owned(),
            serde_json::json!({"pattern": "^[^\\u0000-\\u001F\\u007F\"\\\\]*$"}),
        );
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "file",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
                    // An empty file is refused (400).
                    .min_length(Some(1))
                    .description(Some(
                        "The video (or any audio/video file ffmpeg reads). The whole request \
                         body counts against the upload limit: `FLOTILLA_MAX_UPLOAD_BYTES`, \
                         2 GiB by default.",
                    )),
            )
            .required("file")
            // Text fields of any content (a form has no types: `12` and `"12"` are one
            // field), read and dropped, at most 64 KiB each.
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .extensions(Some(names))
            .into()
    }
}

impl ToSchema for UploadForm {}

/// The refusal every media route gives a caller without a valid token (for the OpenAPI
/// description; the `Caller` extractor answers it).
#[derive(utoipa::IntoResponses)]
#[expect(dead_code, reason = "describes the answer; the extractor builds it")]
enum Unauthenticated {
    #[response(status = 401, description = "No valid Bearer token", content_type = PROBLEM_JSON)]
    Refused(Problem),
}

/// Upload a video to convert to MP3. The answer comes once the whole file is stored;
/// the job then goes `queued → converting → done | failed` (`GET /jobs/{id}`) and the
/// uploader gets an email when it ends.
#[utoipa::path(
    post, path = "/upload", tag = "media",
    security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data",
        description = "One file part. The whole body may be at most `FLOTILLA_MAX_UPLOAD_BYTES` (2 GiB by default); a larger `Content-Length` is refused before anything is read."),
    responses(
        (status = 200, description = "Stored and queued: the job as JSON when `Accept` names `application/json`, otherwise the reference system's `success!`",
            content((Uploaded = "application/json"), (String = "text/plain"))),
        (status = 400, description = "Not multipart/form-data, no file part or more than one, an empty file, a text field over 64 KiB, or malformed framing", body = Problem, content_type = "application/problem+json"),
        Unauthenticated,
        (status = 408, description = "The body arrived too slowly", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than the upload limit (the problem's `limit_bytes` says it)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn upload_video(
    State(state): State<Arc<MediaState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    upload::check_announced_length(&headers, state.max_upload_bytes)?;
    let boundary = upload::boundary(&headers)?;
    let job_id = uuid::Uuid::now_v7().to_string();
    let video_fid = format!("video-{job_id}");
    let file = upload::store_single_file(
        body,
        boundary,
        &state.blobs,
        &video_fid,
        state.max_upload_bytes,
    )
    .await?;

    let message = VideoMessage {
        video_fid: video_fid.clone(),
        mp3_fid: None,
        username: caller.username.clone(),
        job_id: job_id.clone(),
        filename: Some(file.filename.clone()),
    };
    let recorded = record_job(&state, &caller, &job_id, &video_fid, &file, &message).await;
    if let Err(error) = recorded {
        // The job does not exist, so neither should its video.
        if let Err(cleanup) = state.blobs.delete(&video_fid).await {
            tracing::warn!(error = %cleanup, %video_fid, "could not delete an orphaned upload");
        }
        return Err(Problem::internal(&error));
    }
    tracing::info!(%job_id, %video_fid, bytes = file.size, "video uploaded");
    crate::events::announce(&state.jobs, &state.changes, &job_id).await;
    metrics::counter!("media_uploads_total").increment(1);
    metrics::counter!("media_upload_bytes_total").increment(file.size);

    if accepts_json(&headers) {
        let status_url = format!("/jobs/{job_id}");
        Ok(Json(Uploaded {
            job_id,
            video_fid,
            status_url,
        })
        .into_response())
    } else {
        // The reference client expects exactly this body.
        Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "success!",
        )
            .into_response())
    }
}

/// The job row and its `video` message in one transaction: either both exist or
/// neither does, so no job waits for a message that was never sent.
async fn record_job(
    state: &MediaState,
    caller: &Caller,
    job_id: &str,
    video_fid: &str,
    file: &upload::StoredFile,
    message: &VideoMessage,
) -> anyhow::Result<()> {
    let message = bus::Message::json(VIDEO, message)?;
    let mut tx = state.jobs.database().begin().await?;
    let job = NewJob {
        job_id,
        owner_id: &caller.user_id,
        owner_email: &caller.username,
        video_fid,
        filename: &file.filename,
        size_bytes: i64::try_from(file.size)?,
    };
    state.jobs.insert(&mut tx, &job).await?;
    state.publisher.enqueue(&mut tx, message).await?;
    tx.commit().await?;
    state.publisher.committed();
    Ok(())
}

fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/json"))
}

/// `?limit=N&before=JOB_ID`: at most N jobs, older than job JOB_ID; `all=true`: every
/// user's jobs, with their owner (admins only, 403 for anyone else).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct JobsPage {
    /// At most this many jobs (1 to 500; 500 by default).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Only jobs older than this one of yours (the `Link: rel="next"` of a page).
    before: Option<String>,
    /// Every user's jobs, each with its `owner` (admins only; 403 for anyone else).
    #[serde(default)]
    all: bool,
}

/// The caller's jobs, newest first, in pages (`Link: rel="next"` when there may be more).
#[utoipa::path(
    get, path = "/jobs", tag = "media",
    security(("bearer" = [])),
    params(JobsPage),
    responses(
        (status = 200, description = "The jobs", body = Vec<JobView>,
            headers(("Link" = String, description = "`</jobs?limit=N&before=ID>; rel=\"next\"` when the page is full"))),
        (status = 400, description = "`limit` outside 1 to 500", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`all=true` from someone who is not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`before` is not one of your jobs (or of anyone's, with `all=true`)", body = Problem, content_type = "application/problem+json"),
        Unauthenticated,
    )
)]
async fn list_jobs(
    State(state): State<Arc<MediaState>>,
    caller: Caller,
    page: Result<Query<JobsPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(page) = page.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = page.limit.unwrap_or(MAX_LISTED_JOBS);
    if !(1..=MAX_LISTED_JOBS).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "'limit' must be 1 to {MAX_LISTED_JOBS}"
        )));
    }
    if page.all && !caller.admin {
        return Err(Problem::forbidden(
            "'all=true' lists every user's jobs and is for admins",
        ));
    }
    let before = match page.before.as_deref() {
        None => None,
        Some(id) => match state.jobs.get(id).await {
            Ok(Some(job)) if page.all || job.owner_id == caller.user_id => Some(job),
            // Not found, as any job of someone else's is (ids cannot be probed).
            Ok(_) => return Err(Problem::not_found(format!("no job {id} among yours"))),
            Err(error) => return Err(Problem::internal(&error)),
        },
    };
    let jobs = if page.all {
        state.jobs.list_all(i64::from(limit), before.as_ref()).await
    } else {
        state
            .jobs
            .list_for_owner(&caller.user_id, i64::from(limit), before.as_ref())
            .await
    }
    .map_err(|error| Problem::internal(&error))?;
    let next = (jobs.len() == limit as usize)
        .then(|| jobs.last().map(|job| job.job_id.clone()))
        .flatten();
    let views: Vec<JobView<'_>> = jobs
        .iter()
        .map(|job| JobView::for_caller(&caller, job))
        .collect();
    let mut response = Json(views).into_response();
    let all = if page.all { "&all=true" } else { "" };
    if let Some(next) = next
        && let Ok(link) = http::HeaderValue::from_str(&format!(
            "</jobs?limit={limit}&before={next}{all}>; rel=\"next\""
        ))
    {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// One job: its status, and its MP3's file id once done.
#[utoipa::path(
    get, path = "/jobs/{id}", tag = "media",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job id (from the upload's answer)")),
    responses(
        (status = 200, description = "The job", body = Job),
        Unauthenticated,
        (status = 404, description = "No such job, or not yours (the two are one answer)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_job(
    State(state): State<Arc<MediaState>>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Json<Job>, Problem> {
    let job = state
        .jobs
        .get(&job_id)
        .await
        .map_err(|error| Problem::internal(&error))?
        .filter(|job| may_see(&caller, job))
        .ok_or_else(|| Problem::not_found(format!("no job {job_id}")))?;
    Ok(Json(job))
}

/// The MP3 of a finished job; `Range` requests are served (206).
#[utoipa::path(
    get, path = "/download", tag = "media",
    security(("bearer" = [])),
    params(
        ("fid" = String, Query, min_length = 1, description = "The MP3's file id (a job's `mp3_fid`)"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
    ),
    responses(
        (status = 200, description = "The whole MP3", body = Vec<u8>, content_type = "audio/mpeg"),
        (status = 206, description = "The requested range", body = Vec<u8>, content_type = "audio/mpeg"),
        (status = 400, description = "No `fid`, or an empty one", body = Problem, content_type = "application/problem+json"),
        Unauthenticated,
        (status = 404, description = "No such file, or not yours", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range is outside the file; `Content-Range: bytes */SIZE`"),
    )
)]
async fn download_mp3(
    State(state): State<Arc<MediaState>>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    // Any other non-empty text is looked up (and is then not found).
    let fid = query
        .get("fid")
        .map(String::as_str)
        .filter(|fid| !fid.is_empty())
        .ok_or_else(|| Problem::bad_request("missing query parameter fid"))?;
    let job = state
        .jobs
        .find_by_mp3(fid)
        .await
        .map_err(|error| Problem::internal(&error))?
        .filter(|job| may_see(&caller, job))
        .ok_or_else(|| Problem::not_found(format!("no file {fid}")))?;
    metrics::counter!("media_downloads_total").increment(1);
    let fid = job.mp3_fid.as_deref().unwrap_or(fid);
    let mut response = download::respond(&state.blobs, fid, &headers).await?;
    if response.status().is_success()
        && let Ok(value) = http::HeaderValue::from_str(&download::attachment(&job.filename))
    {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `GET /jobs/stream`: Server-Sent Events, one `job` event (the job as `GET /jobs/{id}`
/// shows it) each time one of the caller's jobs — every job, for an admin — changes
/// status in this instance, `resync` when the stream fell more than [`LIVE_BUFFER`]
/// changes behind (the client then lists its jobs again), a comment every 15 s. The
/// gateway serves it as `GET /live/jobs` and caps how many are open.
#[utoipa::path(
    get, path = "/jobs/stream", tag = "media",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An endless event stream", body = String, content_type = "text/event-stream"),
        Unauthenticated,
    )
)]
async fn stream_jobs(State(state): State<Arc<MediaState>>, caller: Caller) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let receiver = state.changes.subscribe();
    let shutdown = state.shutdown.clone();
    let events = futures::stream::unfold(receiver, move |mut receiver| {
        let caller = caller.clone();
        async move {
            loop {
                let event = match receiver.recv().await {
                    Ok(job) if may_see(&caller, &job) => Event::default()
                        .event("job")
                        .json_data(JobView::for_caller(&caller, &job)),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => Ok(Event::default().event("resync").data("{}")),
                    Err(RecvError::Closed) => return None,
                };
                return Some((event, receiver));
            }
        }
    });
    let ready = futures::stream::once(async { Ok(Event::default().event("ready").data("{}")) });
    let events = ready.chain(events);
    let events = futures::StreamExt::take_until(events, async move { shutdown.cancelled().await });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn may_see(caller: &Caller, job: &Job) -> bool {
    caller.admin || caller.user_id == job.owner_id
}
