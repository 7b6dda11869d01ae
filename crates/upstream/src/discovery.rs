//! Where an upstream's instances are. `FLOTILLA_<SERVICE>_URL` lists one or more base
//! URLs (`http://a:8080,http://b:8080`); a host name may resolve to several addresses
//! (a Kubernetes headless Service), so names are re-resolved periodically and the set of
//! endpoints follows scale-ups, scale-downs and restarts without a gateway restart.

use std::{
    net::SocketAddr,
    sync::{
        Arc, RwLock, Weak,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bus::registry::Directory;
use http::Uri;

/// The configured targets of one upstream: base URLs, each `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    targets: Vec<Target>,
    /// `registry`: the instances the service registry lists (`bus::registry`).
    registry: bool,
}

impl UpstreamUrl {
    /// Whether the endpoints come from the service registry.
    pub fn is_registry(&self) -> bool {
        self.registry
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self
            .targets
            .iter()
            .map(|t| format!("http://{}:{}", t.host, t.port))
            .collect();
        if self.registry {
            return f.write_str(REGISTRY);
        }
        f.write_str(&list.join(","))
    }
}

/// The value of `FLOTILLA_<SERVICE>_URL` that takes the endpoints from the registry.
pub const REGISTRY: &str = "registry";

/// Parses `http://host:port[,http://host:port…]`, or `registry`.
pub fn parse_upstream_url(value: &str) -> Result<UpstreamUrl, String> {
    if value.trim() == REGISTRY {
        return Ok(UpstreamUrl {
            targets: Vec::new(),
            registry: true,
        });
    }
    let mut targets = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let uri: Uri = part
            .parse()
            .map_err(|_| format!("'{part}' is not a URL; expected e.g. http://auth:8080"))?;
        match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(authority)) => {
                if uri.path() != "/" && !uri.path().is_empty() {
                    return Err(format!("'{part}': upstream URLs take no path"));
                }
                let host = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                targets.push(Target {
                    host: host.to_owned(),
                    port: authority.port_u16().unwrap_or(80),
                });
            }
            (Some(other), Some(_)) => {
                return Err(format!(
                    "scheme '{other}' is not supported for upstreams; use http://"
                ));
            }
            _ => {
                return Err(format!(
                    "'{part}' needs a scheme and host, e.g. http://auth:8080"
                ));
            }
        }
    }
    if targets.is_empty() {
        return Err("expected at least one URL, e.g. http://auth:8080".to_owned());
    }
    Ok(UpstreamUrl {
        targets,
        registry: false,
    })
}

/// One instance of an upstream and what the gateway has seen of it.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The `Host` the instance expects (the configured name, not the IP), made into a
    /// header value once rather than for every request forwarded.
    pub host_header: Option<http::HeaderValue>,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds since `EPOCH` until which the endpoint is ejected; 0 = not ejected.
    ejected_until_ms: AtomicU64,
}

/// After this many failures in a row (overload answers, broken connections) an endpoint
/// is ejected for a while; a refused connection ejects it at once.
const EJECT_AFTER_FAILURES: u32 = 5;
const BASE_EJECTION: Duration = Duration::from_secs(5);
const MAX_EJECTION: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr, authority: String) -> Self {
        Self {
            addr,
            host_header: http::HeaderValue::from_str(&authority).ok(),
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    /// Counts a request as outstanding until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
    }

    /// Passive health checking: enough failures in a row eject the endpoint, for longer
    /// each time it is ejected again.
    pub fn record_failure(&self) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= EJECT_AFTER_FAILURES {
            self.eject();
        }
    }

    /// Takes the endpoint out of rotation now (an instance that refuses connections),
    /// for longer each time it is ejected again.
    pub fn eject(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let times = self.ejections.fetch_add(1, Ordering::Relaxed).min(4);
        let duration = (BASE_EJECTION * 2u32.pow(times)).min(MAX_EJECTION);
        let until = now_ms() + u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        tracing::warn!(endpoint = %self.addr, ?duration, "endpoint ejected");
    }
}

/// An outstanding request on an endpoint.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The current endpoints of one upstream, shared by the balancer and the resolver.
#[derive(Debug, Default)]
pub struct Endpoints {
    current: RwLock<Arc<Vec<Arc<Endpoint>>>>,
}

impl Endpoints {
    pub fn snapshot(&self) -> Arc<Vec<Arc<Endpoint>>> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the set, keeping the state of endpoints that are still there.
    pub(crate) fn update(&self, found: Vec<(SocketAddr, String)>) {
        let old = self.snapshot();
        let next: Vec<Arc<Endpoint>> = found
            .into_iter()
            .map(|(addr, authority)| {
                old.iter()
                    .find(|e| e.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(addr, authority)))
            })
            .collect();
        let changed =
            next.len() != old.len() || next.iter().any(|e| !old.iter().any(|o| o.addr == e.addr));
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(next);
        if changed {
            let addrs: Vec<String> = guard.iter().map(|e| e.addr.to_string()).collect();
            tracing::info!(endpoints = ?addrs, "upstream endpoints changed");
        }
    }
}

/// Resolves `url` now and then every `interval`, for as long as `endpoints` is alive; a
/// `registry` URL follows `directory` instead (with none, the upstream has no endpoint).
pub fn spawn_resolver(
    name: &'static str,
    url: UpstreamUrl,
    endpoints: Weak<Endpoints>,
    interval: Duration,
    directory: Option<Arc<Directory>>,
) {
    if url.registry {
        match directory {
            Some(directory) => {
                tokio::spawn(follow_registry(name, directory, endpoints, interval));
            }
            // `serve` refuses `registry` without a bus before it gets here.
            None => tracing::error!(
                upstream = name,
                "configured as `registry` but given no registry directory; its routes answer 503"
            ),
        }
        return;
    }
    tokio::spawn(async move {
        loop {
            let Some(strong) = endpoints.upgrade() else {
                return;
            };
            let found = resolve(name, &url).await;
            // Keep the last known set when a lookup fails entirely (DNS hiccup).
            if !found.is_empty() {
                strong.update(found);
            }
            drop(strong);
            tokio::time::sleep(interval).await;
        }
    });
}

/// Keeps `endpoints` to the instances of `name` that `directory` lists: at once on every
/// change of the directory (an instance up, stopped or expired), and every `interval` for
/// host names that resolve differently.
async fn follow_registry(
    name: &'static str,
    directory: Arc<Directory>,
    endpoints: Weak<Endpoints>,
    interval: Duration,
) {
    let mut version = directory.version();
    loop {
        let urls = directory.urls_of(name);
        let listed = if urls.is_empty() {
            None
        } else {
            parse_upstream_url(&urls.join(",")).ok()
        };
        let found = match listed {
            Some(url) => resolve(name, &url).await,
            None => Vec::new(),
        };
        let Some(strong) = endpoints.upgrade() else {
            return;
        };
        // Unlike DNS, an empty list is the truth: every instance is gone.
        strong.update(found);
        drop(strong);
        tokio::select! {
            changed = version.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(interval) => {}
        }
    }
}

async fn resolve(name: &'static str, url: &UpstreamUrl) -> Vec<(SocketAddr, String)> {
    let mut found = Vec::new();
    for target in &url.targets {
        let authority = if target.host.contains(':') {
            format!("[{}]:{}", target.host, target.port)
        } else {
            format!("{}:{}", target.host, target.port)
        };
        match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
            Ok(addrs) => {
                for addr in addrs {
                    if !found.iter().any(|(a, _)| *a == addr) {
                        found.push((addr, authority.clone()));
                    }
                }
            }
            Err(error) => {
                tracing::warn!(upstream = name, host = %target.host, %error, "cannot resolve upstream");
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_are_checked() {
        assert!(parse_upstream_url("http://auth:8080").is_ok());
        assert_eq!(
            parse_upstream_url("http://a:1, http://b:2")
                .expect("two targets")
                .targets
                .len(),
            2
        );
        assert!(parse_upstream_url("https://auth:8080").is_err());
        assert!(parse_upstream_url("auth:8080").is_err());
        assert!(parse_upstream_url("not a url").is_err());
        assert!(parse_upstream_url("http://auth:8080/base").is_err());
        assert!(parse_upstream_url(" , ").is_err());
        let registry = parse_upstream_url("registry").expect("registry");
        assert!(registry.is_registry());
        assert_eq!(registry.to_string(), "registry");
    }

    #[tokio::test]
    async fn names_resolve_to_every_address() {
        let url = parse_upstream_url("http://localhost:8080,http://127.0.0.1:8080").expect("valid");
        let found = resolve("test", &url).await;
        assert!(found.iter().any(|(a, _)| a.to_string() == "127.0.0.1:8080"));
        assert!(
            found
                .iter()
                .all(|(_, authority)| authority.ends_with(":8080"))
        );
        let distinct: std::collections::HashSet<_> = found.iter().map(|(a, _)| *a).collect();
        assert_eq!(distinct.len(), found.len(), "no duplicates");
    }

    #[test]
    fn repeated_failures_eject_an_endpoint_and_success_resets() {
        let endpoint = Endpoint::new("127.0.0.1:1".parse().expect("addr"), "x:1".into());
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            endpoint.record_failure();
        }
        assert!(!endpoint.is_ejected());
        endpoint.record_success();
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            endpoint.record_failure();
        }
        assert!(!endpoint.is_ejected(), "the success reset the count");
        endpoint.record_failure();
        assert!(endpoint.is_ejected());
    }
}
