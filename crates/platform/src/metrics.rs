//! Prometheus metrics: one recorder per process, shared by every service in it (in `up`
//! all services live in one process and tell themselves apart by the `service` label).

use std::{
    collections::HashMap,
    sync::{
        OnceLock, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        // Histograms keep raw samples until drained; drain them even if nobody scrapes.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the metrics upkeep thread");
        }
        handle
    })
}

/// The Prometheus text exposition of every metric in the process.
pub fn render() -> String {
    handle().render()
}

/// The request counter and latency histogram of one (route, method, status), looked up
/// once and then reused: building a metric key (four label strings, a hash of them, a
/// registry lookup) for every request cost more than the request itself.
#[derive(Clone)]
struct RequestHandles {
    method: &'static str,
    status: u16,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// Label sets cached per service beyond which new ones are recorded uncached (a client
/// cannot grow memory without bound: routes and methods are a closed set, statuses nearly).
const MAX_CACHED_LABEL_SETS: usize = 1024;

/// `http_requests_total` and `http_request_duration_seconds` of one service, by route,
/// method and status, with the metric handles of each label set cached.
#[derive(educe::Educe)]
#[educe(Debug)]
pub struct RequestMetrics {
    service: &'static str,
    /// route → the handles of each (method, status) seen on it. By route pattern (ours,
    /// never a client's text), hashed with foldhash: this lookup runs on every request.
    #[educe(Debug(ignore))]
    cache: RwLock<HashMap<Box<str>, Vec<RequestHandles>, foldhash::fast::RandomState>>,
    #[educe(Debug(ignore))]
    cached: AtomicUsize,
}

impl RequestMetrics {
    pub fn new(service: &'static str) -> Self {
        // Handles made before the recorder exists would record nothing.
        let _ = handle();
        Self {
            service,
            cache: RwLock::new(HashMap::default()),
            cached: AtomicUsize::new(0),
        }
    }

    /// Counts one finished request. `route` is the matched route pattern (`/jobs/{id}`),
    /// never the raw path, so the label set stays bounded.
    pub fn record(&self, method: &http::Method, route: &str, status: u16, elapsed: Duration) {
        let method = method_label(method);
        let found = read(&self.cache).get(route).and_then(|handles| {
            handles
                .iter()
                .find(|h| h.status == status && h.method == method)
                .cloned()
        });
        let handles = match found {
            Some(handles) => handles,
            None => self.register(method, route, status),
        };
        handles.requests.increment(1);
        handles.duration.record(elapsed.as_secs_f64());
    }

    #[cold]
    fn register(&self, method: &'static str, route: &str, status: u16) -> RequestHandles {
        let labels = [
            ("service", self.service.to_owned()),
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ];
        let handles = RequestHandles {
            method,
            status,
            requests: metrics::counter!("http_requests_total", &labels),
            duration: metrics::histogram!("http_request_duration_seconds", &labels),
        };
        if self.cached.load(Ordering::Relaxed) < MAX_CACHED_LABEL_SETS {
            let mut cache = match self.cache.write() {
                Ok(cache) => cache,
                Err(poisoned) => poisoned.into_inner(),
            };
            let on_route = cache.entry(route.into()).or_default();
            if !on_route
                .iter()
                .any(|h| h.status == status && h.method == method)
            {
                on_route.push(handles.clone());
                self.cached.fetch_add(1, Ordering::Relaxed);
            }
        }
        handles
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match lock.read() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The method as a label: the standard methods by name, anything else as `OTHER`, so a
/// client inventing methods cannot invent label sets.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_method_and_status() {
        let metrics = RequestMetrics::new("metrics-test");
        for _ in 0..3 {
            metrics.record(
                &http::Method::GET,
                "/jobs/{id}",
                200,
                Duration::from_millis(2),
            );
        }
        metrics.record(
            &http::Method::GET,
            "/jobs/{id}",
            404,
            Duration::from_millis(1),
        );
        let invented = http::Method::from_bytes(b"BREW").expect("valid method token");
        metrics.record(&invented, "/jobs/{id}", 405, Duration::from_millis(1));
        let text = render();
        let line = |status: &str, method: &str| {
            text.lines()
                .find(|line| {
                    line.starts_with("http_requests_total{")
                        && line.contains("service=\"metrics-test\"")
                        && line.contains(&format!("status=\"{status}\""))
                        && line.contains(&format!("method=\"{method}\""))
                })
                .map(|line| line.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        assert_eq!(line("200", "GET").as_deref(), Some("3"), "{text}");
        assert_eq!(line("404", "GET").as_deref(), Some("1"), "{text}");
        assert_eq!(line("405", "OTHER").as_deref(), Some("1"), "{text}");
        assert!(!text.contains("BREW"), "{text}");
    }
}
