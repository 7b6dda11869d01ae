//! The media probe and decoder on the first bytes of an upload: the in-process engine
//! (symphonia demuxers and decoders, then LAME) converts or fails with a reason, never
//! panics or hangs. A panic inside symphonia is caught by `convert` and reported as
//! `DecoderFailed`; only a panic that escapes `convert` is a crash here.
#![no_main]

use std::io::Cursor;
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use tokio_util::sync::CancellationToken;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts on every panic, even one `convert` catches; this
    // one only prints, and a panic that escapes the target still aborts (libfuzzer-sys
    // checks for it after each input).
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    });
    let mut sink = Cursor::new(Vec::new());
    let token = CancellationToken::new();
    match converter::convert(Cursor::new(data.to_vec()), None, &mut sink, &token) {
        Ok(report) => assert_eq!(report.bytes_written, sink.get_ref().len() as u64),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
