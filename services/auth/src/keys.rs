//! The signing key on disk, and the public key set the service publishes.
//!
//! The private key is a PKCS#8 PEM file (`FLOTILLA_JWT_KEY_FILE`, by default
//! `<data>/jwt-signing.pem`). When it is missing it is generated and written with mode
//! 0600, and the log says so; when two processes start at once on the same path only one
//! key wins (the file is linked into place only if absent) and both use it.
//!
//! Rotation: move the old file away (or point `FLOTILLA_JWT_KEY_FILE` at a new key),
//! and list the old key in `FLOTILLA_JWT_PREVIOUS_KEYS` (its PEM, public or private).
//! The JWKS then carries both, so tokens signed before the rotation keep verifying until
//! they expire; drop the old key from the list after one token lifetime.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use identity::{KeyError, SigningKey, public_jwk_from_pem};
use jsonwebtoken::jwk::{Jwk, JwkSet};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the JWT key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the JWT key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the JWT key file {path} is unusable: {source}")]
    Invalid { path: PathBuf, source: KeyError },
}

/// The signing key and every public key that still verifies.
#[derive(Debug)]
pub struct KeySet {
    pub signing: SigningKey,
    pub jwks: JwkSet,
}

impl KeySet {
    /// Loads (or generates) the signing key at `path` and reads the previous keys.
    pub fn load(path: &Path, previous: &[PathBuf]) -> Result<Self, KeyFileError> {
        let signing = load_or_generate(path)?;
        let mut keys: Vec<Jwk> = vec![signing.public_jwk().clone()];
        for old in previous {
            let pem = std::fs::read_to_string(old).map_err(|source| KeyFileError::Read {
                path: old.clone(),
                source,
            })?;
            let jwk = public_jwk_from_pem(&pem).map_err(|source| KeyFileError::Invalid {
                path: old.clone(),
                source,
            })?;
            if !keys.iter().any(|k| k.common.key_id == jwk.common.key_id) {
                tracing::info!(kid = ?jwk.common.key_id, path = %old.display(), "previous JWT key still accepted");
                keys.push(jwk);
            }
        }
        Ok(Self {
            signing,
            jwks: JwkSet { keys },
        })
    }
}

fn load_or_generate(path: &Path) -> Result<SigningKey, KeyFileError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            warn_if_readable_by_others(path);
            let key = SigningKey::from_pem(&pem).map_err(|source| KeyFileError::Invalid {
                path: path.to_owned(),
                source,
            })?;
            tracing::info!(path = %path.display(), kid = key.kid(), "JWT signing key loaded");
            Ok(key)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => generate(path),
        Err(source) => Err(KeyFileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn generate(path: &Path) -> Result<SigningKey, KeyFileError> {
    let write_error = |source| KeyFileError::Write {
        path: path.to_owned(),
        source,
    };
    let (key, pem) = SigningKey::generate().map_err(|source| KeyFileError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    // Written whole to a private temporary file, then linked into place only if nothing
    // is there yet: readers never see half a key, and of two processes racing, one wins.
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = write_private(&temporary, pem.as_bytes());
    let linked = written.and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            tracing::info!(
                path = %path.display(),
                kid = key.kid(),
                "generated a new JWT signing key (mode 0600); keep it secret and back it up"
            );
            Ok(key)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => load_or_generate(path),
        Err(error) => Err(write_error(error)),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(path)
            && metadata.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", metadata.permissions().mode() & 0o777),
                "the JWT signing key is readable by other users; chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_generated_private_and_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys").join("jwt.pem");
        let first = KeySet::load(&path, &[]).expect("generated");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = KeySet::load(&path, &[]).expect("loaded");
        assert_eq!(first.signing.kid(), second.signing.kid());
        assert_eq!(first.jwks.keys.len(), 1);
        // No temporary file is left behind.
        let entries = std::fs::read_dir(path.parent().expect("parent"))
            .expect("dir")
            .count();
        assert_eq!(entries, 1);
    }

    #[test]
    fn previous_keys_are_published_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old_path = dir.path().join("old.pem");
        let old = KeySet::load(&old_path, &[]).expect("old key");
        let current = KeySet::load(&dir.path().join("new.pem"), &[old_path.clone(), old_path])
            .expect("with previous");
        let kids: Vec<_> = current
            .jwks
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect();
        assert_eq!(
            kids,
            vec![
                current.signing.kid().to_owned(),
                old.signing.kid().to_owned()
            ]
        );
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwt.pem");
        std::fs::write(&path, "garbage").expect("write");
        let error = KeySet::load(&path, &[]).expect_err("corrupt");
        assert!(error.to_string().contains("unusable"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "garbage");
    }
}
