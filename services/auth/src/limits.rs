//! Login rate limits, per account and per client address (docs/API.md §3: 429 with
//! `Retry-After`), and how the client address is found.
//!
//! Client address: the peer of the connection, unless that peer is a trusted proxy
//! (`FLOTILLA_TRUSTED_PROXIES`: the gateway; by default this host only), in which case
//! the *last* `X-Forwarded-For` entry is used — the one the gateway appended, not
//! anything the client wrote before it. The gateway resolves the client behind its own
//! trusted proxies (`FLOTILLA_GATEWAY_TRUSTED_PROXIES`) and ends the chain with it. In
//! `flotilla up` the gateway calls auth in-process with the client's address as the
//! peer and appends it to `X-Forwarded-For` as it does for a remote auth, so both modes
//! agree. IPv6 clients are grouped by /64, the block one subscriber usually holds.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::extract::ConnectInfo;
use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use http::{Extensions, HeaderMap};

pub use platform::forwarded::{IpNet, parse_ip_net};

/// The default `FLOTILLA_TRUSTED_PROXIES`: this host only. `flotilla up` calls auth
/// in-process from its gateway, so no other peer exists there; `serve auth` behind a
/// gateway on another host needs the gateway's addresses set (deploy/k8s does).
pub const DEFAULT_TRUSTED_PROXIES: &str = "127.0.0.0/8,::1/128";

/// The client a request comes from, if known.
pub fn client_address(
    extensions: &Extensions,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_canonical())?;
    if !platform::forwarded::trusted(trusted, peer) {
        return Some(peer);
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
        .next_back();
    Some(forwarded.map_or(peer, |ip| ip.to_canonical()))
}

/// The rate-limit key of an address: itself for IPv4, its /64 for IPv6.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
    }
}

/// How long a login waits when its account is over its account-wide failure ceiling.
pub const ACCOUNT_SLOWDOWN: Duration = Duration::from_secs(1);

/// The window failures are counted in.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Most (account, client) pairs and accounts whose failures are remembered at once;
/// beyond it new keys are not counted (the per-client limit still applies), so memory
/// stays bounded whatever a botnet sends.
const MAX_TRACKED_KEYS: usize = 200_000;

/// Login limits, as OWASP's authentication guidance recommends: failures are limited per
/// account *and* client, so that nobody can lock someone else out by failing on their
/// account, and a higher account-wide ceiling only slows logins down.
///
/// * every login and signup attempt of a client address: `per_client` per minute (429);
/// * failed logins of one client on one account: `failures_per_account_and_client` per
///   minute, then that client gets 429 for that account (the right password too, so
///   that a guesser learns nothing);
/// * failed logins on one account from every client together:
///   `failures_per_account` per minute, past which each login to the account waits
///   [`ACCOUNT_SLOWDOWN`] and clients that have failed on it get 429 — but the right
///   password from a client that has not been failing still logs in.
#[derive(Debug)]
pub struct LoginLimits {
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_pair: Option<FailureWindows<(String, IpAddr)>>,
    per_account: Option<FailureWindows<String>>,
}

/// What a login may do now, when it is not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Now,
    /// After waiting this long (the account is over its ceiling).
    After(Duration),
}

impl LoginLimits {
    /// `0` disables a limit.
    pub fn new(
        failures_per_account_and_client: u32,
        per_client_per_minute: u32,
        failures_per_account: u32,
    ) -> Self {
        Self {
            per_client: keyed(per_client_per_minute),
            per_pair: FailureWindows::new(failures_per_account_and_client),
            per_account: FailureWindows::new(failures_per_account),
        }
    }

    /// `Err(seconds to wait)` when this client is over its limit.
    pub fn check_client(&self, client: Option<IpAddr>) -> Result<(), u64> {
        check(self.per_client.as_ref(), &key_of(client))
    }

    /// Whether `client` may try a password for `account` now: `Err(seconds to wait)`
    /// when it has failed on it too often, otherwise when.
    pub fn check_account(&self, account: &str, client: Option<IpAddr>) -> Result<Admission, u64> {
        let pair = (account.to_owned(), key_of(client));
        let pair_failures = match &self.per_pair {
            Some(pairs) => {
                if let Some(wait) = pairs.exhausted(&pair) {
                    return Err(whole_seconds(wait));
                }
                pairs.count(&pair)
            }
            None => 0,
        };
        match self
            .per_account
            .as_ref()
            .and_then(|accounts| accounts.exhausted(&pair.0))
        {
            None => Ok(Admission::Now),
            // A hot account: clients that have been failing on it wait for the window.
            Some(wait) if pair_failures > 0 => Err(whole_seconds(wait)),
            Some(_) => Ok(Admission::After(ACCOUNT_SLOWDOWN)),
        }
    }

    /// A wrong password (or unknown account) from `client` for `account`.
    pub fn record_failure(&self, account: &str, client: Option<IpAddr>) {
        if let Some(pairs) = &self.per_pair {
            pairs.record((account.to_owned(), key_of(client)));
        }
        if let Some(accounts) = &self.per_account {
            accounts.record(account.to_owned());
        }
    }

    /// A successful login: this client's failures on this account are forgotten.
    pub fn record_success(&self, account: &str, client: Option<IpAddr>) {
        if let Some(pairs) = &self.per_pair {
            pairs.forget(&(account.to_owned(), key_of(client)));
        }
    }

    /// Forgets keys whose limits are back to full, so memory does not grow with every
    /// address and email ever seen; run periodically.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.per_client {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(pairs) = &self.per_pair {
            pairs.forget_expired();
        }
        if let Some(accounts) = &self.per_account {
            accounts.forget_expired();
        }
    }
}

/// Without an address (only when called without a connection, e.g. in-process tests)
/// every such request shares one key.
fn key_of(client: Option<IpAddr>) -> IpAddr {
    client.map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), client_key)
}

fn whole_seconds(wait: Duration) -> u64 {
    // Round up: retrying after a rounded-down wait would be refused again.
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Failures per key in fixed windows of [`FAILURE_WINDOW`] from a key's first failure.
/// (governor, used for the per-client limit, counts every attempt; only failures may
/// count here, and a failure is known only after the password check.)
#[derive(Debug)]
struct FailureWindows<K> {
    limit: u32,
    windows: Mutex<HashMap<K, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl Window {
    fn current(&self, now: Instant) -> bool {
        now.duration_since(self.started) < FAILURE_WINDOW
    }
}

impl<K: std::hash::Hash + Eq> FailureWindows<K> {
    fn new(limit: u32) -> Option<Self> {
        (limit > 0).then(|| Self {
            limit,
            windows: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Window>> {
        // Nothing panics while holding it; if something did, the counts are still usable.
        self.windows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Failures of `key` in its current window.
    fn count(&self, key: &K) -> u32 {
        let now = Instant::now();
        self.lock()
            .get(key)
            .filter(|w| w.current(now))
            .map_or(0, |w| w.failures)
    }

    /// How long until `key` may fail again, if it is at its limit.
    fn exhausted(&self, key: &K) -> Option<Duration> {
        let now = Instant::now();
        let windows = self.lock();
        let window = windows.get(key).filter(|w| w.current(now))?;
        (window.failures >= self.limit)
            .then(|| FAILURE_WINDOW.saturating_sub(now.duration_since(window.started)))
    }

    fn record(&self, key: K) {
        let now = Instant::now();
        let mut windows = self.lock();
        if windows.len() >= MAX_TRACKED_KEYS && !windows.contains_key(&key) {
            windows.retain(|_, w| w.current(now));
            if windows.len() >= MAX_TRACKED_KEYS {
                return;
            }
        }
        let window = windows.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if !window.current(now) {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }

    fn forget(&self, key: &K) {
        self.lock().remove(key);
    }

    fn forget_expired(&self) {
        let now = Instant::now();
        let mut windows = self.lock();
        windows.retain(|_, w| w.current(now));
        windows.shrink_to_fit();
    }
}

fn keyed<K: std::hash::Hash + Eq + Clone>(per_minute: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_minute).map(|n| DefaultKeyedRateLimiter::keyed(Quota::per_minute(n)))
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: Option<&DefaultKeyedRateLimiter<K>>,
    key: &K,
) -> Result<(), u64> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(limiter.clock().now());
        // Round up: retrying after a rounded-down wait would be refused again.
        wait.as_secs() + u64::from(wait.subsec_nanos() > 0 || wait == Duration::ZERO)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> Vec<IpNet> {
        ["10.0.0.0/8", "127.0.0.1"]
            .iter()
            .map(|n| n.parse().expect("valid"))
            .collect()
    }

    fn request(peer: &str, forwarded: Option<&str>) -> (Extensions, HeaderMap) {
        let mut extensions = Extensions::new();
        extensions.insert(ConnectInfo::<SocketAddr>(peer.parse().expect("addr")));
        let mut headers = HeaderMap::new();
        if let Some(value) = forwarded {
            headers.insert("x-forwarded-for", value.parse().expect("header"));
        }
        (extensions, headers)
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = trusted();
        // A client on the internet cannot choose its address by sending the header.
        let (ext, headers) = request("203.0.113.5:4000", Some("198.51.100.1"));
        assert_eq!(
            client_address(&ext, &headers, &trusted),
            Some("203.0.113.5".parse().expect("ip"))
        );
        // Through the gateway: the entry it appended (the last) is the client; whatever
        // the client wrote before it is ignored.
        let (ext, headers) = request("10.0.0.9:4000", Some("198.51.100.1, 203.0.113.5"));
        assert_eq!(
            client_address(&ext, &headers, &trusted),
            Some("203.0.113.5".parse().expect("ip"))
        );
        let (ext, headers) = request("10.0.0.9:4000", None);
        assert_eq!(
            client_address(&ext, &headers, &trusted),
            Some("10.0.0.9".parse().expect("ip"))
        );
        // The default believes this host only: another pod cannot pick its address.
        let default: Vec<IpNet> = DEFAULT_TRUSTED_PROXIES
            .split(',')
            .map(|n| n.parse().expect("valid"))
            .collect();
        let (ext, headers) = request("10.0.0.9:4000", Some("198.51.100.1"));
        assert_eq!(
            client_address(&ext, &headers, &default),
            Some("10.0.0.9".parse().expect("ip"))
        );
        assert_eq!(
            client_address(&Extensions::new(), &HeaderMap::new(), &trusted),
            None
        );
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("ip"))
    }

    #[test]
    fn failures_are_limited_per_account_and_client() {
        let limits = LoginLimits::new(3, 0, 0);
        let (attacker, owner) = (ip("192.0.2.1"), ip("192.0.2.2"));
        for _ in 0..3 {
            assert_eq!(
                limits.check_account("a@x.com", attacker),
                Ok(Admission::Now)
            );
            limits.record_failure("a@x.com", attacker);
        }
        let wait = limits
            .check_account("a@x.com", attacker)
            .expect_err("fourth attempt");
        assert!((1..=60).contains(&wait), "{wait}");
        // Another client, another account: untouched.
        assert_eq!(limits.check_account("a@x.com", owner), Ok(Admission::Now));
        assert_eq!(
            limits.check_account("b@x.com", attacker),
            Ok(Admission::Now)
        );
        // Disabled limit.
        for _ in 0..100 {
            assert_eq!(limits.check_client(None), Ok(()));
        }
    }

    #[test]
    fn successes_do_not_count_and_forget_the_clients_failures() {
        let limits = LoginLimits::new(2, 0, 0);
        let client = ip("192.0.2.1");
        for _ in 0..10 {
            assert_eq!(limits.check_account("a@x.com", client), Ok(Admission::Now));
            limits.record_success("a@x.com", client);
        }
        limits.record_failure("a@x.com", client);
        limits.record_success("a@x.com", client);
        limits.record_failure("a@x.com", client);
        assert_eq!(limits.check_account("a@x.com", client), Ok(Admission::Now));
    }

    #[test]
    fn an_account_over_its_ceiling_is_slowed_not_locked() {
        let limits = LoginLimits::new(10, 0, 4);
        for n in 1..=4 {
            let client = ip(&format!("198.51.100.{n}"));
            assert_eq!(limits.check_account("a@x.com", client), Ok(Admission::Now));
            limits.record_failure("a@x.com", client);
        }
        // A client that has failed on the hot account waits for the window…
        assert!(limits.check_account("a@x.com", ip("198.51.100.1")).is_err());
        // …one that has not is slowed down, not refused.
        assert_eq!(
            limits.check_account("a@x.com", ip("203.0.113.9")),
            Ok(Admission::After(ACCOUNT_SLOWDOWN))
        );
        assert_eq!(
            limits.check_account("b@x.com", ip("198.51.100.1")),
            Ok(Admission::Now)
        );
    }

    #[test]
    fn failure_memory_is_bounded_and_forgotten() {
        let limits = FailureWindows::new(1).expect("enabled");
        for n in 0..1000u32 {
            limits.record(n);
        }
        assert!(limits.exhausted(&7).is_some());
        limits.forget_expired();
        assert_eq!(limits.lock().len(), 1000, "the windows are still current");
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let limits = LoginLimits::new(0, 1, 0);
        assert_eq!(
            limits.check_client(Some("2001:db8:1:2::1".parse().expect("ip"))),
            Ok(())
        );
        assert!(
            limits
                .check_client(Some("2001:db8:1:2::ffff".parse().expect("ip")))
                .is_err()
        );
        assert_eq!(
            limits.check_client(Some("2001:db8:1:3::1".parse().expect("ip"))),
            Ok(())
        );
    }
}
