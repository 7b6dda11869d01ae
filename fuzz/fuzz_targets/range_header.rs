//! `Range` headers (media's `GET /download`): any header value against any file size
//! gives a range inside the file, non-empty, or one of the two other answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media::download::{RangeRequest, parse_range};

fuzz_target!(|data: &[u8]| {
    let (size, value) = match data.split_first_chunk::<8>() {
        // Small sizes matter most (edges around 0 and 1), so half the inputs use one byte.
        Some((size, rest)) if size[0] & 1 == 0 => (u64::from_le_bytes(*size), rest),
        _ => (
            u64::from(data.first().copied().unwrap_or(0) >> 1),
            data.get(1..).unwrap_or(&[]),
        ),
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    match parse_range(Some(value), size) {
        RangeRequest::Part(range) => {
            assert!(
                range.start < range.end,
                "empty range {range:?} for {value:?}"
            );
            assert!(
                range.end <= size,
                "range {range:?} past {size} for {value:?}"
            );
        }
        RangeRequest::Whole | RangeRequest::Unsatisfiable => {}
    }
});
