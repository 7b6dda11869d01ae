//! Who the client is, through the gateway (issue 14 §5, §6): behind the proxies named
//! by `FLOTILLA_GATEWAY_TRUSTED_PROXIES` each client has its own rate limits, keyed on
//! the rightmost untrusted `X-Forwarded-For` address; nobody else gets to choose their
//! address; and one client failing on an account does not lock its owner out.
//!
//! The test connects from 127.0.0.1, as a proxy on this host would, and plays the
//! proxy's part by sending the `X-Forwarded-For` it would send: each address in it is
//! a distinct client.

use reqwest::StatusCode;
use test_support::TestSystem;

const PASSWORD: &str = "Unmistakable-Passw0rd";

async fn system(services: flotilla::ServiceArgs) -> (TestSystem, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let system = test_support::spawn_system_with(dir.path(), services).await;
    (system, dir)
}

fn behind_this_host() -> flotilla::ServiceArgs {
    let mut services = flotilla::ServiceArgs::default();
    services.gateway.gateway_trusted_proxies = vec!["127.0.0.1".parse().expect("address")];
    services
}

async fn jwks_from(system: &TestSystem, forwarded_for: &str) -> StatusCode {
    system
        .client
        .get(system.url("/.well-known/jwks.json"))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .expect("request")
        .status()
}

/// Requests from `forwarded_for` until one is refused with 429 (at most 20).
async fn exhaust(system: &TestSystem, forwarded_for: &str) {
    for _ in 0..20 {
        if jwks_from(system, forwarded_for).await == StatusCode::TOO_MANY_REQUESTS {
            return;
        }
    }
    panic!("{forwarded_for} was never limited");
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_rate_limit() {
    let mut services = behind_this_host();
    services.gateway.gateway_rate_limit = 1;
    let (system, _dir) = system(services).await;

    exhaust(&system, "198.51.100.1").await;
    // Another client behind the same proxy is not limited by the first one's requests.
    assert_eq!(jwks_from(&system, "198.51.100.2").await, StatusCode::OK);
    // The client is the rightmost untrusted address: what it wrote before is ignored,
    // so it cannot pick a fresh bucket by writing a new address each time.
    assert_eq!(
        jwks_from(&system, "203.0.113.77, 198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    system.stop().await.expect("stop");
}

#[tokio::test]
async fn without_trusted_proxies_x_forwarded_for_is_not_believed() {
    let mut services = flotilla::ServiceArgs::default();
    services.gateway.gateway_rate_limit = 1;
    let (system, _dir) = system(services).await;

    exhaust(&system, "198.51.100.1").await;
    // The connection's peer is the client, whatever address it writes.
    assert_eq!(
        jwks_from(&system, "198.51.100.2").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    system.stop().await.expect("stop");
}

async fn login_from(
    system: &TestSystem,
    forwarded_for: &str,
    email: &str,
    password: &str,
) -> StatusCode {
    system
        .client
        .post(system.url("/login"))
        .header("x-forwarded-for", forwarded_for)
        .basic_auth(email, Some(password))
        .send()
        .await
        .expect("login")
        .status()
}

#[tokio::test]
async fn one_client_failing_on_an_account_does_not_lock_its_owner_out() {
    let mut services = behind_this_host();
    services.auth.login_attempts_per_account = 3;
    let (system, _dir) = system(services).await;
    let created = system
        .client
        .post(system.url("/signup"))
        .json(&serde_json::json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .expect("signup");
    assert_eq!(created.status(), StatusCode::CREATED);

    let attacker = "198.51.100.66";
    for _ in 0..3 {
        assert_eq!(
            login_from(&system, attacker, "ada@example.com", "guessing").await,
            StatusCode::UNAUTHORIZED
        );
    }
    // The attacker is limited on this account — even with the right password, so that
    // it learns nothing…
    assert_eq!(
        login_from(&system, attacker, "ada@example.com", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // …and the owner, from its own address, logs in.
    assert_eq!(
        login_from(&system, "198.51.100.77", "ada@example.com", PASSWORD).await,
        StatusCode::OK
    );
    system.stop().await.expect("stop");
}

/// The same through `serve`: the gateway resolves the client behind its trusted proxy
/// and passes it on in `X-Forwarded-For`; auth, on another port of this host, believes
/// the gateway (its default trusted peers are this host) and limits that client alone.
#[tokio::test]
async fn served_separately_auth_sees_each_client_behind_the_gateway() {
    let auth_dir = tempfile::tempdir().expect("tempdir");
    let gateway_dir = tempfile::tempdir().expect("tempdir");
    let mut auth_services = flotilla::ServiceArgs::default();
    auth_services.auth.login_attempts_per_account = 2;
    let auth = test_support::spawn_served(flotilla::ServeArgs {
        service: flotilla::ServiceName::Auth,
        server: test_support::server_args(auth_dir.path()),
        database_url: None,
        gateway: Default::default(),
        services: auth_services,
        allow_embedded: true,
    })
    .await;
    let gateway = test_support::spawn_served(flotilla::ServeArgs {
        service: flotilla::ServiceName::Gateway,
        server: test_support::server_args(gateway_dir.path()),
        database_url: None,
        gateway: flotilla::GatewayArgs {
            auth_url: Some(flotilla::parse_upstream_url(&auth.base_url).expect("url")),
            ..Default::default()
        },
        services: behind_this_host(),
        allow_embedded: true,
    })
    .await;
    let created = gateway
        .client
        .post(gateway.url("/signup"))
        .json(&serde_json::json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .expect("signup");
    assert_eq!(created.status(), StatusCode::CREATED);
    for _ in 0..2 {
        assert_eq!(
            login_from(&gateway, "198.51.100.66", "ada@example.com", "guessing").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_from(&gateway, "198.51.100.66", "ada@example.com", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login_from(&gateway, "198.51.100.77", "ada@example.com", PASSWORD).await,
        StatusCode::OK
    );
    gateway.stop().await.expect("stop");
    auth.stop().await.expect("stop");
}
