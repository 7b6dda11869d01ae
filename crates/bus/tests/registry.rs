//! The registry, the signals under it and the tap, on the embedded bus and a real
//! RabbitMQ (`FLOTILLA_TEST_AMQP_URL`; skipped when unset, outside CI).

use std::{sync::Arc, time::Duration};

use bus::{
    BusError, BusOptions, Consumer, EventBus, Message, Nack, RetryPolicy, Subscription,
    registry::{self, Change, Directory, Instance},
    tap::Outcome,
};
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(20);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn options(exchange: String) -> BusOptions {
    BusOptions {
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
            multiplier: 2,
        },
        exchange,
        ..BusOptions::for_service("tester")
    }
}

async fn buses() -> Vec<(Arc<dyn EventBus>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = bus::default_url(dir.path());
    let mut buses = vec![(
        bus::connect(&url, options(unique("x")))
            .await
            .expect("embedded"),
        Some(dir),
    )];
    match std::env::var("FLOTILLA_TEST_AMQP_URL") {
        Ok(url) if !url.is_empty() => buses.push((
            bus::connect(&url, options(unique("registry-test")))
                .await
                .expect("RabbitMQ"),
            None,
        )),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("FLOTILLA_TEST_AMQP_URL is not set, but CI=true")
        }
        _ => eprintln!("RabbitMQ part skipped: FLOTILLA_TEST_AMQP_URL is not set"),
    }
    buses
}

fn instance(service: &str) -> Instance {
    Instance {
        service: service.to_owned(),
        id: unique(service),
        url: "http://127.0.0.1:9".to_owned(),
        version: "test".to_owned(),
        started_at_ms: 0,
        consumes: Vec::new(),
    }
}

async fn wait_for(
    changes: &mut tokio::sync::broadcast::Receiver<Change>,
    wanted: impl Fn(&Change) -> bool,
) -> Change {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let change = changes.recv().await.expect("directory alive");
            if wanted(&change) {
                return change;
            }
        }
    })
    .await
    .expect("the change in time")
}

#[tokio::test]
async fn instances_register_deregister_on_stop_and_expire_when_killed() {
    for (bus, _dir) in buses().await {
        let stop = CancellationToken::new();
        let expiry = Duration::from_millis(1500);
        let directory = Directory::start(bus.clone(), expiry, stop.clone());
        let mut changes = directory.changes();
        // Listening starts asynchronously: keep announcing until seen.
        let heartbeat = Duration::from_millis(200);

        let graceful = instance("converter");
        let graceful_stop = CancellationToken::new();
        let graceful_task = registry::register(
            bus.clone(),
            graceful.clone(),
            heartbeat,
            graceful_stop.clone(),
        );
        let killed = instance("converter");
        let killed_task = registry::register(bus.clone(), killed.clone(), heartbeat, stop.clone());

        for id in [&graceful.id, &killed.id] {
            wait_for(
                &mut changes,
                |c| matches!(c, Change::Up { id: got, .. } if got == id),
            )
            .await;
        }
        let mut urls = directory.urls_of("converter");
        urls.sort();
        assert_eq!(urls, ["http://127.0.0.1:9", "http://127.0.0.1:9"]);
        assert_eq!(directory.instances().len(), 2, "{}", bus.backend());
        for listed in directory.instances() {
            // Each says how often it announces itself (the map calls it late after two).
            assert_eq!(
                u128::from(listed.heartbeat_ms),
                heartbeat.as_millis(),
                "{}",
                bus.backend()
            );
        }

        // A graceful stop is heard at once.
        graceful_stop.cancel();
        graceful_task.await.expect("registration ends");
        let down = wait_for(&mut changes, |c| matches!(c, Change::Down { .. })).await;
        assert_eq!(
            down,
            Change::Down {
                service: "converter".into(),
                id: graceful.id.clone(),
                reason: "stopped"
            }
        );

        // A killed one (no last word) expires.
        killed_task.abort();
        let started = std::time::Instant::now();
        let down = wait_for(&mut changes, |c| matches!(c, Change::Down { .. })).await;
        assert_eq!(
            down,
            Change::Down {
                service: "converter".into(),
                id: killed.id.clone(),
                reason: "expired"
            }
        );
        assert!(
            started.elapsed() < expiry + Duration::from_secs(2),
            "expired after {:?}",
            started.elapsed()
        );
        assert!(directory.instances().is_empty());
        stop.cancel();
    }
}

#[tokio::test]
async fn the_tap_sees_publishes_and_every_kind_of_settlement_in_order() {
    for (bus, _dir) in buses().await {
        let mut watcher = bus.tap().watch();
        let group = unique("tapped");
        let key = unique("key");
        let stop = CancellationToken::new();
        let subscription = Subscription::new(group.clone(), key.clone());
        let consumer = Consumer::new(bus.clone(), subscription).run(stop.clone(), |message| {
            let body = message.body.clone();
            async move {
                match body.as_ref() {
                    b"poison" => Err(Nack::Reject("poisoned".into())),
                    b"flaky" => Err(Nack::Retry("flaky".into())),
                    _ => Ok(()),
                }
            }
        });
        let good = Message::new(key.clone(), "fine");
        let poison = Message::new(key.clone(), "poison");
        let flaky = Message::new(key.clone(), "flaky");
        // A publish nobody is bound to is refused: the first goes once the consumer has
        // declared its group. (Declaring it with a subscriber dropped at once instead let
        // RabbitMQ hand the first message to that subscriber before it was cancelled, and
        // the tap saw it delivered twice.)
        let routable = tokio::time::timeout(PATIENCE, async {
            loop {
                match bus.publish(good.clone()).await {
                    Err(BusError::Unroutable(_)) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => return other,
                }
            }
        })
        .await;
        routable.expect("the group is declared").expect("published");
        for message in [&poison, &flaky] {
            bus.publish(message.clone()).await.expect("published");
        }
        let mut seen: Vec<(String, Outcome, Option<String>, i64)> = Vec::new();
        let done = tokio::time::timeout(PATIENCE, async {
            // good: published, delivered, handled; poison: published, delivered,
            // dead-lettered; flaky: published, delivered, retried, delivered,
            // dead-lettered (2 attempts).
            while seen.len() < 11 {
                let observation = watcher.recv().await.expect("tap open");
                if observation.routing_key == key {
                    assert!(observation.trace_id.is_some());
                    seen.push((
                        observation.message_id.clone(),
                        observation.outcome,
                        observation
                            .publisher
                            .clone()
                            .or_else(|| observation.group.clone()),
                        observation.at_ms,
                    ));
                }
            }
        })
        .await;
        assert!(done.is_ok(), "{}: saw only {seen:?}", bus.backend());
        // In time order, as the system map shows them. A publish is observed when the
        // broker confirms it, and RabbitMQ may deliver before it confirms, so arrival
        // order can put a delivery first; the publish's time is when it started.
        seen.sort_by_key(|(_, outcome, _, at_ms)| (*at_ms, *outcome != Outcome::Published));
        let of = |id: &str| -> Vec<Outcome> {
            seen.iter()
                .filter(|(m, _, _, _)| m == id)
                .map(|(_, o, _, _)| *o)
                .collect()
        };
        use Outcome::{DeadLettered, Delivered, Handled, Published, Retried};
        assert_eq!(of(&good.id), [Published, Delivered, Handled]);
        assert_eq!(of(&poison.id), [Published, Delivered, DeadLettered]);
        assert_eq!(
            of(&flaky.id),
            [Published, Delivered, Retried, Delivered, DeadLettered]
        );
        for (_, outcome, who, _) in &seen {
            let expected = if *outcome == Outcome::Published {
                "tester"
            } else {
                group.as_str()
            };
            assert_eq!(who.as_deref(), Some(expected));
        }
        let stats = bus.group_stats(&group).await.expect("stats");
        assert_eq!(stats.dead_letters, Some(2), "{}", bus.backend());
        assert_eq!(stats.depth, Some(0));
        let consumed = bus.tap().consumed_by("tester");
        assert!(
            consumed
                .iter()
                .any(|c| c.group == group && c.routing_keys == [key.clone()])
        );
        stop.cancel();
        let _ = consumer.await;
    }
}

/// Two systems in one process (as tests run them) each see only their own bus; every
/// handle on one bus, whichever service connected it, shares its tap.
#[tokio::test]
async fn each_bus_has_its_own_tap_shared_by_every_handle_on_it() {
    let (first_dir, second_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let connect = |dir: &tempfile::TempDir, service: &str| {
        let url = bus::default_url(dir.path());
        let options = BusOptions::for_service(service);
        async move { bus::connect(&url, options).await.expect("embedded") }
    };
    let first_publisher = connect(&first_dir, "posts").await;
    let first_consumer = connect(&first_dir, "query").await;
    let second = connect(&second_dir, "posts").await;
    let (mut first_watch, mut second_watch) = (first_consumer.tap().watch(), second.tap().watch());
    let key = unique("key");
    for bus in [&first_publisher, &second] {
        drop(
            bus.subscribe(Subscription::new(unique("group"), key.clone()))
                .await
                .expect("declared"),
        );
    }
    let ours = Message::new(key.clone(), "first");
    first_publisher
        .publish(ours.clone())
        .await
        .expect("published");
    let seen = tokio::time::timeout(PATIENCE, first_watch.recv())
        .await
        .expect("the first bus's tap saw its publish")
        .expect("tap open");
    assert_eq!(seen.message_id, ours.id);
    assert_eq!(seen.publisher.as_deref(), Some("posts"));
    assert!(
        second_watch.try_recv().is_err(),
        "the second bus saw the first one's message"
    );
    let theirs = Message::new(key, "second");
    second.publish(theirs.clone()).await.expect("published");
    let seen = tokio::time::timeout(PATIENCE, second_watch.recv())
        .await
        .expect("the second bus's tap saw its publish")
        .expect("tap open");
    assert_eq!(seen.message_id, theirs.id);
    assert!(first_watch.try_recv().is_err());
}
