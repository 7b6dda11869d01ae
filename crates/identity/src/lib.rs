//! Who is calling. The auth service signs access tokens (EdDSA JWTs) of [`Claims`] with a
//! [`SigningKey`];
//! everyone else checks them *locally* with a [`Verifier`] that keeps the auth service's
//! public keys (its JWKS, `GET /.well-known/jwks.json`) in memory, so a protected request
//! costs no call to auth. The key set is fetched on first use, again when a token names
//! a key id it does not know (a rotation), at most once per [`VerifierSettings::min_refetch_interval`]
//! so forged `kid`s cannot turn into a flood of fetches, and again when it is older than
//! [`VerifierSettings::max_key_age`] (so a withdrawn key stops verifying).
//!
//! A token verified once is remembered (bounded, keyed by its exact text) so its next
//! uses cost a lookup, not a signature check; it still expires on time, and stops being
//! accepted as soon as its key leaves the key set.
//!
//! Services learn the caller with the [`Caller`] extractor. Behind the gateway in `flotilla
//! up` the gateway has already verified the token and hands the [`Caller`] over in the
//! request's extensions (which only in-process code can set); a service reached over
//! HTTP verifies the `Authorization: Bearer` token itself with the [`Verifier`] put into
//! its extensions by [`Verifier::layer`].

mod cache;
mod caller;
mod claims;
mod jws;
mod signing;
mod source;
mod verifier;

pub use caller::{
    BEARER_CHALLENGE, BearerError, Caller, INVALID_TOKEN_CHALLENGE, authenticate,
    authenticate_admin, bearer_token, require_admin, require_caller, with_challenge,
};
pub use claims::{Claims, ISSUER};
pub use jws::VerifyError;
pub use signing::{KeyError, SigningKey, public_jwk_from_pem};
pub use source::{JwksSource, SourceError};
pub use verifier::{Verifier, VerifierSettings};

/// Where the auth service publishes its public keys.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The only signing algorithm accepted (Ed25519 signatures).
pub const ALGORITHM: jsonwebtoken::Algorithm = jsonwebtoken::Algorithm::EdDSA;
