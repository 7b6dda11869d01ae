//! Auth end to end, through the gateway of a whole `flotilla up` system: every status
//! code of docs/API.md §3, tokens checked locally at the gateway for protected routes,
//! the reference curl flow with an admin seeded from the command line, and no plain
//! password anywhere in the data directory.

use std::path::Path;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::Parser;
use identity::{Claims, ISSUER, SigningKey};
use reqwest::{StatusCode, header};
use test_support::{TestSystem, spawn_system, spawn_system_in};

const PASSWORD: &str = "Unmistakable-Passw0rd";

async fn signup(system: &TestSystem, email: &str, password: &str) -> reqwest::Response {
    system
        .client
        .post(system.url("/signup"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .expect("signup")
}

async fn login(system: &TestSystem, email: &str, password: &str) -> reqwest::Response {
    system
        .client
        .post(system.url("/login"))
        .basic_auth(email, Some(password))
        .send()
        .await
        .expect("login")
}

async fn get_jobs(system: &TestSystem, token: Option<&str>) -> reqwest::Response {
    let mut request = system.client.get(system.url("/jobs"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("jobs")
}

fn is_problem(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"))
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).expect("timestamp")
}

/// The system's own signing key, as an attacker who stole nothing does not have it —
/// used here to make tokens that are authentic but otherwise wrong (expired).
fn system_key(data_dir: &Path) -> SigningKey {
    let pem = std::fs::read_to_string(data_dir.join("jwt-signing.pem")).expect("key file");
    SigningKey::from_pem(&pem).expect("key")
}

fn claims(lifetime: i64) -> Claims {
    Claims {
        sub: "0190c0de-0000-7000-8000-000000000000".into(),
        username: "ada@example.com".into(),
        admin: true,
        iat: now(),
        exp: now() + lifetime,
        iss: ISSUER.into(),
    }
}

#[tokio::test]
async fn every_auth_status_code_through_the_gateway() {
    let system = spawn_system().await;

    let created = signup(&system, "ada@example.com", PASSWORD).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let duplicate = signup(&system, "ADA@example.com", PASSWORD).await;
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    assert!(is_problem(&duplicate));
    assert_eq!(
        signup(&system, "not an email", PASSWORD).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        signup(&system, "bob@example.com", "short").await.status(),
        StatusCode::BAD_REQUEST
    );

    let ok = login(&system, "ada@example.com", PASSWORD).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let token = ok.text().await.expect("token");
    assert_eq!(token.split('.').count(), 3);

    let missing = system
        .client
        .post(system.url("/login"))
        .send()
        .await
        .expect("login");
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert!(is_problem(&missing));
    assert_eq!(
        login(&system, "ada@example.com", "wrong password")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&system, "nobody@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    let valid = system
        .client
        .post(system.url("/validate"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("validate");
    assert_eq!(valid.status(), StatusCode::OK);
    let claims: Claims = valid.json().await.expect("claims");
    assert_eq!(claims.username, "ada@example.com");
    let no_token = system
        .client
        .post(system.url("/validate"))
        .send()
        .await
        .expect("validate");
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(no_token.headers()[header::WWW_AUTHENTICATE], "Bearer");
    let bad_token = system
        .client
        .post(system.url("/validate"))
        .bearer_auth("e30.e30.AAAA")
        .send()
        .await
        .expect("validate");
    assert_eq!(bad_token.status(), StatusCode::FORBIDDEN);

    let jwks = system
        .client
        .get(system.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("jwks");
    assert_eq!(jwks.status(), StatusCode::OK);
    let jwks: serde_json::Value = jwks.json().await.expect("json");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");

    // Per-account limit (10 a minute by default): the 11th attempt is refused.
    let mut limited = None;
    for _ in 0..11 {
        let reply = login(&system, "ada@example.com", "guessing").await;
        if reply.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
            break;
        }
        assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = limited.expect("429 within 11 attempts");
    let retry_after: u64 = limited.headers()[header::RETRY_AFTER]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    assert!(is_problem(&limited));
    system.stop().await.expect("stop");
}

#[tokio::test]
async fn protected_routes_need_a_token_the_gateway_can_verify() {
    let system = spawn_system().await;
    signup(&system, "ada@example.com", PASSWORD).await;
    let token = login(&system, "ada@example.com", PASSWORD)
        .await
        .text()
        .await
        .expect("token");

    // No token.
    for path in ["/jobs", "/jobs/123", "/download?fid=x"] {
        let reply = system
            .client
            .get(system.url(path))
            .send()
            .await
            .expect("get");
        assert_eq!(reply.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(is_problem(&reply), "{path}");
        // RFC 6750 §3: the 401 names the scheme it wants.
        assert_eq!(
            reply.headers()[header::WWW_AUTHENTICATE],
            "Bearer",
            "{path}"
        );
    }
    let upload = system
        .client
        .post(system.url("/upload"))
        .send()
        .await
        .expect("upload");
    assert_eq!(upload.status(), StatusCode::UNAUTHORIZED);

    // A genuine token passes the gateway (media answers whatever it answers, not 401).
    assert_ne!(
        get_jobs(&system, Some(&token)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Tampered: the payload says admin, the signature is the original one.
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64")).expect("json");
    payload["admin"] = serde_json::Value::Bool(true);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    );
    let refused = get_jobs(&system, Some(&forged)).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers()[header::WWW_AUTHENTICATE],
        r#"Bearer error="invalid_token""#
    );

    // Expired, though signed with the system's own key.
    let key = system_key(system.data_dir());
    let expired = key.sign(&claims(-3600)).expect("sign");
    assert_eq!(
        get_jobs(&system, Some(&expired)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let fresh = key.sign(&claims(3600)).expect("sign");
    assert_ne!(
        get_jobs(&system, Some(&fresh)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Signed with a key the system never published (unknown kid).
    let (stranger, _) = SigningKey::generate().expect("generate");
    let foreign = stranger.sign(&claims(3600)).expect("sign");
    assert_eq!(
        get_jobs(&system, Some(&foreign)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // A stranger's signature under the system's kid.
    let header = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"typ":"JWT","alg":"EdDSA","kid":"{}"}}"#,
        key.kid()
    ));
    let foreign_parts: Vec<&str> = foreign.split('.').collect();
    let wrong_kid = format!("{header}.{}.{}", foreign_parts[1], foreign_parts[2]);
    assert_eq!(
        get_jobs(&system, Some(&wrong_kid)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // alg: none.
    let none = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"typ":"JWT","alg":"none","kid":"{}"}}"#,
        key.kid()
    ));
    for unsigned in [
        format!("{none}.{}.", parts[1]),
        format!("{none}.{}", parts[1]),
    ] {
        assert_eq!(
            get_jobs(&system, Some(&unsigned)).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    system.stop().await.expect("stop");
}

#[tokio::test]
async fn passwords_appear_nowhere_in_the_data_directory() {
    // Our own directory: it must outlive the system to be scanned after the stop.
    let dir = tempfile::tempdir().expect("tempdir");
    let system = spawn_system_in(dir.path()).await;
    assert_eq!(
        signup(&system, "ada@example.com", PASSWORD).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        login(&system, "ada@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    let dir = dir.path().to_owned();
    // Scanned while running (WAL files included) and after a clean stop.
    let running = scan_for(&dir, PASSWORD.as_bytes());
    system.stop().await.expect("stop");
    let stopped = scan_for(&dir, PASSWORD.as_bytes());
    assert!(running.0 > 0 && stopped.0 > 0, "files were scanned");
    assert_eq!(running.1, Vec::<String>::new());
    assert_eq!(stopped.1, Vec::<String>::new());
}

/// (bytes scanned, files containing `needle`)
fn scan_for(dir: &Path, needle: &[u8]) -> (usize, Vec<String>) {
    let mut scanned = 0;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("dir") {
                stack.push(entry.expect("entry").path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            scanned += bytes.len();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    (scanned, found)
}

#[tokio::test]
async fn tokens_survive_a_restart_on_the_same_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let system = spawn_system_in(dir.path()).await;
    signup(&system, "ada@example.com", PASSWORD).await;
    let token = login(&system, "ada@example.com", PASSWORD)
        .await
        .text()
        .await
        .expect("token");
    system.stop().await.expect("stop");

    let system = spawn_system_in(dir.path()).await;
    assert_ne!(
        get_jobs(&system, Some(&token)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&system, "ada@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    system.stop().await.expect("stop");
}

#[tokio::test]
async fn openapi_describes_the_auth_routes_and_docs_are_served() {
    let system = spawn_system().await;
    let doc = system
        .client
        .get(system.url("/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(doc.status(), StatusCode::OK);
    let doc: serde_json::Value = doc.json().await.expect("json");
    for path in ["/signup", "/login", "/validate", "/.well-known/jwks.json"] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    let docs = system
        .client
        .get(system.url("/docs/"))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await.expect("html");
    assert!(html.to_lowercase().contains("swagger"), "{html}");
    system.stop().await.expect("stop");
}

/// `flotilla up` parsed from a command line, as the binary does.
#[derive(Parser)]
struct UpCommandLine {
    #[command(flatten)]
    up: flotilla::UpArgs,
}

#[tokio::test]
async fn the_reference_flow_with_a_seeded_admin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_string_lossy().into_owned();
    let command_line = UpCommandLine::try_parse_from([
        "flotilla",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
        "--admin-email",
        "georgio@email.com",
        "--admin-password",
        "Admin123",
    ])
    .expect("command line");
    let running = flotilla::up(command_line.up, tokio_util::sync::CancellationToken::new())
        .await
        .expect("up");
    running
        .wait_ready(std::time::Duration::from_secs(30))
        .await
        .expect("ready");
    let base = format!("http://{}", running.addr);
    let client = test_support::http_client();
    // curl -X POST http://127.0.0.1:8080/login -u georgio@email.com:Admin123
    let reply = client
        .post(format!("{base}/login"))
        .basic_auth("georgio@email.com", Some("Admin123"))
        .send()
        .await
        .expect("login");
    assert_eq!(reply.status(), StatusCode::OK);
    let token = reply.text().await.expect("token");
    let claims = client
        .post(format!("{base}/validate"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("validate")
        .json::<Claims>()
        .await
        .expect("claims");
    assert!(claims.admin);
    assert_eq!(claims.username, "georgio@email.com");
    running.stop().await.expect("stop");
}

/// Auth limits login attempts per client address, which it reads from the last entry of
/// `X-Forwarded-For` when the gateway calls it. A client that writes its own
/// `X-Forwarded-For` (a new address every time) is still one client: the gateway
/// appends the address it sees, in `up` as in `serve`.
#[tokio::test]
async fn a_client_cannot_dodge_the_login_limit_with_its_own_x_forwarded_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut services = flotilla::ServiceArgs::default();
    services.auth.login_attempts_per_client = 3;
    let system = test_support::spawn_system_with(dir.path(), services).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let reply = system
            .client
            .post(system.url("/login"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .basic_auth(format!("user{i}@example.com"), Some("guessing"))
            .send()
            .await
            .expect("login");
        statuses.push(reply.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    system.stop().await.expect("stop");
}
