//! What the uploader is told: the email for a finished or failed conversion, composed
//! from the `mp3` message alone — a plain-text part (the one that keeps the line
//! `mp3 file_id: <FID> is now ready!`) and an HTML part, as `multipart/alternative`,
//! with an absolute download link built from the public URL of the gateway.

use contracts::media::{JobStatus, Mp3Message};
use lettre::{
    Message,
    message::{
        Mailbox, MultiPart, SinglePart,
        header::{ContentTransferEncoding, ContentType},
    },
};

/// Subject of the email for a finished conversion; the file name and duration follow.
pub const READY_SUBJECT: &str = "Your MP3 is ready";
/// Subject of the email for a failed conversion; the file name follows.
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

/// The absolute link that downloads `mp3_fid` (the gateway asks for the token).
pub fn download_link(public_url: &str, mp3_fid: &str) -> String {
    // The fid is ours (`mp3-<uuid>`), yet encode it so no message can break the link.
    let fid: String = url_escape(mp3_fid);
    format!("{}/download?fid={fid}", public_url.trim_end_matches('/'))
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
fn url_escape(value: &str) -> String {
    // RFC 3986 §2.3: everything but the unreserved characters.
    const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, ESCAPED).to_string()
}

/// `m:ss` or `h:mm:ss`, as a player shows it.
pub fn human_duration(secs: f64) -> String {
    let total = if secs.is_finite() && secs > 0.0 {
        secs.round() as u64
    } else {
        0
    };
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// What the user uploaded, as the email names it.
fn file_name(message: &Mp3Message) -> &str {
    message.filename.as_deref().unwrap_or("your upload")
}

/// The reason of a failure as a sentence: the converter's words, capitalised, with a stop.
fn reason(message: &Mp3Message) -> String {
    let reason = message
        .error
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("the conversion failed");
    let mut chars = reason.chars();
    let mut sentence: String = chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default();
    if !sentence.ends_with(['.', '!', '?']) {
        sentence.push('.');
    }
    sentence
}

/// The plain-text part. Lines stay short so ASCII bodies go out as 7-bit text, and the
/// fid line can be found by plain text search.
pub fn body(message: &Mp3Message, public_url: &str) -> String {
    let name = file_name(message);
    match (message.status, message.mp3_fid.as_deref()) {
        (JobStatus::Done, Some(mp3_fid)) => {
            let length = message
                .duration_secs
                .map(|d| format!(" ({})", human_duration(d)))
                .unwrap_or_default();
            format!(
                "Hello,\n\n\
                 the MP3 of {name}{length} is ready.\n\
                 mp3 file_id: {mp3_fid} is now ready!\n\n\
                 Download it (you will be asked to log in) from:\n\
                 {link}\n\n\
                 Job: {job_id}\n",
                link = download_link(public_url, mp3_fid),
                job_id = message.job_id,
            )
        }
        _ => format!(
            "Hello,\n\n\
             {name} could not be converted to MP3.\n\
             Reason: {reason}\n\n\
             Job: {job_id}\n",
            reason = reason(message),
            job_id = message.job_id,
        ),
    }
}

/// The HTML part: the same words, with a link to click.
pub fn html(message: &Mp3Message, public_url: &str) -> String {
    let name = escape_html(file_name(message));
    let inner = match (message.status, message.mp3_fid.as_deref()) {
        (JobStatus::Done, Some(mp3_fid)) => {
            let link = escape_html(&download_link(public_url, mp3_fid));
            let length = message
                .duration_secs
                .map(|d| format!(" ({})", human_duration(d)))
                .unwrap_or_default();
            format!(
                "<p>The MP3 of <strong>{name}</strong>{length} is ready.</p>\n\
                 <p><a href=\"{link}\">Download the MP3</a> (you will be asked to log in).</p>\n\
                 <p style=\"color:#666\">mp3 file_id: {fid}<br>Job: {job}</p>",
                fid = escape_html(mp3_fid),
                job = escape_html(&message.job_id),
            )
        }
        _ => format!(
            "<p><strong>{name}</strong> could not be converted to MP3.</p>\n\
             <p>Reason: {reason}</p>\n\
             <p style=\"color:#666\">Job: {job}</p>",
            reason = escape_html(&reason(message)),
            job = escape_html(&message.job_id),
        ),
    };
    format!("<!DOCTYPE html>\n<html><body>\n<p>Hello,</p>\n{inner}\n</body></html>\n")
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What kind of email `message` gets (a metrics label).
pub fn kind(message: &Mp3Message) -> &'static str {
    match message.status {
        JobStatus::Done => READY_SUBJECT,
        _ => FAILED_SUBJECT,
    }
}

/// The subject: the kind, then the file name (and the duration of a finished MP3).
pub fn subject(message: &Mp3Message) -> String {
    let name: String = file_name(message).chars().take(80).collect();
    match (message.status, message.duration_secs) {
        (JobStatus::Done, Some(d)) => format!("{READY_SUBJECT}: {name} ({})", human_duration(d)),
        (JobStatus::Done, None) => format!("{READY_SUBJECT}: {name}"),
        _ => format!("{FAILED_SUBJECT}: {name}"),
    }
}

/// The complete email for `message`, from `from`, its links under `public_url`.
pub fn compose(
    message: &Mp3Message,
    from: &Mailbox,
    public_url: &str,
) -> Result<Message, ComposeError> {
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
    let text = body(message, public_url);
    // lettre picks 7-bit for short ASCII lines; a non-ASCII file name would otherwise
    // let it choose base64, which hides the fid line from a plain text search.
    let plain = if text.is_ascii() {
        SinglePart::plain(text)
    } else {
        SinglePart::builder()
            .header(ContentType::TEXT_PLAIN)
            .header(ContentTransferEncoding::QuotedPrintable)
            .body(text)
    };
    // The builders add MIME-Version and the multipart boundary.
    Ok(Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject(message))
        .message_id(Some(message_id(&message.job_id)))
        .multipart(
            MultiPart::alternative()
                .singlepart(plain)
                .singlepart(SinglePart::html(html(message, public_url))),
        )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: &str = "https://flotilla.example/";

    fn finished(status: JobStatus) -> Mp3Message {
        Mp3Message {
            video_fid: "video-j1".into(),
            mp3_fid: (status == JobStatus::Done).then(|| "mp3-j1".into()),
            username: "georgio@email.com".into(),
            job_id: "j1".into(),
            status,
            error: (status == JobStatus::Failed).then(|| "no audio track".into()),
            duration_secs: (status == JobStatus::Done).then_some(125.4),
            filename: Some("holiday <1>.mp4".into()),
        }
    }

    fn from() -> Mailbox {
        "Flotilla <noreply@flotilla.invalid>".parse().expect("from")
    }

    #[test]
    fn a_done_job_gets_the_reference_line_link_name_and_duration() {
        let email = compose(&finished(JobStatus::Done), &from(), PUBLIC).expect("composes");
        let text = String::from_utf8(email.formatted()).expect("utf-8");
        assert!(
            text.contains("Subject: Your MP3 is ready: holiday <1>.mp4 (2:05)"),
            "{text}"
        );
        assert!(text.contains("MIME-Version: 1.0"), "{text}");
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
        assert!(
            text.lines()
                .any(|line| line == "https://flotilla.example/download?fid=mp3-j1"),
            "{text}"
        );
        assert!(
            text.contains("holiday &lt;1&gt;.mp4"),
            "escaped in HTML: {text}"
        );
    }

    #[test]
    fn a_failed_job_gets_the_reason_in_plain_words() {
        let message = finished(JobStatus::Failed);
        assert_eq!(
            subject(&message),
            "Your MP3 could not be made: holiday <1>.mp4"
        );
        let body = body(&message, PUBLIC);
        assert!(
            body.contains(
                "holiday <1>.mp4 could not be converted to MP3.\nReason: No audio track.\n"
            ),
            "{body}"
        );
        assert!(!body.contains("download"), "{body}");
    }

    #[test]
    fn durations_and_links() {
        assert_eq!(human_duration(0.4), "0:00");
        assert_eq!(human_duration(59.6), "1:00");
        assert_eq!(human_duration(3725.0), "1:02:05");
        assert_eq!(human_duration(f64::NAN), "0:00");
        assert_eq!(
            download_link("http://h:1//", "a b&c"),
            "http://h:1/download?fid=a%20b%26c"
        );
    }

    /// Every address signup accepts (the same `contracts::email` rule) makes an email;
    /// anything else as the recipient is refused.
    #[test]
    fn a_recipient_composes_only_if_signup_accepts_it() {
        let mut message = finished(JobStatus::Done);
        for (raw, accepted) in [
            ("Ada@Example.com", true),
            ("a.b+tag@sub.example.co.uk", true),
            ("o'brien@example.ie", true),
            ("名前@example.jp", true),
            ("x@bücher.example", true),
            ("not an address", false),
            ("a,b@x.com", false),
            ("Ada <a@x.com>", false),
            ("a\u{202E}b@x.com", false),
        ] {
            message.username = if accepted {
                let address = contracts::email::normalise(raw).expect("signup accepts it");
                address.to_string()
            } else {
                raw.to_owned()
            };
            match compose(&message, &from(), PUBLIC) {
                Ok(email) => {
                    assert!(accepted, "{raw:?} composed");
                    let text = String::from_utf8_lossy(&email.formatted()).into_owned();
                    assert!(text.contains("To: "), "{raw}: {text}");
                }
                Err(error) => assert!(
                    !accepted && matches!(error, ComposeError::Recipient(_)),
                    "{raw:?}: {error:?}"
                ),
            }
        }
    }
}
