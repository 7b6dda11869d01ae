//! `GET /download`: an MP3 streamed from the blob store, whole or one byte range
//! (RFC 9110 §14). Only single ranges are served; a multi-range or malformed `Range` is
//! ignored and the whole file sent, which the RFC allows. A range that starts past the
//! end is 416 with `Content-Range: bytes */SIZE`.

use std::ops::Range;

use axum::{body::Body, response::Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use platform::Problem;
use storage::blob::BlobStore;

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) range: send everything.
    Whole,
    /// Send these bytes (end exclusive).
    Part(Range<u64>),
    /// Nothing of the file matches.
    Unsatisfiable,
}

/// Interprets a `Range` header value against a file of `size` bytes.
pub fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |text: &str| text.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Part(size.saturating_sub(n)..size),
            None => RangeRequest::Whole,
        },
        // `bytes=A-`: from A to the end.
        (false, true) => match parse(first) {
            Some(start) if start < size => RangeRequest::Part(start..size),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Whole,
        },
        // `bytes=A-B`: inclusive; B past the end means the end.
        (false, false) => match (parse(first), parse(last)) {
            (Some(start), Some(end)) if start > end => RangeRequest::Whole,
            (Some(start), Some(_)) if start >= size => RangeRequest::Unsatisfiable,
            (Some(start), Some(end)) => RangeRequest::Part(start..end.saturating_add(1).min(size)),
            _ => RangeRequest::Whole,
        },
        (true, true) => RangeRequest::Whole,
    }
}

/// The response for the MP3 stored under `fid`.
pub async fn respond(
    blobs: &BlobStore,
    fid: &str,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let size = blobs
        .size(fid)
        .await
        .map_err(|error| Problem::internal(&error))?;
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let (status, range) = match range {
        RangeRequest::Whole => (StatusCode::OK, None),
        RangeRequest::Part(range) => (StatusCode::PARTIAL_CONTENT, Some(range)),
        RangeRequest::Unsatisfiable => return Ok(unsatisfiable(size)),
    };
    // An empty file has no byte to range over: send it whole.
    let read = if size == 0 {
        None
    } else {
        Some(
            blobs
                .get(fid, range.clone())
                .await
                .map_err(|error| Problem::internal(&error))?,
        )
    };
    let sent = read
        .as_ref()
        .map_or(0, |read| read.range.end - read.range.start);
    let body = match read {
        Some(read) => Body::from_stream(read.stream),
        None => Body::empty(),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "audio/mpeg")
        .header(header::CONTENT_LENGTH, sent)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{fid}.mp3\""),
        );
    if let Some(range) = range {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", range.start, range.end - 1),
        );
    }
    builder
        .body(body)
        .map_err(|error| Problem::internal(&error))
}

/// 416 with the `Content-Range` the RFC asks for. Rendered here rather than as a
/// [`Problem`], whose normalisation re-renders the response and would drop the header.
fn unsatisfiable(size: u64) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Range Not Satisfiable",
        "status": 416,
        "detail": format!("the requested range is outside the file of {size} bytes"),
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(platform::problem::PROBLEM_JSON),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
        headers.insert(header::CONTENT_RANGE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeRequest::*;
        let size = 1000;
        assert_eq!(parse_range(None, size), Whole);
        assert_eq!(parse_range(Some("bytes=0-99"), size), Part(0..100));
        assert_eq!(parse_range(Some("bytes=900-"), size), Part(900..1000));
        assert_eq!(parse_range(Some("bytes=-100"), size), Part(900..1000));
        assert_eq!(parse_range(Some("bytes=-5000"), size), Part(0..1000));
        assert_eq!(parse_range(Some("bytes=990-5000"), size), Part(990..1000));
        assert_eq!(parse_range(Some("bytes=1000-"), size), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=1000-1001"), size), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), size), Unsatisfiable);
        // Ignored, not errors: the whole file is sent.
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), size), Whole);
        assert_eq!(parse_range(Some("bytes=9-1"), size), Whole);
        assert_eq!(parse_range(Some("items=0-1"), size), Whole);
        assert_eq!(parse_range(Some("bytes=abc"), size), Whole);
        assert_eq!(parse_range(Some("bytes=-"), size), Whole);
    }
}

/// `Content-Disposition` for the MP3 of an upload named `source`: `sample.mp4` →
/// `sample.mp3` (RFC 6266: an ASCII `filename` for old clients, the exact name as
/// UTF-8 in `filename*`).
pub fn attachment(source: &str) -> String {
    // Only the last path segment: a browser's file name never has one, a client's might.
    let base = source.rsplit(['/', '\\']).next().unwrap_or(source);
    let stem = match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => base,
    };
    let stem = if stem.trim().is_empty() {
        "audio"
    } else {
        stem
    };
    let name = format!("{stem}.mp3");
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    /// RFC 5987's attr-char: what `filename*` may carry unescaped.
    const ATTR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        percent_encoding::utf8_percent_encode(&name, ATTR)
    )
}

#[cfg(test)]
mod attachment_tests {
    use super::attachment;

    #[test]
    fn the_mp3_is_named_after_the_source() {
        assert_eq!(
            attachment("sample.mp4"),
            "attachment; filename=\"sample.mp3\"; filename*=UTF-8''sample.mp3"
        );
        assert_eq!(
            attachment("../a/été \"x\".webm"),
            "attachment; filename=\"_t_ _x_.mp3\"; filename*=UTF-8''%C3%A9t%C3%A9%20%22x%22.mp3"
        );
        assert_eq!(
            attachment(".hidden"),
            "attachment; filename=\".hidden.mp3\"; filename*=UTF-8''.hidden.mp3"
        );
        assert!(attachment("a\r\nb.mp4").starts_with("attachment; filename=\"a__b.mp3\""));
    }
}
