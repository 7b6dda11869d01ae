//! What an email address is, for every service: the one rule by which auth accepts an
//! account's address at signup and the notification service accepts a recipient.
//!
//! An address is accepted when lettre — the mailer that sends the notification emails —
//! accepts it as an [`Address`] (RFC 5321/6531 local part, a domain or IP literal), and
//! it also passes the checks lettre leaves to its callers: no control, bidi-override or
//! invisible (zero-width, format) characters, a domain with a dot, at most 254 bytes.
//! The address is normalised first (trimmed, Unicode NFC, lower case), so that
//! `Ada@Example.COM` and `ada@example.com` are one account and one recipient. Because
//! both services call [`normalise`], signup never accepts an address the mailer then
//! refuses (a job would end with no email).

use std::str::FromStr;

pub use lettre::Address;
use unicode_normalization::UnicodeNormalization;

/// RFC 5321's limit on a forward path.
pub const MAX_EMAIL_BYTES: usize = 254;

/// `raw` is not an address the system accepts. Its text shows the input escaped (no
/// raw control or bidi characters) and cut short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{shown}' is not a valid email address")]
pub struct AddressError {
    shown: String,
}

impl AddressError {
    fn of(raw: &str) -> Self {
        Self {
            shown: raw.chars().take(64).flat_map(char::escape_debug).collect(),
        }
    }
}

/// The normalised address of `raw`, or why it is refused (see the module docs).
pub fn normalise(raw: &str) -> Result<Address, AddressError> {
    let refused = || AddressError::of(raw);
    let email: String = raw.trim().nfc().collect::<String>().to_lowercase();
    if email.is_empty() || email.len() > MAX_EMAIL_BYTES || email.chars().any(is_hidden) {
        return Err(refused());
    }
    let (_, domain) = email.rsplit_once('@').ok_or_else(refused)?;
    // lettre accepts a dotless domain (`a@localhost`) and a trailing dot; neither is
    // an address on the internet.
    let plausible_domain = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    if !plausible_domain {
        return Err(refused());
    }
    Address::from_str(&email).map_err(|_| refused())
}

/// Characters that are not visible as themselves: controls, whitespace, bidi controls
/// (which reorder how an address is shown), zero-width and other format characters.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}' // soft hyphen
                | '\u{034F}' // combining grapheme joiner
                | '\u{061C}' // Arabic letter mark
                | '\u{115F}'..='\u{1160}' // Hangul fillers
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}' // Mongolian variation selectors, vowel separator
                | '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
                | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
                | '\u{2060}'..='\u{206F}' // word joiner, invisible operators, bidi isolates
                | '\u{3164}' // Hangul filler
                | '\u{FE00}'..='\u{FE0F}' // variation selectors
                | '\u{FEFF}' // zero-width no-break space (BOM)
                | '\u{FFA0}' // halfwidth Hangul filler
                | '\u{FFF0}'..='\u{FFFB}' // interlinear annotations, specials
                | '\u{E0000}'..='\u{E007F}' // tags
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised() {
        let address = normalise("  Georgio@Email.COM ").expect("valid");
        assert_eq!(address.to_string(), "georgio@email.com");
        // Composed and decomposed `é` are one address.
        assert_eq!(
            normalise("e\u{301}mile@example.com").expect("valid"),
            normalise("\u{e9}mile@example.com").expect("valid")
        );
        for good in [
            "a.b+tag@sub.example.co.uk",
            "o'brien@example.ie",
            "user_1@example.com",
            "名前@example.jp",
        ] {
            assert!(normalise(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn what_the_mailer_refuses_or_cannot_show_is_refused() {
        for bad in [
            "",
            "plain",
            "@x.com",
            "a@",
            "a@localhost",
            "a@.com",
            "a@x.com.",
            "a@x..com",
            "a b@x.com",
            "a@b@x.com",
            "<a@x.com>",
            "Ada <a@x.com>",
            // Refused by lettre (not atext), accepted by a naive check.
            "a,b@x.com",
            "x(c)@x.com",
            "a;b@x.com",
            "a\"b@x.com",
            "a\\b@x.com",
            // Invisible or reordering characters.
            "ad\u{202E}moc.x@a.com",
            "a\u{200B}b@x.com",
            "ab@x\u{200D}.com",
            "a\u{2066}b@x.com",
            "\u{FEFF}ab@x.com",
            "a\u{0}b@x.com",
            "a\u{7}b@x.com",
            "a\nb@x.com",
            &format!("{}@x.com", "a".repeat(300)),
        ] {
            assert!(normalise(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_error_shows_the_input_escaped() {
        let error = normalise("a\u{202E}b@x.com").expect_err("bidi");
        let text = error.to_string();
        assert!(!text.contains('\u{202E}'), "{text}");
        assert!(text.contains("\\u{202e}"), "{text}");
    }
}
