//! What the uploader is told: the email for a finished or failed conversion, composed
//! from the `mp3` message alone.

use contracts::media::{JobStatus, Mp3Message};
use lettre::{
    Message,
    message::{Mailbox, header::ContentType},
};

/// Subject of the email for a finished conversion (CONTRACTS §4).
pub const READY_SUBJECT: &str = "Your MP3 is ready";
/// Subject of the email for a failed conversion.
pub const FAILED_SUBJECT: &str = "Your MP3 could not be made";

/// Why an email could not be composed; retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("'{0}' is not a valid recipient address")]
    Recipient(String),
    #[error("the email could not be built: {0}")]
    Build(#[from] lettre::error::Error),
}

/// The Message-ID of the one email of a job. Derived from the job, so that if the
/// email is ever sent twice (see the crate docs), receivers see the same message.
pub fn message_id(job_id: &str) -> String {
    format!("<mp3-{job_id}@flotilla.invalid>")
}

/// The plain text body. Lines stay short so the body goes out as 7-bit text, not
/// quoted-printable, and the fid line can be found by plain text search.
pub fn body(message: &Mp3Message) -> String {
    match (message.status, message.mp3_fid.as_deref()) {
        (JobStatus::Done, Some(mp3_fid)) => format!(
            "Hello,\n\n\
             mp3 file_id: {mp3_fid} is now ready!\n\n\
             Download it from:\n\
             /download?fid={mp3_fid}\n\n\
             Job: {job_id}\n\
             Video: {video_fid}\n",
            job_id = message.job_id,
            video_fid = message.video_fid,
        ),
        _ => format!(
            "Hello,\n\n\
             your upload could not be converted to MP3:\n\
             {reason}.\n\n\
             Job: {job_id}\n\
             Video: {video_fid}\n",
            video_fid = message.video_fid,
            reason = message.error.as_deref().unwrap_or("the conversion failed"),
            job_id = message.job_id,
        ),
    }
}

pub fn subject(message: &Mp3Message) -> &'static str {
    match message.status {
        JobStatus::Done => READY_SUBJECT,
        _ => FAILED_SUBJECT,
    }
}

/// The complete email for `message`, from `from`.
pub fn compose(message: &Mp3Message, from: &Mailbox) -> Result<Message, ComposeError> {
    // The rule auth applied at signup (one validator for both): an address accepted
    // there is one the mailer can send to.
    let to = contracts::email::normalise(&message.username)
        .map(|address| Mailbox::new(None, address))
        .map_err(|_| {
            ComposeError::Recipient(
                message
                    .username
                    .chars()
                    .take(100)
                    .flat_map(char::escape_debug)
                    .collect(),
            )
        })?;
    Ok(Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject(message))
        .message_id(Some(message_id(&message.job_id)))
        .header(ContentType::TEXT_PLAIN)
        .body(body(message))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(status: JobStatus) -> Mp3Message {
        Mp3Message {
            video_fid: "video-j1".into(),
            mp3_fid: (status == JobStatus::Done).then(|| "mp3-j1".into()),
            username: "georgio@email.com".into(),
            job_id: "j1".into(),
            status,
            error: (status == JobStatus::Failed).then(|| "no audio track".into()),
            duration_secs: None,
        }
    }

    #[test]
    fn a_done_job_gets_the_reference_line() {
        let from: Mailbox = "Flotilla <noreply@flotilla.invalid>".parse().expect("from");
        let email = compose(&finished(JobStatus::Done), &from).expect("composes");
        let text = String::from_utf8(email.formatted()).expect("utf-8");
        assert!(text.contains("Subject: Your MP3 is ready"), "{text}");
        assert!(text.contains("To: georgio@email.com"), "{text}");
        assert!(
            text.contains("Message-ID: <mp3-j1@flotilla.invalid>"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|line| line == "mp3 file_id: mp3-j1 is now ready!"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_job_gets_the_reason() {
        let message = finished(JobStatus::Failed);
        assert_eq!(subject(&message), FAILED_SUBJECT);
        assert!(body(&message).contains("could not be converted to MP3:\nno audio track.\n"));
    }

    #[test]
    fn a_bad_recipient_is_refused() {
        let from: Mailbox = "noreply@flotilla.invalid".parse().expect("from");
        let mut message = finished(JobStatus::Done);
        for bad in [
            "not an address",
            "a,b@x.com",
            "Ada <a@x.com>",
            "a\u{202E}b@x.com",
        ] {
            message.username = bad.into();
            assert!(
                matches!(compose(&message, &from), Err(ComposeError::Recipient(_))),
                "{bad:?}"
            );
        }
    }

    /// Every address signup accepts (the same `contracts::email` rule) makes an email.
    #[test]
    fn every_address_signup_accepts_composes() {
        let from: Mailbox = "noreply@flotilla.invalid".parse().expect("from");
        let mut message = finished(JobStatus::Done);
        for raw in [
            "Ada@Example.com",
            "a.b+tag@sub.example.co.uk",
            "o'brien@example.ie",
            "名前@example.jp",
            "x@bücher.example",
        ] {
            let address = contracts::email::normalise(raw).expect("signup accepts it");
            message.username = address.to_string();
            let email = compose(&message, &from).expect("an accepted address composes");
            let text = String::from_utf8_lossy(&email.formatted()).into_owned();
            assert!(text.contains("To: "), "{raw}: {text}");
        }
    }
}
