//! Local verification: what is accepted, what is rejected, and when keys are fetched.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use axum::{Router, body::Body, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{Request, StatusCode};
use identity::{
    Caller, Claims, ISSUER, JwksSource, SigningKey, Verifier, VerifierSettings, VerifyError,
};
use jsonwebtoken::jwk::JwkSet;
use tower::ServiceExt;

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn claims(lifetime_secs: i64) -> Claims {
    Claims {
        sub: "user-1".into(),
        username: "a@example.com".into(),
        admin: false,
        iat: now(),
        exp: now() + lifetime_secs,
        iss: ISSUER.into(),
    }
}

fn new_key() -> SigningKey {
    SigningKey::generate().expect("generate").0
}

fn jwks(keys: &[&SigningKey]) -> JwkSet {
    JwkSet {
        keys: keys.iter().map(|k| k.public_jwk().clone()).collect(),
    }
}

/// A source whose key set the test changes, counting fetches.
fn switchable(initial: JwkSet) -> (JwksSource, Arc<Mutex<JwkSet>>, Arc<AtomicUsize>) {
    let keys = Arc::new(Mutex::new(initial));
    let fetches = Arc::new(AtomicUsize::new(0));
    let source = {
        let keys = keys.clone();
        let fetches = fetches.clone();
        JwksSource::from_fn(move || {
            fetches.fetch_add(1, Ordering::SeqCst);
            let set = keys.lock().expect("lock").clone();
            async move { Ok(set) }
        })
    };
    (source, keys, fetches)
}

fn b64(json: &str) -> String {
    URL_SAFE_NO_PAD.encode(json)
}

#[tokio::test]
async fn a_genuine_token_verifies() {
    let key = new_key();
    let verifier = Verifier::from_jwks(&jwks(&[&key]));
    let issued = claims(60);
    let token = key.sign(&issued).expect("sign");
    assert_eq!(verifier.verify(&token).await, Ok(issued.clone()));
    assert_eq!(verifier.verify_cached(&token), Ok(issued));
    assert_eq!(verifier.key_ids(), vec![key.kid().to_owned()]);
}

#[tokio::test]
async fn tampered_tokens_are_rejected() {
    let key = new_key();
    let verifier = Verifier::from_jwks(&jwks(&[&key]));
    let token = key.sign(&claims(60)).expect("sign");
    let parts: Vec<&str> = token.split('.').collect();

    // Payload changed to make the holder an admin; signature kept.
    let mut admin = claims(60);
    admin.admin = true;
    let forged_payload = b64(&serde_json::to_string(&admin).expect("json"));
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(
        verifier.verify(&forged).await,
        Err(VerifyError::BadSignature)
    );

    // One bit of the signature flipped.
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("base64");
    signature[0] ^= 1;
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(signature)
    );
    assert_eq!(
        verifier.verify(&flipped).await,
        Err(VerifyError::BadSignature)
    );

    // Signed by another key that claims to be ours.
    let impostor = new_key();
    let header = format!(r#"{{"typ":"JWT","alg":"EdDSA","kid":"{}"}}"#, key.kid());
    let body = b64(&serde_json::to_string(&claims(60)).expect("json"));
    let theirs = impostor.sign(&claims(60)).expect("sign");
    let their_signature = theirs.rsplit('.').next().expect("signature");
    let spoofed = format!("{}.{}.{}", b64(&header), body, their_signature);
    assert_eq!(
        verifier.verify(&spoofed).await,
        Err(VerifyError::BadSignature)
    );

    for garbage in [
        "",
        "abc",
        "a.b.c",
        "a.b",
        &format!("{}.{}", parts[0], parts[1]),
    ] {
        assert!(verifier.verify(garbage).await.is_err(), "{garbage:?}");
    }
}

#[tokio::test]
async fn expired_tokens_are_rejected() {
    let key = new_key();
    let verifier = Verifier::from_jwks(&jwks(&[&key]));
    // Beyond the 30 s leeway.
    let token = key.sign(&claims(-120)).expect("sign");
    assert_eq!(verifier.verify(&token).await, Err(VerifyError::Expired));
}

#[tokio::test]
async fn alg_none_and_algorithm_confusion_are_rejected() {
    let key = new_key();
    let verifier = Verifier::from_jwks(&jwks(&[&key]));
    let body = b64(&serde_json::to_string(&claims(60)).expect("json"));
    for alg in ["none", "None", "NONE"] {
        let header = b64(&format!(
            r#"{{"alg":"{alg}","typ":"JWT","kid":"{}"}}"#,
            key.kid()
        ));
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            let outcome = verifier.verify(&token).await;
            assert!(
                matches!(
                    outcome,
                    Err(VerifyError::Malformed | VerifyError::UnsupportedAlgorithm)
                ),
                "{alg}: {outcome:?}"
            );
        }
    }
    // HS256 "signed" with the public key as the secret (the classic confusion attack).
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(key.kid().to_owned());
    let jwk_x = match &key.public_jwk().algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) => p.x.clone(),
        _ => unreachable!("Ed25519 keys are OKP"),
    };
    let confused = jsonwebtoken::encode(
        &header,
        &claims(60),
        &jsonwebtoken::EncodingKey::from_secret(jwk_x.as_bytes()),
    )
    .expect("encode");
    assert_eq!(
        verifier.verify(&confused).await,
        Err(VerifyError::UnsupportedAlgorithm)
    );
}

#[tokio::test]
async fn other_issuers_and_missing_kids_are_rejected() {
    let key = new_key();
    let verifier = Verifier::from_jwks(&jwks(&[&key]));
    let mut foreign = claims(60);
    foreign.iss = "someone-else".into();
    let token = key.sign(&foreign).expect("sign");
    assert_eq!(
        verifier.verify(&token).await,
        Err(VerifyError::InvalidClaims)
    );

    let der_less = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    let header = b64(&serde_json::to_string(&der_less).expect("json"));
    let signed = key.sign(&claims(60)).expect("sign");
    let rest: Vec<&str> = signed.split('.').collect();
    let no_kid = format!("{header}.{}.{}", rest[1], rest[2]);
    assert_eq!(
        verifier.verify(&no_kid).await,
        Err(VerifyError::MissingKeyId)
    );
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_then_rotation_is_picked_up() {
    let old = new_key();
    let new = new_key();
    let (source, keys, fetches) = switchable(jwks(&[&old]));
    let verifier = Verifier::new(source);

    // First use fetches.
    let token = old.sign(&claims(60)).expect("sign");
    verifier.verify(&token).await.expect("old key");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // Auth rotates: the new key is published, the old one still verifies.
    *keys.lock().expect("lock") = jwks(&[&new, &old]);
    let rotated = new.sign(&claims(60)).expect("sign");
    // The first fetch was moments ago, within the refetch interval: not refetched yet.
    assert_eq!(
        verifier.verify(&rotated).await,
        Err(VerifyError::UnknownKey)
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    let eager = Verifier::with_settings(
        switchable(jwks(&[&new, &old])).0,
        VerifierSettings {
            min_refetch_interval: std::time::Duration::ZERO,
            ..VerifierSettings::default()
        },
    );
    eager.verify(&token).await.expect("old key still verifies");
    eager.verify(&rotated).await.expect("new key");
}

#[tokio::test]
async fn forged_kids_cannot_flood_the_auth_service() {
    let key = new_key();
    let (source, _keys, fetches) = switchable(jwks(&[&key]));
    let verifier = Verifier::new(source);
    verifier
        .verify(&key.sign(&claims(60)).expect("sign"))
        .await
        .expect("valid");
    let stranger = new_key();
    let unknown = stranger.sign(&claims(60)).expect("sign");
    for _ in 0..100 {
        assert_eq!(
            verifier.verify(&unknown).await,
            Err(VerifyError::UnknownKey)
        );
    }
    // One initial fetch; the refetch interval (5 s) has not passed, so no more.
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unavailable_keys_are_reported_as_such() {
    let verifier = Verifier::new(JwksSource::from_fn(|| async {
        Err(identity::SourceError("auth is down".into()))
    }));
    let token = new_key().sign(&claims(60)).expect("sign");
    assert!(matches!(
        verifier.verify(&token).await,
        Err(VerifyError::KeysUnavailable(_))
    ));
    let problem = platform::Problem::from(VerifyError::KeysUnavailable("x".into()));
    assert_eq!(problem.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// At start-up the first fetch may fail (auth not answering yet); a request that comes
/// just after is not refused for the rest of the retry interval: it waits it out (≤ 1 s)
/// and tries again. Requests that arrive together share one attempt.
#[tokio::test]
async fn a_request_just_after_a_failed_first_fetch_waits_for_the_retry() {
    let key = new_key();
    let keys = jwks(&[&key]);
    let fetches = Arc::new(AtomicUsize::new(0));
    let verifier = {
        let fetches = fetches.clone();
        Verifier::new(JwksSource::from_fn(move || {
            let first = fetches.fetch_add(1, Ordering::SeqCst) == 0;
            let keys = keys.clone();
            async move {
                if first {
                    Err(identity::SourceError("auth is not up yet".into()))
                } else {
                    Ok(keys)
                }
            }
        }))
    };
    let token = key.sign(&claims(60)).expect("sign");
    assert!(matches!(
        verifier.verify(&token).await,
        Err(VerifyError::KeysUnavailable(_))
    ));
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(
        verifier.verify(&token),
        verifier.verify(&token),
        verifier.verify(&token)
    );
    for verified in [a, b, c] {
        assert_eq!(verified.expect("verified after the retry").sub, "user-1");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "one retry for all three");
}

#[tokio::test]
async fn the_caller_extractor_needs_a_valid_bearer_token() {
    let key = new_key();
    let verifier = Verifier::from_jwks(&jwks(&[&key]));
    let app = Router::new()
        .route("/me", get(|caller: Caller| async move { caller.username }))
        .layer(verifier.layer());
    let call = |auth: Option<String>| {
        let app = app.clone();
        async move {
            let mut request = Request::get("/me");
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = app
                .oneshot(request.body(Body::empty()).expect("request"))
                .await
                .expect("infallible");
            let status = response.status();
            let challenge = response
                .headers()
                .get(http::header::WWW_AUTHENTICATE)
                .map(|v| v.to_str().expect("ascii").to_owned());
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .expect("body");
            if status == StatusCode::OK {
                assert_eq!(challenge, None);
                (status, String::from_utf8_lossy(&body).into_owned())
            } else {
                (status, challenge.unwrap_or_default())
            }
        }
    };
    let token = key.sign(&claims(60)).expect("sign");
    assert_eq!(
        call(Some(format!("Bearer {token}"))).await,
        (StatusCode::OK, "a@example.com".to_owned())
    );
    assert_eq!(
        call(Some(format!("bearer {token}"))).await.0,
        StatusCode::OK
    );
    // RFC 6750 §3: no Bearer token → the bare challenge; a bad one → invalid_token.
    let missing = (StatusCode::UNAUTHORIZED, "Bearer".to_owned());
    let invalid = (
        StatusCode::UNAUTHORIZED,
        r#"Bearer error="invalid_token""#.to_owned(),
    );
    assert_eq!(call(None).await, missing);
    assert_eq!(call(Some(format!("Basic {token}"))).await, missing);
    assert_eq!(call(Some("Bearer nope".into())).await, invalid);
    let expired = key.sign(&claims(-120)).expect("sign");
    assert_eq!(call(Some(format!("Bearer {expired}"))).await, invalid);
}

#[tokio::test]
async fn the_guard_hands_the_verified_caller_to_the_service_behind_it() {
    let key = new_key();
    let verifier = Verifier::from_jwks(&jwks(&[&key]));
    // The service behind has no verifier: it relies on the caller in the extensions.
    let service = Router::new().route("/jobs", get(|caller: Caller| async move { caller.user_id }));
    let guarded = service.layer(axum::middleware::from_fn_with_state(
        verifier,
        identity::require_caller,
    ));
    let token = key.sign(&claims(60)).expect("sign");
    let ok = guarded
        .clone()
        .oneshot(
            Request::get("/jobs")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(ok.status(), StatusCode::OK);
    let denied = guarded
        .clone()
        .oneshot(Request::get("/jobs").body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(denied.headers()[http::header::WWW_AUTHENTICATE], "Bearer");
    let forged = guarded
        .oneshot(
            Request::get("/jobs")
                .header("authorization", format!("Bearer {token}x"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        forged.headers()[http::header::WWW_AUTHENTICATE],
        r#"Bearer error="invalid_token""#
    );
}

#[tokio::test]
async fn a_remembered_token_stops_verifying_when_its_key_is_withdrawn() {
    let old = new_key();
    let new = new_key();
    let (source, keys, _fetches) = switchable(jwks(&[&old]));
    let verifier = Verifier::with_settings(
        source,
        VerifierSettings {
            // Every use finds the keys stale and refreshes them.
            max_key_age: std::time::Duration::ZERO,
            ..VerifierSettings::default()
        },
    );
    let token = old.sign(&claims(60)).expect("sign");
    verifier.verify(&token).await.expect("first use");
    verifier.verify(&token).await.expect("remembered");
    *keys.lock().expect("lock") = jwks(&[&new]);
    assert_eq!(verifier.verify(&token).await, Err(VerifyError::UnknownKey));
}

#[tokio::test]
async fn a_remembered_token_still_expires() {
    let key = new_key();
    let verifier = Verifier::with_settings(
        JwksSource::fixed(jwks(&[&key])),
        VerifierSettings {
            leeway: std::time::Duration::ZERO,
            ..VerifierSettings::default()
        },
    );
    let token = key.sign(&claims(1)).expect("sign");
    verifier.verify(&token).await.expect("fresh");
    // Past `exp` by at least one whole second.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(verifier.verify(&token).await, Err(VerifyError::Expired));
    assert_eq!(verifier.verify_cached(&token), Err(VerifyError::Expired));
}
