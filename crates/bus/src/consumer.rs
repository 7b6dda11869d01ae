//! A handler loop over a subscription: bounded concurrency, explicit settlement, and a
//! clean stop on shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{Attempt, BusError, Delivery, EventBus, Message, Nack, Subscription};

/// Runs a handler for every delivery of one subscription.
///
/// `Ok(())` acks; `Err(Nack::Retry(_))` retries with backoff (dead-lettered after the
/// last attempt); `Err(Nack::Reject(_))` dead-letters at once. A handler that panics
/// leaves its delivery unsettled, so it is redelivered (and dead-lettered if it keeps
/// crashing) — the consumer itself keeps running. Delivery is at least once: services
/// consume through a [`crate::Runner`], which makes a handler's effects idempotent with
/// the [`crate::Inbox`].
#[derive(educe::Educe)]
#[educe(Debug)]
pub struct Consumer {
    #[educe(Debug(ignore))]
    bus: Arc<dyn EventBus>,
    subscription: Subscription,
    concurrency: usize,
    #[educe(Debug(ignore))]
    health: ConsumerHealth,
}

impl Consumer {
    pub fn new(bus: Arc<dyn EventBus>, subscription: Subscription) -> Self {
        Self {
            bus,
            subscription,
            concurrency: 1,
            health: ConsumerHealth::default(),
        }
    }

    /// How many deliveries are handled at once (default 1: in order).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// This consumer's readiness: add it to the service's (see [`ConsumerHealth`]).
    pub fn health(&self) -> ConsumerHealth {
        self.health.clone()
    }

    /// Spawns the loop; it ends, after the handlers in progress finish, when `shutdown`
    /// is cancelled.
    pub fn run<F, Fut>(self, shutdown: CancellationToken, handler: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Nack>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.run_attempts(shutdown, move |message, attempt| {
            let handler = handler.clone();
            async move {
                if attempt.is_exhausted() {
                    return Err(Nack::Reject(format!(
                        "its handler never finished: the consumer stopped during each of its {} attempts",
                        attempt.max
                    )));
                }
                handler(message).await
            }
        })
    }

    /// As [`Consumer::run`], and the handler also learns which [`Attempt`] this is, so
    /// that on the last one — or once more, [`Attempt::is_exhausted`], after the consumer
    /// died during the last one — it can settle the matter itself (record a failure, tell
    /// the user) rather than return a retry the bus would dead-letter.
    pub fn run_attempts<F, Fut>(
        self,
        shutdown: CancellationToken,
        handler: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Message, Attempt) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Nack>> + Send + 'static,
    {
        let group = self.subscription.group.clone();
        tokio::spawn(self.consume(shutdown, 1, move |batch, slot, running| {
            for delivery in batch {
                let group = group.clone();
                // The handler runs in the message's trace (see `crate::trace`).
                let span = message_span(&group, &delivery);
                let traceparent =
                    crate::trace::for_delivery(&span, delivery.message.traceparent());
                if let Some(trace_id) = crate::trace::trace_id(&traceparent) {
                    span.record("trace_id", trace_id);
                }
                let handled = crate::trace::scope(
                    traceparent.into(),
                    handler(delivery.message.clone(), delivery.attempt()),
                );
                let slot = slot.clone();
                running.spawn(
                    async move {
                        let _slot = slot;
                        let id = delivery.message.id.clone();
                        let settled = match handled.await {
                            Ok(()) => delivery.ack().await,
                            Err(nack) => {
                                tracing::warn!(%group, message_id = %id, ?nack, "message handling failed");
                                delivery.nack(nack).await
                            }
                        };
                        if let Err(error) = settled {
                            // Unsettled means redelivered later; the inbox makes that harmless.
                            tracing::warn!(%group, message_id = %id, %error, "cannot settle a delivery");
                        }
                    }
                    .instrument(span),
                );
            }
        }))
    }

    /// As [`Consumer::run_attempts`], but the handler gets every delivery that is ready
    /// at once (up to `most`), as one call, and answers for each in order: one task per
    /// batch instead of one per delivery, and the batch's acknowledgements sent to the
    /// bus as one request ([`Delivery::ack_all`]).
    pub fn run_batches<F, Fut>(
        self,
        shutdown: CancellationToken,
        most: usize,
        handler: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Vec<Ready>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<(), Nack>>> + Send + 'static,
    {
        let group = self.subscription.group.clone();
        tokio::spawn(self.consume(shutdown, most.max(1), move |batch, slot, running| {
            let items = batch
                .iter()
                .map(|delivery| Ready::of(&group, delivery))
                .collect();
            let handled = handler(items);
            let group = group.clone();
            running.spawn(async move {
                let _slot = slot;
                let outcomes = handled.await;
                let mut done = Vec::with_capacity(batch.len());
                let mut failed = Vec::new();
                for (delivery, outcome) in batch.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(()) => done.push(delivery),
                        Err(nack) => {
                            let id = delivery.message.id.clone();
                            tracing::warn!(%group, message_id = %id, ?nack, "message handling failed");
                            failed.push(async move { (id, delivery.nack(nack).await) });
                        }
                    }
                }
                let count = done.len();
                let (acked, nacked) = futures::future::join(
                    Delivery::ack_all(done),
                    futures::future::join_all(failed),
                )
                .await;
                if let Err(error) = acked {
                    // Unsettled means redelivered later; the inbox makes that harmless.
                    tracing::warn!(%group, deliveries = count, %error, "cannot settle deliveries");
                }
                for (id, settled) in nacked {
                    if let Err(error) = settled {
                        tracing::warn!(%group, message_id = %id, %error, "cannot settle a delivery");
                    }
                }
            });
        }))
    }

    /// The loop of every consumer: subscribes (again, with backoff, after a failure),
    /// takes a slot of `concurrency`, waits for a delivery, adds what else is ready at
    /// once up to `most`, and hands them to `dispatch` with the slot, which spawns their
    /// handling on `running`. On shutdown it waits for what is running.
    async fn consume<D>(self, shutdown: CancellationToken, most: usize, mut dispatch: D)
    where
        D: FnMut(Vec<Delivery>, Arc<OwnedSemaphorePermit>, &mut JoinSet<()>) + Send + 'static,
    {
        use futures::FutureExt as _;
        let group = self.subscription.group.clone();
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut running = JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        'subscribe: while !shutdown.is_cancelled() {
            let mut subscriber = tokio::select! {
                () = shutdown.cancelled() => break,
                subscribed = self.bus.subscribe(self.subscription.clone()) => match subscribed {
                    Ok(subscriber) => subscriber,
                    Err(error) => {
                        let permanent = matches!(error, BusError::Topology(_));
                        if permanent {
                            tracing::error!(%group, %error, "cannot subscribe; retrying");
                        } else {
                            tracing::warn!(%group, %error, "cannot subscribe; retrying");
                        }
                        self.health.set(Some(SubscriptionFailure {
                            group: group.clone(),
                            error: error.to_string(),
                            permanent,
                        }));
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
            };
            backoff = Duration::from_millis(100);
            self.health.set(None);
            loop {
                // Reap finished handlers so the set does not grow; a panic is logged.
                while let Some(done) = running.try_join_next() {
                    if let Err(error) = done {
                        tracing::error!(%group, %error, "message handler panicked; its deliveries will be redelivered");
                    }
                }
                let slot = tokio::select! {
                    () = shutdown.cancelled() => break 'subscribe,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break 'subscribe,
                    },
                };
                let first = tokio::select! {
                    () = shutdown.cancelled() => break 'subscribe,
                    next = subscriber.next() => next,
                };
                let mut batch = match first {
                    Some(Ok(delivery)) => vec![delivery],
                    Some(Err(error)) => {
                        tracing::warn!(%group, %error, "consuming failed; subscribing again");
                        tokio::time::sleep(backoff).await;
                        continue 'subscribe;
                    }
                    None => continue 'subscribe,
                };
                // What else is ready now: a lease's deliveries come together.
                let mut ended = None;
                while batch.len() < most {
                    match subscriber.next().now_or_never() {
                        Some(Some(Ok(delivery))) => batch.push(delivery),
                        Some(next) => {
                            ended = Some(next);
                            break;
                        }
                        None => break,
                    }
                }
                dispatch(batch, Arc::new(slot), &mut running);
                match ended {
                    Some(Some(Err(error))) => {
                        tracing::warn!(%group, %error, "consuming failed; subscribing again");
                        tokio::time::sleep(backoff).await;
                        continue 'subscribe;
                    }
                    Some(_) => continue 'subscribe,
                    None => {}
                }
            }
        }
        while let Some(done) = running.join_next().await {
            if let Err(error) = done {
                tracing::error!(%group, %error, "message handler panicked during shutdown");
            }
        }
    }
}

/// A delivery handed to a batch handler ([`Consumer::run_batches`]): the message, its
/// attempt, and the `message` span and trace context its handling runs in — the same
/// as one handled alone gets (see `crate::trace`).
pub struct Ready {
    pub message: Message,
    pub attempt: Attempt,
    pub span: tracing::Span,
    pub traceparent: Arc<str>,
}

impl Ready {
    fn of(group: &str, delivery: &crate::Delivery) -> Self {
        let span = message_span(group, delivery);
        let traceparent = crate::trace::for_delivery(&span, delivery.message.traceparent());
        if let Some(trace_id) = crate::trace::trace_id(&traceparent) {
            span.record("trace_id", trace_id);
        }
        Self {
            message: delivery.message.clone(),
            attempt: delivery.attempt(),
            span,
            traceparent: traceparent.into(),
        }
    }

    /// `work` in this delivery's span and trace context.
    pub fn within<F: Future>(&self, work: F) -> impl Future<Output = F::Output> {
        crate::trace::scope(self.traceparent.clone(), work).instrument(self.span.clone())
    }
}

/// The span in which `group` handles a message it did not take from the bus (the query
/// service folding the event log): the `message` span a delivery of it would get, a
/// child of `traceparent` (the context the message was published in) in the exported
/// trace. Returns the span and its own trace context.
pub fn processing_span(
    group: &str,
    routing_key: &str,
    message_id: &str,
    traceparent: Option<&str>,
) -> (tracing::Span, Arc<str>) {
    let span = tracing::info_span!(
        "message",
        %group,
        %routing_key,
        %message_id,
        attempt = 1,
        trace_id = tracing::field::Empty,
        otel.name = %format_args!("{routing_key} process"),
        otel.kind = "consumer",
    );
    let own = crate::trace::for_delivery(&span, traceparent);
    if let Some(trace_id) = crate::trace::trace_id(&own) {
        span.record("trace_id", trace_id);
    }
    (span, own.into())
}

/// The span a delivery is handled in.
fn message_span(group: &str, delivery: &crate::Delivery) -> tracing::Span {
    tracing::info_span!(
        "message",
        %group,
        routing_key = %delivery.message.routing_key,
        message_id = %delivery.message.id,
        attempt = delivery.attempt,
        trace_id = tracing::field::Empty,
        otel.name = %format_args!("{} process", delivery.message.routing_key),
        otel.kind = "consumer",
    )
}

/// A consumer group of this process that cannot subscribe right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionFailure {
    pub group: String,
    pub error: String,
    /// It will not pass by itself (the broker holds the group's queue declared
    /// differently, [`BusError::Topology`]); otherwise the broker is away, say.
    pub permanent: bool,
}

/// A consumer's readiness, by handle: whether its last attempt to subscribe failed.
/// A service adds it to its readiness ([`ConsumerHealth::check`] as the `consumers`
/// check); the [`Consumer`] sets and clears it.
#[derive(Debug, Clone, Default)]
pub struct ConsumerHealth {
    failure: Arc<std::sync::Mutex<Option<SubscriptionFailure>>>,
}

impl ConsumerHealth {
    fn set(&self, failure: Option<SubscriptionFailure>) {
        if let Ok(mut slot) = self.failure.lock() {
            *slot = failure;
        }
    }

    /// Why the consumer cannot subscribe right now, if it cannot.
    pub fn failure(&self) -> Option<SubscriptionFailure> {
        self.failure.lock().ok().and_then(|slot| slot.clone())
    }

    /// `Err` when the consumer cannot subscribe for a reason that will not pass by
    /// itself ([`SubscriptionFailure::permanent`]): it would never consume, so the
    /// service is not ready. A broker that is away is the degraded `broker` check's.
    pub fn check(&self) -> Result<(), String> {
        match self.failure() {
            Some(failure) if failure.permanent => {
                Err(format!("{}: {}", failure.group, failure.error))
            }
            _ => Ok(()),
        }
    }

    /// [`check`](Self::check) as a readiness check function.
    pub fn check_fn(
        &self,
    ) -> impl Fn() -> futures::future::Ready<Result<(), String>> + Send + Sync + 'static {
        let health = self.clone();
        move || futures::future::ready(health.check())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::embedded::{EmbeddedBus, Synchronous};

    async fn bus(dir: &tempfile::TempDir) -> Arc<dyn EventBus> {
        Arc::new(
            EmbeddedBus::open(
                &dir.path().join("bus.db"),
                crate::BusOptions::default(),
                Synchronous::Full,
            )
            .await
            .expect("open"),
        )
    }

    /// Publishes `n` messages `m0`… once the group is bound (until then they are
    /// unroutable), in one transaction: they are ready together.
    async fn burst(bus: &Arc<dyn EventBus>, n: usize) {
        let messages: Vec<Message> = (0..n).map(|i| Message::new("k", format!("m{i}"))).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Err(error) = bus.publish_all(messages.clone()).await {
            assert!(tokio::time::Instant::now() < deadline, "publish: {error}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn until<F: Future<Output = bool>>(what: &str, done: impl Fn() -> F) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done().await {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A consumer of concurrency one (media's) handles a burst one delivery at a time,
    /// in the order published, though a lease hands it many at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_of_one_handles_a_burst_in_order_one_at_a_time() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bus = bus(&dir).await;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let shutdown = CancellationToken::new();
        let task = Consumer::new(bus.clone(), Subscription::new("g", "k").with_prefetch(64)).run(
            shutdown.clone(),
            {
                let (seen, running, most) = (seen.clone(), running.clone(), most.clone());
                move |message| {
                    let (seen, running, most) = (seen.clone(), running.clone(), most.clone());
                    async move {
                        most.fetch_max(
                            running.fetch_add(1, Ordering::SeqCst) + 1,
                            Ordering::SeqCst,
                        );
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        if let Ok(mut seen) = seen.lock() {
                            seen.push(String::from_utf8_lossy(&message.body).into_owned());
                        }
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    }
                }
            },
        );
        burst(&bus, 100).await;
        until("every delivery handled", || async {
            seen.lock().map_or(0, |s| s.len()) >= 100
        })
        .await;
        shutdown.cancel();
        task.await.expect("the consumer ends");
        let expected: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
        assert_eq!(
            *seen.lock().expect("seen"),
            expected,
            "in the order published"
        );
        assert_eq!(most.load(Ordering::SeqCst), 1, "one at a time");
    }

    /// A batch consumer gets what is ready at once in one call (more than one delivery
    /// per call for a burst, never more than `most`), each delivery once, and its
    /// acknowledgements settle them all: nothing is delivered again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_consumer_gets_a_burst_in_batches_and_settles_each_once() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bus = bus(&dir).await;
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let handled = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let task = Consumer::new(bus.clone(), Subscription::new("g", "k").with_prefetch(128))
            .concurrency(4)
            .run_batches(shutdown.clone(), 16, {
                let (sizes, handled) = (sizes.clone(), handled.clone());
                move |items: Vec<Ready>| {
                    let (sizes, handled) = (sizes.clone(), handled.clone());
                    async move {
                        if let Ok(mut sizes) = sizes.lock() {
                            sizes.push(items.len());
                        }
                        handled.fetch_add(items.len(), Ordering::SeqCst);
                        items.iter().map(|_| Ok(())).collect()
                    }
                }
            });
        burst(&bus, 200).await;
        until("every delivery handled", || async {
            handled.load(Ordering::SeqCst) >= 200
        })
        .await;
        until("every delivery settled", || async {
            bus.group_stats("g")
                .await
                .is_ok_and(|stats| stats.depth == Some(0))
        })
        .await;
        shutdown.cancel();
        task.await.expect("the consumer ends");
        let sizes = sizes.lock().expect("sizes").clone();
        assert_eq!(
            handled.load(Ordering::SeqCst),
            200,
            "each delivery once: {sizes:?}"
        );
        assert!(sizes.iter().all(|&n| (1..=16).contains(&n)), "{sizes:?}");
        assert!(sizes.len() < 200, "one call per delivery: {sizes:?}");
    }
}
