//! Leases on the embedded bus: a handler that runs many lease periods keeps its
//! delivery (the process renews the lease while it holds it), and a consumer process
//! killed with SIGKILL stops renewing, so its delivery goes to another consumer once
//! the lease runs out.

use std::{
    io::{BufRead, BufReader, Write},
    sync::{Arc, Mutex},
    time::Duration,
};

use bus::{BusOptions, Consumer, Message, Subscription};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

mod support;

const LEASE: Duration = Duration::from_millis(300);
const PATIENCE: Duration = Duration::from_secs(30);
const CHILD_DIR: &str = "BUS_LEASE_TEST_DIR";

fn options() -> BusOptions {
    BusOptions {
        retry: support::quick_retry(),
        lease: LEASE,
        ..BusOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_keeps_its_delivery_past_the_lease() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bus = support::open(dir.path(), options()).await;
    // Two competing consumers: without renewal the idle one takes the message as soon
    // as the first one's lease runs out.
    let calls: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let shutdown = CancellationToken::new();
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let calls = calls.clone();
            Consumer::new(bus.clone(), Subscription::new("slow", "work")).run_attempts(
                shutdown.clone(),
                move |message, attempt| {
                    let calls = calls.clone();
                    async move {
                        calls
                            .lock()
                            .expect("lock")
                            .push((message.id.clone(), attempt.number));
                        tokio::time::sleep(LEASE * 7).await;
                        Ok(())
                    }
                },
            )
        })
        .collect();
    // Subscribed (the group exists) before publishing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let message = Message::new("work", "long job");
    bus.publish(message.clone()).await.expect("publish");

    let acked = tokio::time::timeout(PATIENCE, async {
        loop {
            let depth = bus.queue_depth("slow").await.expect("depth");
            if depth == Some(0) && !calls.lock().expect("lock").is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(acked.is_ok(), "the slow handler's ack went through");
    // Give a wrongly redelivered copy time to show up.
    tokio::time::sleep(LEASE * 3).await;
    assert_eq!(
        *calls.lock().expect("lock"),
        vec![(message.id.clone(), 1)],
        "handled once, on the first attempt"
    );
    shutdown.cancel();
    for consumer in consumers {
        consumer.await.expect("consumer stops");
    }
}

/// The child process of `a_killed_consumer_s_delivery_is_leased_again`: takes one
/// delivery, says so, and holds it until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_killed_consumer_s_delivery_is_leased_again as a child process"]
async fn child_holder() {
    let Some((_bus, mut subscriber)) =
        support::child_subscriber(CHILD_DIR, options(), ("held", "work", 1)).await
    else {
        return;
    };
    let delivery = subscriber.next().await.expect("open").expect("delivery");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "leased {}", delivery.message.id).expect("stdout");
    stdout.flush().expect("flush");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    drop(delivery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_s_delivery_is_leased_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bus = support::open(dir.path(), options()).await;
    let mut subscriber = support::subscribe(bus.as_ref(), "held", "work", 1).await;
    // The group is bound (above) but this subscriber is not polled yet, so the child
    // is the one to lease the message.
    let message = Message::new("work", "job");
    bus.publish(message.clone()).await.expect("publish");
    let (mut child, stdout) = support::spawn_child("child_holder", CHILD_DIR, dir.path());
    let held_by_child = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("leased ").map(str::to_owned))
    });
    let held_by_child = tokio::time::timeout(PATIENCE, held_by_child)
        .await
        .expect("the child leased the message in time")
        .expect("reader")
        .expect("the child leased the message");
    assert_eq!(held_by_child, message.id);

    // Alive, the child keeps its lease through many lease periods.
    let stolen = tokio::time::timeout(LEASE * 6, subscriber.next()).await;
    assert!(
        stolen.is_err(),
        "a live consumer's delivery was handed to another: {stolen:?}"
    );

    // Killed, it stops renewing: the delivery comes back after the lease.
    support::kill(&mut child);
    let delivery = tokio::time::timeout(PATIENCE, subscriber.next())
        .await
        .expect("redelivered after the lease")
        .expect("open")
        .expect("delivery");
    assert_eq!(delivery.message.id, message.id);
    assert_eq!(delivery.attempt, 2, "the child's delivery counted");
    delivery.ack().await.expect("ack");
}
