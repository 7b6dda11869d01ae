//! `flotilla bus dlq list|replay`: an operator's view of the message bus's dead letters.

use std::path::PathBuf;

use bus::{BusOptions, DeadLetter};

/// Operate the message bus.
#[derive(Debug, clap::Args)]
pub struct BusOperatorArgs {
    /// `amqp://user:pw@host:5672/%2f` for RabbitMQ; unset → the embedded bus,
    /// `sqlite://<data>/bus.db`.
    #[arg(long, env = "FLOTILLA_BUS_URL", hide_env_values = true, global = true)]
    pub bus_url: Option<String>,
    /// Where the embedded bus lives (`<data>/bus.db`) when no bus URL is set.
    #[arg(
        long,
        env = "FLOTILLA_DATA_DIR",
        default_value = "./flotilla-data",
        global = true
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: BusCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BusCommand {
    /// Dead letters: messages that failed every attempt or could not be handled.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Publish one message by hand, as a service would (to try a consumer, or to see what
    /// a message it cannot handle becomes: a dead letter). Prints the message id.
    Publish {
        /// Its routing key, e.g. `video` (the converters' queue) or `mp3`.
        routing_key: String,
        /// Its body, as it is (services publish JSON).
        body: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// Only this consumer group (required with RabbitMQ: its parking queue `GROUP.dead`).
        #[arg(long)]
        group: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in their group's queue, with a fresh attempt count.
    Replay {
        /// The consumer group the dead letters belong to (required with RabbitMQ).
        #[arg(long)]
        group: Option<String>,
        /// Message ids to replay.
        ids: Vec<String>,
        /// Replay every dead letter (of `--group`, or of every group on the embedded bus).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

pub async fn run(args: BusOperatorArgs) -> anyhow::Result<()> {
    let url = args
        .bus_url
        .clone()
        .unwrap_or_else(|| bus::default_url(&args.data_dir));
    if url.starts_with("sqlite") && !args.data_dir.join("bus.db").exists() && args.bus_url.is_none()
    {
        anyhow::bail!(
            "no embedded bus at {} (set --data-dir or FLOTILLA_BUS_URL)",
            args.data_dir.join("bus.db").display()
        );
    }
    let bus = bus::connect(&url, BusOptions::default()).await?;
    let outcome = match args.command {
        BusCommand::Publish { routing_key, body } => {
            let message = bus::Message::new(routing_key, body.into_bytes());
            let id = message.id.clone();
            bus.publish(message).await?;
            println!("{id}");
            Ok(())
        }
        BusCommand::Dlq(DlqCommand::List { group, limit, json }) => {
            let letters = bus.dead_letters(group.as_deref(), limit).await?;
            print_letters(&letters, json)
        }
        BusCommand::Dlq(DlqCommand::Replay { group, ids, all }) => {
            if ids.is_empty() && !all {
                anyhow::bail!("name the message ids to replay, or pass --all");
            }
            let replayed = bus.replay_dead_letters(group.as_deref(), &ids).await?;
            println!("replayed {replayed} dead letter(s)");
            if !ids.is_empty() && replayed < ids.len() as u64 {
                anyhow::bail!(
                    "{} of the given ids were not dead letters{}",
                    ids.len() as u64 - replayed,
                    group.map(|g| format!(" of group {g}")).unwrap_or_default()
                );
            }
            Ok(())
        }
    };
    bus.close().await;
    outcome
}

fn print_letters(letters: &[DeadLetter], json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        for letter in letters {
            writeln!(out, "{}", serde_json::to_string(letter)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<38} {:<16} {:<16} {:>8}  REASON",
        "ID", "GROUP", "ROUTING KEY", "ATTEMPTS"
    )?;
    for letter in letters {
        writeln!(
            out,
            "{:<38} {:<16} {:<16} {:>8}  {}",
            letter.id, letter.group, letter.routing_key, letter.attempts, letter.reason
        )?;
    }
    writeln!(out, "{} dead letter(s)", letters.len())?;
    Ok(())
}
