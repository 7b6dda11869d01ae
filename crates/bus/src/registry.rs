//! The service registry (the Eureka / Consul idea, on the bus we already run): every
//! service instance announces itself — service, instance id, advertised URL, version,
//! start time, the consumer groups it consumes — and renews that lease with a heartbeat
//! every [`HEARTBEAT`]; an instance not heard of for [`EXPIRY`] is dropped, and one that
//! stops gracefully says so at once.
//!
//! Announcements are bus *signals* ([`EventBus::signal`]): not durable, for whoever
//! listens now — the embedded bus's signals table (other processes on the same file
//! included) or RabbitMQ's `<exchange>.signals` exchange. A [`Directory`] listens and
//! keeps the live set; the gateway reads it for `GET /admin/system` and for upstreams
//! configured as `registry`.
//!
//! On RabbitMQ each process also forwards its [`crate::tap`] to the gateway in batches
//! ([`forward_observations`], topic [`OBSERVE_TOPIC`]): at most ten signals a second,
//! whatever the message rate, and a batch that would be too large is cut with a count of
//! what was left out.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    EventBus,
    tap::{Consumed, Observation},
};

/// How often an instance renews its registration.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long an instance stays listed without a heartbeat, by default.
pub const EXPIRY: Duration = Duration::from_secs(15);
/// The signal topic of registrations.
pub const TOPIC: &str = "registry";
/// The signal topic of forwarded observations.
pub const OBSERVE_TOPIC: &str = "observe";
/// Observations in one forwarded batch at most; more in one interval are counted as
/// dropped (the stream says it was sampled).
pub const MAX_BATCH: usize = 256;
/// How often a process forwards its observations.
pub const FORWARD_INTERVAL: Duration = Duration::from_millis(100);

/// One running instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub service: String,
    /// Unique per process start (a v7 UUID unless the host gives one).
    pub id: String,
    /// Where it serves HTTP (`FLOTILLA_ADVERTISE_URL`, or the listen address).
    pub url: String,
    pub version: String,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    /// The consumer groups it consumes, with what it holds of each.
    #[serde(default)]
    pub consumes: Vec<Consumed>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Announcement {
    Heartbeat {
        instance: Instance,
        /// How often it announces itself (older senders: [`HEARTBEAT`]).
        #[serde(default = "default_heartbeat_ms")]
        heartbeat_ms: u64,
    },
    Stopped {
        service: String,
        id: String,
    },
}

/// Announces `instance` on `bus` every `heartbeat` (refreshing what it consumes) until
/// `shutdown`, then says it stopped. Await the handle before exiting so that the last
/// word is sent.
pub fn register(
    bus: Arc<dyn EventBus>,
    instance: Instance,
    heartbeat: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let mut instance = instance.clone();
            instance.consumes = bus.tap().consumed_by(&instance.service);
            let heartbeat_ms = u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX);
            announce(
                &*bus,
                &Announcement::Heartbeat {
                    instance,
                    heartbeat_ms,
                },
            )
            .await;
        }
        let stopped = Announcement::Stopped {
            service: instance.service.clone(),
            id: instance.id.clone(),
        };
        // Bounded: a broker that is gone must not hold the exit; expiry covers it.
        let _ = tokio::time::timeout(Duration::from_secs(2), announce(&*bus, &stopped)).await;
    })
}

async fn announce(bus: &dyn EventBus, announcement: &Announcement) {
    let Ok(body) = serde_json::to_vec(announcement) else {
        return;
    };
    if let Err(error) = bus.signal(TOPIC, Bytes::from(body)).await {
        tracing::debug!(%error, "cannot announce this instance to the registry");
    }
}

/// An instance as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub instance: Instance,
    /// Unix milliseconds of the last heartbeat.
    pub last_seen_ms: i64,
    /// How often it announces itself: one that has missed two is late.
    pub heartbeat_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    u64::try_from(HEARTBEAT.as_millis()).unwrap_or(u64::MAX)
}

/// A change of the directory, for watchers (the system map's stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// First heard of.
    Up {
        service: String,
        id: String,
        url: String,
    },
    /// Said it stopped (`reason: stopped`) or was not heard of for [`EXPIRY`] (`expired`).
    Down {
        service: String,
        id: String,
        reason: &'static str,
    },
}

/// The live instances, kept from the registry's signals. A handle: whoever starts it
/// (the gateway's builder) passes it to what reads it — the system API and the upstreams
/// configured as `registry` — so two systems in one process each follow their own bus.
#[derive(Debug)]
pub struct Directory {
    instances: Mutex<BTreeMap<(String, String), Listed>>,
    expiry: Duration,
    changes: broadcast::Sender<Change>,
    /// Bumped on every change of the set (not on a mere heartbeat).
    version: watch::Sender<u64>,
}

impl Directory {
    /// A directory following `bus` until `shutdown`, with instances expiring after
    /// `expiry`.
    pub fn start(
        bus: Arc<dyn EventBus>,
        expiry: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let directory = Arc::new(Self {
            instances: Mutex::new(BTreeMap::new()),
            expiry,
            changes: broadcast::channel(256).0,
            version: watch::channel(0).0,
        });
        tokio::spawn(Arc::clone(&directory).follow(bus, shutdown.clone()));
        tokio::spawn(Arc::clone(&directory).sweep(shutdown));
        directory
    }

    async fn follow(self: Arc<Self>, bus: Arc<dyn EventBus>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let listening = tokio::select! {
                () = shutdown.cancelled() => return,
                listening = bus.listen(TOPIC) => listening,
            };
            match listening {
                Ok(mut signals) => {
                    backoff = Duration::from_millis(100);
                    loop {
                        let body = tokio::select! {
                            () = shutdown.cancelled() => return,
                            body = signals.next() => body,
                        };
                        let Some(body) = body else { break };
                        match serde_json::from_slice::<Announcement>(&body) {
                            Ok(announcement) => self.apply(announcement),
                            Err(error) => {
                                tracing::debug!(%error, "ignoring a malformed registry signal");
                            }
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "cannot listen to the registry; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let deadline =
                crate::now_ms() - i64::try_from(self.expiry.as_millis()).unwrap_or(i64::MAX);
            let expired: Vec<(String, String)> = match self.instances.lock() {
                Ok(mut instances) => {
                    let gone: Vec<_> = instances
                        .iter()
                        .filter(|(_, listed)| listed.last_seen_ms < deadline)
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in &gone {
                        instances.remove(key);
                    }
                    gone
                }
                Err(_) => Vec::new(),
            };
            for (service, id) in expired {
                tracing::info!(%service, %id, "instance expired from the registry");
                self.changed(Change::Down {
                    service,
                    id,
                    reason: "expired",
                });
            }
        }
    }

    fn apply(&self, announcement: Announcement) {
        let change = match announcement {
            Announcement::Heartbeat {
                instance,
                heartbeat_ms,
            } => {
                let key = (instance.service.clone(), instance.id.clone());
                let Ok(mut instances) = self.instances.lock() else {
                    return;
                };
                let up = Change::Up {
                    service: instance.service.clone(),
                    id: instance.id.clone(),
                    url: instance.url.clone(),
                };
                let known = instances.insert(
                    key,
                    Listed {
                        instance,
                        last_seen_ms: crate::now_ms(),
                        heartbeat_ms,
                    },
                );
                match known {
                    Some(before) if before.instance.url == up_url(&up) => return,
                    _ => up,
                }
            }
            Announcement::Stopped { service, id } => {
                let Ok(mut instances) = self.instances.lock() else {
                    return;
                };
                if instances.remove(&(service.clone(), id.clone())).is_none() {
                    return;
                }
                Change::Down {
                    service,
                    id,
                    reason: "stopped",
                }
            }
        };
        self.changed(change);
    }

    fn changed(&self, change: Change) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
        let _ = self.changes.send(change);
    }

    /// Every live instance, by service then id.
    pub fn instances(&self) -> Vec<Listed> {
        self.instances
            .lock()
            .map(|instances| instances.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The URLs of `service`'s live instances.
    pub fn urls_of(&self, service: &str) -> Vec<String> {
        self.instances
            .lock()
            .map(|instances| {
                instances
                    .values()
                    .filter(|listed| listed.instance.service == service)
                    .map(|listed| listed.instance.url.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Instances coming and going, from now on.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Changes whenever the set of instances does.
    pub fn version(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

fn up_url(change: &Change) -> &str {
    match change {
        Change::Up { url, .. } => url,
        Change::Down { .. } => "",
    }
}

/// Observations of one process over one [`FORWARD_INTERVAL`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Batch {
    pub observations: Vec<Observation>,
    /// Left out: over [`MAX_BATCH`] in the interval, or lost by a lagging tap.
    #[serde(default)]
    pub dropped: u64,
}

/// Forwards this process's [`crate::tap`] to [`OBSERVE_TOPIC`] until `shutdown`:
/// everything observed in each [`FORWARD_INTERVAL`], up to [`MAX_BATCH`], as one signal.
pub fn forward_observations(
    bus: Arc<dyn EventBus>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tap = bus.tap().watch();
        let mut tick = tokio::time::interval(FORWARD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut batch = Batch::default();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if batch.observations.is_empty() && batch.dropped == 0 {
                        continue;
                    }
                    let sent = std::mem::take(&mut batch);
                    if let Ok(body) = serde_json::to_vec(&sent)
                        && let Err(error) = bus.signal(OBSERVE_TOPIC, Bytes::from(body)).await
                    {
                        tracing::debug!(%error, "cannot forward observations");
                    }
                }
                observed = tap.recv() => match observed {
                    Ok(observation) if batch.observations.len() < MAX_BATCH => {
                        batch.observations.push((*observation).clone());
                    }
                    Ok(_) => batch.dropped += 1,
                    Err(broadcast::error::RecvError::Lagged(n)) => batch.dropped += n,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    })
}
