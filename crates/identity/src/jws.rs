//! The compact JWS of an access token, checked by hand rather than by `jsonwebtoken`:
//! the public keys stay decoded (a decompressed Ed25519 point per `kid`, built once when
//! the key set arrives) instead of being rebuilt from the JWK on every call, and the
//! header and claims are each parsed once.
//!
//! What is accepted is exactly: three base64url parts without padding; a header whose
//! `alg` is `EdDSA`, that names a `kid` and asks for no extension (`crit`); an Ed25519
//! signature over `header.payload` that passes `verify_strict` (canonical `s`, no
//! small-order `R` or key); then claims with our issuer, unexpired, not issued in the
//! future. The signature is checked before the claims are even decoded.

use std::borrow::Cow;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{SIGNATURE_LENGTH, Signature, VerifyingKey};
use serde::Deserialize;

use crate::{Claims, ISSUER};

/// Why a token was not accepted. Everything but [`VerifyError::KeysUnavailable`] is
/// the caller's fault (401); that one is ours (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signing algorithm is not accepted")]
    UnsupportedAlgorithm,
    #[error("the token requires header extensions (crit) that are not supported")]
    UnsupportedExtension,
    #[error("the token does not name its signing key (kid)")]
    MissingKeyId,
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token's claims are invalid")]
    InvalidClaims,
    #[error("the signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl From<VerifyError> for platform::Problem {
    fn from(error: VerifyError) -> Self {
        match error {
            VerifyError::KeysUnavailable(cause) => {
                tracing::warn!(%cause, "cannot verify tokens: signing keys unavailable");
                platform::Problem::service_unavailable(
                    "tokens cannot be verified right now; try again shortly",
                )
            }
            other => platform::Problem::unauthorized(other.to_string()),
        }
    }
}

/// The header members we read; any others (`typ`, …) are ignored, as RFC 7515 allows
/// for members not listed in `crit`.
#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    /// Extensions the token says must be understood; we understand none.
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// A token split into its parts, its header checked, its signature not yet.
pub(crate) struct UnverifiedToken<'t> {
    text: &'t str,
    kid: Box<str>,
    /// `header.payload`, what the signature covers.
    signing_input: &'t str,
    payload: &'t str,
    signature: Signature,
}

impl<'t> UnverifiedToken<'t> {
    pub(crate) fn parse(token: &'t str) -> Result<Self, VerifyError> {
        let (signing_input, signature) = token.rsplit_once('.').ok_or(VerifyError::Malformed)?;
        let (header, payload) = signing_input
            .split_once('.')
            .ok_or(VerifyError::Malformed)?;
        if payload.contains('.') {
            return Err(VerifyError::Malformed);
        }
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| VerifyError::Malformed)?;
        let header: JoseHeader<'_> =
            serde_json::from_slice(&header).map_err(|_| VerifyError::Malformed)?;
        if header.alg != "EdDSA" {
            return Err(VerifyError::UnsupportedAlgorithm);
        }
        if header.crit.is_some() {
            return Err(VerifyError::UnsupportedExtension);
        }
        let kid = header.kid.ok_or(VerifyError::MissingKeyId)?;
        // Exactly 64 bytes; the engine also rejects padding and non-zero trailing bits,
        // so one signature has one spelling.
        let mut bytes = [0u8; SIGNATURE_LENGTH + 2];
        let length = URL_SAFE_NO_PAD
            .decode_slice(signature, &mut bytes)
            .map_err(|_| VerifyError::Malformed)?;
        let bytes: &[u8; SIGNATURE_LENGTH] = bytes
            .get(..length)
            .and_then(|b| b.try_into().ok())
            .ok_or(VerifyError::Malformed)?;
        Ok(Self {
            text: token,
            kid: kid.into(),
            signing_input,
            payload,
            signature: Signature::from_bytes(bytes),
        })
    }

    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// The whole token, as presented.
    pub(crate) fn text(&self) -> &'t str {
        self.text
    }

    /// The claims, if `key` made the signature and they are valid at `now` (Unix
    /// seconds) give or take `leeway` seconds.
    pub(crate) fn verify(
        &self,
        key: &VerifyingKey,
        now: i64,
        leeway: i64,
    ) -> Result<Claims, VerifyError> {
        key.verify_strict(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| VerifyError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(self.payload)
            .map_err(|_| VerifyError::Malformed)?;
        let claims: Claims =
            serde_json::from_slice(&payload).map_err(|_| VerifyError::InvalidClaims)?;
        if claims.exp.saturating_add(leeway) < now {
            return Err(VerifyError::Expired);
        }
        if claims.iat > now.saturating_add(leeway) || claims.iss != ISSUER {
            return Err(VerifyError::InvalidClaims);
        }
        Ok(claims)
    }
}

/// The Ed25519 public key of a JWK's `x`, unless it is malformed or weak (small order:
/// such a key would accept forged signatures).
pub(crate) fn ed25519_key(x: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(x).ok()?.try_into().ok()?;
    let key = VerifyingKey::from_bytes(&bytes).ok()?;
    (!key.is_weak()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    fn signature() -> String {
        URL_SAFE_NO_PAD.encode([7u8; SIGNATURE_LENGTH])
    }

    #[test]
    fn the_header_decides_before_any_signature_check() {
        let parse = |header: &str, signature: &str| {
            UnverifiedToken::parse(&format!("{}.{}.{signature}", b64(header), b64("{}")))
                .map(|t| t.kid().to_owned())
        };
        let sig = signature();
        assert_eq!(
            parse(r#"{"alg":"EdDSA","kid":"k1","typ":"JWT"}"#, &sig),
            Ok("k1".to_owned())
        );
        assert_eq!(
            parse(r#"{"alg":"none","kid":"k1"}"#, &sig),
            Err(VerifyError::UnsupportedAlgorithm)
        );
        assert_eq!(
            parse(r#"{"alg":"eddsa","kid":"k1"}"#, &sig),
            Err(VerifyError::UnsupportedAlgorithm)
        );
        assert_eq!(
            parse(r#"{"alg":"EdDSA"}"#, &sig),
            Err(VerifyError::MissingKeyId)
        );
        assert_eq!(
            parse(
                r#"{"alg":"EdDSA","kid":"k1","crit":["b64"],"b64":false}"#,
                &sig
            ),
            Err(VerifyError::UnsupportedExtension)
        );
        // A second `alg` could mean different things to different parsers.
        assert_eq!(
            parse(r#"{"alg":"none","alg":"EdDSA","kid":"k1"}"#, &sig),
            Err(VerifyError::Malformed)
        );
        assert_eq!(parse(r#"{"kid":"k1"}"#, &sig), Err(VerifyError::Malformed));
        // Signatures of the wrong length, padded, or with a non-canonical last character.
        let short = URL_SAFE_NO_PAD.encode([7u8; 63]);
        let long = URL_SAFE_NO_PAD.encode([7u8; 65]);
        let padded = format!("{sig}==");
        let mut trailing = sig.clone();
        trailing.pop();
        trailing.push('D');
        let header = r#"{"alg":"EdDSA","kid":"k1"}"#;
        for bad in [&short, &long, &padded, &trailing, ""] {
            assert_eq!(parse(header, bad), Err(VerifyError::Malformed), "{bad}");
        }
        for token in ["", "a", "a.b", "a.b.c.d", "..", "e30.e30.e30.e30"] {
            assert!(UnverifiedToken::parse(token).is_err(), "{token}");
        }
    }

    #[test]
    fn weak_and_malformed_keys_are_refused() {
        // The identity point (small order) and a string that is not 32 bytes.
        let identity = URL_SAFE_NO_PAD.encode({
            let mut bytes = [0u8; 32];
            bytes[0] = 1;
            bytes
        });
        assert!(ed25519_key(&identity).is_none());
        assert!(ed25519_key("AAAA").is_none());
        let genuine = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        assert!(ed25519_key(&URL_SAFE_NO_PAD.encode(genuine.as_bytes())).is_some());
    }
}
