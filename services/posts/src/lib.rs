//! Blog posts: the write side of the course's posts service. `POST /posts/create` (and
//! `POST /posts`) stores a post and its `PostCreated` event in one transaction (the
//! outbox); a relay publishes the event on the bus. `GET /posts` lists what this service
//! wrote (`{"<id>": {"id", "title"}}`), with optional `?limit=&after=` paging; the
//! gateway sends the client's `GET /posts` to the query service instead, whose view
//! also has the comments. `POST /events` accepts the course's pushed events and ignores
//! them: this service reacts to no event.

mod store;

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    extract::{FromRef, State},
    http::StatusCode,
};
use contracts::blog::NewPost;
use platform::{
    Problem, ServiceApp, ServiceContext,
    extract::{JsonBody, Query},
    problem::PROBLEM_JSON,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use store::{Post, PostError, PostStore};

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "posts-args")]
pub struct Args {}

pub const NAME: &str = "posts";

/// Builds the service; `flotilla up`, `flotilla serve posts` and tests all call this.
pub async fn build(context: &ServiceContext, _args: &Args) -> anyhow::Result<ServiceApp> {
    let db = backbone::database(context, NAME).await?;
    db.migrate(NAME, store::MIGRATIONS).await?;
    let (_, publisher) = backbone::outbox(context, NAME, &db).await?;
    let store = PostStore::new(db.clone(), publisher);
    let readiness = backbone::readiness(&db);
    let (routes, _) = api().with_state(store).split_for_parts();
    Ok(ServiceApp::new(NAME, routes).with_readiness(readiness))
}

/// The routes with their descriptions (one source for the router and the OpenAPI).
/// `POST /posts` is `POST /posts/create` under the course's other name.
fn api() -> OpenApiRouter<PostStore> {
    OpenApiRouter::new()
        .routes(routes!(list_posts, create_post_at_posts))
        .routes(routes!(create_post))
        .merge(backbone::push_route())
}

/// The OpenAPI description of the service's routes, from the handlers themselves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// What creating a post answers, at either of its paths (for the OpenAPI description).
#[derive(utoipa::IntoResponses)]
#[expect(dead_code, reason = "describes the answers; the handler builds them")]
enum PostCreation {
    #[response(status = 201, description = "The post")]
    Created(Post),
    #[response(
        status = 400,
        description = "Not JSON, or a title that is missing, not a string, over 10,000 characters, without a visible character or with a control character",
        content_type = PROBLEM_JSON
    )]
    BadTitle(Problem),
    #[response(status = 413, description = "The body is larger than 1 MiB", content_type = PROBLEM_JSON)]
    TooLarge(Problem),
}

/// Create a post (the course's name for it). Its `PostCreated` event goes out on the bus.
#[utoipa::path(
    post, path = "/posts/create", tag = "blog",
    request_body = NewPost,
    responses(PostCreation)
)]
async fn create_post(
    State(store): State<PostStore>,
    JsonBody(new): JsonBody<NewPost>,
) -> Result<(StatusCode, Json<Post>), Problem> {
    let post = store.create(new.title).await?;
    Ok((StatusCode::CREATED, Json(post)))
}

/// Create a post: `POST /posts/create` under the path the course's client also uses.
#[utoipa::path(
    post, path = "/posts", tag = "blog",
    request_body = NewPost,
    responses(PostCreation)
)]
async fn create_post_at_posts(
    state: State<PostStore>,
    new: JsonBody<NewPost>,
) -> Result<(StatusCode, Json<Post>), Problem> {
    create_post(state, new).await
}

/// `?limit=N&after=ID`: at most N posts created after post ID. Both optional; without
/// them the whole map, as the course's client expects.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// At most this many posts.
    #[param(minimum = 0)]
    limit: Option<u32>,
    /// Only posts created after this one.
    after: Option<String>,
}

/// The posts this service wrote, by id (the gateway's `GET /posts` is the query
/// service's view, with comments).
#[utoipa::path(
    get, path = "/posts", tag = "blog",
    params(Page),
    responses(
        (status = 200, description = "Posts by id", body = BTreeMap<String, Post>),
        (status = 400, description = "A `limit` that is not a number", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_posts(
    State(store): State<PostStore>,
    Query(page): Query<Page>,
) -> Result<Json<BTreeMap<String, Post>>, Problem> {
    let posts = store.list(page.after.as_deref(), page.limit).await?;
    Ok(Json(
        posts
            .into_iter()
            .map(|post| (post.id.clone(), post))
            .collect(),
    ))
}

/// This service reacts to no event: a push is taken and ignored.
impl FromRef<PostStore> for Arc<dyn bus::PushTarget> {
    fn from_ref(_: &PostStore) -> Self {
        Arc::new(bus::IgnorePushes)
    }
}

/// The one place a failure of this service becomes an answer: input was refused by the
/// extractors already, so what is left is the store or the outbox failing.
impl From<PostError> for Problem {
    fn from(error: PostError) -> Self {
        Problem::internal(&error)
    }
}
