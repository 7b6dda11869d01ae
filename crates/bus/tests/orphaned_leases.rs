//! Leases left behind by a process killed with SIGKILL: the next process to open the
//! embedded bus alone gets those deliveries at once, not after the lease (here one hour);
//! while the process holding them is alive, nobody else gets them.

use std::{
    io::{BufRead, BufReader, Write},
    process::Child,
    time::Duration,
};

use bus::{BusOptions, Message};
use futures::StreamExt;

mod support;

const CHILD_DIR: &str = "BUS_ORPHANED_LEASES_DIR";
const HELD: usize = 3;

fn options() -> BusOptions {
    BusOptions {
        lease: Duration::from_secs(3600),
        ..BusOptions::default()
    }
}

/// The child of the tests below: publishes `HELD` + 2 messages, leases `HELD` of them,
/// prints their ids and holds them unsettled until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the tests below as a child process"]
async fn child_holding_leases() {
    let Some((bus, mut subscriber)) =
        support::child_subscriber(CHILD_DIR, options(), ("orders", "order", HELD as u16)).await
    else {
        return;
    };
    for i in 0..HELD + 2 {
        bus.publish(Message::new("order", format!("order {i}")))
            .await
            .expect("publish");
    }
    let mut held = Vec::new();
    let mut stdout = std::io::stdout();
    for _ in 0..HELD {
        let delivery = subscriber.next().await.expect("open").expect("delivery");
        writeln!(stdout, "leased {}", delivery.message.id).expect("stdout");
        held.push(delivery);
    }
    writeln!(stdout, "holding").expect("stdout");
    stdout.flush().expect("flush");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    drop(held);
}

/// Starts the child on `dir` and returns it with the ids it holds.
fn child_holding(dir: &std::path::Path) -> (Child, Vec<String>) {
    let (child, stdout) = support::spawn_child("child_holding_leases", CHILD_DIR, dir);
    let mut leased = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        if let Some(id) = line.strip_prefix("leased ") {
            leased.push(id.to_owned());
        } else if line == "holding" {
            break;
        }
    }
    assert_eq!(leased.len(), HELD, "the child holds its deliveries");
    (child, leased)
}

/// Every message id this process is given within `wait`, acked.
async fn receive_for(bus: &dyn bus::EventBus, wait: Duration) -> Vec<String> {
    let mut subscriber = support::subscribe(bus, "orders", "order", 16).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        while let Some(Ok(delivery)) = subscriber.next().await {
            received.push(delivery.message.id.clone());
            delivery.ack().await.expect("ack");
        }
    })
    .await;
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_killed_process_are_released_when_the_bus_is_opened_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, leased) = child_holding(dir.path());
    support::kill(&mut child);

    let bus = support::open(dir.path(), options()).await;
    let received = receive_for(bus.as_ref(), Duration::from_secs(3)).await;
    for id in &leased {
        assert!(
            received.contains(id),
            "{id}, leased by the killed process, delivered again at once (got {received:?})"
        );
    }
    assert_eq!(received.len(), HELD + 2, "every message once: {received:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_live_process_are_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, leased) = child_holding(dir.path());

    let bus = support::open(dir.path(), options()).await;
    let received = receive_for(bus.as_ref(), Duration::from_secs(2)).await;
    support::kill(&mut child);
    assert_eq!(
        received.len(),
        2,
        "only the messages nobody holds: {received:?}"
    );
    for id in &leased {
        assert!(!received.contains(id), "{id} is still the child's");
    }
}
