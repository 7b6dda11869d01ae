//! Input parsed into types at the edge: an [`Email`] is normalised and plausible, a
//! [`Password`] is long enough and never printed.

/// Shortest password accepted (docs/API.md, `POST /signup`).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest new password accepted; argon2 copes with more, but nobody needs more and a
/// megabyte "password" is only a way to waste our CPU. Counted in characters, as the
/// OpenAPI `maxLength` counts, so every password the schema allows is accepted.
pub const MAX_PASSWORD_CHARS: usize = 256;
/// Longest password read at login (256 characters of at most 4 bytes each).
pub const MAX_PASSWORD_BYTES: usize = 4 * MAX_PASSWORD_CHARS;
/// An email address the mailer can send to, normalised (trimmed, NFC, lower case) so
/// that `A@X.com` and `a@x.com` are one account: [`contracts::email::normalise`], the
/// same rule the notification service applies to recipients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    Email(#[from] contracts::email::AddressError),
    #[error("the password must be at least {MIN_PASSWORD_CHARS} characters long")]
    PasswordTooShort,
    #[error("the password must be at most {MAX_PASSWORD_CHARS} characters long")]
    PasswordTooLong,
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        Ok(Self(contracts::email::normalise(raw)?.to_string()))
    }

    /// The address to look an account up by at login: `raw` parsed, or — for accounts
    /// created before the address rule was what it is — trimmed and lower-cased as
    /// they were then. Never used to create an account.
    pub fn for_lookup(raw: &str) -> Self {
        Self::parse(raw).unwrap_or_else(|_| Self(raw.trim().to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password that meets the policy. Its `Debug` hides it, so it cannot end up in logs.
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    /// A new password, checked against the policy (signup, `user add`, admin seed).
    pub fn new(raw: String) -> Result<Self, InputError> {
        if raw.chars().count() < MIN_PASSWORD_CHARS {
            return Err(InputError::PasswordTooShort);
        }
        if raw.chars().count() > MAX_PASSWORD_CHARS {
            return Err(InputError::PasswordTooLong);
        }
        Ok(Self(raw))
    }

    /// A password offered at login: no policy (old accounts may predate it), only the
    /// length cap.
    pub fn offered(raw: String) -> Option<Self> {
        (raw.len() <= MAX_PASSWORD_BYTES).then_some(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised() {
        let email = Email::parse("  Georgio@Email.COM ").expect("valid");
        assert_eq!(email.as_str(), "georgio@email.com");
    }

    #[test]
    fn implausible_emails_are_refused() {
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
            // Issue 14: accepted once, then refused by the mailer or shown reordered.
            "a,b@x.com",
            "x(c)@x.com",
            "a;b@x.com",
            "ad\u{202E}moc.x@a.com",
            "a\u{200B}b@x.com",
            &format!("{}@x.com", "a".repeat(300)),
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_policy() {
        assert_eq!(
            Password::new("1234567".into()).err(),
            Some(InputError::PasswordTooShort)
        );
        assert!(Password::new("12345678".into()).is_ok());
        // Eight characters, more bytes: characters count.
        assert!(Password::new("ééééééé".into()).is_err());
        assert_eq!(
            Password::new("x".repeat(MAX_PASSWORD_CHARS + 1)).err(),
            Some(InputError::PasswordTooLong)
        );
        // The most characters, each of the most bytes: accepted, and within the cap
        // at login.
        let widest = "😀".repeat(MAX_PASSWORD_CHARS);
        assert!(Password::new(widest.clone()).is_ok());
        assert!(Password::offered(widest).is_some());
        assert!(Password::offered("short".into()).is_some());
        assert_eq!(
            format!("{:?}", Password::new("secret123".into())),
            "Ok(Password(***))"
        );
    }
}
