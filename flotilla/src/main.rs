//! `flotilla`: parse the command line, set up logging, run.

mod bus_cli;
mod query_cli;
mod user_cli;

use std::{io::Write, process::ExitCode, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use flotilla::{ServeArgs, UpArgs};
use tokio_util::sync::CancellationToken;

/// mimalloc rather than the C library's allocator: its thread-local free lists take the
/// lock contention and chunk coalescing out of the request and event paths, which
/// allocate from both runtime threads and SQLite's (BENCHMARKS.md, the blog's write path).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Talk to a running gateway: login, upload, jobs, download, posts.
    Client(client::ClientArgs),
    /// The system at a glance: services and instances, queues with depth and dead letters
    /// (an admin's token; `--watch` to refresh, `--json`).
    Status(client::StatusArgs),
    /// Operate the message bus: `bus dlq list`, `bus dlq replay`.
    Bus(bus_cli::BusOperatorArgs),
    /// Manage accounts: `user add --email E --password P [--admin]`.
    User(user_cli::UserArgs),
    /// Operate the blog's read model: `query rebuild` from the event log.
    Query(query_cli::QueryArgs),
    /// Print a shell completion script: `flotilla completions bash > /etc/bash_completion.d/flotilla`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `flotilla man > flotilla.1; man ./flotilla.1`.
    Man,
}

/// The command line as clap describes it, with every `[env: NAME]` shown without its
/// value: an unset variable would read `[env: NAME=]`, as if set to empty, and a set one
/// may hold a secret.
fn command() -> clap::Command {
    fn hide_env_values(command: clap::Command) -> clap::Command {
        command
            .mut_args(|arg| arg.hide_env_values(true))
            .mut_subcommands(hide_env_values)
    }
    let argv: Vec<String> = std::env::args().collect();
    narrow_serve_help(hide_env_values(Cli::command()), &argv)
}

/// `serve SERVICE --help` lists what that service reads, not every service's options
/// (they are all accepted, and ignored by the others, so one environment can serve all).
fn narrow_serve_help(command: clap::Command, argv: &[String]) -> clap::Command {
    let service = match argv {
        [_, serve, name, ..] if serve == "serve" => {
            <flotilla::ServiceName as clap::ValueEnum>::from_str(name, true).ok()
        }
        _ => None,
    };
    let Some(service) = service else {
        return command;
    };
    command.mut_subcommand("serve", |serve| {
        let keep = service.help_headings();
        let foreign: Vec<String> = serve
            .get_arguments()
            .filter(|arg| match arg.get_help_heading() {
                Some(heading) => !keep.contains(&heading),
                None => match arg.get_id().as_str() {
                    "database_url" => !service.keeps_a_database(),
                    "allow_embedded" => !service.keeps_a_store(),
                    _ => false,
                },
            })
            .map(|arg| arg.get_id().to_string())
            .collect();
        let name = <flotilla::ServiceName as clap::ValueEnum>::to_possible_value(&service)
            .map(|value| value.get_name().to_owned())
            .unwrap_or_default();
        foreign
            .iter()
            .fold(serve, |serve, id| serve.mut_arg(id, |arg| arg.hide(true)))
            .about(format!(
                "Run the {name} service in this process (for containers)."
            ))
    })
}

/// What the ready line names, and for `up` whether mail goes out by SMTP.
struct Banner {
    what: String,
    smtp: bool,
}

fn banner_lines(args: &UpArgs) -> Banner {
    Banner {
        what: "flotilla".to_owned(),
        smtp: args.services.notification.smtp_url.is_some(),
    }
}

fn main() -> ExitCode {
    let parsed = command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(error) => match platform::config::explain_clap_error(&command(), &error) {
            Some(line) => {
                eprintln!("flotilla: {line}");
                return ExitCode::from(2);
            }
            None => error.exit(),
        },
    };
    private_files();
    // Before any thread starts, so that every thread inherits it.
    let sched = match &cli.command {
        Command::Serve(args) => Some(args.server.sched_policy),
        Command::Up(args) => Some(args.server.sched_policy),
        _ => None,
    }
    .map(|policy| (policy, platform::sched::apply(policy)));
    platform::tls::install_crypto_provider();
    // The `service.name` of exported spans, unless OTEL_SERVICE_NAME names it.
    let telemetry = platform::telemetry::init(&match &cli.command {
        Command::Serve(args) => clap::ValueEnum::to_possible_value(&args.service)
            .map_or_else(|| "flotilla".to_owned(), |name| name.get_name().to_owned()),
        _ => "flotilla".to_owned(),
    });
    if let Some((policy, Err(error))) = &sched {
        tracing::warn!(?policy, %error, "FLOTILLA_SCHED_POLICY not applied; the kernel's default policy stays");
    }
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
        // Each error once, as one plain line on stderr, whether a terminal or a log
        // pipeline reads it (`kubectl logs` shows why a pod will not start): `client`
        // errors are complete sentences with an exit code of their class.
        Err(error) => {
            if let Some(failed) = error.downcast_ref::<client::CliError>() {
                eprintln!("flotilla: {failed}");
                return ExitCode::from(failed.exit_code());
            }
            eprintln!("flotilla: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every file and directory this process creates — databases, the JWT key, blobs,
/// mail, the bus, scratch files, whoever creates them (SQLite, ffmpeg, …) — is readable
/// by its owner only: 0600 files, 0700 directories. One umask covers them all, instead
/// of an explicit mode at each of the places that create files.
fn private_files() {
    #[cfg(unix)]
    let _previous = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    if !matches!(cli.command, Command::Client(_) | Command::Status(_)) {
        platform::shutdown::cancel_on_signals(shutdown.clone());
    }
    let (running, what) = match cli.command {
        Command::Client(args) => return Ok(client::run(args).await?),
        Command::Status(args) => return Ok(client::status(args).await?),
        Command::Completions { shell } => {
            let mut command = command();
            clap_complete::generate(shell, &mut command, "flotilla", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            clap_mangen::Man::new(command()).render(&mut std::io::stdout())?;
            return Ok(());
        }
        Command::Bus(args) => return bus_cli::run(args).await,
        Command::User(args) => return user_cli::run(args).await,
        Command::Query(args) => return query_cli::run(args).await,
        Command::Up(args) => {
            let banner = banner_lines(&args);
            (flotilla::up(*args, shutdown).await?, banner)
        }
        Command::Serve(args) => {
            let what = format!("flotilla {:?}", args.service).to_lowercase();
            let banner = Banner { what, smtp: true };
            // SIGTERM while a dependency is still being waited for is a clean stop.
            tokio::select! {
                running = flotilla::serve(*args, shutdown.clone()) => match running {
                    Ok(running) => (running, banner),
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
        let url = flotilla::public_url_of(running.addr);
        tracing::info!(%url, data_dir = %running.data_dir.display(), "ready");
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{} ready at {url}", what.what)?;
        stdout.flush()?;
        if what.what == "flotilla" {
            // `up`: where a person goes next. Best effort, in one write: a script that read
            // the ready line and closed the pipe must not stop the server.
            let data = std::path::absolute(&running.data_dir).unwrap_or(running.data_dir.clone());
            let mail = if what.smtp {
                "sent through FLOTILLA_SMTP_URL".to_owned()
            } else {
                data.join("mail").display().to_string()
            };
            let banner = format!(
                "  web app   {url}/\n  API docs  {url}/docs\n  metrics   {url}/metrics\n  \
                 data      {}\n  mail      {mail}\n  Ctrl-C stops it; `flotilla client --help` talks to it.\n",
                data.display()
            );
            let _ = stdout.write_all(banner.as_bytes());
            let _ = stdout.flush();
        }
        drop(stdout);
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

    /// `serve SERVICE --help` as a user sees it.
    fn serve_help(service: &str) -> String {
        let argv: Vec<String> = ["flotilla", "serve", service, "--help"]
            .map(str::to_owned)
            .to_vec();
        let mut command = narrow_serve_help(command(), &argv);
        let error = command
            .try_get_matches_from_mut(&argv)
            .expect_err("--help stops parsing");
        error.render().to_string()
    }

    #[test]
    fn serve_help_lists_only_what_the_service_reads() {
        let converter = serve_help("converter");
        assert!(
            converter.contains("Run the converter service"),
            "{converter}"
        );
        for own in [
            "FLOTILLA_CONVERTER_WORKERS",
            "FLOTILLA_BUS_URL",
            "FLOTILLA_BLOB_URL",
        ] {
            assert!(
                converter.contains(own),
                "converter help lacks {own}:\n{converter}"
            );
        }
        for foreign in [
            "FLOTILLA_SMTP_URL",
            "FLOTILLA_DATABASE_URL",
            "FLOTILLA_GATEWAY_RATE_LIMIT",
            "FLOTILLA_MAX_UPLOAD_BYTES",
        ] {
            assert!(
                !converter.contains(foreign),
                "converter help shows {foreign}:\n{converter}"
            );
        }

        let gateway = serve_help("gateway");
        for own in [
            "FLOTILLA_GATEWAY_RATE_LIMIT",
            "FLOTILLA_AUTH_URL",
            "FLOTILLA_LISTEN",
            // The registry and the system API (`/admin/system`) are on the bus.
            "FLOTILLA_BUS_URL",
            "FLOTILLA_ADVERTISE_URL",
            "FLOTILLA_TRACE_URL_TEMPLATE",
        ] {
            assert!(
                gateway.contains(own),
                "gateway help lacks {own}:\n{gateway}"
            );
        }
        for foreign in [
            "FLOTILLA_BLOB_URL",
            "FLOTILLA_DATABASE_URL",
            "FLOTILLA_SMTP_URL",
            "FLOTILLA_ALLOW_EMBEDDED",
        ] {
            assert!(
                !gateway.contains(foreign),
                "gateway help shows {foreign}:\n{gateway}"
            );
        }

        let notification = serve_help("notification");
        for own in [
            "FLOTILLA_SMTP_URL",
            "FLOTILLA_DATABASE_URL",
            "FLOTILLA_BUS_URL",
        ] {
            assert!(notification.contains(own), "notification help lacks {own}");
        }
        assert!(!notification.contains("FLOTILLA_BLOB_URL"));
        // Every option of every service has a description.
        let command = command();
        let serve = command
            .find_subcommand("serve")
            .expect("a serve subcommand");
        for arg in serve.get_arguments() {
            assert!(
                arg.get_help().is_some() || arg.get_long_help().is_some(),
                "--{} has no description",
                arg.get_long().unwrap_or_default()
            );
        }
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
