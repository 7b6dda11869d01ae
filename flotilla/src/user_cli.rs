//! `flotilla user add`: create an account in the auth database, the one `up` and
//! `serve auth` use with the same `--data-dir` / `FLOTILLA_DATABASE_URL`. Safe while the
//! system runs (SQLite waits for its lock; servers take concurrent writes).

use std::{
    io::{BufRead, IsTerminal},
    path::PathBuf,
};

use anyhow::Context;
use platform::ServiceContext;
use tokio_util::sync::CancellationToken;

/// Manage accounts.
#[derive(Debug, clap::Args)]
pub struct UserArgs {
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create an account (fails if the email is taken).
    Add(AddUser),
}

#[derive(Debug, clap::Args)]
pub struct AddUser {
    #[arg(long)]
    pub email: String,
    /// At least 8 characters. `-` reads it from the first line of stdin, which keeps it
    /// out of the process list and shell history.
    #[arg(long)]
    pub password: String,
    /// Make the account an admin (may read every user's files).
    #[arg(long)]
    pub admin: bool,
    /// The data directory of `up` (the auth database is `<data>/auth.db`).
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = "./flotilla-data")]
    pub data_dir: PathBuf,
    /// The auth database of `serve auth`, if not SQLite in the data directory.
    #[arg(long, env = "FLOTILLA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

pub async fn run(args: UserArgs) -> anyhow::Result<()> {
    match args.command {
        UserCommand::Add(add) => {
            let password = if add.password == "-" {
                read_password_from_stdin()?
            } else {
                add.password
            };
            std::fs::create_dir_all(&add.data_dir).with_context(|| {
                format!(
                    "cannot create the data directory {}",
                    add.data_dir.display()
                )
            })?;
            let mut context = ServiceContext::new(add.data_dir, CancellationToken::new());
            context.database_url = add.database_url;
            let id = auth::add_user(&context, &add.email, password, add.admin).await?;
            let role = if add.admin { "admin" } else { "user" };
            println!(
                "created {role} {} (id {id})",
                add.email.trim().to_lowercase()
            );
            Ok(())
        }
    }
}

fn read_password_from_stdin() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password: ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
