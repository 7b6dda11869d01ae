//! `auth-bench`: how fast the auth path is on this machine.
//!
//! * **verify**: local token verification ([`identity::Verifier::verify_cached`]) on one
//!   core, the check the gateway does for every protected request — first for a token
//!   seen for the first time (a full Ed25519 signature check), then for a token seen
//!   before (the verified-token cache).
//! * **login**: `POST /login` over HTTP through the gateway of an in-process `flotilla
//!   up` (SQLite, argon2id with OWASP parameters), `--concurrency` clients for
//!   `--seconds`.
//!
//! Run: `cargo run --release -p auth-bench -- [--seconds 5] [--concurrency 8]`
//! (`--no-default-features` builds only the verification part, much faster).
//! Results go to BENCHMARKS.md by hand.

use std::time::{Duration, Instant};

use clap::Parser;
use identity::{Claims, ISSUER, SigningKey, Verifier, VerifierSettings};
use jsonwebtoken::jwk::JwkSet;

#[derive(Debug, Parser)]
struct BenchArgs {
    /// Length of each measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent login clients.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Skip the login measurement.
    #[arg(long)]
    verify_only: bool,
}

fn main() -> anyhow::Result<()> {
    let args = BenchArgs::parse();
    let duration = Duration::from_secs(args.seconds);
    println!("| measurement | result |");
    println!("|---|---|");
    verify(duration)?;
    #[cfg(feature = "login")]
    if !args.verify_only {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(login(duration, args.concurrency))?;
    }
    #[cfg(not(feature = "login"))]
    let _ = (args.verify_only, args.concurrency);
    Ok(())
}

fn claims(n: u64) -> Claims {
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(0);
    Claims {
        sub: format!("user-{n}"),
        username: format!("user{n}@example.com"),
        admin: false,
        iat: now,
        exp: now + 3600,
        iss: ISSUER.to_owned(),
    }
}

/// Single-threaded loops: one core.
fn verify(duration: Duration) -> anyhow::Result<()> {
    let (key, _) = SigningKey::generate()?;
    let jwks = JwkSet {
        keys: vec![key.public_jwk().clone()],
    };

    // First sight: the cache is off, so every call checks the signature.
    let uncached = Verifier::with_settings(
        identity::JwksSource::fixed(jwks.clone()),
        VerifierSettings {
            cache_capacity: 0,
            ..VerifierSettings::default()
        },
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(uncached.verify(&key.sign(&claims(0))?))?;
    let token = key.sign(&claims(1))?;
    let rate = per_second(duration, || uncached.verify_cached(&token).is_ok());
    println!("| token verification, full Ed25519 check (1 core) | {rate:.0} /s |");

    // Seen before: the usual case, a client sending its token with every request.
    let cached = Verifier::from_jwks(&jwks);
    let tokens: Vec<String> = (0..1000)
        .map(|n| key.sign(&claims(n)))
        .collect::<Result<_, _>>()?;
    for token in &tokens {
        cached.verify_cached(token)?;
    }
    let mut next = 0;
    let rate = per_second(duration, || {
        next = (next + 1) % tokens.len();
        cached.verify_cached(&tokens[next]).is_ok()
    });
    println!("| token verification, token seen before (1 core, 1000 live tokens) | {rate:.0} /s |");

    let rate = per_second(duration, || key.sign(&claims(7)).is_ok());
    println!("| token signing (1 core) | {rate:.0} /s |");
    Ok(())
}

fn per_second(duration: Duration, mut op: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    let mut done: u64 = 0;
    while start.elapsed() < duration {
        for _ in 0..256 {
            assert!(op(), "the operation failed");
        }
        done += 256;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

#[cfg(feature = "login")]
#[derive(Parser)]
struct UpCommandLine {
    #[command(flatten)]
    up: flotilla::UpArgs,
}

#[cfg(feature = "login")]
async fn login(duration: Duration, concurrency: usize) -> anyhow::Result<()> {
    // As the binary does: the HTTP clients need a TLS crypto provider chosen.
    platform::tls::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let command_line = UpCommandLine::try_parse_from([
        "flotilla",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
        "--admin-email",
        "bench@example.com",
        "--admin-password",
        "bench-password",
        // Measuring throughput, not the brute-force protection.
        "--login-attempts-per-account",
        "0",
        "--login-attempts-per-client",
        "0",
    ])?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = flotilla::up(command_line.up, shutdown.clone()).await?;
    running.wait_ready(Duration::from_secs(30)).await?;
    let url = format!("http://{}/login", running.addr);
    let client = reqwest::Client::new();

    let deadline = Instant::now() + duration;
    let workers = (0..concurrency).map(|_| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                let response = client
                    .post(&url)
                    .basic_auth("bench@example.com", Some("bench-password"))
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "login failed: {}",
                    response.status()
                );
                response.bytes().await?;
                latencies.push(start.elapsed());
            }
            anyhow::Ok(latencies)
        }
    });
    let started = Instant::now();
    let mut latencies: Vec<Duration> = futures::future::try_join_all(workers)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let elapsed = started.elapsed();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "| login over HTTP through the gateway, {concurrency} clients (argon2id m=19 MiB t=2 p=1) | {:.1} /s, p50 {:.0} ms, p99 {:.0} ms |",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pick(0.5).as_secs_f64() * 1000.0,
        pick(0.99).as_secs_f64() * 1000.0
    );
    running.stop().await?;
    Ok(())
}
