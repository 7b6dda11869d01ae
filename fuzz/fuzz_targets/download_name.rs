//! The `Content-Disposition` of a download (media's `GET /download`), built from the
//! upload's file name as the client sent it: whatever the name, the value is a valid
//! header (visible ASCII, no line break a client could use to add headers) naming an
//! `.mp3` file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media::download::attachment;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let value = attachment(name);
    assert!(
        http::HeaderValue::from_str(&value).is_ok(),
        "{name:?} gave a value that is no header: {value:?}"
    );
    assert!(value.is_ascii(), "{value:?}");
    let quoted = value
        .strip_prefix("attachment; filename=\"")
        .and_then(|rest| rest.split_once("\"; filename*=UTF-8''"));
    let Some((ascii, encoded)) = quoted else {
        panic!("{name:?} gave {value:?}");
    };
    assert!(ascii.ends_with(".mp3") && !ascii.contains('"'), "{value:?}");
    assert!(encoded.ends_with(".mp3") && !encoded.contains([' ', '"', ';']), "{value:?}");
});
