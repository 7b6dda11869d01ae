//! Local token verification against a cached key set.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use ed25519_dalek::VerifyingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};

use crate::{
    Claims, JwksSource,
    cache::VerifiedTokens,
    jws::{UnverifiedToken, VerifyError, ed25519_key},
};

/// Tuning of a [`Verifier`].
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    /// An unknown `kid` triggers a refetch at most this often.
    pub min_refetch_interval: Duration,
    /// Keys older than this are refetched (in the background of one request) so that a
    /// key withdrawn by auth stops verifying.
    pub max_key_age: Duration,
    /// Clock skew tolerated on `exp`.
    pub leeway: Duration,
    /// How many verified tokens are remembered, so that a token's next use skips the
    /// signature check (0: none).
    pub cache_capacity: usize,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        Self {
            min_refetch_interval: Duration::from_secs(5),
            max_key_age: Duration::from_secs(5 * 60),
            leeway: Duration::from_secs(30),
            cache_capacity: 16 * 1024,
        }
    }
}

/// Verifies access tokens locally. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self
            .inner
            .keys
            .read()
            .map(|ring| ring.iter().flat_map(|r| r.by_kid.keys().cloned()).collect())
            .unwrap_or_default();
        f.debug_struct("Verifier").field("kids", &kids).finish()
    }
}

struct Inner {
    source: JwksSource,
    settings: VerifierSettings,
    /// `settings.leeway` in seconds.
    leeway: i64,
    /// `None` until the first successful fetch.
    keys: RwLock<Option<Arc<KeyRing>>>,
    /// When the last fetch was attempted; the lock also makes fetches single-flight.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    verified: VerifiedTokens,
}

struct KeyRing {
    /// Decoded once per key set: decompressing the point costs a field inversion.
    by_kid: HashMap<String, VerifyingKey, foldhash::fast::RandomState>,
    fetched_at: Instant,
}

impl Verifier {
    pub fn new(source: JwksSource) -> Self {
        Self::with_settings(source, VerifierSettings::default())
    }

    pub fn with_settings(source: JwksSource, settings: VerifierSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                verified: VerifiedTokens::new(settings.cache_capacity),
                leeway: i64::try_from(settings.leeway.as_secs()).unwrap_or(i64::MAX),
                settings,
                keys: RwLock::new(None),
                last_fetch: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// A verifier over a fixed key set, usable at once.
    pub fn from_jwks(keys: &JwkSet) -> Self {
        let verifier = Self::new(JwksSource::fixed(keys.clone()));
        verifier.install(keys);
        verifier
    }

    /// An axum layer putting this verifier into every request's extensions, where the
    /// [`crate::Caller`] extractor finds it.
    pub fn layer(&self) -> axum::Extension<Verifier> {
        axum::Extension(self.clone())
    }

    /// The claims of `token` if it is authentic, unexpired and ours.
    pub async fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        // A stale key ring goes the long way, which refreshes it.
        if let Some(ring) = self.ring()
            && ring.fetched_at.elapsed() <= self.inner.settings.max_key_age
            && let Some(claims) = self.remembered(token, &ring)
        {
            return Ok(claims);
        }
        let token = UnverifiedToken::parse(token)?;
        let ring = self.current_ring().await?;
        let ring = if ring.by_kid.contains_key(token.kid()) {
            ring
        } else {
            // Perhaps auth rotated its key since we fetched: look again (rate-limited).
            self.refetch(false).await?;
            self.ring().ok_or(VerifyError::UnknownKey)?
        };
        self.check(token, &ring)
    }

    /// Verification with the keys already in memory, never fetching: for callers that
    /// cannot wait (and for measuring the cost of the check itself).
    pub fn verify_cached(&self, token: &str) -> Result<Claims, VerifyError> {
        if let Some(ring) = self.ring()
            && let Some(claims) = self.remembered(token, &ring)
        {
            return Ok(claims);
        }
        let unverified = UnverifiedToken::parse(token)?;
        let ring = self
            .ring()
            .ok_or_else(|| VerifyError::KeysUnavailable("no keys fetched yet".into()))?;
        self.check(unverified, &ring)
    }

    /// The key ids currently trusted.
    pub fn key_ids(&self) -> Vec<String> {
        self.ring()
            .map(|ring| ring.by_kid.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The claims of a token verified before, if it is still unexpired and the key that
    /// signed it is still trusted.
    fn remembered(&self, token: &str, ring: &KeyRing) -> Option<Claims> {
        self.inner.verified.get(token, |entry| {
            entry.claims.exp.saturating_add(self.inner.leeway) >= unix_now()
                && ring.by_kid.contains_key(&*entry.kid)
        })
    }

    /// The signature and claims of a token whose header was found acceptable; a token
    /// that passes is remembered.
    fn check(&self, token: UnverifiedToken<'_>, ring: &KeyRing) -> Result<Claims, VerifyError> {
        let key = ring
            .by_kid
            .get(token.kid())
            .ok_or(VerifyError::UnknownKey)?;
        let claims = token.verify(key, unix_now(), self.inner.leeway)?;
        self.inner
            .verified
            .insert(token.text(), claims.clone(), token.kid());
        Ok(claims)
    }

    fn ring(&self) -> Option<Arc<KeyRing>> {
        self.inner.keys.read().ok().and_then(|guard| guard.clone())
    }

    /// The key ring, fetching it first if there is none; an old one is refreshed by
    /// whichever request notices first, the others carry on with the old keys.
    async fn current_ring(&self) -> Result<Arc<KeyRing>, VerifyError> {
        match self.ring() {
            Some(ring) => {
                if ring.fetched_at.elapsed() > self.inner.settings.max_key_age
                    && let Ok(mut last) = self.inner.last_fetch.try_lock()
                {
                    *last = Some(Instant::now());
                    match self.inner.source.fetch().await {
                        Ok(keys) => self.install(&keys),
                        // Availability first: auth being down for a moment must not log
                        // everyone out; the old keys stay until a fetch succeeds.
                        Err(error) => tracing::warn!(%error, "cannot refresh signing keys"),
                    }
                }
                Ok(self.ring().unwrap_or(ring))
            }
            None => {
                self.refetch(true).await?;
                self.ring()
                    .ok_or_else(|| VerifyError::KeysUnavailable("no keys yet".into()))
            }
        }
    }

    /// Fetches the key set unless one was fetched within the minimum interval.
    async fn refetch(&self, first: bool) -> Result<(), VerifyError> {
        let started = Instant::now();
        let mut last = self.inner.last_fetch.lock().await;
        if let Some(at) = *last {
            // Someone fetched while we waited for the lock: use that.
            if at >= started {
                return Ok(());
            }
            let interval = if first {
                // Nothing to verify with yet: retry sooner, still bounded.
                Duration::from_secs(1).min(self.inner.settings.min_refetch_interval)
            } else {
                self.inner.settings.min_refetch_interval
            };
            let since = at.elapsed();
            if since < interval {
                if !first {
                    return Ok(());
                }
                // Nothing to verify with yet, and the last attempt (before this request
                // came) failed moments ago — at start-up, auth may answer a moment later.
                // Wait out the rest of the (≤ 1 s) interval and try once more rather than
                // refuse at once; requests queued behind this one take its outcome above.
                tokio::time::sleep(interval - since).await;
            }
        }
        *last = Some(Instant::now());
        match self.inner.source.fetch().await {
            Ok(keys) => {
                self.install(&keys);
                Ok(())
            }
            Err(error) if first => Err(VerifyError::KeysUnavailable(error.to_string())),
            Err(error) => {
                tracing::warn!(%error, "cannot refetch signing keys");
                Ok(())
            }
        }
    }

    fn install(&self, keys: &JwkSet) {
        let mut by_kid = HashMap::default();
        for jwk in &keys.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let is_ed25519 = matches!(
                &jwk.algorithm,
                AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519
            );
            let alg_ok = matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::EdDSA));
            if !(is_ed25519 && alg_ok) {
                tracing::debug!(%kid, "ignoring a key that is not an Ed25519 signing key");
                continue;
            }
            let key = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(params) => ed25519_key(&params.x),
                _ => None,
            };
            match key {
                Some(key) => {
                    by_kid.insert(kid, key);
                }
                None => tracing::warn!(%kid, "ignoring an unusable (malformed or weak) key"),
            }
        }
        tracing::debug!(keys = by_kid.len(), "signing keys installed");
        let ring = Arc::new(KeyRing {
            by_kid,
            fetched_at: Instant::now(),
        });
        if let Ok(mut guard) = self.inner.keys.write() {
            *guard = Some(ring);
        }
    }
}

fn unix_now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX)
}
