//! Blog event JSON (docs/API.md §6) as `POST /events` and the bus deliver it: an envelope
//! or a typed event parses or is refused; a parsed event survives a round trip with the
//! same content-derived message id.
#![no_main]

use contracts::blog::{BlogEvent, Envelope, is_valid_event_type, text_field};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = serde_json::from_slice::<BlogEvent>(data) {
        let json = event.to_json();
        let again: BlogEvent = serde_json::from_str(&json).expect("an event reads back");
        assert_eq!(again, event);
        assert_eq!(again.message_id(), event.message_id());
        let envelope = Envelope::from(&event);
        assert_eq!(envelope.blog_event().expect("typed"), Some(event));
    }
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(data) {
        let _ = is_valid_event_type(&envelope.event_type);
        if let Ok(Some(event)) = envelope.blog_event() {
            assert_eq!(event.event_type(), envelope.event_type);
        }
    }
    if let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) {
        for field in ["title", "content"] {
            if let Ok(text) = text_field(&body, field) {
                assert!(!text.trim().is_empty());
                assert!(text.chars().count() <= contracts::blog::MAX_TEXT_CHARS);
            }
        }
    }
});
