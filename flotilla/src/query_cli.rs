//! `flotilla query rebuild`: empty the query service's view (posts, comments, its inbox
//! and its cursor into the event log) in the database that `up` / `serve query` use with
//! the same `--data-dir` / `FLOTILLA_DATABASE_URL`, and rebuild it from the event-bus
//! service's durable log. With `--event-bus-url` (a running gateway or event-bus
//! service) the rebuild happens now; without it, the query service rebuilds the view
//! when it next starts — or within its poll interval, if it is running.

use std::path::PathBuf;

use platform::ServiceContext;
use tokio_util::sync::CancellationToken;

/// Operate the blog's read model.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    #[command(subcommand)]
    pub command: QueryCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum QueryCommand {
    /// Empty the view and rebuild it from the event log.
    Rebuild(Rebuild),
}

#[derive(Debug, clap::Args)]
pub struct Rebuild {
    /// The data directory of `up` (the view is `<data>/query.db`).
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = "./flotilla-data")]
    pub data_dir: PathBuf,
    /// The query service's database, when it is not SQLite in the data directory.
    #[arg(long, env = "FLOTILLA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where to read the log now: a running gateway (`http://127.0.0.1:8080`) or
    /// event-bus service.
    #[arg(long, env = "FLOTILLA_EVENT_BUS_URL", value_parser = flotilla::parse_upstream_url)]
    pub event_bus_url: Option<gateway::UpstreamUrl>,
}

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let QueryCommand::Rebuild(rebuild) = args.command;
    let mut context = ServiceContext::new(rebuild.data_dir, CancellationToken::new());
    context.database_url = rebuild.database_url;
    let log = rebuild.event_bus_url.and_then(|url| {
        gateway::Upstreams::new()
            .remote(event_bus::NAME, url, &gateway::Args::default().policy())
            .get(event_bus::NAME)
            .cloned()
            .map(query::EventLogClient::new)
    });
    let now = log.is_some();
    let applied = query::rebuild(&context.database_url_for(query::NAME), log).await?;
    if now {
        println!("query view rebuilt from the event log: {applied} events applied");
    } else {
        println!(
            "query view emptied; the query service rebuilds it from the event log when it starts \
             (pass --event-bus-url to rebuild now)"
        );
    }
    Ok(())
}
