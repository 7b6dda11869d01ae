//! quick probe
use std::time::Instant;
use identity::{Claims, ISSUER, SigningKey, Verifier};
use jsonwebtoken::jwk::JwkSet;

fn main() -> anyhow::Result<()> {
    let (key, _) = SigningKey::generate()?;
    let verifier = Verifier::from_jwks(&JwkSet { keys: vec![key.public_jwk().clone()] });
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let token = key.sign(&Claims { sub: "u".into(), username: "a@b.c".into(), admin: false, iat: now, exp: now + 3600, iss: ISSUER.into() })?;
    let n = 20000;
    let start = Instant::now();
    for _ in 0..n { verifier.verify_cached(&token).map_err(|e| anyhow::anyhow!(e))?; }
    let el = start.elapsed();
    println!("{} verifications/s", n as f64 / el.as_secs_f64());
    let start = Instant::now();
    for _ in 0..n { let t = key.sign(&Claims { sub: "u".into(), username: "a@b.c".into(), admin: false, iat: now, exp: now + 3600, iss: ISSUER.into() })?; std::hint::black_box(t); }
    println!("{} signatures/s", n as f64 / start.elapsed().as_secs_f64());
    Ok(())
}
