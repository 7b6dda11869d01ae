//! `flotilla`: parse the command line, set up logging, run.

mod bus_cli;
mod query_cli;
mod user_cli;

use std::{io::Write, process::ExitCode, time::Duration};

use clap::{CommandFactory, Parser, Subcommand};
use flotilla::{ServeArgs, UpArgs};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Microservices, run the way production software should."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in this process on embedded defaults.
    Up(Box<UpArgs>),
    /// Run one service in this process (for containers).
    Serve(Box<ServeArgs>),
    /// Talk to a running gateway: login, upload, jobs, download.
    Client(client::ClientArgs),
    /// Operate the message bus: `bus dlq list`, `bus dlq replay`.
    Bus(bus_cli::BusOperatorArgs),
    /// Manage accounts: `user add --email E --password P [--admin]`.
    User(user_cli::UserArgs),
    /// Operate the blog's read model: `query rebuild` from the event log.
    Query(query_cli::QueryArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => match platform::config::explain_clap_error(&Cli::command(), &error) {
            Some(line) => {
                eprintln!("flotilla: {line}");
                return ExitCode::from(2);
            }
            None => error.exit(),
        },
    };
    platform::tls::install_crypto_provider();
    // The `service.name` of exported spans, unless OTEL_SERVICE_NAME names it.
    let telemetry = platform::telemetry::init(&match &cli.command {
        Command::Serve(args) => clap::ValueEnum::to_possible_value(&args.service)
            .map_or_else(|| "flotilla".to_owned(), |name| name.get_name().to_owned()),
        _ => "flotilla".to_owned(),
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("flotilla: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    runtime.shutdown_timeout(Duration::from_secs(5));
    // After the drain, so the spans of the last requests are exported too.
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "flotilla stopped on an error");
            eprintln!("flotilla: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    if !matches!(cli.command, Command::Client(_)) {
        platform::shutdown::cancel_on_signals(shutdown.clone());
    }
    let (running, what) = match cli.command {
        Command::Client(args) => return client::run(args).await,
        Command::Bus(args) => return bus_cli::run(args).await,
        Command::User(args) => return user_cli::run(args).await,
        Command::Query(args) => return query_cli::run(args).await,
        Command::Up(args) => (flotilla::up(*args, shutdown).await?, "flotilla".to_owned()),
        Command::Serve(args) => {
            let what = format!("flotilla {:?}", args.service).to_lowercase();
            // SIGTERM while a dependency is still being waited for is a clean stop.
            tokio::select! {
                running = flotilla::serve(*args, shutdown.clone()) => match running {
                    Ok(running) => (running, what),
                    Err(_) if shutdown.is_cancelled() => return Ok(()),
                    Err(error) => return Err(error),
                },
                () = shutdown.cancelled() => {
                    tracing::info!("stopped before starting");
                    return Ok(());
                }
            }
        }
    };
    if running.wait_until_ready().await? {
        let url = format!("http://{}", running.addr);
        tracing::info!(%url, data_dir = %running.data_dir.display(), "ready");
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{what} ready at {url}")?;
        stdout.flush()?;
    }
    running.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_add_parses() {
        let cli = Cli::try_parse_from([
            "flotilla",
            "user",
            "add",
            "--email",
            "a@b.co",
            "--password",
            "secret123",
            "--admin",
        ])
        .expect("valid command line");
        let Command::User(user_cli::UserArgs {
            command: user_cli::UserCommand::Add(add),
        }) = cli.command
        else {
            panic!("expected user add");
        };
        assert_eq!(add.email, "a@b.co");
        assert!(add.admin);
        assert!(Cli::try_parse_from(["flotilla", "user", "add", "--email", "a@b.co"]).is_err());
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_defaults() {
        let cli = Cli::try_parse_from([
            "flotilla",
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/x",
        ])
        .expect("valid command line");
        let Command::Up(args) = cli.command else {
            panic!("expected up");
        };
        assert_eq!(args.server.listen.port(), 0);
        assert_eq!(args.server.data_dir, std::path::PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bus_dead_letter_commands_parse() {
        for args in [
            &["flotilla", "bus", "dlq", "list"][..],
            &[
                "flotilla", "bus", "dlq", "list", "--group", "video", "--json",
            ],
            &[
                "flotilla", "bus", "dlq", "replay", "--group", "video", "--all",
            ],
            &[
                "flotilla",
                "bus",
                "dlq",
                "replay",
                "id-1",
                "id-2",
                "--data-dir",
                "/tmp/x",
            ],
        ] {
            let cli = Cli::try_parse_from(args);
            assert!(
                matches!(
                    cli,
                    Ok(Cli {
                        command: Command::Bus(_)
                    })
                ),
                "{args:?}: {cli:?}"
            );
        }
        assert!(
            Cli::try_parse_from(["flotilla", "bus", "dlq", "replay", "id-1", "--all"]).is_err()
        );
    }

    #[test]
    fn every_service_can_be_served() {
        for name in contracts::SERVICES {
            let cli = Cli::try_parse_from(["flotilla", "serve", name]);
            assert!(cli.is_ok(), "serve {name}: {cli:?}");
        }
        assert!(Cli::try_parse_from(["flotilla", "serve", "nonsense"]).is_err());
    }
}
