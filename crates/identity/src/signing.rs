//! The signing side: an Ed25519 key in PKCS#8 PEM (what `openssl genpkey -algorithm
//! ed25519` writes), its public half as a JWK whose `kid` is the RFC 7638 thumbprint
//! (so the same key always has the same id, on every replica), and token signing.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, KeypairBytes, spki::der::pem::LineEnding,
};
use jsonwebtoken::{
    EncodingKey, Header,
    jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, KeyAlgorithm,
        OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, ThumbprintHash,
    },
};

use crate::{ALGORITHM, Claims};

/// A key could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 private key in PKCS#8 PEM: {0}")]
    PrivateKey(String),
    #[error("not an Ed25519 key in PEM (SPKI public key or PKCS#8 private key): {0}")]
    PublicKey(String),
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// The key tokens are signed with.
#[derive(educe::Educe)]
#[educe(Debug)]
pub struct SigningKey {
    kid: String,
    /// Never shown: the private key.
    #[educe(Debug(ignore))]
    encoding: EncodingKey,
    #[educe(Debug(ignore))]
    public: Jwk,
    #[educe(Debug(ignore))]
    header: Header,
}

impl SigningKey {
    /// A new random key, and its PKCS#8 PEM to store.
    ///
    /// Written as PKCS#8 v1 (RFC 8410 §7: the private key only), exactly what `openssl
    /// genpkey -algorithm ed25519` writes. ed25519-dalek's own `to_pkcs8_pem` writes a
    /// v2 document with the public key attached, which OpenSSL (`openssl pkey`) and
    /// Python's `cryptography` refuse to read.
    pub fn generate() -> Result<(Self, String), KeyError> {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = KeypairBytes {
            secret_key: key.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::PrivateKey(e.to_string()))?
        .to_string();
        Ok((Self::from_dalek(&key)?, pem))
    }

    /// The key of a PKCS#8 PEM document.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| KeyError::PrivateKey(e.to_string()))?;
        Self::from_dalek(&key)
    }

    fn from_dalek(key: &ed25519_dalek::SigningKey) -> Result<Self, KeyError> {
        let der = key
            .to_pkcs8_der()
            .map_err(|e| KeyError::PrivateKey(e.to_string()))?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let public = public_jwk(&key.verifying_key())?;
        let kid = public.common.key_id.clone().unwrap_or_default();
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(kid.clone());
        Ok(Self {
            kid,
            encoding,
            public,
            header,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, for the JWKS.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }

    /// A compact JWS of `claims`, with `alg: EdDSA` and this key's `kid`.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        jsonwebtoken::encode(&self.header, claims, &self.encoding)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// The public JWK of a PEM key — an SPKI public key, or a PKCS#8 private key of which
/// only the public half is used. For keys rotated out that must still verify.
pub fn public_jwk_from_pem(pem: &str) -> Result<Jwk, KeyError> {
    let verifying = match ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
        Ok(key) => key,
        Err(public_error) => ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(|key| key.verifying_key())
            .map_err(|_| KeyError::PublicKey(public_error.to_string()))?,
    };
    public_jwk(&verifying)
}

fn public_jwk(key: &ed25519_dalek::VerifyingKey) -> Result<Jwk, KeyError> {
    let mut jwk = Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            ..Default::default()
        },
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: URL_SAFE_NO_PAD.encode(key.as_bytes()),
        }),
    };
    let kid = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| KeyError::PublicKey(e.to_string()))?;
    jwk.common.key_id = Some(kid);
    Ok(jwk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_kid_and_nothing_of_the_keys() {
        let (key, _) = SigningKey::generate().expect("generate");
        let shown = format!("{key:?}");
        assert_eq!(shown, format!("SigningKey {{ kid: {:?} }}", key.kid()));
    }

    #[test]
    fn a_key_survives_its_pem_and_keeps_its_kid() {
        let (key, pem) = SigningKey::generate().expect("generate");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = SigningKey::from_pem(&pem).expect("read back");
        assert_eq!(key.kid(), again.kid());
        assert_eq!(key.public_jwk(), again.public_jwk());
        assert_eq!(
            public_jwk_from_pem(&pem).expect("public"),
            *key.public_jwk()
        );
        let (other, _) = SigningKey::generate().expect("generate");
        assert_ne!(key.kid(), other.kid());
    }

    /// The generated key is read by OpenSSL and (when installed) Python's
    /// `cryptography`, and both find the public key the JWKS publishes.
    #[test]
    fn generated_keys_are_standard_pkcs8_that_openssl_and_python_read() {
        let (key, pem) = SigningKey::generate().expect("generate");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwt-signing.pem");
        std::fs::write(&path, &pem).expect("write");
        let openssl = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&path)
            .output()
            .expect("the openssl CLI is needed by this test");
        assert!(
            openssl.status.success(),
            "openssl pkey refused the generated key: {}",
            String::from_utf8_lossy(&openssl.stderr)
        );
        let public = String::from_utf8(openssl.stdout).expect("PEM");
        assert_eq!(
            public_jwk_from_pem(&public).expect("openssl's SPKI"),
            *key.public_jwk()
        );
        let python = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys\n\
                 try:\n    from cryptography.hazmat.primitives import serialization\n\
                 except ImportError:\n    sys.exit(77)\n\
                 serialization.load_pem_private_key(open(sys.argv[1], 'rb').read(), None)",
            ])
            .arg(&path)
            .output();
        match python {
            Ok(out) if out.status.code() == Some(77) => {
                eprintln!("python3 has no `cryptography`; only openssl checked");
            }
            Ok(out) => assert!(
                out.status.success(),
                "cryptography refused the generated key: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(error) => eprintln!("no python3 ({error}); only openssl checked"),
        }
    }

    #[test]
    fn openssl_style_keys_are_read() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1) and `openssl pkey -pubout`.
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIPMDfPPbkJ0ciJK1lP+V9c2ybd7dUxXolXsTb1d2hTTS\n-----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAPpor/3gIdqSimoRhZWJ468QvvYLSOmV14Ult3gxI0zQ=\n-----END PUBLIC KEY-----\n";
        let key = SigningKey::from_pem(private).expect("PKCS#8 v1");
        assert_eq!(
            *key.public_jwk(),
            public_jwk_from_pem(private).expect("public half")
        );
        assert_eq!(
            *key.public_jwk(),
            public_jwk_from_pem(public).expect("SPKI")
        );
        assert!(SigningKey::from_pem("not a key").is_err());
        assert!(
            public_jwk_from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
    }
}
