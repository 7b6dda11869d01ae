//! Durability across crashes: the embedded bus killed with SIGKILL mid-traffic, and
//! RabbitMQ restarted with messages in flight. Neither may lose an acknowledged publish.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use bus::{BusOptions, Consumer, Message, Subscription};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

mod support;

const PATIENCE: Duration = Duration::from_secs(60);
const CHILD_DIR: &str = "BUS_CRASH_TEST_DIR";

fn options() -> BusOptions {
    BusOptions {
        retry: support::quick_retry(),
        lease: Duration::from_secs(1),
        exchange: format!("crash-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        publish_timeout: Duration::from_secs(90),
        service: None,
    }
}

/// The child process of `embedded_bus_loses_no_acknowledged_publish_on_sigkill`: publishes
/// forever, printing each acknowledged id, and holds a few deliveries unacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by embedded_bus_loses_no_acknowledged_publish_on_sigkill as a child process"]
async fn child_publisher() {
    let Some((bus, mut subscriber)) =
        support::child_subscriber(CHILD_DIR, options(), ("orders", "order", 5)).await
    else {
        return;
    };
    let mut held = Vec::new();
    let mut stdout = std::io::stdout();
    for round in 0u64.. {
        // Several publishes in flight at once, as a busy service would have.
        let batch: Vec<Message> = (0..8)
            .map(|i| Message::new("order", format!("{round}-{i}")))
            .collect();
        let publishes = batch.iter().map(|m| bus.publish(m.clone()));
        for (message, result) in batch.iter().zip(futures::future::join_all(publishes).await) {
            result.expect("publish");
            writeln!(stdout, "acked {}", message.id).expect("stdout");
        }
        if round == 5 {
            for _ in 0..3 {
                let delivery = subscriber.next().await.expect("open").expect("delivery");
                writeln!(stdout, "leased {}", delivery.message.id).expect("stdout");
                held.push(delivery);
            }
        }
        stdout.flush().expect("flush");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_bus_loses_no_acknowledged_publish_on_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, stdout) = support::spawn_child("child_publisher", CHILD_DIR, dir.path());
    let reader = std::thread::spawn(move || {
        let mut acked = BTreeSet::new();
        let mut leased = BTreeSet::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("acked ") {
                acked.insert(id.to_owned());
            } else if let Some(id) = line.strip_prefix("leased ") {
                leased.insert(id.to_owned());
            }
            if acked.len() >= 400 && !leased.is_empty() {
                break;
            }
        }
        (acked, leased)
    });
    let (acked, leased) = reader.join().expect("reader");
    // SIGKILL while the child is still publishing.
    support::kill(&mut child);
    assert!(
        acked.len() >= 400,
        "the child published ({} acked)",
        acked.len()
    );
    assert!(!leased.is_empty(), "the child held deliveries");

    let bus = support::open(dir.path(), options()).await;
    let mut subscriber = support::subscribe(bus.as_ref(), "orders", "order", 64).await;
    let mut received = BTreeSet::new();
    let drained = tokio::time::timeout(PATIENCE, async {
        while !acked.is_subset(&received) {
            let delivery = subscriber.next().await.expect("open").expect("delivery");
            received.insert(delivery.message.id.clone());
            delivery.ack().await.expect("ack");
        }
    })
    .await;
    let missing: Vec<_> = acked.difference(&received).take(5).collect();
    assert!(
        drained.is_ok(),
        "{} acknowledged publishes lost, e.g. {missing:?}",
        acked.len() - acked.intersection(&received).count()
    );
    assert!(leased.is_subset(&received), "held deliveries came back");
}

/// Restarts the shared RabbitMQ, so it only runs when `FLOTILLA_TEST_RABBITMQ_RESTART_CMD`
/// says how (e.g. `rabbitmqctl stop_app && rabbitmqctl start_app`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_loses_no_message_in_flight() {
    let (Ok(url), Ok(restart)) = (
        std::env::var("FLOTILLA_TEST_AMQP_URL"),
        std::env::var("FLOTILLA_TEST_RABBITMQ_RESTART_CMD"),
    ) else {
        eprintln!("skipped: set FLOTILLA_TEST_AMQP_URL and FLOTILLA_TEST_RABBITMQ_RESTART_CMD");
        return;
    };
    let options = options();
    let bus = bus::connect(&url, options.clone()).await.expect("connect");
    let group = format!(
        "restart-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let received: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let shutdown = CancellationToken::new();
    let consumer = {
        let received = received.clone();
        Consumer::new(
            bus.clone(),
            Subscription::new(&group, "order").with_prefetch(20),
        )
        .concurrency(4)
        .run(shutdown.clone(), move |message| {
            let received = received.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                received.lock().expect("lock").insert(message.id);
                Ok(())
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let publisher = {
        let (bus, acked) = (bus.clone(), acked.clone());
        tokio::spawn(async move {
            for round in 0..60 {
                let batch: Vec<Message> = (0..10)
                    .map(|i| Message::new("order", format!("{round}-{i}")))
                    .collect();
                let results =
                    futures::future::join_all(batch.iter().map(|m| bus.publish(m.clone()))).await;
                for (message, result) in batch.iter().zip(results) {
                    result.expect("publish survives the restart");
                    acked.lock().expect("lock").insert(message.id.clone());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    while acked.lock().expect("lock").len() < 150 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status =
        tokio::task::spawn_blocking(move || Command::new("sh").args(["-c", &restart]).status())
            .await
            .expect("join")
            .expect("run restart command");
    assert!(status.success(), "restart command failed: {status}");
    tokio::time::timeout(PATIENCE, publisher)
        .await
        .expect("publisher finishes")
        .expect("publisher ok");
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(acked.len(), 600);
    let all_in = tokio::time::timeout(PATIENCE, async {
        while !acked.is_subset(&received.lock().expect("lock")) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let lost = acked.difference(&received.lock().expect("lock")).count();
    assert!(
        all_in.is_ok(),
        "{lost} confirmed messages lost across the restart"
    );
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, consumer)
        .await
        .expect("the consumer stops after the restart")
        .expect("consumer stops");
    tokio::time::timeout(PATIENCE, bus.close())
        .await
        .expect("the bus closes after the restart");
    support::delete_topology(&url, &options.exchange, &[group]).await;
}
