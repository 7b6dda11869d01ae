//! The media probe and decoder on the first bytes of an upload: the in-process engine
//! (symphonia demuxers and decoders, then LAME) converts or fails with a reason, never
//! panics or hangs.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use tokio_util::sync::CancellationToken;

fuzz_target!(|data: &[u8]| {
    let mut sink = Cursor::new(Vec::new());
    let token = CancellationToken::new();
    if let Ok(report) = converter::convert(Cursor::new(data.to_vec()), None, &mut sink, &token) {
        assert_eq!(report.bytes_written, sink.get_ref().len() as u64);
    }
});
