//! TLS is rustls everywhere, with the `ring` provider (builds with just a C compiler; no
//! OpenSSL, no CMake). reqwest, lettre and object_store are built without a default
//! provider, so the process installs one before any client is made: `main` does, the
//! test helpers do, and any code that builds an HTTP client may call this again safely.

/// Installs `ring` as the process-wide rustls provider; later calls do nothing.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
