//! JSON Schemas of the blog's inputs and events that say exactly what the services
//! accept: the patterns are built from the same predicates the services check
//! ([`blog::check_text`], the id and event-type rules) — kept as text in
//! `schema/kept_patterns.rs`, which a test rebuilds and compares — so every string the OpenAPI
//! document allows is accepted and every other one is refused (Schemathesis checks both
//! ways). A hand-written regex would drift from Unicode's general categories.
//!
//! Patterns are ECMA-262 / Python-compatible: BMP characters as `\uXXXX`, characters
//! beyond it as themselves.

use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        ObjectBuilder, OneOfBuilder, RefOr, Schema, Type,
        extensions::Extensions,
        schema::{AdditionalProperties, SchemaType},
    },
};

use crate::blog::{self, MAX_ID_CHARS, MAX_TEXT_CHARS};

// The patterns themselves, kept as text: building them walks every Unicode scalar value
// through the predicates (≈ 40 ms of every start-up that builds the API descriptions).
// `the_kept_patterns_are_built_from_the_predicates` rebuilds them and fails on any
// difference; `FLOTILLA_REGENERATE=1` makes it write the file anew.
mod kept_patterns;

/// The pattern of [`blog::check_text`]: no forbidden control character, at least one
/// visible one.
pub fn text_pattern() -> &'static str {
    kept_patterns::TEXT
}

/// The pattern of a post or comment id in an event: visible characters only.
pub fn id_pattern() -> &'static str {
    kept_patterns::ID
}

/// The pattern of an event type name ([`blog::is_valid_event_type`]).
pub fn event_type_pattern() -> &'static str {
    kept_patterns::EVENT_TYPE
}

/// `"not": {"enum": [the four blog types]}`. utoipa's builders have no `not`; its
/// extensions are a flattened map, so the keyword is added there.
fn not_one_of_the_blog_types() -> Extensions {
    let mut extensions = Extensions::default();
    extensions.insert(
        "not".to_owned(),
        serde_json::json!({"enum": blog::EVENT_TYPES}),
    );
    extensions
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// A string of 1 to `max_chars` characters matching `pattern`.
fn string_of(max_chars: usize, pattern: impl Into<String>) -> ObjectBuilder {
    string()
        .min_length(Some(1))
        .max_length(Some(max_chars))
        .pattern(Some(pattern))
}

/// A title or a comment: 1 to 10,000 characters, at least one visible, no control
/// character but tab and line breaks.
pub fn text_schema(description: &str) -> ObjectBuilder {
    string_of(MAX_TEXT_CHARS, text_pattern()).description(Some(description))
}

/// An id carried by an event: 1 to 64 visible characters.
pub fn id_schema(description: &str) -> ObjectBuilder {
    string_of(MAX_ID_CHARS, id_pattern()).description(Some(description))
}

fn status_schema() -> ObjectBuilder {
    string()
        .enum_values(Some(["pending", "approved", "rejected"]))
        .description(Some("The comment's moderation state"))
}

/// `{"type": event_type, "data": {fields…}}` with exactly `fields`, all required.
fn envelope(event_type: &str, description: &str, fields: Vec<(&str, ObjectBuilder)>) -> Schema {
    let mut data = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    for (name, schema) in fields {
        data = data.property(name, schema).required(name);
    }
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .property("type", string().enum_values(Some([event_type])))
        .required("type")
        .property("data", data)
        .required("data")
        .into()
}

fn comment_fields() -> Vec<(&'static str, ObjectBuilder)> {
    vec![
        ("id", id_schema("The comment's id")),
        ("content", text_schema("The comment")),
        ("postId", id_schema("The post commented on")),
        ("status", status_schema()),
    ]
}

/// An event of the blog, as `POST /events` accepts it and `GET /events` returns it:
/// one of the four blog events (exactly their fields), or an envelope of any other type
/// (carried as it is; the services ignore it).
#[derive(Debug)]
pub struct EventEnvelope;

impl PartialSchema for EventEnvelope {
    fn schema() -> RefOr<Schema> {
        let other = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "An event of another type: carried and logged as it is, ignored by the blog's services",
            ))
            .property(
                "type",
                string_of(100, event_type_pattern()).extensions(Some(not_one_of_the_blog_types())),
            )
            .required("type")
            .property("data", ObjectBuilder::new().schema_type(SchemaType::AnyValue));
        OneOfBuilder::new()
            .item(envelope(
                blog::POST_CREATED,
                "A post was created (routing key `blog.PostCreated`)",
                vec![
                    ("id", id_schema("The post's id")),
                    ("title", text_schema("The post's title")),
                ],
            ))
            .item(envelope(
                blog::COMMENT_CREATED,
                "A comment was written, `pending` moderation (`blog.CommentCreated`)",
                comment_fields(),
            ))
            .item(envelope(
                blog::COMMENT_MODERATED,
                "Moderation decided on a comment (`blog.CommentModerated`)",
                comment_fields(),
            ))
            .item(envelope(
                blog::COMMENT_UPDATED,
                "The comments service applied a decision (`blog.CommentUpdated`)",
                comment_fields(),
            ))
            .item(other)
            .into()
    }
}

impl ToSchema for EventEnvelope {}

/// A request body of one checked text member (`blog::NewPost`, `blog::NewComment`).
fn text_body(description: &str, member: &str, text: ObjectBuilder) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .property(member, text)
        .required(member)
        .into()
}

/// The OpenAPI schema of a [`text_body`] request type of `blog`, named as the type.
macro_rules! text_body_schema {
    ($name:ident { $text:ident: $member:literal }, $description:literal) => {
        impl PartialSchema for blog::$name {
            fn schema() -> RefOr<Schema> {
                text_body($description, blog::$text::FIELD, text_schema($member))
            }
        }

        impl ToSchema for blog::$name {
            fn name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
        }
    };
}

text_body_schema!(
    NewPost {
        Title: "The post's title"
    },
    "A new post: `POST /posts/create` (or `POST /posts`). Other members are ignored."
);
text_body_schema!(
    NewComment {
        CommentText: "The comment"
    },
    "A new comment: `POST /posts/{id}/comments`. Other members are ignored."
);

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    /// The characters of a class body written by [`class_of`], as ranges.
    fn ranges(class: &str) -> Vec<(u32, u32)> {
        let mut chars = class.chars();
        let mut next = || -> Option<u32> {
            let c = chars.next()?;
            if c == '\\' {
                let hex: String = chars.by_ref().skip(1).take(4).collect();
                u32::from_str_radix(&hex, 16).ok()
            } else {
                Some(c as u32)
            }
        };
        let mut out = Vec::new();
        while let Some(first) = next() {
            out.push((first, first));
        }
        // `a - b` came out as three entries: fold them into one range.
        let mut folded: Vec<(u32, u32)> = Vec::new();
        let mut i = 0;
        while i < out.len() {
            if i + 2 < out.len() && out[i + 1].0 == '-' as u32 {
                folded.push((out[i].0, out[i + 2].0));
                i += 3;
            } else {
                folded.push(out[i]);
                i += 1;
            }
        }
        folded
    }

    /// `c` as it appears in a regex character class.
    fn class_char(out: &mut String, c: char) {
        if (c as u32) <= 0xFFFF {
            let _ = write!(out, "\\u{:04X}", c as u32);
        } else {
            out.push(c);
        }
    }

    /// A character class body (without brackets) of every character for which `pick`
    /// holds, as ranges.
    fn class_of(pick: impl Fn(char) -> bool) -> String {
        let mut out = String::new();
        let mut run: Option<(char, char)> = None;
        let flush = |out: &mut String, run: Option<(char, char)>| {
            if let Some((first, last)) = run {
                class_char(out, first);
                if last != first {
                    out.push('-');
                    class_char(out, last);
                }
            }
        };
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            if pick(c) {
                run = match run {
                    Some((first, last)) if last as u32 + 1 == c as u32 => Some((first, c)),
                    other => {
                        flush(&mut out, other);
                        Some((c, c))
                    }
                };
            }
        }
        flush(&mut out, run);
        out
    }

    /// Control characters a title or comment may not hold (all but tab, LF, CR).
    fn forbidden_control(c: char) -> bool {
        c.is_control() && !matches!(c, '\t' | '\n' | '\r')
    }

    /// The three patterns as the predicates make them today.
    fn built_patterns() -> [(&'static str, String); 3] {
        let allowed = format!("[^{}]", class_of(forbidden_control));
        let visible = format!(
            "[^{}]",
            class_of(|c| blog::is_invisible(c) || forbidden_control(c))
        );
        [
            ("TEXT", format!("^{allowed}*{visible}{allowed}*$")),
            (
                "ID",
                format!(
                    "^[^{}]*$",
                    class_of(|c| blog::is_invisible(c) || c.is_control())
                ),
            ),
            (
                "EVENT_TYPE",
                format!(
                    "^[^{}]*$",
                    class_of(|c| matches!(c, '.' | '*' | '#')
                        || c.is_whitespace()
                        || c.is_control())
                ),
            ),
        ]
    }

    /// The kept patterns are exactly what the predicates build (a new Unicode version in
    /// the standard library or `unicode-properties` changes them): with
    /// `FLOTILLA_REGENERATE=1` the file is written anew instead.
    #[test]
    fn the_kept_patterns_are_built_from_the_predicates() {
        let built = built_patterns();
        if std::env::var_os("FLOTILLA_REGENERATE").is_some() {
            let mut file = String::from(
                "//! The JSON Schema patterns of the blog's text, ids and event types, built by\n\
                 //! `schema::tests::built_patterns` from the predicates the services check. Do not\n\
                 //! edit: `FLOTILLA_REGENERATE=1 cargo test -p contracts kept_patterns` writes it.\n\n",
            );
            for (name, pattern) in &built {
                let _ = writeln!(file, "pub(super) const {name}: &str = {pattern:?};");
            }
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/src/schema/kept_patterns.rs"),
                file,
            )
            .expect("written");
        }
        let kept = [
            kept_patterns::TEXT,
            kept_patterns::ID,
            kept_patterns::EVENT_TYPE,
        ];
        for ((name, built), kept) in built.iter().zip(kept) {
            assert!(
                built == kept,
                "the kept {name} pattern is out of date: run FLOTILLA_REGENERATE=1 cargo test -p contracts kept_patterns"
            );
        }
    }

    /// The pattern and the predicate it was built from agree on every character
    /// (read back by hand: no regex engine in this crate).
    #[test]
    fn the_text_pattern_is_built_from_the_check() {
        let pattern = text_pattern();
        let visible = pattern
            .split("*[^")
            .nth(1)
            .and_then(|rest| rest.split("][^").next())
            .expect("the visible class");
        let excluded = ranges(visible);
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let listed = excluded.iter().any(|&(a, b)| (a..=b).contains(&(c as u32)));
            assert_eq!(
                listed,
                blog::is_invisible(c) || forbidden_control(c),
                "U+{:04X}",
                c as u32
            );
        }
        assert!(blog::check_text("t", "\u{200B}").is_err());
        assert!(excluded.iter().any(|&(a, b)| (a..=b).contains(&0x200B)));
    }
}
