//! The notifier against real transports: a real SMTP server (aiosmtpd writing a Maildir,
//! `FLOTILLA_TEST_SMTP_URL` / `FLOTILLA_TEST_MAILDIR`) and the `.eml` file fallback. The
//! same job's `mp3` message delivered again — same id or a new one — sends nothing more.

use std::path::Path;

use bus::Runner;
use contracts::media::{JobStatus, MP3, Mp3Message};
use notification::{Ledger, Notifier, Sender, ledger};
use storage::Database;

fn unique_job() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("job-{nanos}-{}", std::process::id())
}

fn done(job_id: &str) -> Mp3Message {
    Mp3Message {
        video_fid: format!("video-{job_id}"),
        mp3_fid: Some(format!("mp3-{job_id}")),
        username: "georgio@email.com".into(),
        job_id: job_id.to_owned(),
        status: JobStatus::Done,
        error: None,
        duration_secs: Some(2.0),
        filename: Some("clip.mp4".into()),
    }
}

/// Parses `raw` with a real MIME parser and checks what the user reads: the structure
/// (multipart/alternative of text/plain and text/html), MIME-Version, the file name and
/// duration in the subject, the absolute download link in both parts, the reference line.
fn check_ready_email(raw: &str, job_id: &str) {
    use mail_parser::{MessageParser, MimeHeaders};
    let message = MessageParser::default()
        .parse(raw.as_bytes())
        .expect("a parsable email");
    assert_eq!(
        message.header_raw("MIME-Version").map(str::trim),
        Some("1.0"),
        "{raw}"
    );
    assert_eq!(
        message.subject(),
        Some("Your MP3 is ready: clip.mp4 (0:02)"),
        "{raw}"
    );
    let types: Vec<String> = message
        .parts
        .iter()
        .map(|part| {
            part.content_type().map_or_else(String::new, |t| {
                format!("{}/{}", t.ctype(), t.subtype().unwrap_or_default())
            })
        })
        .collect();
    assert_eq!(
        types,
        ["multipart/alternative", "text/plain", "text/html"],
        "{raw}"
    );
    let link = format!("https://flotilla.example/download?fid=mp3-{job_id}");
    let text = message.body_text(0).expect("a text part");
    assert!(
        text.lines()
            .any(|line| line == format!("mp3 file_id: mp3-{job_id} is now ready!")),
        "{text}"
    );
    assert!(text.lines().any(|line| line == link), "{text}");
    assert!(text.contains("clip.mp4 (0:02)"), "{text}");
    let html = message.body_html(0).expect("an HTML part");
    assert!(html.contains(&format!("<a href=\"{link}\">")), "{html}");
    assert!(html.contains("<strong>clip.mp4</strong>"), "{html}");
}

/// The notifier on its service's runner (inbox and ledger in one SQLite file).
async fn notifier(dir: &Path, sender: Sender) -> Runner<Notifier> {
    let url = format!("sqlite://{}", dir.join("notification.db").display());
    let db = Database::connect(&url).await.expect("database");
    db.migrate("notification", ledger::MIGRATIONS)
        .await
        .expect("migrations");
    let notifier = Notifier {
        ledger: Ledger::new(db.clone()),
        sender,
        from: "Flotilla <noreply@flotilla.invalid>".parse().expect("from"),
        public_url: "https://flotilla.example".into(),
    };
    notification::runner(&db, notifier).await.expect("runner")
}

/// A first delivery, as the bus makes it for the notification group.
const FIRST: bus::Attempt = bus::Attempt { number: 1, max: 14 };

/// What the notifier's ledger says of `job_id`'s email.
async fn ledger_state(notifier: &Runner<Notifier>, job_id: &str) -> Option<String> {
    notifier
        .handler()
        .ledger
        .state(job_id)
        .await
        .expect("state")
}

/// The message delivered three times: twice with one id, once republished with another.
async fn deliver_repeatedly(notifier: &Runner<Notifier>, message: &Mp3Message) {
    let first = bus::Message::json(MP3, message).expect("encode");
    notifier
        .handle(&first, FIRST)
        .await
        .expect("first delivery");
    notifier.handle(&first, FIRST).await.expect("redelivery");
    let republished = bus::Message::json(MP3, message).expect("encode");
    assert_ne!(first.id, republished.id);
    notifier
        .handle(&republished, FIRST)
        .await
        .expect("republished");
}

/// A sender to an SMTP port nothing listens on (bound, then dropped).
fn unreachable_smtp(dir: &Path) -> Sender {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    Sender::new(Some(&format!("smtp://127.0.0.1:{port}")), &dir.join("mail")).expect("smtp sender")
}

/// Test server settings, or `None` to skip (a failure under CI=true).
fn smtp_server() -> Option<(String, String)> {
    let url = std::env::var("FLOTILLA_TEST_SMTP_URL").ok();
    let maildir = std::env::var("FLOTILLA_TEST_MAILDIR").ok();
    let found = url.zip(maildir);
    test_kit::available(
        found.is_some(),
        "FLOTILLA_TEST_SMTP_URL / FLOTILLA_TEST_MAILDIR are not set",
    )
    .then_some(found)?
}

/// Messages in the Maildir (new/ and cur/) that mention `needle`.
fn maildir_messages(maildir: &Path, needle: &str) -> Vec<String> {
    ["new", "cur"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(maildir.join(sub)).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter(|text| text.contains(needle))
        .collect()
}

#[tokio::test]
async fn a_real_smtp_server_gets_exactly_one_email_per_job() {
    let Some((url, maildir)) = smtp_server() else {
        return;
    };
    // aiosmtpd's Mailbox handler writes into an existing Maildir only.
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(Path::new(&maildir).join(sub)).expect("maildir");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sender = Sender::new(Some(&url), &dir.path().join("mail")).expect("smtp sender");
    let notifier = notifier(dir.path(), sender).await;
    let job_id = unique_job();
    deliver_repeatedly(&notifier, &done(&job_id)).await;

    let received = maildir_messages(Path::new(&maildir), &job_id);
    assert_eq!(received.len(), 1, "{received:#?}");
    let email = &received[0];
    check_ready_email(email, &job_id);
    assert!(email.contains("Subject: Your MP3 is ready"), "{email}");
    assert!(
        email
            .lines()
            .any(|line| line.trim_end() == format!("mp3 file_id: mp3-{job_id} is now ready!")),
        "{email}"
    );
    assert!(
        email.contains(&format!("Message-ID: <mp3-{job_id}@flotilla.invalid>")),
        "{email}"
    );
    assert_eq!(
        ledger_state(&notifier, &job_id).await.as_deref(),
        Some("sent")
    );
}

#[tokio::test]
async fn without_smtp_one_eml_file_is_written_per_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mail = dir.path().join("mail");
    let notifier = notifier(dir.path(), Sender::new(None, &mail).expect("file sender")).await;
    let job_id = unique_job();
    deliver_repeatedly(&notifier, &done(&job_id)).await;
    let mut failed = done(&format!("{job_id}-2"));
    failed.status = JobStatus::Failed;
    failed.mp3_fid = None;
    failed.error = Some("no audio track".into());
    deliver_repeatedly(&notifier, &failed).await;

    let files: Vec<_> = std::fs::read_dir(&mail)
        .expect("mail dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let read = |name: String| std::fs::read_to_string(mail.join(name)).expect("read eml");
    let ready = read(format!("{job_id}.eml"));
    assert!(
        ready.contains(&format!("mp3 file_id: mp3-{job_id} is now ready!")),
        "{ready}"
    );
    check_ready_email(&ready, &job_id);
    let sorry = read(format!("{job_id}-2.eml"));
    assert!(
        sorry.contains("Subject: Your MP3 could not be made"),
        "{sorry}"
    );
    assert!(sorry.contains("Reason: No audio track."), "{sorry}");
}

#[tokio::test]
async fn an_unreachable_smtp_server_is_retried_not_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notifier = notifier(dir.path(), unreachable_smtp(dir.path())).await;
    let job_id = unique_job();
    let message = bus::Message::json(MP3, &done(&job_id)).expect("encode");
    let outcome = notifier.handle(&message, FIRST).await;
    assert!(matches!(outcome, Err(bus::Nack::Retry(_))), "{outcome:?}");
    assert_eq!(
        ledger_state(&notifier, &job_id).await.as_deref(),
        Some("sending")
    );
}

#[tokio::test]
async fn a_send_that_failed_is_retried_at_once_and_sent_when_the_server_returns() {
    let Some((url, maildir)) = smtp_server() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let notifier_away = notifier(dir.path(), unreachable_smtp(dir.path())).await;
    let job_id = unique_job();
    let message = bus::Message::json(MP3, &done(&job_id)).expect("encode");
    // The server is away for two attempts in a row: each retry tries the server again
    // rather than finding its own failed attempt "in progress" (which used to exhaust
    // the attempts and dead-letter the email).
    for attempt in 1..=2 {
        match notifier_away.handle(&message, FIRST).await {
            Err(bus::Nack::Retry(reason)) => assert!(
                reason.contains("SMTP server"),
                "attempt {attempt}: {reason}"
            ),
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
    // The server is back: the next attempt sends, once.
    let back = Sender::new(Some(&url), &dir.path().join("mail")).expect("smtp sender");
    let notifier_back = notifier(dir.path(), back).await;
    notifier_back.handle(&message, FIRST).await.expect("sent");
    notifier_back
        .handle(&message, FIRST)
        .await
        .expect("redelivery skipped");
    assert_eq!(maildir_messages(Path::new(&maildir), &job_id).len(), 1);
}

#[tokio::test]
async fn a_delivery_past_its_last_attempt_is_settled_by_the_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sender = Sender::new(None, &dir.path().join("mail")).expect("file sender");
    let notifier = notifier(dir.path(), sender).await;
    let past_last = bus::Attempt { number: 6, max: 5 };

    // Sent on the last attempt, but its acknowledgement was lost: settled, not dead.
    let sent = bus::Message::json(MP3, &done(&unique_job())).expect("encode");
    notifier.handle(&sent, FIRST).await.expect("sent");
    notifier
        .handle(&sent, past_last)
        .await
        .expect("a sent email is settled by the inbox");
    // The same job's email republished under another id (not in the inbox) and past
    // its last attempt: the ledger knows it was sent.
    let republished =
        bus::Message::json(MP3, &sent.decode::<Mp3Message>().expect("mp3")).expect("encode");
    assert_eq!(
        notifier.handle(&republished, past_last).await,
        Ok(bus::Handled::Applied),
        "settled by the ledger"
    );

    // Never sent: dead-lettered for an operator.
    let unsent = bus::Message::json(MP3, &done(&unique_job())).expect("encode");
    assert!(matches!(
        notifier.handle(&unsent, past_last).await,
        Err(bus::Nack::Reject(_))
    ));
}
