//! One conformance suite, run unchanged against the embedded bus and a real RabbitMQ
//! (`FLOTILLA_TEST_AMQP_URL`). Every test uses its own exchange and group names, so test
//! binaries can share one broker.
//!
//! Outbox/inbox tests also run on the real PostgreSQL and MariaDB
//! (`FLOTILLA_TEST_POSTGRES_URL`, `FLOTILLA_TEST_MYSQL_URL`), each in a scratch database.
//!
//! The RabbitMQ restart test restarts the shared broker, so it runs only when
//! `FLOTILLA_TEST_RABBITMQ_RESTART_CMD` names a shell command that does it (e.g.
//! `rabbitmqctl stop_app && rabbitmqctl start_app`).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use bus::{
    BusOptions, Consumer, EventBus, Inbox, Message, Nack, Outbox, OutboxRelay, RetryPolicy,
    Subscription,
};
use futures::StreamExt;
use sqlx::Row;
use storage::{Database, Migration};
use test_kit::real_server_url;
use tokio_util::sync::CancellationToken;

mod support;

/// How long a test waits for something that should happen promptly before failing
/// (a bound against hanging, not a performance assertion).
const PATIENCE: Duration = Duration::from_secs(30);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn test_options() -> BusOptions {
    BusOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            multiplier: 2,
        },
        lease: Duration::from_secs(1),
        exchange: unique("test"),
        publish_timeout: Duration::from_secs(60),
        service: None,
    }
}

/// A bus under test and how to clean up after it.
struct Backend {
    bus: Arc<dyn EventBus>,
    kind: Kind,
    groups: Mutex<Vec<String>>,
    _dir: Option<tempfile::TempDir>,
}

enum Kind {
    Embedded,
    Rabbit { url: String, exchange: String },
}

impl Backend {
    async fn embedded() -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = bus::default_url(dir.path());
        let bus = bus::connect(&url, test_options())
            .await
            .expect("open embedded bus");
        Some(Self {
            bus,
            kind: Kind::Embedded,
            groups: Mutex::default(),
            _dir: Some(dir),
        })
    }

    async fn rabbitmq() -> Option<Self> {
        let url = real_server_url("FLOTILLA_TEST_AMQP_URL")?;
        let options = test_options();
        let exchange = options.exchange.clone();
        let bus = bus::connect(&url, options)
            .await
            .expect("connect to RabbitMQ");
        Some(Self {
            bus,
            kind: Kind::Rabbit { url, exchange },
            groups: Mutex::default(),
            _dir: None,
        })
    }

    /// The dead letters of `group` (at most 10).
    async fn dead_letters_of(&self, group: &str) -> Vec<bus::DeadLetter> {
        self.bus
            .dead_letters(Some(group), 10)
            .await
            .expect("list dead letters")
    }

    /// A group unique to this test (see [`Backend::group`]) subscribed to `pattern`.
    async fn subscribed(&self, name: &str, pattern: &str) -> (String, bus::Subscriber) {
        let group = self.group(name);
        let subscriber = self
            .bus
            .subscribe(Subscription::new(&group, pattern))
            .await
            .expect("subscribe");
        (group, subscriber)
    }

    /// A group name unique to this test, deleted from the broker afterwards.
    fn group(&self, name: &str) -> String {
        let group = unique(name);
        self.groups.lock().expect("lock").push(group.clone());
        group
    }

    async fn finish(self) {
        self.bus.close().await;
        if let Kind::Rabbit { url, exchange } = &self.kind {
            let groups = self.groups.lock().expect("lock").clone();
            support::delete_topology(url, exchange, &groups).await;
        }
    }
}

/// Runs one test, then removes its topology from the broker even if it failed.
async fn run<F>(backend: Backend, test: F)
where
    F: for<'a> FnOnce(&'a Backend) -> futures::future::BoxFuture<'a, ()>,
{
    use futures::FutureExt;
    let outcome = std::panic::AssertUnwindSafe(test(&backend))
        .catch_unwind()
        .await;
    backend.finish().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn next(subscriber: &mut bus::Subscriber) -> bus::Delivery {
    tokio::time::timeout(PATIENCE, subscriber.next())
        .await
        .expect("a delivery in time")
        .expect("stream open")
        .expect("delivery")
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if let Some(backend) = super::Backend::embedded().await {
                        super::run(backend, |b| Box::pin(super::$test(b))).await;
                    }
                }
            )*
        }
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if let Some(backend) = super::Backend::rabbitmq().await {
                        super::run(backend, |b| Box::pin(super::$test(b))).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    fan_out_reaches_every_group,
    competing_consumers_share_a_group,
    unacknowledged_delivery_is_redelivered,
    failing_message_is_dead_lettered_then_replayed,
    undecodable_body_is_dead_lettered_and_consumer_survives,
    outbox_and_inbox_on_sqlite,
    outbox_and_inbox_on_postgres,
    outbox_and_inbox_on_mariadb,
    headers_and_ids_survive_the_trip,
    crash_looping_message_is_dead_lettered,
    a_message_no_group_is_bound_to_waits_in_the_outbox,
    messages_handed_to_the_relay_at_their_commit_go_out_once_or_wait_in_the_outbox,
    a_consumer_that_died_on_the_last_attempt_gets_the_message_once_more_exhausted,
    a_requeued_delivery_comes_back_as_the_same_attempt_even_the_last,
);

/// A handler interrupted by shutdown requeues its delivery: it comes back at once as the
/// same attempt, so an interruption never uses up an attempt — not even the last, which a
/// `Nack::Retry` would dead-letter.
async fn a_requeued_delivery_comes_back_as_the_same_attempt_even_the_last(backend: &Backend) {
    let (group, mut subscriber) = backend.subscribed("interrupted", "interrupted").await;
    let message = Message::new("interrupted", "work").with_header("x-custom", "kept");
    backend.bus.publish(message.clone()).await.expect("publish");
    let max = test_options().retry.max_attempts;
    for number in 1..=max {
        for after_requeue in [false, true] {
            let delivery = next(&mut subscriber).await;
            assert_eq!(delivery.message.id, message.id);
            assert_eq!(delivery.message.routing_key, "interrupted");
            assert_eq!(
                delivery.message.headers.get("x-custom").map(String::as_str),
                Some("kept")
            );
            assert_eq!(delivery.attempt, number, "after a requeue: {after_requeue}");
            let nack = if after_requeue {
                Nack::Retry(format!("failed attempt {number}"))
            } else {
                Nack::Requeue("shutting down".to_owned())
            };
            if number == max && after_requeue {
                delivery.ack().await.expect("ack");
            } else {
                delivery.nack(nack).await.expect("nack");
            }
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), subscriber.next())
            .await
            .is_err(),
        "delivered again after its ack"
    );
    assert!(backend.dead_letters_of(&group).await.is_empty());
}

/// A consumer that dies during the last attempt (killed, not a handler's `Nack`) would
/// leave its work half-done with nobody told; the bus delivers the message once more,
/// marked exhausted, so that a handler can settle it (fail the job, tell the user)
/// without redoing the work. Unsettled again, it is dead-lettered.
async fn a_consumer_that_died_on_the_last_attempt_gets_the_message_once_more_exhausted(
    backend: &Backend,
) {
    let (group, mut subscriber) = backend.subscribed("dying", "dying").await;
    let message = Message::new("dying", "work");
    backend.bus.publish(message.clone()).await.expect("publish");
    let max = test_options().retry.max_attempts;
    for number in 1..=max + 1 {
        let delivery = next(&mut subscriber).await;
        assert_eq!(delivery.message.id, message.id);
        let attempt = delivery.attempt();
        assert_eq!((attempt.number, attempt.max), (number, max));
        assert_eq!(attempt.is_exhausted(), number > max);
        // The consumer "dies": its delivery is never settled.
        drop(delivery);
    }
    // (Still consuming: the embedded bus dead-letters when the group next leases.)
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), subscriber.next())
            .await
            .is_err(),
        "delivered again after the exhausted attempt"
    );
    let dead = wait_for_dead_letters(backend, &group, 1).await;
    assert_eq!(dead[0].id, message.id);
}

/// A message published before any consumer group is bound to its routing key (a fresh
/// broker, the producer up before its consumers) is refused rather than confirmed and
/// dropped; the outbox keeps it, marks the messages before it sent, and publishes it once
/// a group subscribes.
async fn a_message_no_group_is_bound_to_waits_in_the_outbox(backend: &Backend) {
    let (bound_key, late_key) = (unique("bound"), unique("late"));
    let refused = backend.bus.publish(Message::new(&late_key, "direct")).await;
    assert!(
        matches!(&refused, Err(bus::BusError::Unroutable(key)) if *key == late_key),
        "{refused:?}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let db = service_db(&dir).await;
    db.migrate("bus", bus::outbox_migrations())
        .await
        .expect("bus migrations");
    let mut early = backend
        .bus
        .subscribe(Subscription::new(backend.group("early"), &bound_key))
        .await
        .expect("subscribe");
    let outbox = Outbox::new(&db);
    let first = Message::new(&bound_key, "first");
    let waiting = Message::new(&late_key, "waiting");
    let mut tx = db.begin().await.expect("begin");
    for message in [&first, &waiting] {
        outbox.enqueue(&mut tx, message).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");

    let relay = OutboxRelay::new("shop", db.clone(), backend.bus.clone());
    let outcome = relay.relay_once().await;
    assert!(
        matches!(&outcome, Err(bus::BusError::Unroutable(key)) if *key == late_key),
        "{outcome:?}"
    );
    assert_eq!(
        relay.backlog().await.expect("backlog"),
        1,
        "the first is sent"
    );
    let delivery = next(&mut early).await;
    assert_eq!(delivery.message.id, first.id);
    delivery.ack().await.expect("ack");
    // Still nobody bound: it stays.
    assert!(relay.relay_once().await.is_err());
    assert_eq!(relay.backlog().await.expect("backlog"), 1);

    let mut late = backend
        .bus
        .subscribe(Subscription::new(backend.group("late"), &late_key))
        .await
        .expect("subscribe");
    assert_eq!(relay.relay_once().await.expect("relay"), 1);
    assert_eq!(relay.backlog().await.expect("backlog"), 0);
    let delivery = next(&mut late).await;
    assert_eq!(delivery.message.id, waiting.id);
    assert_eq!(delivery.message.body, waiting.body);
    delivery.ack().await.expect("ack");
    // The first went out once: the early group has nothing more.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), early.next())
            .await
            .is_err(),
        "the first message was published again"
    );
    db.close().await;
}

/// `OutboxPublisher::committed_with`: on SQLite the relay publishes the messages handed
/// to it at their commit without reading them back, and marks their rows sent. One the
/// bus refuses (nobody bound yet) stays in the outbox, and the relay's own read of the
/// outbox publishes it once a group is bound; the one that went out is not sent again.
async fn messages_handed_to_the_relay_at_their_commit_go_out_once_or_wait_in_the_outbox(
    backend: &Backend,
) {
    let (bound_key, late_key) = (unique("handed"), unique("handed-late"));
    let dir = tempfile::tempdir().expect("temp dir");
    let db = service_db(&dir).await;
    let tasks = tokio_util::task::TaskTracker::new();
    let shutdown = CancellationToken::new();
    let publisher =
        bus::OutboxPublisher::start("shop", &db, backend.bus.clone(), &tasks, shutdown.clone())
            .await
            .expect("publisher");
    let counter = OutboxRelay::new("shop-backlog", db.clone(), backend.bus.clone());
    let mut early = backend
        .bus
        .subscribe(Subscription::new(backend.group("handed-early"), &bound_key))
        .await
        .expect("subscribe");
    let first = Message::new(&bound_key, "first");
    let waiting = Message::new(&late_key, "waiting");
    commit_and_hand(&db, &publisher, vec![first.clone(), waiting.clone()]).await;
    let delivery = next(&mut early).await;
    assert_eq!(delivery.message.id, first.id);
    delivery.ack().await.expect("ack");
    wait_for(|| async { counter.backlog().await.expect("backlog") == 1 }).await;

    let mut late = backend
        .bus
        .subscribe(Subscription::new(backend.group("handed-late"), &late_key))
        .await
        .expect("subscribe");
    let delivery = next(&mut late).await;
    assert_eq!(delivery.message.id, waiting.id);
    delivery.ack().await.expect("ack");
    wait_for(|| async { counter.backlog().await.expect("backlog") == 0 }).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), early.next())
            .await
            .is_err(),
        "the handed message was published again"
    );

    // A row committed without a word to the relay goes out although messages are handed
    // over all the time: the relay still reads its outbox.
    let silent = Message::new(&bound_key, "silent");
    let mut tx = db.begin().await.expect("begin");
    Outbox::new(&db)
        .enqueue(&mut tx, &silent)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    let mut seen = Vec::new();
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            commit_and_hand(&db, &publisher, vec![Message::new(&bound_key, "busy")]).await;
            while let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(Duration::from_millis(20), early.next()).await
            {
                seen.push(delivery.message.id.clone());
                delivery.ack().await.expect("ack");
            }
            if seen.contains(&silent.id) {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "the silent row never went out");
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    db.close().await;
}

/// A service's SQLite database in `dir`.
async fn service_db(dir: &tempfile::TempDir) -> Database {
    Database::connect(&format!(
        "sqlite://{}",
        dir.path().join("service.db").display()
    ))
    .await
    .expect("database")
}

/// Stages `messages` in one write, commits it and hands them to the relay, as a
/// producing service does.
async fn commit_and_hand(db: &Database, publisher: &bus::OutboxPublisher, messages: Vec<Message>) {
    let mut statements = db.statements();
    for message in &messages {
        publisher
            .stage(&mut statements, message.clone())
            .expect("stage");
    }
    db.write()
        .await
        .expect("write")
        .commit_with(statements)
        .await
        .expect("commit");
    publisher.committed_with(messages);
}

/// A message whose handler crashes every time (never settles) must not be redelivered
/// forever: after `max_attempts` deliveries it is dead-lettered.
async fn crash_looping_message_is_dead_lettered(backend: &Backend) {
    let group = backend.group("crashloop");
    let calls: Arc<Mutex<u32>> = Arc::default();
    let shutdown = CancellationToken::new();
    let worker = {
        let calls = calls.clone();
        Consumer::new(backend.bus.clone(), Subscription::new(&group, "boom")).run(
            shutdown.clone(),
            move |_message| {
                let calls = calls.clone();
                async move {
                    *calls.lock().expect("lock") += 1;
                    panic!("simulated handler crash");
                }
            },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let message = Message::new("boom", "{}");
    backend.bus.publish(message.clone()).await.expect("publish");
    let dead = wait_for_dead_letters(backend, &group, 1).await;
    assert_eq!(dead[0].id, message.id);
    assert!(!dead[0].reason.is_empty());
    // Nothing comes back once it is parked.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        *calls.lock().expect("lock"),
        3,
        "max_attempts deliveries, then parked"
    );
    shutdown.cancel();
    worker
        .await
        .expect("consumer survives its handler's crashes");
}

async fn headers_and_ids_survive_the_trip(backend: &Backend) {
    if let Kind::Rabbit { url, .. } = &backend.kind {
        // An operator recognises a group's queues by name.
        let group = backend.group("video");
        let _subscriber = backend
            .bus
            .subscribe(Subscription::new(&group, "video"))
            .await
            .expect("subscribe");
        let connection = lapin::Connection::connect(url, Default::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        for queue in [
            group.clone(),
            format!("{group}.dead"),
            format!("{group}.retry.1"),
            format!("{group}.retry.2"),
        ] {
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            channel
                .queue_declare(queue.as_str().into(), passive, Default::default())
                .await
                .unwrap_or_else(|e| panic!("queue {queue} missing: {e}"));
        }
        let _ = connection.close(200, "done".into()).await;
    }
    let (group, mut subscriber) = backend.subscribed("trip", "media.*").await;
    let message = Message::json("media.video", &serde_json::json!({"video_fid": "v1"}))
        .expect("json")
        .with_header("x-custom", "yes");
    backend.bus.publish(message.clone()).await.expect("publish");
    // Not matching the pattern: not taken, and never delivered.
    let refused = backend.bus.publish(Message::new("other", "x")).await;
    assert!(
        matches!(&refused, Err(bus::BusError::Unroutable(key)) if key == "other"),
        "{refused:?}"
    );
    let delivery = next(&mut subscriber).await;
    assert_eq!(delivery.message.id, message.id);
    assert_eq!(delivery.message.routing_key, "media.video");
    assert_eq!(delivery.message.body, message.body);
    assert_eq!(delivery.message.traceparent(), message.traceparent());
    assert_eq!(
        delivery.message.headers.get("x-custom").map(String::as_str),
        Some("yes")
    );
    assert_eq!(delivery.attempt, 1);
    delivery.ack().await.expect("ack");
    assert_eq!(
        backend.bus.queue_depth(&group).await.expect("depth"),
        Some(0)
    );
}

async fn fan_out_reaches_every_group(backend: &Backend) {
    let (a, b) = (backend.group("fan-a"), backend.group("fan-b"));
    let mut first = backend
        .bus
        .subscribe(Subscription::new(&a, "event"))
        .await
        .expect("subscribe a");
    let mut second = backend
        .bus
        .subscribe(Subscription::new(&b, "event"))
        .await
        .expect("subscribe b");
    let messages: Vec<Message> = (0..10)
        .map(|i| Message::new("event", format!("{i}")))
        .collect();
    let sent: BTreeSet<String> = messages.iter().map(|m| m.id.clone()).collect();
    backend.bus.publish_all(messages).await.expect("publish");
    for subscriber in [&mut first, &mut second] {
        let mut got = BTreeSet::new();
        while got.len() < sent.len() {
            let delivery = next(subscriber).await;
            got.insert(delivery.message.id.clone());
            delivery.ack().await.expect("ack");
        }
        assert_eq!(got, sent);
    }
}

async fn competing_consumers_share_a_group(backend: &Backend) {
    let group = backend.group("work");
    let seen: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let shutdown = CancellationToken::new();
    let mut workers = Vec::new();
    for worker in 0..2 {
        let seen = seen.clone();
        workers.push(
            Consumer::new(
                backend.bus.clone(),
                Subscription::new(&group, "job").with_prefetch(1),
            )
            .run(shutdown.clone(), move |message| {
                let seen = seen.clone();
                async move {
                    // Long enough that one worker cannot drain the queue alone.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    seen.lock().expect("lock").push((worker, message.id));
                    Ok(())
                }
            }),
        );
    }
    // Both consumers must be attached before the work arrives.
    wait_for(|| async { true }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages: Vec<Message> = (0..20)
        .map(|i| Message::new("job", format!("{i}")))
        .collect();
    let sent: BTreeSet<String> = messages.iter().map(|m| m.id.clone()).collect();
    backend.bus.publish_all(messages).await.expect("publish");
    wait_for(|| async { seen.lock().expect("lock").len() >= sent.len() }).await;
    shutdown.cancel();
    for worker in workers {
        worker.await.expect("worker stops");
    }
    let seen = seen.lock().expect("lock").clone();
    let ids: BTreeSet<String> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, sent, "every job handled");
    assert_eq!(seen.len(), sent.len(), "no job handled twice");
    for worker in 0..2 {
        assert!(
            seen.iter().any(|(w, _)| *w == worker),
            "worker {worker} got no work: {seen:?}"
        );
    }
}

async fn unacknowledged_delivery_is_redelivered(backend: &Backend) {
    let group = backend.group("crash");
    let mut doomed = backend
        .bus
        .subscribe(Subscription::new(&group, "task"))
        .await
        .expect("subscribe");
    let message = Message::new("task", "payload");
    backend.bus.publish(message.clone()).await.expect("publish");
    let delivery = next(&mut doomed).await;
    assert_eq!(delivery.message.id, message.id);
    // The consumer dies holding the delivery.
    drop(delivery);
    drop(doomed);
    let mut survivor = backend
        .bus
        .subscribe(Subscription::new(&group, "task"))
        .await
        .expect("subscribe again");
    let again = next(&mut survivor).await;
    assert_eq!(again.message.id, message.id);
    assert_eq!(again.message.body, message.body);
    again.ack().await.expect("ack");
}

async fn failing_message_is_dead_lettered_then_replayed(backend: &Backend) {
    let (group, mut subscriber) = backend.subscribed("poison", "flaky").await;
    let message = Message::new("flaky", "{}");
    backend.bus.publish(message.clone()).await.expect("publish");
    // max_attempts = 3: three failures, then it is gone from the queue.
    for attempt in 1..=3 {
        let delivery = next(&mut subscriber).await;
        assert_eq!(delivery.message.id, message.id);
        assert_eq!(delivery.attempt, attempt);
        delivery
            .nack(Nack::Retry(format!("database down (attempt {attempt})")))
            .await
            .expect("nack");
    }
    let dead = wait_for_dead_letters(backend, &group, 1).await;
    assert_eq!(dead[0].id, message.id);
    assert_eq!(dead[0].routing_key, "flaky");
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].reason.contains("database down (attempt 3)"),
        "{}",
        dead[0].reason
    );
    // Nothing more is delivered while it is parked.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), subscriber.next())
            .await
            .is_err(),
        "a dead letter was delivered again"
    );
    let replayed = backend
        .bus
        .replay_dead_letters(Some(&group), std::slice::from_ref(&message.id))
        .await
        .expect("replay");
    assert_eq!(replayed, 1);
    let delivery = next(&mut subscriber).await;
    assert_eq!(delivery.message.id, message.id);
    assert_eq!(delivery.message.routing_key, "flaky");
    assert_eq!(delivery.attempt, 1, "a replay starts counting again");
    delivery.ack().await.expect("ack");
    assert!(backend.dead_letters_of(&group).await.is_empty());
}

async fn undecodable_body_is_dead_lettered_and_consumer_survives(backend: &Backend) {
    #[derive(serde::Deserialize)]
    struct Job {
        job_id: String,
    }
    let group = backend.group("decode");
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let shutdown = CancellationToken::new();
    let worker = {
        let handled = handled.clone();
        Consumer::new(backend.bus.clone(), Subscription::new(&group, "video")).run(
            shutdown.clone(),
            move |message| {
                let handled = handled.clone();
                async move {
                    let job: Job = message
                        .decode()
                        .map_err(|e| Nack::Reject(format!("undecodable body: {e}")))?;
                    handled.lock().expect("lock").push(job.job_id);
                    Ok(())
                }
            },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let garbage = Message::new("video", "this is not json");
    backend.bus.publish(garbage.clone()).await.expect("publish");
    backend
        .bus
        .publish(Message::json("video", &serde_json::json!({"job_id": "j2"})).expect("json"))
        .await
        .expect("publish");
    wait_for(|| async { handled.lock().expect("lock").len() == 1 }).await;
    let dead = wait_for_dead_letters(backend, &group, 1).await;
    assert_eq!(dead[0].id, garbage.id);
    assert_eq!(dead[0].attempts, 1, "never retried");
    assert!(
        dead[0].reason.contains("undecodable body"),
        "{}",
        dead[0].reason
    );
    assert_eq!(handled.lock().expect("lock").as_slice(), ["j2"]);
    shutdown.cancel();
    worker.await.expect("consumer stops cleanly");
}

async fn outbox_and_inbox_on_sqlite(backend: &Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("service.db").display());
    outbox_and_inbox_exactly_once(backend, &url).await;
}

async fn outbox_and_inbox_on_postgres(backend: &Backend) {
    outbox_and_inbox_on_server(backend, "FLOTILLA_TEST_POSTGRES_URL").await;
}

async fn outbox_and_inbox_on_mariadb(backend: &Backend) {
    outbox_and_inbox_on_server(backend, "FLOTILLA_TEST_MYSQL_URL").await;
}

/// On a scratch database of the real server named by `var` (skipped without one).
async fn outbox_and_inbox_on_server(backend: &Backend, var: &str) {
    let Some(server) = real_server_url(var) else {
        return;
    };
    let scratch = storage::scratch::ScratchDatabase::create(&server)
        .await
        .expect("scratch database");
    outbox_and_inbox_exactly_once(backend, scratch.url()).await;
    scratch.drop_database().await.expect("drop");
}

const SHOP: &[Migration] = &[
    Migration::portable(
        1,
        "orders",
        "CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY, item VARCHAR(64) NOT NULL)",
    ),
    Migration::portable(
        2,
        "effects",
        "CREATE TABLE effects (order_id VARCHAR(64) NOT NULL, message_id VARCHAR(64) NOT NULL)",
    ),
];

/// A producer writes orders and their messages in one transaction; the relay is
/// "killed" after publishing but before marking sent (so it publishes again); the
/// consumer "crashes" after committing an effect but before acking (so it gets the
/// message again). Every order still has exactly one effect, and a rolled-back order
/// sends nothing.
async fn outbox_and_inbox_exactly_once(backend: &Backend, db_url: &str) {
    let db = Database::connect(db_url).await.expect("database");
    db.migrate("bus", bus::outbox_migrations())
        .await
        .expect("bus migrations");
    db.migrate("shop", SHOP).await.expect("shop migrations");
    let group = backend.group("effects");
    let routing_key = unique("order.created");
    let outbox = Outbox::new(&db);
    let inbox = Inbox::new(&db);

    // The consumer is declared first so that no message is published before its queue.
    let crashed_once: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let handled: Arc<Mutex<u32>> = Arc::default();
    let shutdown = CancellationToken::new();
    let consumer = {
        let (db, crashed_once, handled, group_name) = (
            db.clone(),
            crashed_once.clone(),
            handled.clone(),
            group.clone(),
        );
        Consumer::new(
            backend.bus.clone(),
            Subscription::new(&group, &routing_key).with_prefetch(4),
        )
        .concurrency(2)
        .run(shutdown.clone(), move |message| {
            let (db, crashed_once, handled, group_name) = (
                db.clone(),
                crashed_once.clone(),
                handled.clone(),
                group_name.clone(),
            );
            async move {
                *handled.lock().expect("lock") += 1;
                let order: serde_json::Value =
                    message.decode().map_err(|e| Nack::Reject(e.to_string()))?;
                let order_id = order["order_id"].as_str().unwrap_or_default().to_owned();
                let retry = |e: &dyn std::fmt::Display| Nack::Retry(e.to_string());
                let mut tx = db.begin().await.map_err(|e| retry(&e))?;
                let first = inbox
                    .record(&mut tx, &group_name, &message.id)
                    .await
                    .map_err(|e| retry(&e))?;
                if first {
                    sqlx::query(db.sql("INSERT INTO effects (order_id, message_id) VALUES (?, ?)"))
                        .bind(order_id.clone())
                        .bind(message.id.clone())
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| retry(&e))?;
                }
                tx.commit().await.map_err(|e| retry(&e))?;
                // Orders ending in 0, 3, 6 or 9 (12 of 30): the process dies after its commit, before the ack.
                let digit = order_id.bytes().last().unwrap_or(b'0');
                if digit.is_multiple_of(3) && crashed_once.lock().expect("lock").insert(order_id) {
                    panic!("simulated crash after commit, before ack");
                }
                Ok(())
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let orders = 30;
    for i in 0..orders {
        let mut tx = db.begin().await.expect("begin");
        let order_id = format!("order-{i:02}");
        sqlx::query(db.sql("INSERT INTO orders (id, item) VALUES (?, ?)"))
            .bind(order_id.clone())
            .bind("book")
            .execute(&mut *tx)
            .await
            .expect("insert order");
        let message = Message::json(&routing_key, &serde_json::json!({ "order_id": order_id }))
            .expect("json");
        outbox.enqueue(&mut tx, &message).await.expect("enqueue");
        tx.commit().await.expect("commit");
    }
    // A business transaction that rolls back takes its message with it.
    {
        let mut tx = db.begin().await.expect("begin");
        let message =
            Message::json(&routing_key, &serde_json::json!({ "order_id": "ghost" })).expect("json");
        outbox.enqueue(&mut tx, &message).await.expect("enqueue");
        tx.rollback().await.expect("rollback");
    }

    // A relay that dies between publishing and marking sent: its batch goes out again.
    let crashed_relay = OutboxRelay::new("shop", db.clone(), backend.bus.clone()).with_batch(10);
    let rows =
        sqlx::query("SELECT message_id, routing_key, headers, body FROM bus_outbox ORDER BY seq")
            .fetch_all(db.pool())
            .await
            .expect("read outbox");
    let first_batch: Vec<Message> = rows
        .iter()
        .take(10)
        .map(|row| Message {
            id: row.try_get(0).expect("id"),
            routing_key: row.try_get(1).expect("key"),
            headers: serde_json::from_str(&row.try_get::<String, _>(2).expect("headers"))
                .expect("headers json"),
            body: row.try_get::<Vec<u8>, _>(3).expect("body").into(),
        })
        .collect();
    backend.bus.publish_all(first_batch).await.expect("publish");
    drop(crashed_relay);

    let relay = OutboxRelay::new("shop", db.clone(), backend.bus.clone()).with_batch(7);
    let relay_task = tokio::spawn(relay.clone().run(shutdown.clone()));
    wait_for(|| async { relay.backlog().await.expect("backlog") == 0 }).await;

    let count_effects = || async {
        sqlx::query("SELECT COUNT(*) FROM effects")
            .fetch_one(db.pool())
            .await
            .expect("count")
            .try_get::<i64, _>(0)
            .expect("count")
    };
    wait_for(|| async { count_effects().await >= orders }).await;
    // Let the duplicates and crash-redeliveries drain, then check.
    wait_for(|| async {
        backend.bus.queue_depth(&group).await.expect("depth") == Some(0)
            && crashed_once.lock().expect("lock").len() == 12
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    consumer.await.expect("consumer stops");
    relay_task.await.expect("relay stops");

    let per_order: BTreeMap<String, i64> =
        sqlx::query("SELECT order_id, COUNT(*) FROM effects GROUP BY order_id")
            .fetch_all(db.pool())
            .await
            .expect("effects")
            .iter()
            .map(|row| (row.try_get(0).expect("id"), row.try_get(1).expect("n")))
            .collect();
    assert_eq!(
        per_order.len(),
        30,
        "every order has an effect: {per_order:?}"
    );
    assert!(
        per_order.values().all(|&n| n == 1),
        "exactly one effect each: {per_order:?}"
    );
    assert!(!per_order.contains_key("ghost"));
    let handled = *handled.lock().expect("lock");
    assert!(
        handled >= 30 + 12,
        "the test did exercise duplicates and redeliveries ({handled} handled)"
    );
    db.close().await;
}

async fn wait_for_dead_letters(backend: &Backend, group: &str, n: usize) -> Vec<bus::DeadLetter> {
    let mut last = Vec::new();
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            last = backend
                .bus
                .dead_letters(Some(group), 100)
                .await
                .expect("list dead letters");
            if last.len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "expected {n} dead letters, have {last:?}");
    last
}

async fn wait_for<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let met = tokio::time::timeout(PATIENCE, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    assert!(met.is_ok(), "condition not met within {PATIENCE:?}");
}

/// A group queue the broker holds with other arguments (declared by an earlier version,
/// or with other retry settings) is refused by RabbitMQ at every subscription. The
/// consumer says so — a failure marked permanent, naming the way out — instead of
/// retrying quietly, and subscribes once the queue is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_queue_declared_differently_is_reported_as_a_permanent_failure() {
    let Some(backend) = Backend::rabbitmq().await else {
        return;
    };
    run(backend, |backend| {
        Box::pin(async move {
            use lapin::{
                options::{QueueDeclareOptions, QueueDeleteOptions},
                types::{AMQPValue, FieldTable},
            };
            let Kind::Rabbit { url, .. } = &backend.kind else {
                panic!("a RabbitMQ backend");
            };
            let group = backend.group("stale");
            let connection = lapin::Connection::connect(url, Default::default())
                .await
                .expect("connect");
            let channel = connection.create_channel().await.expect("channel");
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            arguments.insert("x-delivery-limit".into(), AMQPValue::LongInt(1));
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(group.as_str().into(), durable, arguments)
                .await
                .expect("the old queue");

            let shutdown = CancellationToken::new();
            let consumer = Consumer::new(backend.bus.clone(), Subscription::new(&group, "stale"));
            let health = consumer.health();
            let consumer = consumer.run(shutdown.clone(), |_| async { Ok(()) });
            let reported = || health.failure().filter(|failure| failure.group == group);
            wait_for(|| async { reported().is_some() }).await;
            let failure = reported().expect("reported");
            assert!(failure.permanent, "{failure:?}");
            assert!(health.check().is_err(), "the consumer's readiness fails");
            assert!(
                failure
                    .error
                    .contains(&format!("rabbitmqctl delete_queue {group}")),
                "{}",
                failure.error
            );

            channel
                .queue_delete(group.as_str().into(), QueueDeleteOptions::default())
                .await
                .expect("delete the old queue");
            wait_for(|| async { reported().is_none() }).await;
            assert!(health.check().is_ok(), "ready again once subscribed");
            backend
                .bus
                .publish(Message::new("stale", "now consumed"))
                .await
                .expect("routable once the group has subscribed");
            shutdown.cancel();
            consumer.await.expect("the consumer stops");
        })
    })
    .await;
}
