//! Login rate limits, per account and per client address (CONTRACTS §3: 429 with
//! `Retry-After`), and how the client address is found.
//!
//! Client address: the peer of the connection, unless that peer is a trusted proxy
//! (`FLOTILLA_TRUSTED_PROXIES`, by default loopback and private networks, where the
//! gateway runs in a deployment), in which case the *last* `X-Forwarded-For` entry is
//! used — the one the gateway appended, not anything the client wrote before it. In
//! `flotilla up` the gateway calls auth in-process with the original connection's
//! address and appends it to `X-Forwarded-For` as it does for a remote auth, so both
//! modes agree. IPv6 clients are grouped by /64, the block one subscriber usually holds.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    str::FromStr,
    time::Duration,
};

use axum::extract::ConnectInfo;
use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use http::{Extensions, HeaderMap};

/// An IP network, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let value = value.trim();
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{value}' is not an IP address or network (CIDR)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{value}': the prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

/// clap value parser for one entry of `--trusted-proxies`.
pub fn parse_ip_net(value: &str) -> Result<IpNet, String> {
    value.parse()
}

/// The default `FLOTILLA_TRUSTED_PROXIES`.
pub const DEFAULT_TRUSTED_PROXIES: &str =
    "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7";

/// The client a request comes from, if known.
pub fn client_address(
    extensions: &Extensions,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_canonical())?;
    if !trusted.iter().any(|net| net.contains(peer)) {
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

/// Attempts allowed per minute, per account and per client.
#[derive(Debug)]
pub struct LoginLimits {
    per_account: Option<DefaultKeyedRateLimiter<String>>,
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl LoginLimits {
    /// `0` disables a limit.
    pub fn new(per_account_per_minute: u32, per_client_per_minute: u32) -> Self {
        Self {
            per_account: keyed(per_account_per_minute),
            per_client: keyed(per_client_per_minute),
        }
    }

    /// `Err(seconds to wait)` when this client is over its limit.
    pub fn check_client(&self, client: Option<IpAddr>) -> Result<(), u64> {
        // Without an address (only when called without a connection, e.g. in-process
        // tests) every such request shares one bucket.
        let key = client.map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), client_key);
        check(self.per_client.as_ref(), &key)
    }

    /// `Err(seconds to wait)` when this account is over its limit.
    pub fn check_account(&self, email: &str) -> Result<(), u64> {
        check(self.per_account.as_ref(), &email.to_owned())
    }

    /// Forgets keys whose limits are back to full, so memory does not grow with every
    /// address and email ever seen; run periodically.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.per_account {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_client {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
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
        DEFAULT_TRUSTED_PROXIES
            .split(',')
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
    fn networks_parse_and_match() {
        let net: IpNet = "10.0.0.0/8".parse().expect("valid");
        assert!(net.contains("10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        let v6: IpNet = "fc00::/7".parse().expect("valid");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("2001:db8::1".parse().expect("ip")));
        let one: IpNet = "192.0.2.7".parse().expect("valid");
        assert!(one.contains("192.0.2.7".parse().expect("ip")));
        assert!(!one.contains("192.0.2.8".parse().expect("ip")));
        let all: IpNet = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
        // IPv4-mapped IPv6 peers match IPv4 networks.
        assert!(net.contains("::ffff:10.0.0.1".parse().expect("ip")));
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
        assert_eq!(
            client_address(&Extensions::new(), &HeaderMap::new(), &trusted),
            None
        );
    }

    #[test]
    fn limits_refuse_with_a_wait_time_and_per_key() {
        let limits = LoginLimits::new(3, 0);
        for _ in 0..3 {
            assert_eq!(limits.check_account("a@x.com"), Ok(()));
        }
        let wait = limits.check_account("a@x.com").expect_err("fourth attempt");
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(limits.check_account("b@x.com"), Ok(()));
        // Disabled limit.
        for _ in 0..100 {
            assert_eq!(limits.check_client(None), Ok(()));
        }
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let limits = LoginLimits::new(0, 1);
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
