//! Password hashing: argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane),
//! off the async runtime and a few at a time.
//!
//! Each hash takes tens of milliseconds of one core and 19 MiB, so hashing runs on the
//! blocking pool behind a semaphore sized to the cores: a burst of logins queues rather
//! than exhausting memory or starving the runtime. An unknown email is checked against a
//! dummy hash made at start-up with the same parameters, so it costs what a wrong
//! password costs and the timing does not reveal which accounts exist.

use std::sync::Arc;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::SaltString,
};
use tokio::sync::Semaphore;

use crate::domain::Password;

/// OWASP Password Storage Cheat Sheet, argon2id option 1 (m=19 MiB, t=2, p=1).
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("the hashing task failed: {0}")]
    Task(String),
}

/// Hashes and verifies passwords; cheap to clone.
#[derive(Clone)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for PasswordHasherPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasherPool")
            .field("permits", &self.permits.available_permits())
            .finish()
    }
}

fn argon2() -> Result<Argon2<'static>, HashError> {
    let params =
        Params::new(MEMORY_KIB, PASSES, LANES, None).map_err(|e| HashError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_now(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashError::Hash(e.to_string()))
}

fn verify_now(password: &str, stored: &str) -> Result<bool, HashError> {
    let hash = PasswordHash::new(stored).map_err(|e| HashError::Hash(e.to_string()))?;
    // The parameters come from the stored hash, so older hashes keep verifying.
    match Argon2::default().verify_password(password.as_bytes(), &hash) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(other) => Err(HashError::Hash(other.to_string())),
    }
}

impl PasswordHasherPool {
    /// Makes the dummy hash (one hash of work), so call once at start-up.
    pub async fn new() -> Result<Self, HashError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let random: String = {
            use rand::Rng;
            rand::thread_rng()
                .sample_iter(&rand::distributions::Alphanumeric)
                .take(32)
                .map(char::from)
                .collect()
        };
        let dummy_hash = tokio::task::spawn_blocking(move || hash_now(&random))
            .await
            .map_err(|e| HashError::Task(e.to_string()))??;
        Ok(Self {
            permits: Arc::new(Semaphore::new(cores)),
            dummy_hash: dummy_hash.into(),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashError::Task(e.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| HashError::Task(e.to_string()))?
    }

    /// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) of a new password.
    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let password = password.expose().to_owned();
        self.run(move || hash_now(&password)).await
    }

    /// Whether `password` matches `stored`; with `None` (no such account) the dummy
    /// hash is checked instead and the answer is always `false`.
    pub async fn verify(
        &self,
        password: &Password,
        stored: Option<&str>,
    ) -> Result<bool, HashError> {
        let password = password.expose().to_owned();
        let (stored, real): (Arc<str>, bool) = match stored {
            Some(stored) => (stored.into(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let matched = self.run(move || verify_now(&password, &stored)).await?;
        Ok(matched && real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let pool = PasswordHasherPool::new().await.expect("pool");
        let password = Password::new("correct horse".into()).expect("valid");
        let hash = pool.hash(&password).await.expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(!hash.contains("correct horse"));
        assert!(pool.verify(&password, Some(&hash)).await.expect("verify"));
        let wrong = Password::new("wrong horse".into()).expect("valid");
        assert!(!pool.verify(&wrong, Some(&hash)).await.expect("verify"));
        // Same password, new salt, different hash.
        assert_ne!(hash, pool.hash(&password).await.expect("hash"));
    }

    #[tokio::test]
    async fn an_unknown_account_never_matches() {
        let pool = PasswordHasherPool::new().await.expect("pool");
        let password = Password::new("anything at all".into()).expect("valid");
        assert!(!pool.verify(&password, None).await.expect("verify"));
    }
}
