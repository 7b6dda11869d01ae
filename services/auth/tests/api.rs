//! The auth API, built exactly as `flotilla up` / `serve auth` build it, against every
//! database backend: SQLite always; PostgreSQL and MariaDB when
//! `FLOTILLA_TEST_POSTGRES_URL` / `FLOTILLA_TEST_MYSQL_URL` are set (each test gets its
//! own scratch database there; under `CI=true` they must be set).

use std::net::SocketAddr;

use auth::Args;
use axum::{Router, body::Body, extract::ConnectInfo};
use base64::{Engine, engine::general_purpose::STANDARD};
use http::{Request, StatusCode, header};
use identity::Claims;
use platform::ServiceContext;
use storage::scratch::ScratchDatabase;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct Backend {
    name: &'static str,
    dir: tempfile::TempDir,
    database_url: Option<String>,
    scratch: Option<ScratchDatabase>,
}

impl Backend {
    /// SQLite only, for tests of behaviour no database changes.
    fn sqlite() -> Backend {
        Backend {
            name: "sqlite",
            dir: tempfile::tempdir().expect("tempdir"),
            database_url: None,
            scratch: None,
        }
    }

    async fn all() -> Vec<Backend> {
        let mut all = vec![Backend {
            name: "sqlite",
            dir: tempfile::tempdir().expect("tempdir"),
            database_url: None,
            scratch: None,
        }];
        for (name, var) in [
            ("postgres", "FLOTILLA_TEST_POSTGRES_URL"),
            ("mariadb", "FLOTILLA_TEST_MYSQL_URL"),
        ] {
            let Some(server) = test_kit::real_server_url(var) else {
                continue;
            };
            let scratch = ScratchDatabase::create(&server)
                .await
                .expect("scratch database");
            all.push(Backend {
                name,
                dir: tempfile::tempdir().expect("tempdir"),
                database_url: Some(scratch.url().to_owned()),
                scratch: Some(scratch),
            });
        }
        all
    }

    fn context(&self) -> ServiceContext {
        let mut context = ServiceContext::new(self.dir.path().to_owned(), CancellationToken::new());
        context.database_url = self.database_url.clone();
        context
    }

    async fn start(&self, args: &Args) -> Api {
        let context = self.context();
        let app = auth::build(&context, args).await.expect("auth builds");
        Api {
            router: app.into_router(context.shutdown.clone()),
            backend: self.name,
        }
    }

    async fn cleanup(self) {
        if let Some(scratch) = self.scratch {
            scratch
                .drop_database()
                .await
                .expect("drop scratch database");
        }
    }
}

struct Api {
    router: Router,
    backend: &'static str,
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

/// Asserts that `reply` refuses a login for now: 429, saying when to come back (in 1 to
/// 60 s: every limit counts per minute).
fn assert_limited(reply: &Reply, backend: &str) {
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{backend}: {}",
        reply.body
    );
    let retry_after: u64 = reply.headers[header::RETRY_AFTER]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "{backend}: {retry_after}");
}

impl Api {
    async fn send(&self, request: http::request::Builder, body: Body) -> Reply {
        self.send_from("192.0.2.10:5000", request, body).await
    }

    async fn send_from(&self, peer: &str, request: http::request::Builder, body: Body) -> Reply {
        let mut request = request.body(body).expect("request");
        request
            .extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(peer.parse().expect("peer")));
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn signup(&self, email: &str, password: &str) -> Reply {
        let body = serde_json::json!({"email": email, "password": password}).to_string();
        self.send(
            Request::post("/signup").header(header::CONTENT_TYPE, "application/json"),
            Body::from(body),
        )
        .await
    }

    async fn login(&self, email: &str, password: &str) -> Reply {
        self.login_from("192.0.2.10:5000", email, password).await
    }

    async fn login_from(&self, peer: &str, email: &str, password: &str) -> Reply {
        let credentials = STANDARD.encode(format!("{email}:{password}"));
        self.send_from(
            peer,
            Request::post("/login").header(header::AUTHORIZATION, format!("Basic {credentials}")),
            Body::empty(),
        )
        .await
    }

    async fn validate(&self, authorization: Option<&str>) -> Reply {
        let mut request = Request::post("/validate");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        self.send(request, Body::empty()).await
    }
}

#[tokio::test]
async fn signup_answers_201_409_and_400() {
    for backend in Backend::all().await {
        let api = backend.start(&Args::default()).await;
        let b = api.backend;
        let created = api.signup("Ada@Example.com", "correct horse").await;
        assert_eq!(created.status, StatusCode::CREATED, "{b}: {}", created.body);
        let account: serde_json::Value = serde_json::from_str(&created.body).expect("json");
        assert_eq!(account["email"], "ada@example.com", "{b}");

        // The same address in another case is the same account.
        for again in ["ada@example.com", " ADA@example.COM "] {
            let duplicate = api.signup(again, "another password").await;
            assert_eq!(
                duplicate.status,
                StatusCode::CONFLICT,
                "{b}: {}",
                duplicate.body
            );
            assert_eq!(
                duplicate.headers[header::CONTENT_TYPE],
                "application/problem+json"
            );
        }
        for (email, password) in [
            ("not-an-email", "long enough"),
            ("bob@example.com", "short"),
        ] {
            let refused = api.signup(email, password).await;
            assert_eq!(
                refused.status,
                StatusCode::BAD_REQUEST,
                "{b}: {email}: {}",
                refused.body
            );
        }
        for body in ["", "{", r#"{"email":"x@y.com"}"#, "[]"] {
            let refused = api.send(Request::post("/signup"), Body::from(body)).await;
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{b}: {body:?}");
        }
        backend.cleanup().await;
    }
}

/// Login gives a token that validates, and refuses a wrong password and an unknown account
/// alike; validate refuses a missing token (401) and a bad one (403), saying why.
#[tokio::test]
async fn login_gives_a_token_that_validates_and_refusals_say_why() {
    for backend in Backend::all().await {
        let api = backend.start(&Args::default()).await;
        let b = api.backend;
        api.signup("ada@example.com", "correct horse").await;

        let ok = api.login("ADA@example.com", "correct horse").await;
        assert_eq!(ok.status, StatusCode::OK, "{b}: {}", ok.body);
        assert!(
            ok.headers[header::CONTENT_TYPE]
                .to_str()
                .expect("text")
                .starts_with("text/plain")
        );
        let token = ok.body.clone();
        assert_eq!(token.split('.').count(), 3, "{b}: a compact JWS");

        let valid = api.validate(Some(&format!("Bearer {token}"))).await;
        assert_eq!(valid.status, StatusCode::OK, "{b}: {}", valid.body);
        let claims: Claims = serde_json::from_str(&valid.body).expect("claims");
        assert_eq!(claims.username, "ada@example.com");
        assert!(!claims.admin);
        assert_eq!(claims.exp - claims.iat, 24 * 3600, "default lifetime 24 h");

        // Wrong password and unknown account: same status, same message.
        let wrong = api.login("ada@example.com", "wrong horse").await;
        let unknown = api.login("nobody@example.com", "correct horse").await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{b}");
        assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "{b}");
        let detail = |r: &Reply| {
            serde_json::from_str::<serde_json::Value>(&r.body).expect("problem")["detail"].clone()
        };
        assert_eq!(detail(&wrong), detail(&unknown));

        let missing = api.send(Request::post("/login"), Body::empty()).await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{b}");

        // RFC 6750 §3: a 401 names the scheme; a refused token says why.
        for authorization in [None, Some(format!("Basic {token}"))] {
            let refused = api.validate(authorization.as_deref()).await;
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{b}");
            assert_eq!(refused.headers[header::WWW_AUTHENTICATE], "Bearer", "{b}");
            assert_eq!(
                refused.headers[header::CONTENT_TYPE],
                "application/problem+json",
                "{b}"
            );
        }
        let mut tampered = token.clone().into_bytes();
        let middle = token.find('.').expect("dot") + 5;
        tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(
            api.validate(Some(&format!("Bearer {tampered}")))
                .await
                .status,
            StatusCode::FORBIDDEN,
            "{b}"
        );
        let garbage = api.validate(Some("Bearer not.a.token")).await;
        assert_eq!(garbage.status, StatusCode::FORBIDDEN, "{b}");
        assert_eq!(
            garbage.headers[header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#,
            "{b}"
        );
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn login_attempts_are_limited_per_account_and_per_client() {
    for backend in Backend::all().await {
        let args = Args {
            login_attempts_per_account: 3,
            login_attempts_per_client: 5,
            ..Args::default()
        };
        let api = backend.start(&args).await;
        let b = api.backend;
        api.signup("ada@example.com", "correct horse").await;
        for _ in 0..3 {
            assert_eq!(
                api.login_from("192.0.2.1:1", "ada@example.com", "guess guess")
                    .await
                    .status,
                StatusCode::UNAUTHORIZED
            );
        }
        // This client is now limited on this account, even with the right password (it
        // learns nothing)…
        let limited = api
            .login_from("192.0.2.1:1", "ada@example.com", "correct horse")
            .await;
        assert_limited(&limited, b);
        // …while the owner, from an address that has not been failing, logs in: nobody
        // can lock someone else out (OWASP authentication guidance).
        let owner = api
            .login_from("192.0.2.2:1", "ada@example.com", "correct horse")
            .await;
        assert_eq!(owner.status, StatusCode::OK, "{b}: {}", owner.body);

        // One address spraying many accounts is limited on its own (5 per minute).
        for n in 0..5 {
            let reply = api
                .login_from("198.51.100.7:1", &format!("u{n}@example.com"), "whatever1")
                .await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{b}");
        }
        let limited = api
            .login_from("198.51.100.7:1", "u9@example.com", "whatever1")
            .await;
        assert_limited(&limited, b);
        backend.cleanup().await;
    }
}

/// Many clients failing on one account (a distributed guess) pass its account-wide
/// ceiling: logins to it are slowed, clients that failed on it are refused, and the
/// right password from a client that has not failed still logs in.
#[tokio::test]
async fn an_account_under_distributed_attack_is_slowed_not_locked() {
    let backend = Backend::sqlite();
    let args = Args {
        login_attempts_per_account: 10,
        login_failures_per_account: 4,
        ..Args::default()
    };
    let api = backend.start(&args).await;
    api.signup("ada@example.com", "correct horse").await;
    for n in 1..=4 {
        let reply = api
            .login_from(
                &format!("198.51.100.{n}:1"),
                "ada@example.com",
                "guess guess",
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let again = api
        .login_from("198.51.100.1:1", "ada@example.com", "correct horse")
        .await;
    assert_limited(&again, api.backend);

    let started = std::time::Instant::now();
    let owner = api
        .login_from("203.0.113.9:1", "ada@example.com", "correct horse")
        .await;
    assert_eq!(owner.status, StatusCode::OK, "{}", owner.body);
    assert!(
        started.elapsed() >= auth::limits::ACCOUNT_SLOWDOWN,
        "slowed down: {:?}",
        started.elapsed()
    );
    // Other accounts are not slowed.
    api.signup("bob@example.com", "correct horse").await;
    let started = std::time::Instant::now();
    let bob = api
        .login_from("198.51.100.1:1", "bob@example.com", "correct horse")
        .await;
    assert_eq!(bob.status, StatusCode::OK);
    assert!(started.elapsed() < auth::limits::ACCOUNT_SLOWDOWN);
    backend.cleanup().await;
}

/// Signup accepts exactly what the mailer can send to (issue 14 §8).
#[tokio::test]
async fn signup_refuses_addresses_the_mailer_cannot_send_to() {
    let backend = Backend::sqlite();
    let api = backend.start(&Args::default()).await;
    for bad in [
        "a,b@x.com",
        "x(c)@x.com",
        "a;b@x.com",
        "ad\u{202E}moc.x@a.com",
        "a\u{200B}b@x.com",
        "a\u{0}b@x.com",
    ] {
        let refused = api.signup(bad, "long enough").await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{bad:?}: {}",
            refused.body
        );
        assert_eq!(
            refused.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert!(!refused.body.contains('\u{202E}'), "{}", refused.body);
    }
    let created = api.signup(" O'Brien+mp3@Example.IE ", "long enough").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let account: serde_json::Value = serde_json::from_str(&created.body).expect("json");
    assert_eq!(account["email"], "o'brien+mp3@example.ie");
    backend.cleanup().await;
}

#[tokio::test]
async fn the_admin_is_seeded_once_and_user_add_creates_accounts() {
    for backend in Backend::all().await {
        let args = Args {
            admin_email: Some("georgio@email.com".into()),
            admin_password: Some("Admin123".into()),
            ..Args::default()
        };
        // Twice, as after a restart: the second start changes nothing.
        let _first = backend.start(&args).await;
        let api = backend.start(&args).await;
        let b = api.backend;
        let login = api.login("georgio@email.com", "Admin123").await;
        assert_eq!(login.status, StatusCode::OK, "{b}: {}", login.body);
        let claims = api.validate(Some(&format!("Bearer {}", login.body))).await;
        let claims: Claims = serde_json::from_str(&claims.body).expect("claims");
        assert!(claims.admin, "{b}");

        let context = backend.context();
        let id = auth::add_user(&context, "cli@example.com", "from the cli".into(), false)
            .await
            .expect("user add");
        assert!(!id.is_empty());
        let again = auth::add_user(&context, "CLI@example.com", "from the cli".into(), false).await;
        assert!(
            again
                .expect_err("duplicate")
                .to_string()
                .contains("already exists")
        );
        assert!(
            auth::add_user(&context, "x@example.com", "short".into(), false)
                .await
                .is_err()
        );
        assert_eq!(
            api.login("cli@example.com", "from the cli").await.status,
            StatusCode::OK,
            "{b}"
        );
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn a_signed_up_admin_email_is_not_promoted_by_seeding() {
    let backend = Backend::all().await.into_iter().next().expect("sqlite");
    let api = backend.start(&Args::default()).await;
    api.signup("boss@example.com", "i was here first").await;
    let args = Args {
        admin_email: Some("boss@example.com".into()),
        admin_password: Some("the real admin".into()),
        ..Args::default()
    };
    let api = backend.start(&args).await;
    let token = api.login("boss@example.com", "i was here first").await.body;
    let claims = api.validate(Some(&format!("Bearer {token}"))).await;
    let claims: Claims = serde_json::from_str(&claims.body).expect("claims");
    assert!(!claims.admin);
}

#[tokio::test]
async fn passwords_never_reach_the_database_files() {
    let backend = Backend::all().await.into_iter().next().expect("sqlite");
    let api = backend.start(&Args::default()).await;
    let password = "Tr0ub4dor&3-unmistakable";
    assert_eq!(
        api.signup("ada@example.com", password).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.login("ada@example.com", password).await.status,
        StatusCode::OK
    );
    drop(api);
    let mut scanned = 0;
    for entry in std::fs::read_dir(backend.dir.path()).expect("data dir") {
        let path = entry.expect("entry").path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("auth.db"))
        {
            // SQLite may remove its -wal/-shm files as the pool closes: skip those.
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => panic!("read {}: {error}", path.display()),
            };
            assert!(
                !bytes
                    .windows(password.len())
                    .any(|w| w == password.as_bytes()),
                "password found in {}",
                path.display()
            );
            scanned += bytes.len();
        }
    }
    assert!(scanned > 0, "the database files were scanned");
}

#[tokio::test]
async fn the_jwks_lists_the_signing_key_and_previous_keys() {
    let backend = Backend::all().await.into_iter().next().expect("sqlite");
    let old_key = backend.dir.path().join("old.pem");
    let (_, pem) = identity::SigningKey::generate().expect("generate");
    std::fs::write(&old_key, pem).expect("write");
    let args = Args {
        jwt_previous_keys: vec![old_key],
        ..Args::default()
    };
    let api = backend.start(&args).await;
    let reply = api
        .send(Request::get("/.well-known/jwks.json"), Body::empty())
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&reply.body).expect("jwks");
    assert_eq!(jwks.keys.len(), 2);
    for key in &jwks.keys {
        assert!(key.common.key_id.is_some());
        assert_eq!(
            key.common.key_algorithm,
            Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA)
        );
    }
    // Never the private key.
    assert!(!reply.body.contains("\"d\""));
    let file =
        std::fs::read_to_string(backend.dir.path().join("jwt-signing.pem")).expect("key file");
    assert!(file.starts_with("-----BEGIN PRIVATE KEY-----"));
}
