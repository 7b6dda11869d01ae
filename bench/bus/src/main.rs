//! `bus-bench`: durable 1 KB messages, published with confirms and consumed with acks,
//! end to end, through (1) a minimal raw-lapin publisher/consumer, (2) the bus's RabbitMQ
//! backend, (3) the embedded bus — same run, same machine, same message count, same
//! publish window and prefetch. Prints msgs/s and publish-to-consume latency
//! percentiles, and a Markdown table row per contender.
//!
//! The raw-lapin contender does the same work the RabbitMQ backend must: a durable
//! quorum queue bound to a topic exchange, persistent messages, a confirm awaited for
//! every message (up to `--window` in flight), manual ack of every delivery with
//! `--prefetch` unacked.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use bus::{BusOptions, EventBus, Message, Subscription};
use clap::Parser;
use futures::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

#[derive(Debug, Parser)]
struct Args {
    /// RabbitMQ to measure against. Without one only the embedded bus is measured (said
    /// on stderr), so the benchmark runs to the end on any machine.
    #[arg(long, env = "FLOTILLA_TEST_AMQP_URL")]
    amqp_url: Option<String>,
    /// Messages per contender.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Publishes awaiting their confirm at once.
    #[arg(long, default_value_t = 500)]
    window: usize,
    /// Unacknowledged deliveries a consumer may hold.
    #[arg(long, default_value_t = 500)]
    prefetch: u16,
    /// Where the embedded bus's file goes (a temporary directory on this disk if unset).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Rounds; contenders alternate within each round and the best round counts.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Publish at most this many messages per second (0: as fast as confirms allow).
    /// Below capacity, the latency percentiles measure the path, not a backlog.
    #[arg(long, default_value_t = 0)]
    rate: u32,
}

/// Waits until message `i` is due under `--rate`.
async fn pace(rate: u32, start: Instant, i: usize) {
    if rate > 0 {
        let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        tokio::time::sleep_until(due.into()).await;
    }
}

/// What one contender achieved.
#[derive(Debug, Clone)]
struct Outcome {
    name: &'static str,
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// Latencies recorded by the consumer; the body's first 8 bytes are the publish time.
#[derive(Default)]
struct Recorder {
    latencies: Mutex<Vec<u64>>,
}

impl Recorder {
    fn record(&self, body: &[u8], epoch: Instant) {
        let sent = body
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .unwrap_or_default();
        let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if let Ok(mut latencies) = self.latencies.lock() {
            latencies.push(now.saturating_sub(sent));
        }
    }

    fn count(&self) -> usize {
        self.latencies.lock().map(|l| l.len()).unwrap_or(0)
    }

    fn outcome(&self, name: &'static str, elapsed: Duration) -> Outcome {
        let mut latencies = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        latencies.sort_unstable();
        let at = |q: f64| {
            let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            Duration::from_nanos(latencies.get(index).copied().unwrap_or(0))
        };
        Outcome {
            name,
            rate: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

fn body(size: usize, epoch: Instant) -> Vec<u8> {
    let mut body = vec![b'x'; size.max(8)];
    let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    body[..8].copy_from_slice(&now.to_le_bytes());
    body
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

async fn wait_all(recorder: &Recorder, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while recorder.count() < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "consumer stalled at {}",
            recorder.count()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// The baseline: lapin used directly, doing what the RabbitMQ backend does.
async fn raw_lapin(args: &Args, amqp_url: &str) -> anyhow::Result<Outcome> {
    let exchange = unique("bench-raw");
    let queue = unique("bench-raw-q");
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let setup = connection.create_channel().await?;
    setup
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    setup
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            queue_args,
        )
        .await?;
    setup
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "bench".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let epoch = Instant::now();
    let recorder = Arc::new(Recorder::default());
    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consuming = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                recorder.record(&delivery.data, epoch);
                if delivery.ack(BasicAckOptions::default()).await.is_err() {
                    break;
                }
            }
        })
    };

    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let start = Instant::now();
    let publisher = &publisher;
    let exchange = exchange.as_str();
    futures::stream::iter(0..args.messages)
        .map(|i| async move {
            pace(args.rate, start, i).await;
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(uuid::Uuid::now_v7().to_string().into());
            let confirm = publisher
                .basic_publish(
                    exchange.into(),
                    "bench".into(),
                    BasicPublishOptions::default(),
                    &body(args.size, epoch),
                    properties,
                )
                .await?
                .await?;
            anyhow::ensure!(confirm.is_ack(), "broker nacked a publish");
            Ok(())
        })
        .buffer_unordered(args.window)
        .collect::<Vec<anyhow::Result<()>>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    wait_all(&recorder, args.messages).await?;
    let elapsed = start.elapsed();
    consuming.abort();
    // Close the consumer before deleting its queue: otherwise the broker's cancel
    // notification crosses lapin's own cancel and lapin closes the connection.
    let _ = consumer_channel.close(200, "done".into()).await;
    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    setup
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(recorder.outcome("raw lapin", elapsed))
}

/// The same traffic through an `EventBus`.
async fn through_bus(
    name: &'static str,
    bus: Arc<dyn EventBus>,
    args: &Args,
    group: &str,
) -> anyhow::Result<Outcome> {
    let epoch = Instant::now();
    let recorder = Arc::new(Recorder::default());
    let subscriber = bus
        .subscribe(Subscription::new(group, "bench").with_prefetch(args.prefetch))
        .await?;
    let consuming = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            subscriber
                .for_each_concurrent(usize::from(u16::MAX), |delivery| {
                    let recorder = recorder.clone();
                    async move {
                        if let Ok(delivery) = delivery {
                            recorder.record(&delivery.message.body, epoch);
                            let _ = delivery.ack().await;
                        }
                    }
                })
                .await;
        })
    };
    let start = Instant::now();
    let bus_ref = &bus;
    futures::stream::iter(0..args.messages)
        .map(|i| async move {
            pace(args.rate, start, i).await;
            bus_ref
                .publish(Message::new("bench", body(args.size, epoch)))
                .await
        })
        .buffer_unordered(args.window)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    wait_all(&recorder, args.messages).await?;
    let elapsed = start.elapsed();
    consuming.abort();
    Ok(recorder.outcome(name, elapsed))
}

async fn bus_rabbitmq(args: &Args, amqp_url: &str) -> anyhow::Result<Outcome> {
    let exchange = unique("bench-bus");
    let group = unique("bench-bus-q");
    let options = BusOptions {
        exchange: exchange.clone(),
        ..BusOptions::default()
    };
    let bus = bus::connect(amqp_url, options.clone()).await?;
    let outcome = through_bus("bus: RabbitMQ backend", bus.clone(), args, &group).await;
    bus.close().await;
    // Remove the run's topology from the broker.
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let mut queues = vec![group.clone(), format!("{group}.dead")];
    queues.extend((1..options.retry.max_attempts).map(|n| format!("{group}.retry.{n}")));
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for name in [
        exchange.clone(),
        format!("{exchange}.dlx"),
        format!("{exchange}.requeue"),
    ] {
        channel
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "done".into()).await;
    outcome
}

async fn bus_embedded(args: &Args) -> anyhow::Result<Outcome> {
    let dir = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    // The default: synchronous=FULL, an fsync per commit.
    let bus = bus::connect(&bus::default_url(dir.path()), BusOptions::default()).await?;
    let outcome = through_bus("bus: embedded (SQLite)", bus.clone(), args, "bench").await;
    bus.close().await;
    drop(bus);
    outcome
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut best: Vec<Outcome> = Vec::new();
    if args.amqp_url.is_none() {
        eprintln!(
            "no RabbitMQ (--amqp-url or FLOTILLA_TEST_AMQP_URL): measuring the embedded bus only"
        );
    }
    for round in 1..=args.rounds {
        let mut outcomes = Vec::new();
        if let Some(url) = &args.amqp_url {
            outcomes.push(raw_lapin(&args, url).await.context("raw lapin")?);
            outcomes.push(
                bus_rabbitmq(&args, url)
                    .await
                    .context("bus over RabbitMQ")?,
            );
        }
        outcomes.push(bus_embedded(&args).await.context("embedded bus")?);
        for outcome in outcomes {
            println!(
                "round {round}: {:<24} {:>8.0} msg/s  p50 {:>8.1} ms  p99 {:>8.1} ms",
                outcome.name,
                outcome.rate,
                outcome.p50.as_secs_f64() * 1e3,
                outcome.p99.as_secs_f64() * 1e3
            );
            match best.iter_mut().find(|b| b.name == outcome.name) {
                Some(b) if b.rate >= outcome.rate => {}
                Some(b) => *b = outcome,
                None => best.push(outcome),
            }
        }
    }
    // Without RabbitMQ there is no baseline; the ratio column then compares with itself.
    let raw = best
        .iter()
        .find(|b| b.name == "raw lapin")
        .or(best.first())
        .map_or(1.0, |b| b.rate);
    println!();
    println!("| contender | msgs/s | vs raw lapin | p50 latency | p99 latency |");
    println!("|---|---:|---:|---:|---:|");
    for b in &best {
        println!(
            "| {} | {:.0} | {:.2}× | {:.1} ms | {:.1} ms |",
            b.name,
            b.rate,
            b.rate / raw,
            b.p50.as_secs_f64() * 1e3,
            b.p99.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
