//! Bus message decoding on both backends: the embedded bus's stored headers (JSON), and
//! what the RabbitMQ consumer makes of a delivery whose properties (message id, header
//! table with bookkeeping such as the attempt count) are parsed from arbitrary AMQP
//! wire bytes by lapin's own parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            let headers = bus::embedded::decode_headers(text);
            let _ = headers.get(bus::TRACEPARENT);
        }
        return;
    }
    let Ok((body, properties)) = lapin::protocol::basic::parse_properties(rest) else {
        return;
    };
    let (message, attempt) = bus::amqp::decode_delivery_for_fuzzing("fuzz.key", &properties, body);
    assert!(!message.routing_key.is_empty() || properties.headers().is_some());
    let _ = attempt;
    let _ = message.traceparent();
    let _ = message.decode::<serde_json::Value>();
});
