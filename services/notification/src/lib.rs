//! Emails the uploader when a conversion finishes or fails: one email per job.
//!
//! The service consumes `mp3` messages (done or failed) and sends the email through SMTP
//! (`FLOTILLA_SMTP_URL`, lettre over rustls) or, without a server, writes it as an `.eml`
//! file under `<data>/mail/`.
//!
//! # Exactly one email per job
//!
//! Delivery is at least once, and a converter may even publish two `mp3` messages for one
//! job (it crashed after publishing and redid the work), so duplicates are recognised by
//! *job*, not by message id: the `notification_emails` ledger has one row per job. Sending
//! an email is the one effect that cannot join a database transaction, so the ledger
//! records it in two steps — `sending` (committed before the email is handed over) and
//! `sent` (committed after):
//!
//! * a message for a job already `sent` is acknowledged and nothing is sent;
//! * a message for a job left `sending` means a previous attempt may or may not have
//!   reached the server before the process died. We send again, deliberately: a lost
//!   "your MP3 is ready" is worse than a rare duplicate, and the duplicate carries the
//!   same `Message-ID` (derived from the job, see [`email::message_id`]) so mail stores
//!   and clients that dedupe by it show one email. The window is the time between the
//!   server's "250 OK" and the next commit — milliseconds.
//! * With the file fallback the email is written under a name derived from the job and
//!   replaced atomically, so a resend rewrites the same file: exactly one `.eml` per job.

pub mod email;
pub mod ledger;
pub mod sender;

use std::{path::PathBuf, sync::Arc};

use bus::{Delivered, Handler, HandlerError, Message, Runner, Subscription, Tx};
use contracts::media::{MP3, Mp3Message};
use lettre::message::Mailbox;
use platform::{ServiceApp, ServiceContext};

pub use ledger::{Ledger, LedgerState};
pub use sender::{SendError, Sender};

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "notification-args")]
pub struct Args {
    /// SMTP server for outgoing mail (`smtp://host:25`, `smtps://user:pw@host:465`);
    /// unset → emails are written as `.eml` files under `<data>/mail/`.
    #[arg(long, env = "FLOTILLA_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// The sender of notification emails.
    #[arg(long, env = "FLOTILLA_MAIL_FROM", default_value = DEFAULT_FROM)]
    pub mail_from: String,
    /// The address users reach the gateway at, for the download link in emails
    /// (`https://flotilla.example.com`); unset → the gateway's own address in `up`,
    /// `http://127.0.0.1:8080` in `serve`.
    #[arg(long, env = "FLOTILLA_PUBLIC_URL")]
    pub public_url: Option<String>,
}

/// The public URL when neither the flag nor `up` sets one.
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8080";

const DEFAULT_FROM: &str = "Flotilla <noreply@flotilla.invalid>";

platform::default_from_flags!(Args);

pub const NAME: &str = "notification";

/// The consumer group (and RabbitMQ queue) of this service.
pub const GROUP: &str = "notification";

/// Where `.eml` files go without an SMTP server.
pub fn mail_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("mail")
}

/// Builds the service; `flotilla up`, `flotilla serve notification` and tests all call this.
pub async fn build(context: &ServiceContext, args: &Args) -> anyhow::Result<ServiceApp> {
    let from: Mailbox = args.mail_from.parse().map_err(|_| {
        anyhow::anyhow!(
            "FLOTILLA_MAIL_FROM '{}' is not an email address",
            args.mail_from
        )
    })?;
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| DEFAULT_PUBLIC_URL.to_owned());
    let parsed = is_link_base(&public_url);
    anyhow::ensure!(
        parsed,
        "FLOTILLA_PUBLIC_URL '{public_url}' is not an http:// or https:// URL"
    );
    let sender = Sender::new(args.smtp_url.as_deref(), &mail_dir(&context.data_dir))?;
    tracing::info!(transport = %sender.describe(), "notification emails");

    let db = storage::Database::connect(&context.database_url_for(NAME)).await?;
    db.migrate(NAME, ledger::MIGRATIONS).await?;
    let ledger = Ledger::new(db.clone());
    let notifier = Notifier {
        ledger,
        sender,
        from,
        public_url,
    };

    let bus = bus::connect(&context.bus_url_or_embedded(), bus_options()).await?;
    let runner = Arc::new(runner(&db, notifier).await?);
    let consumer = runner.serve(bus, &context.tasks, context.shutdown.clone());

    let readiness = backbone::readiness(&db).with_check("consumers", consumer.check_fn());
    Ok(ServiceApp::new(NAME, axum::Router::new()).with_readiness(readiness))
}

/// The notifier on the runner its service uses: the ledger's database is also the
/// runner's inbox.
pub async fn runner(
    db: &storage::Database,
    notifier: Notifier,
) -> anyhow::Result<Runner<Notifier>> {
    Ok(Runner::new(bus::Store::database(db).await?, notifier))
}

/// The SMTP server is outside the system and may be away for a while (a restart, an
/// outage of the provider): an email is retried for about 45 minutes (1 s doubling to
/// 10 min, 14 attempts) before it is parked as a dead letter, where the default policy
/// would give up after 15 s. (On RabbitMQ the `notification` queue's delivery limit
/// follows; a queue declared by an older version must be deleted once empty — `/readyz`
/// names it.)
pub fn retry_policy() -> bus::RetryPolicy {
    bus::RetryPolicy {
        max_attempts: 14,
        initial_backoff: std::time::Duration::from_secs(1),
        max_backoff: std::time::Duration::from_secs(600),
        multiplier: 2,
    }
}

fn bus_options() -> bus::BusOptions {
    bus::BusOptions {
        retry: retry_policy(),
        ..bus::BusOptions::for_service(NAME)
    }
}

/// How long a sent email's record (the ledger's `sent` and the inbox record, one
/// transaction) is retried before the message is (re)tried by the bus, which would send
/// the email again: long enough for a database restart.
const MARK_SENT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// Turns `mp3` messages into emails, one per job.
#[derive(Debug)]
pub struct Notifier {
    pub ledger: Ledger,
    pub sender: Sender,
    pub from: Mailbox,
    /// The gateway as users reach it: the base of the download link.
    pub public_url: String,
}

/// Whether `url` can be the base of a link in an email: http(s), a host, no spaces.
fn is_link_base(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|rest| {
        !rest.is_empty() && !rest.starts_with('/') && !url.chars().any(char::is_whitespace)
    })
}

/// The email of an `mp3` message is an effect outside the database: [`Handler::effect`]
/// claims the job in the ledger and sends; the runner then commits the inbox record
/// with the ledger's `sent` ([`Handler::apply`]), trying for [`MARK_SENT_PATIENCE`]
/// rather than letting a retry send again.
impl Handler for Notifier {
    type Event = Mp3Message;
    type Error = HandlerError;

    fn subscription(&self) -> Subscription {
        Subscription::new(GROUP, MP3).with_prefetch(16)
    }

    fn concurrency(&self) -> usize {
        4
    }

    fn decode(&self, message: &Message) -> Result<Mp3Message, String> {
        bus::decode_json(message)
    }

    async fn effect(
        &self,
        finished: &Mp3Message,
        _delivered: &Delivered,
    ) -> Result<Vec<Message>, HandlerError> {
        self.send_once(finished).await
    }

    fn effect_patience(&self) -> std::time::Duration {
        MARK_SENT_PATIENCE
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        finished: &Mp3Message,
        _delivered: &Delivered,
    ) -> Result<Vec<Message>, HandlerError> {
        self.ledger
            .mark_sent_in(tx, &finished.job_id)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        Ok(Vec::new())
    }

    /// Past the last attempt and not in the inbox: the consumer stopped (or lost the
    /// broker) during each try — or the last try sent the email and only its record was
    /// lost. The ledger knows which: a sent email is settled, anything else is
    /// dead-lettered for an operator rather than tried forever.
    async fn exhausted(
        &self,
        finished: &Mp3Message,
        _delivered: &Delivered,
    ) -> Result<Option<Vec<Message>>, HandlerError> {
        let state = self
            .ledger
            .state(&finished.job_id)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        if state.as_deref() == Some("sent") {
            tracing::info!(job_id = %finished.job_id, "email already sent; its acknowledgement was lost");
            Ok(Some(Vec::new()))
        } else {
            Ok(None)
        }
    }
}

impl Notifier {
    /// Sends the job's email unless the ledger says it was sent (see the crate docs for
    /// the exactly-once reasoning).
    async fn send_once(&self, finished: &Mp3Message) -> Result<Vec<Message>, HandlerError> {
        let retry = |e: &dyn std::fmt::Display| HandlerError::Transient(e.to_string());
        let state = self
            .ledger
            .begin_sending(&finished.job_id, &finished.username)
            .await
            .map_err(|e| retry(&e))?;
        match state {
            LedgerState::Sent => {
                tracing::debug!(job_id = %finished.job_id, "email already sent; skipped");
                return Ok(Vec::new());
            }
            LedgerState::Resending => tracing::warn!(
                job_id = %finished.job_id,
                "a previous attempt may have sent this email already; sending again with the same Message-ID"
            ),
            LedgerState::New => {}
        }
        let email = email::compose(finished, &self.from, &self.public_url)
            .map_err(|e| HandlerError::Permanent(e.to_string()))?;
        match self.sender.send(&finished.job_id, &email).await {
            Ok(()) => {}
            Err(error) if error.is_permanent() => {
                return Err(HandlerError::Permanent(error.to_string()));
            }
            Err(error) => {
                // Not sent (or not known to be): let the retry take the claim at once.
                if let Err(release) = self.ledger.release(&finished.job_id).await {
                    tracing::warn!(job_id = %finished.job_id, error = %release,
                        "could not release the email claim; the retry waits for it to age");
                }
                return Err(retry(&error));
            }
        }
        metrics::counter!("notification_emails_sent_total", "kind" => email::kind(finished))
            .increment(1);
        tracing::info!(job_id = %finished.job_id, status = finished.status.as_str(), "email sent");
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_outlasts_a_forty_minute_smtp_outage_before_it_is_parked() {
        let policy = retry_policy();
        let waited: std::time::Duration = (1..policy.max_attempts)
            .map(|attempt| policy.backoff(attempt))
            .sum();
        assert!(
            waited >= std::time::Duration::from_secs(40 * 60),
            "{waited:?}"
        );
        // The first retries stay quick: a blip costs seconds, not minutes.
        assert_eq!(policy.backoff(1), std::time::Duration::from_secs(1));
    }
}
