//! What the bus's process-level tests share: the embedded bus opened in a directory, a
//! child test process started on that directory (the test binary running one of its own
//! ignored tests), and a quick retry policy.

// Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

use std::{
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use bus::{BusOptions, EventBus, RetryPolicy, Subscriber, Subscription};

/// Retries quick enough for a test: five attempts, 50 ms doubling to 200 ms.
pub fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        multiplier: 2,
    }
}

/// The embedded bus in `dir`.
pub async fn open(dir: &Path, options: BusOptions) -> Arc<dyn EventBus> {
    bus::connect(&bus::default_url(dir), options)
        .await
        .expect("open the embedded bus")
}

/// In the child process, the embedded bus in the directory the parent passed in `var`,
/// and a subscriber on it as `group` to `key` with `prefetch` deliveries in flight;
/// `None` in an ordinary test run, where the child test has nothing to do.
pub async fn child_subscriber(
    var: &str,
    options: BusOptions,
    (group, key, prefetch): (&str, &str, u16),
) -> Option<(Arc<dyn EventBus>, Subscriber)> {
    let dir = std::env::var(var).ok()?;
    let bus = open(Path::new(&dir), options).await;
    let subscriber = subscribe(bus.as_ref(), group, key, prefetch).await;
    Some((bus, subscriber))
}

/// `bus` subscribed as `group` to `key`, with `prefetch` deliveries in flight.
pub async fn subscribe(bus: &dyn EventBus, group: &str, key: &str, prefetch: u16) -> Subscriber {
    bus.subscribe(Subscription::new(group, key).with_prefetch(prefetch))
        .await
        .expect("subscribe")
}

/// Starts this test binary's ignored test `test` as a child process on `dir` (passed in
/// `var`), and returns it with its standard output.
pub fn spawn_child(test: &str, var: &str, dir: &Path) -> (Child, ChildStdout) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--ignored", "--nocapture", "--quiet"])
        .env(var, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start child");
    let stdout = child.stdout.take().expect("child stdout");
    (child, stdout)
}

/// Kills `child` with SIGKILL (no destructor, no flush) and reaps it.
pub fn kill(child: &mut Child) {
    child.kill().expect("kill -9");
    child.wait().expect("reap");
}

/// Removes a test's queues (of each of `groups`) and exchanges from the shared broker at
/// `url`, leaving it as the test found it; a broker that does not answer within a minute
/// is left alone.
#[cfg(feature = "rabbitmq")]
pub async fn delete_topology(url: &str, exchange: &str, groups: &[String]) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let connect = lapin::Connection::connect(url, Default::default());
    let Ok(Ok(connection)) = tokio::time::timeout(Duration::from_secs(60), connect).await else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    for group in groups {
        let mut queues = vec![group.clone(), format!("{group}.dead")];
        queues.extend((1..10).map(|n| format!("{group}.retry.{n}")));
        for queue in queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    for name in [
        exchange.to_owned(),
        format!("{exchange}.dlx"),
        format!("{exchange}.requeue"),
    ] {
        let _ = channel
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "test done".into()).await;
}
