//! Config values as they come from flags and `FLOTILLA_*` variables: sizes, durations and
//! upstream URLs parse or give a message, never panic. (`parse_listen_addr` past std's
//! `SocketAddr` parser is the system resolver: not fuzzed, it would query DNS.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use platform::config::{parse_byte_size, parse_duration, parse_listen_addr};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    match parse_byte_size(value) {
        Ok(size) => assert!(size > 0, "{value:?} gave a size of 0"),
        Err(message) => assert!(!message.is_empty()),
    }
    match parse_duration(value) {
        Ok(duration) => assert!(!duration.is_zero(), "{value:?} gave a zero duration"),
        Err(message) => assert!(!message.is_empty()),
    }
    if value.parse::<std::net::SocketAddr>().is_ok() || !value.contains(':') {
        let _ = parse_listen_addr(value);
    }
    if let Ok(upstream) = gateway::parse_upstream_url(value) {
        let _ = format!("{upstream:?}");
    }
});
