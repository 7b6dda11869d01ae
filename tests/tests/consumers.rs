//! Every consumer of every service, on the runner it runs on in production
//! (`bus::Runner`, crates/bus/src/handler.rs), against a real SQLite file and a real
//! PostgreSQL (`FLOTILLA_TEST_POSTGRES_URL`, a scratch database per case):
//!
//! * a first delivery is applied once and acknowledged only with its inbox record
//!   committed;
//! * a redelivery of the same message applies nothing (the handler's `apply` is not
//!   called again, and what it wrote — rows, outbox messages, the view's version, the
//!   log's append counter, the email ledger — is unchanged);
//! * a delivery whose transaction fails after `apply` is not acknowledged (a retry) and
//!   leaves neither its inbox record nor its effects, so a handler cannot have a message
//!   acknowledged without its inbox record;
//! * a delivery past its last attempt that the inbox knows is settled, not dead-lettered.
//!
//! Handlers never see the delivery or the inbox (the `Handler` trait hands them a
//! transaction and the decoded event only), so there is no way for one to acknowledge
//! a message itself: the compile-time half of the guarantee.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bus::{Attempt, Delivered, Failure, Handled, Handler, Message, Nack, Retry, Runner, Store, Tx};
use contracts::{
    blog::{BlogEvent, CommentCreated, CommentModerated, CommentStatus, PostCreated},
    media::{JobStatus, MP3, Mp3Message},
};
use sqlx::Row;
use storage::Database;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

const FIRST: Attempt = Attempt { number: 1, max: 5 };
const EXHAUSTED: Attempt = Attempt { number: 6, max: 5 };

/// A handler wrapped to count its `apply` calls and, when `fail` is set, to fail each
/// transaction after the real `apply` has written into it.
struct Probe<H> {
    inner: H,
    applied: Arc<AtomicUsize>,
    fail: bool,
}

#[derive(Debug)]
enum ProbeError<E> {
    Inner(E),
    Injected,
}

impl<E: std::fmt::Display> std::fmt::Display for ProbeError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Inner(error) => error.fmt(f),
            ProbeError::Injected => f.write_str("injected failure after apply"),
        }
    }
}

impl<E: Failure> Failure for ProbeError<E> {
    fn retry(&self) -> Retry {
        match self {
            ProbeError::Inner(error) => error.retry(),
            ProbeError::Injected => Retry::Later,
        }
    }
}

impl<H: Handler> Handler for Probe<H> {
    type Event = H::Event;
    type Error = ProbeError<H::Error>;

    fn subscription(&self) -> bus::Subscription {
        self.inner.subscription()
    }

    fn decode(&self, message: &Message) -> Result<H::Event, String> {
        self.inner.decode(message)
    }

    async fn effect(
        &self,
        event: &H::Event,
        delivered: &Delivered,
    ) -> Result<Vec<Message>, Self::Error> {
        self.inner
            .effect(event, delivered)
            .await
            .map_err(ProbeError::Inner)
    }

    // An injected failure is not a database outage worth waiting out.
    fn effect_patience(&self) -> std::time::Duration {
        if self.fail {
            std::time::Duration::ZERO
        } else {
            self.inner.effect_patience()
        }
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        event: &H::Event,
        delivered: &Delivered,
    ) -> Result<Vec<Message>, Self::Error> {
        let caused = self
            .inner
            .apply(tx, event, delivered)
            .await
            .map_err(ProbeError::Inner)?;
        if self.fail {
            return Err(ProbeError::Injected);
        }
        Ok(caused)
    }

    // The runner's way in: the consumer's own, with the statements it leaves for the end.
    async fn apply_with_last(
        &self,
        tx: &mut Tx,
        last: &mut bus::Statements,
        event: &H::Event,
        delivered: &Delivered,
    ) -> Result<Vec<Message>, Self::Error> {
        let caused = self
            .inner
            .apply_with_last(tx, last, event, delivered)
            .await
            .map_err(ProbeError::Inner)?;
        if self.fail {
            return Err(ProbeError::Injected);
        }
        Ok(caused)
    }

    // The statement-only path (`Database::commit_statements`) of the handlers that have
    // one: the view, comments' known posts, moderation.
    fn apply_statements(
        &self,
        last: &mut bus::Statements,
        event: &H::Event,
        delivered: &Delivered,
    ) -> Option<Result<Vec<Message>, Self::Error>> {
        let applied = self.inner.apply_statements(last, event, delivered)?;
        Some(match applied {
            Ok(_) if self.fail => Err(ProbeError::Injected),
            Ok(caused) => Ok(caused),
            Err(error) => Err(ProbeError::Inner(error)),
        })
    }

    // Applied = committed: a redelivery may run `apply` again, but its writes are undone
    // with its inbox record, and it never gets here.
    fn after_commit(&self, event: H::Event) -> impl std::future::Future<Output = ()> + Send {
        self.applied.fetch_add(1, Ordering::SeqCst);
        self.inner.after_commit(event)
    }

    async fn exhausted(
        &self,
        event: &H::Event,
        delivered: &Delivered,
    ) -> Result<Option<Vec<Message>>, Self::Error> {
        self.inner
            .exhausted(event, delivered)
            .await
            .map_err(ProbeError::Inner)
    }
}

/// One row of the table: a consumer over its database.
struct Case {
    db: Database,
    store: Store,
    /// What the consumer's effects look like now (rows, counters), as text.
    fingerprint: &'static str,
    /// For a handler with an effect outside the database (an email): the effect of the
    /// failed attempt stays (its ledger claim), and this ages the claim as the time
    /// until a retry would.
    effect_outside: Option<&'static str>,
}

async fn fingerprint(db: &Database, sql: &'static str) -> String {
    let rows = sqlx::query(sql).fetch_all(db.pool()).await.expect(sql);
    let mut parts: Vec<String> = rows
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| {
                    row.try_get::<String, _>(i)
                        .or_else(|_| row.try_get::<i64, _>(i).map(|n| n.to_string()))
                        .unwrap_or_else(|_| "?".to_owned())
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    let outbox = sqlx::query("SELECT COUNT(*) FROM bus_outbox")
        .fetch_one(db.pool())
        .await
        .expect("outbox count")
        .try_get::<i64, _>(0)
        .expect("count");
    parts.push(format!("outbox={outbox}"));
    parts.join(";")
}

async fn inbox_rows(db: &Database, group: &str, message_id: &str) -> i64 {
    sqlx::query(db.sql("SELECT COUNT(*) FROM bus_inbox WHERE consumer = ? AND message_id = ?"))
        .bind(group)
        .bind(message_id)
        .fetch_one(db.pool())
        .await
        .expect("inbox count")
        .try_get::<i64, _>(0)
        .expect("count")
}

/// The four checks of the module docs for the handler `make()` builds, on `case`.
async fn exercise<H: Handler>(name: &str, case: Case, make: impl Fn() -> H, message: Message) {
    let group = make().subscription().group;
    let before = fingerprint(&case.db, case.fingerprint).await;

    // A transaction that fails after apply: retried, nothing of it kept.
    let failing = Runner::new(
        case.store.clone(),
        Probe {
            inner: make(),
            applied: Arc::default(),
            fail: true,
        },
    );
    let outcome = failing.handle(&message, FIRST).await;
    assert!(
        matches!(outcome, Err(Nack::Retry(_))),
        "{name}: {outcome:?}"
    );
    assert_eq!(
        inbox_rows(&case.db, &group, &message.id).await,
        0,
        "{name}: no inbox record without the commit"
    );
    match case.effect_outside {
        None => assert_eq!(
            fingerprint(&case.db, case.fingerprint).await,
            before,
            "{name}: the failed transaction left nothing"
        ),
        Some(age) => {
            sqlx::query(age).execute(case.db.pool()).await.expect(age);
        }
    }

    // First delivery: applied once, recorded.
    let applied = Arc::new(AtomicUsize::new(0));
    let runner = Runner::new(
        case.store.clone(),
        Probe {
            inner: make(),
            applied: applied.clone(),
            fail: false,
        },
    );
    assert_eq!(
        runner.handle(&message, FIRST).await,
        Ok(Handled::Applied),
        "{name}"
    );
    assert_eq!(applied.load(Ordering::SeqCst), 1, "{name}");
    assert_eq!(inbox_rows(&case.db, &group, &message.id).await, 1, "{name}");
    let after_first = fingerprint(&case.db, case.fingerprint).await;
    assert_ne!(
        after_first, before,
        "{name}: the first delivery had an effect"
    );

    // Redelivered (a lost ack), and once more past its last attempt: nothing twice.
    assert_eq!(
        runner.handle(&message, FIRST).await,
        Ok(Handled::Duplicate),
        "{name}"
    );
    assert_eq!(
        runner.handle(&message, EXHAUSTED).await,
        Ok(Handled::Duplicate),
        "{name}: settled by the inbox"
    );
    assert_eq!(applied.load(Ordering::SeqCst), 1, "{name}: applied once");
    assert_eq!(inbox_rows(&case.db, &group, &message.id).await, 1, "{name}");
    assert_eq!(
        fingerprint(&case.db, case.fingerprint).await,
        after_first,
        "{name}: the redeliveries changed nothing"
    );
}

/// The service databases of one backend: a file in `dir`, or a scratch database on the
/// server.
struct Backend {
    dir: tempfile::TempDir,
    server: Option<String>,
    scratch: Vec<storage::scratch::ScratchDatabase>,
    bus: Arc<dyn bus::EventBus>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Backend {
    async fn new(server: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = bus::connect(&bus::default_url(dir.path()), bus::BusOptions::default())
            .await
            .expect("embedded bus");
        Self {
            dir,
            server,
            scratch: Vec::new(),
            bus,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    async fn database(&mut self, name: &str, migrations: &[storage::Migration]) -> Database {
        let url = match &self.server {
            Some(server) => {
                let scratch = storage::scratch::ScratchDatabase::create(server)
                    .await
                    .expect("scratch database");
                let url = scratch.url().to_owned();
                self.scratch.push(scratch);
                url
            }
            None => format!("sqlite://{}", self.dir.path().join(name).display()),
        };
        let db = Database::connect(&url).await.expect("connect");
        db.migrate(name, migrations).await.expect("migrate");
        db
    }

    /// A store with an outbox whose relay publishes to the embedded bus (nothing
    /// consumes there: the rows stay for the fingerprint to count).
    async fn publisher(&self, name: &str, db: &Database) -> bus::OutboxPublisher {
        bus::OutboxPublisher::start(
            name,
            db,
            self.bus.clone(),
            &self.tasks,
            self.shutdown.clone(),
        )
        .await
        .expect("outbox")
    }

    async fn store_with_outbox(&self, name: &str, db: &Database) -> Store {
        let publisher = self.publisher(name, db).await;
        Store::database(db)
            .await
            .expect("store")
            .with_outbox(publisher)
    }

    async fn finish(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        for scratch in self.scratch {
            let _ = scratch.drop_database().await;
        }
    }
}

async fn every_consumer(backend: &mut Backend) {
    // media: a job's outcome.
    let db = backend.database("media", media::jobs::MIGRATIONS).await;
    let jobs = media::jobs::JobStore::new(db.clone());
    let mut tx = db.begin().await.expect("begin");
    jobs.insert(
        &mut tx,
        &media::jobs::NewJob {
            job_id: "job-1",
            owner_id: "u1",
            owner_email: "ada@example.com",
            video_fid: "video-job-1",
            filename: "clip.mp4",
            size_bytes: 10,
        },
    )
    .await
    .expect("job");
    tx.commit().await.expect("commit");
    let (changes, _) = tokio::sync::broadcast::channel(16);
    let finished = Mp3Message {
        video_fid: "video-job-1".into(),
        mp3_fid: Some("mp3-job-1".into()),
        username: "ada@example.com".into(),
        job_id: "job-1".into(),
        status: JobStatus::Done,
        error: None,
        duration_secs: Some(1.0),
        filename: Some("clip.mp4".into()),
    };
    let case = Case {
        store: Store::database(&db).await.expect("store"),
        db,
        fingerprint: "SELECT id, status FROM media_jobs",
        effect_outside: None,
    };
    exercise(
        "media",
        case,
        || media::events::JobEvents {
            jobs: jobs.clone(),
            changes: changes.clone(),
        },
        Message::json(MP3, &finished).expect("mp3"),
    )
    .await;

    // moderation: a comment's decision, into the outbox.
    let db = backend.database("moderation", &[]).await;
    let case = Case {
        store: backend.store_with_outbox("moderation", &db).await,
        db,
        fingerprint: "SELECT routing_key FROM bus_outbox",
        effect_outside: None,
    };
    let created = BlogEvent::CommentCreated(CommentCreated {
        id: "c1".into(),
        content: "an orange".into(),
        post_id: "p1".into(),
        status: CommentStatus::Pending,
    });
    exercise(
        "moderation",
        case,
        || moderation::events::Moderation {
            moderator: moderation::Moderator::new(&["orange"]),
        },
        Message::from(&created),
    )
    .await;

    // comments: a post learned, then a decision applied (causing CommentUpdated).
    let db = backend
        .database("comments", comments::store::MIGRATIONS)
        .await;
    let publisher = backend.publisher("comments", &db).await;
    let store = Store::database(&db)
        .await
        .expect("store")
        .with_outbox(publisher.clone());
    let comment_store = comments::CommentStore::new(db.clone(), publisher);
    let learned = Arc::new(tokio::sync::Notify::new());
    let make = || comments::events::CommentEvents {
        store: comment_store.clone(),
        post_learned: learned.clone(),
        // Posts from the bus (and pushes), as without an event log.
        posts_from_log: false,
    };
    let post = BlogEvent::PostCreated(PostCreated {
        id: "p1".into(),
        title: "Hello".into(),
    });
    let case = Case {
        store: store.clone(),
        db: db.clone(),
        fingerprint: "SELECT id FROM comments_known_posts",
        effect_outside: None,
    };
    exercise("comments/PostCreated", case, make, Message::from(&post)).await;
    let comment = comment_store
        .create(
            "p1",
            contracts::blog::CommentText::parse("an orange".to_owned()).expect("a comment"),
        )
        .await
        .expect("comment")
        .pop()
        .expect("the new comment");
    let moderated = BlogEvent::CommentModerated(CommentModerated {
        id: comment.id.clone(),
        post_id: "p1".into(),
        status: CommentStatus::Rejected,
        content: comment.content.clone(),
    });
    let case = Case {
        store,
        db,
        fingerprint: "SELECT id, status FROM comments",
        effect_outside: None,
    };
    exercise(
        "comments/CommentModerated",
        case,
        make,
        Message::from(&moderated),
    )
    .await;

    // query: the view, whose version counts every apply.
    let db = backend.database("query-base", &[]).await;
    let view = query::store::ViewStore::open(db.clone(), db.clone())
        .await
        .expect("view");
    let (changes, _) = tokio::sync::broadcast::channel(16);
    let case = Case {
        store: Store::database(&db).await.expect("store"),
        db,
        fingerprint: "SELECT id, title FROM query_posts UNION ALL SELECT 'version', CAST(version AS VARCHAR(20)) FROM query_state",
        effect_outside: None,
    };
    exercise(
        "query",
        case,
        || query::ViewEvents {
            store: view.clone(),
            changes: changes.clone(),
        },
        Message::from(&post),
    )
    .await;

    // event-bus: the log, whose writer row counts every append attempt.
    let db = backend
        .database("event-bus", event_bus::log::MIGRATIONS)
        .await;
    let log = event_bus::log::EventLog::new(db.clone());
    let case = Case {
        store: Store::database(&db).await.expect("store"),
        db,
        fingerprint: "SELECT message_id FROM event_log UNION ALL SELECT CAST(appends AS VARCHAR(20)) FROM event_log_writer",
        effect_outside: None,
    };
    exercise(
        "event-bus",
        case,
        || event_bus::LogEvents { log: log.clone() },
        Message::from(&post),
    )
    .await;

    // notification: the email, once (the ledger's attempts and state; the mail file).
    let db = backend
        .database("notification", notification::ledger::MIGRATIONS)
        .await;
    let mail = backend.dir.path().join("mail");
    let sender = notification::Sender::new(None, &mail).expect("file sender");
    let case = Case {
        store: Store::database(&db).await.expect("store"),
        db: db.clone(),
        fingerprint: "SELECT job_id, state, CAST(attempts AS VARCHAR(20)) FROM notification_emails",
        effect_outside: Some("UPDATE notification_emails SET updated_at = 0"),
    };
    exercise(
        "notification",
        case,
        || notification::Notifier {
            ledger: notification::Ledger::new(db.clone()),
            sender: sender.clone(),
            from: "Flotilla <noreply@flotilla.invalid>".parse().expect("from"),
            public_url: "https://flotilla.example".into(),
        },
        Message::json(MP3, &finished).expect("mp3"),
    )
    .await;
    assert_eq!(emails(&mail), 1, "one email file");
}

fn emails(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0)
}

async fn on(server: Option<String>) {
    let mut backend = Backend::new(server).await;
    every_consumer(&mut backend).await;
    backend.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_consumer_applies_once_and_acks_only_with_its_inbox_record_on_sqlite() {
    on(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_consumer_applies_once_and_acks_only_with_its_inbox_record_on_postgres() {
    let Some(server) = test_support::real_server_url("FLOTILLA_TEST_POSTGRES_URL") else {
        return;
    };
    on(Some(server)).await;
}

/// The one number `sql` selects (an `INTEGER` or a PostgreSQL `int4`).
async fn scalar(db: &Database, sql: &'static str) -> i64 {
    let row = sqlx::query(sql).fetch_one(db.pool()).await.expect(sql);
    row.try_get::<i64, _>(0)
        .or_else(|_| row.try_get::<i32, _>(0).map(i64::from))
        .expect(sql)
}

/// Publishes `messages` in one transaction once the consumer has bound its group
/// (until then the bus refuses them as unroutable; at most 10 s).
async fn publish_once_bound(backend: &Backend, messages: Vec<Message>) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Err(error) = backend.bus.publish_all(messages.clone()).await {
        assert!(tokio::time::Instant::now() < deadline, "publish: {error}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits (at most 30 s) until each of the `counts` queries selects `count`.
async fn counts_reach<const N: usize>(db: &Database, counts: [&'static str; N], count: i64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut now = Vec::with_capacity(N);
        for sql in counts {
            now.push(scalar(db, sql).await);
        }
        if now.iter().all(|&n| n == count) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now:?} of {count} for {counts:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The event log's consumer ([`Handler::batched`]) records what arrives at once in
/// batches — one lock-row update for many deliveries — each message once, in causal
/// order though every comment is published before its post; a message applied before
/// it is delivered is a duplicate and the others of its batch are still recorded.
async fn log_burst(server: Option<String>) {
    let mut backend = Backend::new(server).await;
    let db = backend
        .database("event-bus", event_bus::log::MIGRATIONS)
        .await;
    let log = event_bus::log::EventLog::new(db.clone());
    let runner = Arc::new(Runner::new(
        Store::database(&db).await.expect("store"),
        event_bus::LogEvents { log: log.clone() },
    ));
    let burst = |from: usize, to: usize| -> Vec<Message> {
        (from..to)
            .flat_map(|i| {
                let post = format!("p{i}");
                [
                    Message::from(&BlogEvent::CommentCreated(CommentCreated {
                        id: format!("c{i}"),
                        post_id: post.clone(),
                        content: "hello".into(),
                        status: CommentStatus::Pending,
                    })),
                    Message::from(&BlogEvent::PostCreated(PostCreated {
                        id: post,
                        title: "t".into(),
                    })),
                ]
            })
            .collect()
    };
    let recorded = async |count: i64| {
        counts_reach(
            &db,
            [
                "SELECT COUNT(*) FROM event_log",
                "SELECT COUNT(*) FROM bus_inbox WHERE consumer = 'event-bus'",
            ],
            count,
        )
        .await;
    };

    // A burst of 200 deliveries, published in one transaction once the consumer has
    // bound its group (until then the bus refuses them as unroutable).
    let _health = runner.clone().serve(
        backend.bus.clone(),
        &backend.tasks,
        backend.shutdown.clone(),
    );
    let locks_before = scalar(&db, "SELECT appends FROM event_log_writer").await;
    publish_once_bound(&backend, burst(0, 100)).await;
    recorded(200).await;
    let locks = scalar(&db, "SELECT appends FROM event_log_writer").await - locks_before;
    assert!(
        locks < 100,
        "200 deliveries took the lock {locks} times: not batched"
    );

    // Then one applied before it is delivered, among new ones.
    let mut second = burst(100, 110);
    let early = second[1].clone();
    assert_eq!(runner.handle(&early, FIRST).await, Ok(Handled::Applied));
    second.push(early.clone());
    backend.bus.publish_all(second).await.expect("publish");
    recorded(220).await;

    assert_eq!(log.parked().await.expect("parked"), 0);
    let page = log.read_page(0, 1000, 1 << 20).await.expect("page");
    let mut posts = std::collections::HashMap::new();
    for event in &page.events {
        let data: serde_json::Value = serde_json::from_str(event.data.get()).expect("data");
        match event.event_type.as_str() {
            "PostCreated" => {
                posts.insert(data["id"].as_str().expect("id").to_owned(), event.seq);
            }
            _ => {
                let post = data["postId"].as_str().expect("postId");
                assert!(
                    posts.contains_key(post),
                    "comment {} (seq {}) before its post",
                    data["id"],
                    event.seq
                );
            }
        }
    }
    assert_eq!(posts.len(), 110, "every post once");
    backend.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_log_records_a_burst_in_batches_once_each_on_sqlite() {
    log_burst(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_log_records_a_burst_in_batches_once_each_on_postgres() {
    let Some(server) = test_support::real_server_url("FLOTILLA_TEST_POSTGRES_URL") else {
        return;
    };
    log_burst(Some(server)).await;
}

/// A consumer whose handler applies by statements alone (the view) handles the
/// deliveries that come together in one write (`Runner::handle_many`): 200 posts
/// published at once are each applied once; a message applied before it is delivered
/// fails its batch's write, and that batch goes one by one — a duplicate for it,
/// applied for the others. (What handling them together saves is measured in
/// BENCHMARKS.md, not here.)
async fn view_burst(server: Option<String>) {
    let mut backend = Backend::new(server).await;
    let db = backend.database("query-burst", &[]).await;
    let view = query::store::ViewStore::open(db.clone(), db.clone())
        .await
        .expect("view");
    let (changes, _) = tokio::sync::broadcast::channel(16);
    let runner = Arc::new(Runner::new(
        Store::database(&db).await.expect("store"),
        query::ViewEvents {
            store: view,
            changes,
        },
    ));
    let posts = |from: usize, to: usize| -> Vec<Message> {
        (from..to)
            .map(|i| {
                Message::from(&BlogEvent::PostCreated(PostCreated {
                    id: format!("p{i}"),
                    title: "t".into(),
                }))
            })
            .collect()
    };
    let applied = async |count: i64| {
        counts_reach(
            &db,
            [
                "SELECT COUNT(*) FROM query_posts",
                "SELECT COUNT(*) FROM bus_inbox WHERE consumer = 'query'",
            ],
            count,
        )
        .await;
    };

    let _health = runner.clone().serve(
        backend.bus.clone(),
        &backend.tasks,
        backend.shutdown.clone(),
    );
    publish_once_bound(&backend, posts(0, 200)).await;
    applied(200).await;
    // One applied before it is delivered, among new ones.
    let mut second = posts(200, 220);
    let early = second[7].clone();
    assert_eq!(runner.handle(&early, FIRST).await, Ok(Handled::Applied));
    second.push(early);
    backend.bus.publish_all(second).await.expect("publish");
    applied(220).await;
    backend.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_view_applies_a_burst_and_a_duplicate_among_it_once_each_on_sqlite() {
    view_burst(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_view_applies_a_burst_and_a_duplicate_among_it_once_each_on_postgres() {
    let Some(server) = test_support::real_server_url("FLOTILLA_TEST_POSTGRES_URL") else {
        return;
    };
    view_burst(Some(server)).await;
}
