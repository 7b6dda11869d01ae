//! Who the client is behind proxies: IP networks (`10.0.0.0/8`) for the settings that
//! name trusted proxies, and the client address an `X-Forwarded-For` chain resolves to.
//!
//! A proxy appends the address it got a connection from to `X-Forwarded-For`, so the
//! chain reads `client, proxy1, proxy2` and the connection's peer is the last proxy.
//! Only entries appended by trusted proxies can be believed: the client is the
//! *rightmost address that is not a trusted proxy* (walking from the peer leftwards),
//! and everything to its left is whatever the client chose to write.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use axum::extract::ConnectInfo;
use http::{HeaderMap, HeaderValue, header::HeaderName};

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
        let addr = addr.to_canonical();
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

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// clap value parser for one entry of a trusted-proxies list.
pub fn parse_ip_net(value: &str) -> Result<IpNet, String> {
    value.parse()
}

/// Whether any of `nets` contains `ip`.
pub fn trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|net| net.contains(ip))
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Most `X-Forwarded-For` entries looked at; a longer chain is not a real deployment's.
const MAX_CHAIN: usize = 32;

/// The client of a request whose connection came from `peer`: `peer` itself unless it
/// is a trusted proxy, otherwise the rightmost `X-Forwarded-For` entry that is not a
/// trusted proxy (the leftmost entry if every one is, the last good one if an entry
/// does not parse). Also returns how many entries lie to the left of the client's: the
/// part of the chain the client wrote, or that proxies before it appended.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> (IpAddr, usize) {
    let peer = peer.to_canonical();
    if !trusted(proxies, peer) {
        return (peer, chain(headers).count());
    }
    let entries: Vec<&str> = chain(headers).take(MAX_CHAIN * 4).collect();
    let mut client = (peer, entries.len());
    for (index, entry) in entries.iter().enumerate().rev().take(MAX_CHAIN) {
        let Ok(ip) = entry.parse::<IpAddr>() else {
            break;
        };
        client = (ip.to_canonical(), index);
        if !trusted(proxies, client.0) {
            break;
        }
    }
    client
}

fn chain(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
}

/// The address `request` came from: its connection's peer, when the server recorded it
/// (`ConnectInfo`).
pub fn peer_of<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let ConnectInfo(peer) = request.extensions().get::<ConnectInfo<SocketAddr>>()?;
    Some(*peer)
}

/// Resolves the client of `request` (see [`resolve`]) when its peer is a trusted proxy,
/// and makes the request look as if the client had connected itself: its
/// `ConnectInfo` becomes the client's address and `X-Forwarded-For` keeps only the
/// entries to the client's left, so a proxy that appends the peer next (as the gateway
/// does) ends the chain with the client. Everything after this — rate limits, logs,
/// services behind — sees one client address.
pub fn adopt_client<B>(request: &mut http::Request<B>, proxies: &[IpNet]) {
    let Some(peer) = peer_of(request) else {
        return;
    };
    if !trusted(proxies, peer.ip()) {
        return;
    }
    let headers = request.headers_mut();
    let (client, kept) = resolve(peer.ip(), headers, proxies);
    let before: Vec<String> = chain(headers).take(kept).map(str::to_owned).collect();
    headers.remove(&X_FORWARDED_FOR);
    if !before.is_empty()
        && let Ok(value) = HeaderValue::from_str(&before.join(", "))
    {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(client, peer.port())));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &str) -> Vec<IpNet> {
        list.split(',').map(|n| n.parse().expect("valid")).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().expect("header"));
        headers
    }

    #[test]
    fn networks_parse_and_match() {
        let net: IpNet = "10.0.0.0/8".parse().expect("valid");
        assert!(net.contains(ip("10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        let v6: IpNet = "fc00::/7".parse().expect("valid");
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("2001:db8::1")));
        let one: IpNet = "192.0.2.7".parse().expect("valid");
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));
        let all: IpNet = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains(ip("8.8.8.8")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
        // IPv4-mapped IPv6 peers match IPv4 networks.
        assert!(net.contains(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_address() {
        let proxies = nets("10.0.0.0/8,192.0.2.1");
        // An untrusted peer is the client, whatever it writes.
        assert_eq!(
            resolve(ip("203.0.113.5"), &forwarded("198.51.100.1"), &proxies).0,
            ip("203.0.113.5")
        );
        // Behind two trusted proxies: what the client wrote first is ignored.
        let (client, before) = resolve(
            ip("10.0.0.9"),
            &forwarded("1.1.1.1, 198.51.100.7, 192.0.2.1"),
            &proxies,
        );
        assert_eq!((client, before), (ip("198.51.100.7"), 1));
        // Every entry trusted: the leftmost.
        assert_eq!(
            resolve(ip("10.0.0.9"), &forwarded("10.0.0.3, 192.0.2.1"), &proxies),
            (ip("10.0.0.3"), 0)
        );
        // Garbage stops the walk at the last good entry.
        assert_eq!(
            resolve(
                ip("10.0.0.9"),
                &forwarded("198.51.100.7, junk, 10.0.0.4"),
                &proxies
            ),
            (ip("10.0.0.4"), 2)
        );
        // No header: the peer.
        assert_eq!(
            resolve(ip("10.0.0.9"), &HeaderMap::new(), &proxies).0,
            ip("10.0.0.9")
        );
        // No trusted proxies at all (the default): the peer.
        assert_eq!(
            resolve(ip("10.0.0.9"), &forwarded("198.51.100.7"), &[]).0,
            ip("10.0.0.9")
        );
    }

    /// A request from `peer` with `forwarded_for` after [`adopt_client`]: its peer and
    /// its `X-Forwarded-For`.
    fn adopted(peer: &str, forwarded_for: &str, proxies: &[IpNet]) -> (Option<SocketAddr>, String) {
        let mut request = http::Request::new(());
        request
            .headers_mut()
            .insert("x-forwarded-for", forwarded_for.parse().expect("header"));
        request
            .extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(peer.parse().expect("addr")));
        adopt_client(&mut request, proxies);
        let chain = request.headers()["x-forwarded-for"]
            .to_str()
            .expect("ascii");
        (peer_of(&request), chain.to_owned())
    }

    #[test]
    fn adopting_the_client_rewrites_the_peer_and_the_chain() {
        let proxies = nets("127.0.0.1");
        assert_eq!(
            adopted("127.0.0.1:4000", "6.6.6.6, 198.51.100.7", &proxies),
            (
                Some("198.51.100.7:4000".parse().expect("addr")),
                "6.6.6.6".to_owned()
            )
        );
        // An untrusted peer: nothing changes.
        assert_eq!(
            adopted("203.0.113.1:4000", "198.51.100.7", &proxies),
            (
                Some("203.0.113.1:4000".parse().expect("addr")),
                "198.51.100.7".to_owned()
            )
        );
    }
}
