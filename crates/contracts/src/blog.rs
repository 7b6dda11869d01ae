//! Events and inputs of the blog (docs/API.md §6), with the course's names: the four
//! events travel as `{"type": "...", "data": {...}}` envelopes whose `data` fields are
//! camelCase (`postId`), exactly what the course's event bus and React client expect.
//!
//! Flow: `posts` emits [`PostCreated`]; `comments` emits [`CommentCreated`] (status
//! `pending`); `moderation` answers with [`CommentModerated`]; `comments` applies it and
//! emits [`CommentUpdated`]. `query` folds all of them into the read model; `event-bus`
//! records every one in its ordered log. On the bus an event's routing key is
//! `blog.<type>` ([`routing_key`]), so `blog.#` ([`ALL_EVENTS`]) subscribes to all of
//! them, including types the course's client may post that this crate does not know.
//!
//! Every event has a message id derived from what it says ([`BlogEvent::message_id`]),
//! not a random one: the same event reaching a consumer twice — redelivered by the bus,
//! pushed to `POST /events`, or replayed from the log — is recognised by every inbox as
//! one message.

use serde::{Deserialize, Serialize};

/// Routing keys (= event type names).
pub const POST_CREATED: &str = "PostCreated";
pub const COMMENT_CREATED: &str = "CommentCreated";
pub const COMMENT_MODERATED: &str = "CommentModerated";
pub const COMMENT_UPDATED: &str = "CommentUpdated";
/// Every blog event type, in causal order of a comment's life.
pub const EVENT_TYPES: [&str; 4] = [
    POST_CREATED,
    COMMENT_CREATED,
    COMMENT_MODERATED,
    COMMENT_UPDATED,
];

/// The topic pattern matching every blog event.
pub const ALL_EVENTS: &str = "blog.#";

/// The bus routing key of events of type `event_type`.
pub fn routing_key(event_type: &str) -> String {
    format!("blog.{event_type}")
}

/// The event type carried by a message with `routing_key`, if it is a blog one.
pub fn event_type_of(routing_key: &str) -> Option<&str> {
    routing_key.strip_prefix("blog.")
}

/// Whether `name` can be an event type: 1–100 characters, none of which would change
/// its routing key's meaning (`.`, `*`, `#`) or be invisible.
pub fn is_valid_event_type(name: &str) -> bool {
    (1..=100).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| !matches!(c, '.' | '*' | '#') && !c.is_whitespace() && !c.is_control())
}

/// The longest title or comment accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 10_000;

/// A comment's moderation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CommentStatus {
    Pending,
    Approved,
    Rejected,
}

impl CommentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommentStatus::Pending => "pending",
            CommentStatus::Approved => "approved",
            CommentStatus::Rejected => "rejected",
        }
    }

    /// The status stored as text, `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(CommentStatus::Pending),
            "approved" => Some(CommentStatus::Approved),
            "rejected" => Some(CommentStatus::Rejected),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostCreated {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommentCreated {
    pub id: String,
    pub content: String,
    pub post_id: String,
    pub status: CommentStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommentModerated {
    pub id: String,
    pub post_id: String,
    pub status: CommentStatus,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommentUpdated {
    pub id: String,
    pub status: CommentStatus,
    pub post_id: String,
    pub content: String,
}

/// [`BlogEvent::message_id`] from an event's type, its `id` and (for a decision) its
/// `status`, without decoding the rest of it: what a reader of the log needs to tell
/// which events it has applied. `None` for a type that is not a blog event, or a decision
/// without a status.
pub fn message_id_of(event_type: &str, id: &str, status: Option<&str>) -> Option<String> {
    match (event_type, status) {
        (POST_CREATED | COMMENT_CREATED, _) => Some(format!("{event_type}:{id}")),
        (COMMENT_MODERATED | COMMENT_UPDATED, Some(status)) => {
            Some(format!("{event_type}:{id}:{status}"))
        }
        _ => None,
    }
}

/// One blog event in its `{"type", "data"}` envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum BlogEvent {
    PostCreated(PostCreated),
    CommentCreated(CommentCreated),
    CommentModerated(CommentModerated),
    CommentUpdated(CommentUpdated),
}

impl BlogEvent {
    /// The type name, which is also the routing key.
    pub fn event_type(&self) -> &'static str {
        match self {
            BlogEvent::PostCreated(_) => POST_CREATED,
            BlogEvent::CommentCreated(_) => COMMENT_CREATED,
            BlogEvent::CommentModerated(_) => COMMENT_MODERATED,
            BlogEvent::CommentUpdated(_) => COMMENT_UPDATED,
        }
    }

    /// The id of the message that carries this event, derived from its content so that
    /// every copy of the same event has the same id. A decision (moderated, updated)
    /// includes its status: a comment moderated again with another outcome is a new
    /// event, the same outcome twice is not.
    pub fn message_id(&self) -> String {
        let (id, status) = match self {
            BlogEvent::PostCreated(e) => (&e.id, None),
            BlogEvent::CommentCreated(e) => (&e.id, None),
            BlogEvent::CommentModerated(e) => (&e.id, Some(e.status.as_str())),
            BlogEvent::CommentUpdated(e) => (&e.id, Some(e.status.as_str())),
        };
        message_id_of(self.event_type(), id, status).unwrap_or_default()
    }

    /// The envelope as JSON text, the body of a bus message.
    pub fn to_json(&self) -> String {
        // Plain strings and enums only: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Any event as the course's event bus accepts it: a type name and free-form data.
/// Known types parse further into [`BlogEvent`]; others are carried as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Envelope {
    /// The blog event this envelope holds, if it is one of the four known types with
    /// well-formed data. `Ok(None)` for another type; `Err` for a known type whose data
    /// does not fit.
    pub fn blog_event(&self) -> Result<Option<BlogEvent>, serde_json::Error> {
        if !EVENT_TYPES.contains(&self.event_type.as_str()) {
            return Ok(None);
        }
        serde_json::from_value(serde_json::json!({"type": self.event_type, "data": self.data}))
            .map(Some)
    }
}

impl From<&BlogEvent> for Envelope {
    fn from(event: &BlogEvent) -> Self {
        let mut value = serde_json::to_value(event).unwrap_or_default();
        let data = value
            .get_mut("data")
            .map(serde_json::Value::take)
            .unwrap_or_default();
        Envelope {
            event_type: event.event_type().to_owned(),
            data,
        }
    }
}

/// Why a title or a comment's content was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("'{0}' is missing or empty")]
    Empty(&'static str),
    #[error("'{field}' has {chars} characters; at most {MAX_TEXT_CHARS} are allowed")]
    TooLong { field: &'static str, chars: usize },
    #[error("'{0}' must be a string")]
    NotText(&'static str),
    #[error("'{0}' has no visible character")]
    Invisible(&'static str),
    #[error("'{field}' contains the control character U+{code:04X}")]
    Control { field: &'static str, code: u32 },
}

/// The text of `field` in a JSON request body, checked by [`check_text`]. The text is
/// kept as sent (not trimmed).
pub fn text_field(body: &serde_json::Value, field: &'static str) -> Result<String, TextError> {
    match body.get(field) {
        None | Some(serde_json::Value::Null) => Err(TextError::Empty(field)),
        Some(serde_json::Value::String(text)) => check_text(field, text).map(|()| text.clone()),
        Some(_) => Err(TextError::NotText(field)),
    }
}

/// A post's title, checked by [`check_text`] where it enters: holding one is the proof,
/// so nothing behind the edge checks it again. Kept as sent (not trimmed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Title(String);

/// A comment's content, checked by [`check_text`] where it enters (see [`Title`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CommentText(String);

macro_rules! checked_text {
    ($name:ident, $field:literal) => {
        impl $name {
            /// The JSON member this text arrives in.
            pub const FIELD: &'static str = $field;

            /// Checks `text` ([`check_text`]).
            pub fn parse(text: String) -> Result<Self, TextError> {
                check_text(Self::FIELD, &text).map(|()| Self(text))
            }

            /// Its member of a request body ([`text_field`]).
            pub fn from_body(body: &serde_json::Value) -> Result<Self, TextError> {
                text_field(body, Self::FIELD).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_text!(Title, "title");
checked_text!(CommentText, "content");

/// A request body of one checked text member: made only from a body whose member passed
/// [`check_text`]; other members of the body are ignored. (Its OpenAPI schema is in
/// `schema`, with the rules it is drawn from.)
macro_rules! text_body {
    ($(#[$doc:meta])* $name:ident { $member:ident: $text:ident }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            pub $member: $text,
        }

        impl TryFrom<serde_json::Value> for $name {
            type Error = TextError;

            fn try_from(body: serde_json::Value) -> Result<Self, TextError> {
                $text::from_body(&body).map(|$member| $name { $member })
            }
        }
    };
}

text_body! {
    /// A new post as `POST /posts/create` (or `POST /posts`) takes it.
    NewPost { title: Title }
}

text_body! {
    /// A new comment as `POST /posts/{id}/comments` takes it.
    NewComment { content: CommentText }
}

/// An event as `POST /events` of the event bus takes it: an envelope whose type name and
/// (for the four blog types) data passed [`Envelope::validated`], so that a holder
/// publishes without checking again.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedEvent {
    pub envelope: Envelope,
    /// The blog event it holds; `None` for a type the blog does not know (carried as
    /// it is, as the course's bus does).
    pub event: Option<BlogEvent>,
}

impl TryFrom<serde_json::Value> for CheckedEvent {
    type Error = EventError;

    fn try_from(body: serde_json::Value) -> Result<Self, EventError> {
        let envelope: Envelope = serde_json::from_value(body)
            .map_err(|e| EventError(format!("expected {{\"type\", \"data\"}}: {e}")))?;
        let event = envelope.validated()?;
        Ok(CheckedEvent { envelope, event })
    }
}

/// Why a body is not an event envelope.
#[derive(Debug, thiserror::Error)]
#[error("not an event envelope: {0}")]
pub struct NotAnEnvelope(#[from] serde_json::Error);

impl TryFrom<serde_json::Value> for Envelope {
    type Error = NotAnEnvelope;

    fn try_from(body: serde_json::Value) -> Result<Self, NotAnEnvelope> {
        Ok(serde_json::from_value(body)?)
    }
}

/// Whether `text` may be a title or a comment: at most [`MAX_TEXT_CHARS`] characters, at
/// least one of them visible, and no control character but tab and line breaks. A text
/// of only zero-width or other invisible characters would show as an empty post.
pub fn check_text(field: &'static str, text: &str) -> Result<(), TextError> {
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(TextError::TooLong { field, chars });
    }
    if let Some(c) = text
        .chars()
        .find(|&c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(TextError::Control {
            field,
            code: u32::from(c),
        });
    }
    if text.trim().is_empty() {
        return Err(TextError::Empty(field));
    }
    if text.chars().all(is_invisible) {
        return Err(TextError::Invisible(field));
    }
    Ok(())
}

/// Whether `c` shows nothing by itself: white space, format characters (zero-width
/// spaces and joiners, bidi controls, the soft hyphen, word joiners, BOM), marks that
/// only combine with a preceding character (including variation selectors), and the
/// fillers that render as blanks. Unicode's general categories come from
/// `unicode-properties` rather than a hand-kept table.
pub(crate) fn is_invisible(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};
    c.is_whitespace()
        || matches!(
            c.general_category(),
            GeneralCategory::Format
                | GeneralCategory::NonspacingMark
                | GeneralCategory::EnclosingMark
                | GeneralCategory::Control
        )
        // Hangul fillers and the blank Braille pattern are letters or symbols that
        // render as nothing.
        || matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}')
}

/// The longest post or comment id an event may carry (the stores keep 64 characters).
pub const MAX_ID_CHARS: usize = 64;

/// Why an event handed to the event bus was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EventError(String);

impl Envelope {
    /// The event checked as the services check their own input, for `POST /events`: a
    /// valid type name; for the four blog types, `data` with exactly their fields, ids
    /// of 1–[`MAX_ID_CHARS`] visible characters and titles or contents that pass
    /// [`check_text`]. Another type is accepted as it is (`Ok(None)`), as the course's
    /// bus does; consumers ignore it.
    pub fn validated(&self) -> Result<Option<BlogEvent>, EventError> {
        if !is_valid_event_type(&self.event_type) {
            return Err(EventError(
                "'type' must be 1 to 100 characters without '.', '*', '#' or blanks".into(),
            ));
        }
        let fields: &[&str] = match self.event_type.as_str() {
            POST_CREATED => &["id", "title"],
            COMMENT_CREATED | COMMENT_MODERATED | COMMENT_UPDATED => {
                &["id", "content", "postId", "status"]
            }
            _ => return Ok(None),
        };
        let invalid =
            |detail: String| EventError(format!("invalid data for {}: {detail}", self.event_type));
        let Some(data) = self.data.as_object() else {
            return Err(invalid("'data' must be an object".into()));
        };
        if let Some(unknown) = data.keys().find(|key| !fields.contains(&key.as_str())) {
            return Err(invalid(format!(
                "unknown field '{unknown}' (expected {})",
                fields.join(", ")
            )));
        }
        let event = self
            .blog_event()
            .map_err(|e| invalid(e.to_string()))?
            .ok_or_else(|| invalid("not a blog event".into()))?;
        // (field, id) pairs and the one text of the event.
        let (ids, (field, content)) = match &event {
            BlogEvent::PostCreated(e) => (vec![("id", &e.id)], ("title", &e.title)),
            BlogEvent::CommentCreated(CommentCreated {
                id,
                post_id,
                content,
                ..
            })
            | BlogEvent::CommentModerated(CommentModerated {
                id,
                post_id,
                content,
                ..
            })
            | BlogEvent::CommentUpdated(CommentUpdated {
                id,
                post_id,
                content,
                ..
            }) => (vec![("id", id), ("postId", post_id)], ("content", content)),
        };
        check_text(field, content).map_err(|e| invalid(e.to_string()))?;
        for (field, id) in ids {
            let chars = id.chars().count();
            if chars == 0
                || chars > MAX_ID_CHARS
                || id.chars().any(|c| is_invisible(c) || c.is_control())
            {
                return Err(invalid(format!(
                    "'{field}' must be 1 to {MAX_ID_CHARS} visible characters without blanks"
                )));
            }
        }
        Ok(Some(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_bodies_parse_into_checked_texts_or_say_why_not() {
        let post = NewPost::try_from(json!({"title": " Hello ", "extra": 1})).expect("a post");
        assert_eq!(post.title.as_str(), " Hello ", "kept as sent");
        for (body, error) in [
            (json!({}), TextError::Empty("title")),
            (json!({"title": null}), TextError::Empty("title")),
            (json!({"title": 7}), TextError::NotText("title")),
            (json!({"title": "\u{200B}"}), TextError::Invisible("title")),
            (
                json!({"title": "a\u{7}"}),
                TextError::Control {
                    field: "title",
                    code: 7,
                },
            ),
        ] {
            assert_eq!(NewPost::try_from(body.clone()), Err(error), "{body}");
        }
        let long = "x".repeat(MAX_TEXT_CHARS + 1);
        assert_eq!(
            NewComment::try_from(json!({ "content": long })),
            Err(TextError::TooLong {
                field: "content",
                chars: MAX_TEXT_CHARS + 1
            })
        );
        assert_eq!(
            NewComment::try_from(json!({"content": "fine"}))
                .expect("a comment")
                .content
                .into_string(),
            "fine"
        );
    }

    #[test]
    fn message_ids_are_the_same_from_an_event_and_from_its_id_fields() {
        let events = [
            json!({"type": "PostCreated", "data": {"id": "p1", "title": "T"}}),
            json!({"type": "CommentCreated", "data": {"id": "c1", "postId": "p1", "content": "x", "status": "pending"}}),
            json!({"type": "CommentModerated", "data": {"id": "c1", "postId": "p1", "content": "x", "status": "rejected"}}),
            json!({"type": "CommentUpdated", "data": {"id": "c1", "postId": "p1", "content": "x", "status": "approved"}}),
        ];
        let mut ids = Vec::new();
        for value in events {
            let event: BlogEvent = serde_json::from_value(value.clone()).expect("an event");
            let status = value["data"]["status"].as_str();
            let decision = matches!(
                event,
                BlogEvent::CommentModerated(_) | BlogEvent::CommentUpdated(_)
            );
            let from_fields = message_id_of(
                event.event_type(),
                value["data"]["id"].as_str().expect("id"),
                status.filter(|_| decision),
            );
            assert_eq!(from_fields.as_deref(), Some(event.message_id().as_str()));
            ids.push(event.message_id());
        }
        assert_eq!(
            ids,
            [
                "PostCreated:p1",
                "CommentCreated:c1",
                "CommentModerated:c1:rejected",
                "CommentUpdated:c1:approved"
            ]
        );
        assert_eq!(message_id_of("Other", "x", None), None);
        assert_eq!(message_id_of(COMMENT_MODERATED, "c1", None), None);
    }

    #[test]
    fn a_published_event_is_checked_once_where_it_enters() {
        let checked = CheckedEvent::try_from(json!({
            "type": "PostCreated", "data": {"id": "p1", "title": "T"}
        }))
        .expect("a blog event");
        assert!(matches!(checked.event, Some(BlogEvent::PostCreated(_))));
        let other =
            CheckedEvent::try_from(json!({"type": "Custom", "data": [1]})).expect("any type");
        assert!(other.event.is_none());
        for body in [
            json!([]),
            json!({"type": "bad type"}),
            json!({"type": "PostCreated", "data": {"id": "p1"}}),
        ] {
            assert!(CheckedEvent::try_from(body.clone()).is_err(), "{body}");
        }
    }

    #[test]
    fn events_have_the_course_envelope_and_field_names() {
        let event = BlogEvent::CommentCreated(CommentCreated {
            id: "c1".into(),
            content: "hi".into(),
            post_id: "p1".into(),
            status: CommentStatus::Pending,
        });
        assert_eq!(
            serde_json::to_value(&event).expect("serializes"),
            json!({"type": "CommentCreated", "data": {"id": "c1", "content": "hi", "postId": "p1", "status": "pending"}})
        );
        let moderated: BlogEvent = serde_json::from_value(json!({
            "type": "CommentModerated",
            "data": {"id": "c1", "postId": "p1", "status": "rejected", "content": "orange"}
        }))
        .expect("deserializes");
        assert_eq!(moderated.event_type(), COMMENT_MODERATED);
        assert_eq!(moderated.message_id(), "CommentModerated:c1:rejected");
    }

    #[test]
    fn envelopes_of_unknown_types_are_kept_and_known_ones_checked() {
        let other: Envelope =
            serde_json::from_value(json!({"type": "Hello", "data": {"x": 1}})).expect("parses");
        assert_eq!(other.blog_event().expect("no error"), None);
        let bad: Envelope =
            serde_json::from_value(json!({"type": "PostCreated", "data": {"id": 1}}))
                .expect("parses");
        assert!(bad.blog_event().is_err());
        let post = BlogEvent::PostCreated(PostCreated {
            id: "p".into(),
            title: "t".into(),
        });
        let envelope = Envelope::from(&post);
        assert_eq!(envelope.data, json!({"id": "p", "title": "t"}));
        assert_eq!(envelope.blog_event().expect("valid"), Some(post));
    }

    #[test]
    fn routing_keys_carry_the_type() {
        assert_eq!(routing_key(POST_CREATED), "blog.PostCreated");
        assert_eq!(event_type_of("blog.PostCreated"), Some(POST_CREATED));
        assert_eq!(event_type_of("video"), None);
        assert!(is_valid_event_type("CommentCreated"));
        assert!(!is_valid_event_type(""));
        assert!(!is_valid_event_type("a.b"));
        assert!(!is_valid_event_type("#"));
        assert!(!is_valid_event_type("a b"));
    }

    #[test]
    fn text_fields_are_checked() {
        assert_eq!(
            text_field(&json!({"title": "hello"}), "title"),
            Ok("hello".to_owned())
        );
        assert_eq!(
            text_field(&json!({}), "title"),
            Err(TextError::Empty("title"))
        );
        assert_eq!(
            text_field(&json!({"title": "  "}), "title"),
            Err(TextError::Empty("title"))
        );
        assert_eq!(
            text_field(&json!({"title": 3}), "title"),
            Err(TextError::NotText("title"))
        );
        let longest = "é".repeat(MAX_TEXT_CHARS);
        assert!(text_field(&json!({ "content": longest }), "content").is_ok());
        assert!(matches!(
            text_field(&json!({ "content": format!("{longest}x") }), "content"),
            Err(TextError::TooLong { chars: 10_001, .. })
        ));
    }

    #[test]
    fn invisible_and_control_characters_are_refused() {
        for invisible in [
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
            " \u{00AD} ",
            "\u{3164}",
            "\u{202E}\u{2066}",
            "\u{FE0F}",
        ] {
            assert_eq!(
                text_field(&json!({ "title": invisible }), "title"),
                Err(TextError::Invisible("title")),
                "{invisible:?}"
            );
        }
        for (text, code) in [
            ("a\u{0}b", 0),
            ("bell\u{7}", 7),
            ("esc\u{1b}[31m", 0x1b),
            ("\u{85}x", 0x85),
        ] {
            assert_eq!(
                text_field(&json!({ "content": text }), "content"),
                Err(TextError::Control {
                    field: "content",
                    code
                }),
                "{text:?}"
            );
        }
        // Visible text keeps its joiners, accents, emoji and line breaks.
        for fine in [
            "line one\nline two\r\n\tend",
            "e\u{301}",
            "👩\u{200D}💻",
            "\u{200B}x",
            "日本語",
        ] {
            assert!(
                text_field(&json!({ "content": fine }), "content").is_ok(),
                "{fine:?}"
            );
        }
    }

    #[test]
    fn events_are_validated_like_the_services_input() {
        let envelope = |event_type: &str, data: serde_json::Value| Envelope {
            event_type: event_type.into(),
            data,
        };
        let post = envelope(POST_CREATED, json!({"id": "p1", "title": "Hello"}));
        assert!(matches!(
            post.validated(),
            Ok(Some(BlogEvent::PostCreated(_)))
        ));
        let comment = json!({"id": "c1", "postId": "p1", "status": "approved", "content": "hi"});
        for known in [COMMENT_CREATED, COMMENT_MODERATED, COMMENT_UPDATED] {
            assert!(
                envelope(known, comment.clone()).validated().is_ok(),
                "{known}"
            );
        }
        // Unknown types pass as they are, as on the course's bus.
        assert_eq!(envelope("Hello", json!([1, 2])).validated(), Ok(None));
        let long = "x".repeat(200_000);
        for bad in [
            envelope("a.b", json!({})),
            envelope(POST_CREATED, json!({"id": "p1", "title": long})),
            envelope(POST_CREATED, json!({"id": "p1", "title": "\u{200B}"})),
            envelope(POST_CREATED, json!({"id": "p1", "title": "a\u{0}"})),
            envelope(
                POST_CREATED,
                json!({"id": "p1", "title": "t", "admin": true}),
            ),
            envelope(POST_CREATED, json!({"id": "", "title": "t"})),
            envelope(POST_CREATED, json!({"id": "x".repeat(65), "title": "t"})),
            envelope(POST_CREATED, json!({"id": "a b", "title": "t"})),
            envelope(POST_CREATED, json!("p1")),
            envelope(
                COMMENT_MODERATED,
                json!({"id": "c1", "postId": "p1", "status": "approved"}),
            ),
            envelope(
                COMMENT_UPDATED,
                json!({"id": "c1", "postId": "p1", "status": "gone", "content": "x"}),
            ),
        ] {
            assert!(bad.validated().is_err(), "{bad:?}");
        }
    }
}
