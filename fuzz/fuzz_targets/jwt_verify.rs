//! JWT/JWS parsing and verification (crates/identity): arbitrary token text, and tokens
//! whose header or claims are arbitrary but correctly signed with the trusted key, so
//! the claims parser behind the signature check is reached too. Only a token with our
//! issuer, unexpired, signed by the key, may pass.
#![no_main]

use std::sync::OnceLock;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey, pkcs8::EncodePrivateKey};
use identity::{ISSUER, Verifier};
use jsonwebtoken::jwk::JwkSet;
use libfuzzer_sys::fuzz_target;

struct Keys {
    signing: SigningKey,
    kid: String,
    verifier: Verifier,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        // A fixed key: a crash must reproduce from its input alone.
        let signing = SigningKey::from_bytes(&[7; 32]);
        let pem = signing
            .to_pkcs8_pem(Default::default())
            .expect("pem")
            .to_string();
        let jwk = identity::public_jwk_from_pem(&pem).expect("jwk");
        let kid = jwk.common.key_id.clone().expect("kid");
        let verifier = Verifier::from_jwks(&JwkSet { keys: vec![jwk] });
        Keys {
            signing,
            kid,
            verifier,
        }
    })
}

fn signed(keys: &Keys, header: &[u8], payload: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = keys.signing.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (token, genuine) = match mode % 3 {
        // Any text as the bearer token.
        0 => (String::from_utf8_lossy(rest).into_owned(), false),
        // Our header, arbitrary claims, a good signature.
        1 => {
            let header = format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"JWT"}}"#, keys.kid);
            (signed(keys, header.as_bytes(), rest), true)
        }
        // Arbitrary header and claims (split at the first NUL), a good signature.
        _ => {
            let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let (header, payload) = rest.split_at(split);
            (signed(keys, header, payload.get(1..).unwrap_or(&[])), true)
        }
    };
    if let Ok(claims) = keys.verifier.verify_cached(&token) {
        assert!(genuine, "a token not signed by the key passed: {token:?}");
        assert_eq!(claims.iss, ISSUER);
    }
});
