//! `auth-bench`: how fast the auth path is on this machine.
//!
//! * **verify**: local token verification ([`identity::Verifier::verify_cached`]) on one
//!   core, the check the gateway does for every protected request — first where the
//!   time goes (the pieces of one check, and the bare ed25519-dalek verification as the
//!   floor), then for tokens seen for the first time (a full Ed25519 signature check),
//!   against the previous `jsonwebtoken::decode` path, then the steady state of live
//!   token populations (the verified-token cache).
//! * **login**: `POST /login` over HTTP through the gateway of an in-process `flotilla
//!   up` (SQLite, argon2id with OWASP parameters), `--concurrency` clients for
//!   `--seconds`.
//!
//! Run: `taskset -c 1 cargo run --release -p auth-bench -- [--seconds 5] [--concurrency 8]`
//! (`--no-default-features` builds only the verification part, much faster).
//! Results go to BENCHMARKS.md by hand.

use std::time::{Duration, Instant};

use clap::Parser;
use identity::{Claims, ISSUER, SigningKey, Verifier};
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
    /// Tokens verified at first sight, and the larger live-token population (the smaller
    /// is a tenth of it). Fewer make a quick smoke run (`bench/run-all.sh --quick`).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    tokens: u64,
}

fn main() -> anyhow::Result<()> {
    let args = BenchArgs::parse();
    let duration = Duration::from_secs(args.seconds);
    println!("| measurement | per second of wall time | per second of CPU time (µs each) |");
    println!("|---|---|---|");
    verify(duration, args.tokens)?;
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

/// Single-threaded loops: one core. Every row is measured in the same run, so their
/// ratios hold even when the host is busy.
fn verify(duration: Duration, tokens: u64) -> anyhow::Result<()> {
    let (key, pem) = SigningKey::generate()?;
    let jwks = JwkSet {
        keys: vec![key.public_jwk().clone()],
    };
    let token = key.sign(&claims(1))?;
    pieces(duration, &token, &pem)?;

    // First sight, as the gateway meets it: a token it has not seen, with the cache on
    // (a miss, the full check, then the insertion). Each token is verified once, so the
    // run is as long as the tokens last, not `duration`: a fast machine never runs out.
    let verifier = Verifier::from_jwks(&jwks);
    let fresh = signed(&key, tokens, duration)?;
    let rate = per_item(&fresh, |token| verifier.verify_cached(token).is_ok());
    println!(
        "| token verification, first sight (Verifier: header, Ed25519 verify_strict with the pre-decoded key, claims, cache insert) | {rate} |"
    );

    // The previous implementation, for comparison: jsonwebtoken 11 (RustCrypto backend)
    // with a DecodingKey from the JWK, which rebuilds the Ed25519 point on every call.
    let decoding = jsonwebtoken::DecodingKey::from_jwk(key.public_jwk())?;
    let mut validation = jsonwebtoken::Validation::new(identity::ALGORITHM);
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    let rate = per_second(duration, || {
        jsonwebtoken::decode::<Claims>(&token, &decoding, &validation).is_ok()
    });
    println!("| token verification, first sight, previous way: `jsonwebtoken::decode` | {rate} |");

    // Seen before: a client sending its token with every request. Uniformly random
    // requests over a population of live tokens; the cache holds 16 Ki tokens.
    for population in [tokens / 10, tokens] {
        let verifier = Verifier::from_jwks(&jwks);
        let tokens = signed(&key, population, duration)?;
        for token in &tokens {
            verifier.verify_cached(token)?;
        }
        let mut random = Xorshift(0x9E37_79B9_7F4A_7C15);
        let rate = per_second(duration, || {
            let pick = random.below(tokens.len());
            verifier.verify_cached(&tokens[pick]).is_ok()
        });
        println!(
            "| token verification, steady state: {} live tokens, uniformly random requests (cache of 16 Ki) | {rate} |",
            tokens.len()
        );
    }

    let rate = per_second(duration, || key.sign(&claims(7)).is_ok());
    println!("| token signing (login's share) | {rate} |");
    Ok(())
}

/// Where the time of one first-sight verification goes, piece by piece.
fn pieces(duration: Duration, token: &str, pem: &str) -> anyhow::Result<()> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use ed25519_dalek::{Signature, Verifier as _, VerifyingKey, pkcs8::DecodePrivateKey};
    use std::hint::black_box;

    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        anyhow::bail!("not a compact JWS");
    };
    let signing_input = &token[..header.len() + 1 + payload.len()];
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("signature length"))?;
    let signature = Signature::from_bytes(&signature);
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)?.verifying_key();
    let key_bytes = key.to_bytes();
    let claims_json = URL_SAFE_NO_PAD.decode(payload)?;

    let row = |what: &str, op: &mut dyn FnMut() -> bool| {
        let rate = per_second(duration, op);
        println!("| piece: {what} | {rate} |");
    };
    row(
        "Ed25519 `verify_strict`, pre-decoded key (ed25519-dalek; the floor)",
        &mut || {
            key.verify_strict(black_box(signing_input.as_bytes()), &signature)
                .is_ok()
        },
    );
    row(
        "Ed25519 `verify` (not strict), pre-decoded key",
        &mut || {
            key.verify(black_box(signing_input.as_bytes()), &signature)
                .is_ok()
        },
    );
    row(
        "public key decoding (point decompression), which jsonwebtoken repeats per call",
        &mut || VerifyingKey::from_bytes(black_box(&key_bytes)).is_ok(),
    );
    row("base64url decoding of the three parts", &mut || {
        [header, payload, parts[2]]
            .iter()
            .all(|part| URL_SAFE_NO_PAD.decode(black_box(part)).is_ok())
    });
    row("claims JSON parsing", &mut || {
        serde_json::from_slice::<Claims>(black_box(&claims_json)).is_ok()
    });
    Ok(())
}

/// `count` distinct tokens (distinct subjects), or fewer if signing them would take
/// much longer than a measurement.
fn signed(key: &SigningKey, count: u64, duration: Duration) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let mut tokens = Vec::new();
    for n in 0..count {
        tokens.push(key.sign(&claims(n))?);
        // A slow or busy machine measures fewer tokens rather than stopping: the rows
        // that use them say how many there were.
        if started.elapsed() >= duration * 20 {
            eprintln!(
                "signing {count} tokens takes too long here: measuring with {}",
                tokens.len()
            );
            break;
        }
    }
    Ok(tokens)
}

/// A tiny deterministic generator, so runs pick the same sequence.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

/// How often `op` ran: per second of wall time, and per second of CPU time this thread
/// got — on a shared host the second is the cost of the operation, the first also
/// depends on how much of the core the others left us.
struct Rate {
    wall: f64,
    cpu: Option<f64>,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} | ", thousands(self.wall))?;
        match self.cpu {
            Some(cpu) => write!(f, "{} ({:.2} µs)", thousands(cpu), 1e6 / cpu),
            None => write!(f, "n/a"),
        }
    }
}

fn thousands(rate: f64) -> String {
    let digits = format!("{rate:.0}");
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Nanoseconds this thread has run on a CPU (Linux `schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// `op` once on each of `items`, timed (wall and this thread's CPU).
fn per_item<T>(items: &[T], mut op: impl FnMut(&T) -> bool) -> Rate {
    let start = Instant::now();
    let cpu_start = thread_cpu_ns();
    for item in items {
        assert!(op(item), "the operation failed");
    }
    rate(items.len() as u64, start, cpu_start)
}

fn per_second(duration: Duration, mut op: impl FnMut() -> bool) -> Rate {
    let start = Instant::now();
    let cpu_start = thread_cpu_ns();
    let mut done: u64 = 0;
    while start.elapsed() < duration {
        for _ in 0..256 {
            assert!(op(), "the operation failed");
        }
        done += 256;
    }
    rate(done, start, cpu_start)
}

fn rate(done: u64, start: Instant, cpu_start: Option<u64>) -> Rate {
    let wall = start.elapsed().as_secs_f64();
    let cpu = match (cpu_start, thread_cpu_ns()) {
        (Some(begin), Some(end)) if end > begin => Some(done as f64 * 1e9 / (end - begin) as f64),
        _ => None,
    };
    Rate {
        wall: done as f64 / wall,
        cpu,
    }
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
