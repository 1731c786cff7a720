//! The worker against the real broker and PostgreSQL: dead letters with
//! reasons, redeliveries, the stock guard, a kill -9 mid-drain, and
//! PostgreSQL going away; and (`admin`) the operators' commands of its
//! binary.

#![allow(clippy::unwrap_used)]

mod admin;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::ids::{CampaignId, CouponId, UserId};
use common::message::{
    CouponIssued, DLQ_REASON_HEADER, DLQ_SOURCE_OFFSET_HEADER, DLQ_TRUNCATED_HEADER,
};
use common::settings::Settings;
use common::testkit::*;
use issuer_worker::startup::Application;
use ngrinder_equivalent::scrape::Scrape;
use sea_orm::{ConnectionTrait, TransactionTrait};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

static MIGRATED: OnceCell<()> = OnceCell::const_new();

async fn settings() -> Settings {
    let s = isolated_settings();
    common::telemetry::init(&s.log, "tests");
    MIGRATED
        .get_or_init(|| async {
            issuer_worker::migration::migrate(&db().await)
                .await
                .unwrap();
        })
        .await;
    common::kafka::ensure_topics(&s.kafka).await.unwrap();
    s
}

/// A PostgreSQL of the test's own (one it may stop or freeze), migrated,
/// with `settings` pointing at it.
async fn own_postgres(settings: &mut Settings) -> (OwnPostgres, sea_orm::DatabaseConnection) {
    let pg = OwnPostgres::start();
    settings.database.url = SecretString::from(pg.url());
    let db = db_at(&pg.url()).await;
    issuer_worker::migration::migrate(&db).await.unwrap();
    (pg, db)
}

fn message(campaign: CampaignId, user: &str) -> CouponIssued {
    CouponIssued::new(
        CouponId::new(),
        campaign,
        UserId::parse(user).unwrap(),
        Utc::now(),
        "sync",
    )
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    http_port: u16,
}

async fn start(settings: &Settings) -> Running {
    let app = Application::build(settings.clone()).await.unwrap();
    let http_port = app.http_port();
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    Running {
        stop,
        task,
        http_port,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest_get(self.http_port, "/metrics").await;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }
}

/// A bare HTTP/1.0 GET (the worker's ops endpoints are tiny): the body.
async fn reqwest_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_owned(),
        None => response,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_messages_go_to_the_dlq_with_a_reason_and_the_partition_keeps_flowing() {
    let settings = settings().await;
    let db = db().await;
    let c = insert_campaign(&db, "worker test", 10).await;
    let topic = IssueTopic::new(&settings.kafka);
    // One partition: the poison sits between two good ones.
    let first = message(c, "first");
    topic.send_to_first(&first.key(), &first.encode()).await;
    topic.send_to_first("poison", b"{not json").await;
    topic
        .send_to_first("poison", br#"{"v": 9, "hello": "world"}"#)
        .await;
    let unknown = message(CampaignId::new(), "nobody-knows");
    topic.send_to_first(&unknown.key(), &unknown.encode()).await;
    let second = message(c, "second");
    topic.send_to_first(&second.key(), &second.encode()).await;

    let worker = start(&settings).await;
    wait_for_rows(&db, &c, 2, Duration::from_secs(30)).await;
    let (letters, reasons) = dead_letters(&settings.kafka, 3).await;
    assert_eq!(reasons, ["unknown_campaign", "unparseable", "unparseable"]);
    let raw = letters
        .iter()
        .find(|l| l.payload.as_deref() == Some(b"{not json".as_slice()))
        .expect("the original bytes are kept");
    assert!(raw.header(DLQ_SOURCE_OFFSET_HEADER).is_some());
    assert_eq!(
        worker
            .metric("worker_dead_lettered_total{reason=\"unparseable\"}")
            .await,
        2.0
    );
    worker.stop().await;
}

/// Near `message.max.bytes` the original fits the issue topic, but not the
/// dead-letter topic once the `dlq.*` headers are added: a truncated copy
/// goes instead, and the partition behind it keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_letter_too_large_for_the_dlq_goes_truncated_and_its_partition_flows() {
    let settings = settings().await;
    let db = db().await;
    let c = insert_campaign(&db, "worker test", 10).await;
    let topic = IssueTopic::new(&settings.kafka);
    // The producer's default message.max.bytes (1,000,000) counts key,
    // payload, headers and the record's overhead.
    let garbage = vec![b'x'; 999_900];
    topic.send_to_first("garbage", &garbage).await;
    let after = message(c, "after");
    topic.send_to_first(&after.key(), &after.encode()).await;

    let worker = start(&settings).await;
    wait_for_rows(&db, &c, 1, Duration::from_secs(30)).await;
    let (letters, reasons) = dead_letters(&settings.kafka, 1).await;
    assert_eq!(reasons, ["unparseable"]);
    let letter = &letters[0];
    assert_eq!(letter.header(DLQ_TRUNCATED_HEADER), Some("999907"));
    assert_eq!(letter.header(DLQ_SOURCE_OFFSET_HEADER), Some("0"));
    assert_eq!(
        letter.payload.as_deref().map(<[u8]>::len),
        Some(issuer_worker::dlq::TRUNCATED_BYTES)
    );
    assert_eq!(worker.metric("worker_truncated_letters_total").await, 1.0);
    worker.stop().await;
}

/// A dead-letter topic that refuses every letter (here: it does not exist,
/// and topics are not created on demand) holds a partition for
/// `worker.dead_letter_patience_ms` at most: the letter is then parked in
/// PostgreSQL, whole, and the messages behind it are persisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dlq_that_refuses_letters_parks_them_and_the_partition_flows() {
    let mut settings = settings().await;
    settings.kafka.dlq_topic = format!("{}.missing", settings.kafka.dlq_topic);
    let db = db().await;
    let c = insert_campaign(&db, "worker test", 10).await;
    let topic = IssueTopic::new(&settings.kafka);
    topic.send_to_first("poison", b"{not json").await;
    let worker = start(&settings).await;
    // The batch holding the poison persists its other messages before it
    // dead-letters; what is stalled is the partition behind it.
    let behind = message(c, "behind");
    let joining = Instant::now();
    while worker.metric("worker_messages_consumed_total").await < 1.0 {
        assert!(
            joining.elapsed() < Duration::from_secs(30),
            "nothing consumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    topic.send_to_first(&behind.key(), &behind.encode()).await;

    let patience = Duration::from_millis(settings.worker.dead_letter_patience_ms);
    // The patience, one more delivery timeout for the attempt under way,
    // and the retry's backoff.
    let bound = patience
        + settings.kafka.delivery_timeout()
        + Duration::from_millis(settings.worker.retry_max_ms)
        + Duration::from_secs(10);
    wait_for_rows(&db, &c, 1, bound).await;
    let waited = started.elapsed();
    assert!(
        waited >= patience - Duration::from_secs(2),
        "the partition moved on before the patience ran out: {waited:?}"
    );
    let row = db
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT reason, payload, refusal FROM parked_letters \
             WHERE source_topic = $1 AND source_partition = 0 AND source_offset = 0",
            [settings.kafka.topic.clone().into()],
        ))
        .await
        .unwrap()
        .expect("the letter is parked");
    assert_eq!(row.try_get::<String>("", "reason").unwrap(), "unparseable");
    assert_eq!(
        row.try_get::<Vec<u8>>("", "payload").unwrap(),
        b"{not json".to_vec()
    );
    assert_eq!(
        worker
            .metric("worker_parked_letters_total{reason=\"unparseable\"}")
            .await,
        1.0
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_delivered_twice_leaves_one_row_and_the_guard_keeps_the_stock() {
    let settings = settings().await;
    let db = db().await;
    let c = insert_campaign(&db, "worker test", 2).await;
    let topic = IssueTopic::new(&settings.kafka);
    // One key, so one partition and this order.
    let key = format!("{c}:ordered");
    let once = message(c, "alice");
    topic.send_raw(&key, &once.encode()).await;
    topic.send_raw(&key, &once.encode()).await; // a redelivery
    topic.send_raw(&key, &message(c, "alice").encode()).await; // another coupon id
    topic.send_raw(&key, &message(c, "bob").encode()).await;
    topic.send_raw(&key, &message(c, "carol").encode()).await; // over the stock of 2

    let worker = start(&settings).await;
    wait_for_rows(&db, &c, 2, Duration::from_secs(30)).await;
    let started = Instant::now();
    while read_topic(&settings.kafka.brokers, &settings.kafka.dlq_topic)
        .await
        .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "over_stock not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let letters = read_topic(&settings.kafka.brokers, &settings.kafka.dlq_topic).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header(DLQ_REASON_HEADER), Some("over_stock"));
    let mut users = row_users(&db, &c).await;
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    assert_eq!(persisted_column(&db, &c).await, 2);
    assert_eq!(worker.metric("worker_duplicates_total").await, 2.0);
    worker.stop().await;
}

/// `coupons.campaign_id` has no foreign key (the batch checks it under the
/// campaign's lock); the trigger that replaced it still refuses to delete
/// or renumber a campaign that has coupons, also a delete that waited for a
/// batch's lock. (A `TRUNCATE` is not tried: the shared database holds
/// every test's campaigns.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_that_has_coupons_cannot_be_deleted_or_renumbered() {
    let _settings = settings().await;
    let db = db().await;
    let c = insert_campaign(&db, "worker test", 2).await;
    db.execute_unprepared(&format!(
        "INSERT INTO coupons (id, campaign_id, user_id, issued_at) \
         VALUES ('{}', '{c}', 'alice', now())",
        CouponId::new()
    ))
    .await
    .unwrap();
    for refused in [
        format!("DELETE FROM campaigns WHERE id = '{c}'"),
        format!(
            "UPDATE campaigns SET id = '{}' WHERE id = '{c}'",
            CampaignId::new()
        ),
    ] {
        let e = db.execute_unprepared(&refused).await.unwrap_err();
        assert!(e.to_string().contains("has coupons"), "{refused}: {e}");
    }
    assert_eq!(rows(&db, &c).await, 1);
    db.execute_unprepared(&format!(
        "UPDATE campaigns SET id = id, name = 'renamed' WHERE id = '{c}'"
    ))
    .await
    .unwrap();

    // A delete that waits on a batch's lock sees the batch's rows once it
    // commits.
    let racing = insert_campaign(&db, "worker test", 2).await;
    let batch = db.begin().await.unwrap();
    batch
        .execute_unprepared(&format!(
            "SELECT id FROM campaigns WHERE id = '{racing}' FOR UPDATE; \
             INSERT INTO coupons (id, campaign_id, user_id, issued_at) \
             VALUES ('{}', '{racing}', 'bob', now()); \
             UPDATE campaigns SET persisted = persisted + 1 WHERE id = '{racing}'",
            CouponId::new()
        ))
        .await
        .unwrap();
    let deleter = db.clone();
    let delete = tokio::spawn(async move {
        deleter
            .execute_unprepared(&format!("DELETE FROM campaigns WHERE id = '{racing}'"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !delete.is_finished(),
        "the delete did not wait for the batch's lock"
    );
    batch.commit().await.unwrap();
    let e = delete.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("has coupons"), "{e}");
    assert_eq!(rows(&db, &racing).await, 1);

    db.execute_unprepared(&format!(
        "DELETE FROM coupons WHERE campaign_id IN ('{c}', '{racing}'); \
         DELETE FROM campaigns WHERE id IN ('{c}', '{racing}')"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_the_database_will_not_take_is_dead_lettered_and_the_partition_keeps_flowing() {
    let settings = settings().await;
    let db = db().await;
    let c = insert_campaign(&db, "worker test", 10).await;
    let topic = IssueTopic::new(&settings.kafka);
    let key = format!("{c}:one-partition");
    let owner = message(c, "owner");
    topic.send_raw(&key, &owner.encode()).await;
    let worker = start(&settings).await;
    wait_for_rows(&db, &c, 1, Duration::from_secs(30)).await;

    // Another user's message carrying the owner's coupon id (the row exists),
    // then a timestamp PostgreSQL cannot store (before 4713 BC), then two
    // good ones behind them on the same partition.
    let mut thief = message(c, "thief");
    thief.coupon_id = owner.coupon_id;
    let mut ancient = message(c, "ancient");
    ancient.requested_at = chrono::DateTime::from_timestamp(-300_000_000_000, 0).unwrap();
    topic.send_raw(&key, &thief.encode()).await;
    topic.send_raw(&key, &ancient.encode()).await;
    topic.send_raw(&key, &message(c, "after-1").encode()).await;
    topic.send_raw(&key, &message(c, "after-2").encode()).await;

    wait_for_rows(&db, &c, 3, Duration::from_secs(30)).await;
    let (_, reasons) = dead_letters(&settings.kafka, 2).await;
    assert_eq!(reasons, ["coupon_id_taken", "rejected_by_database"]);
    let mut users = row_users(&db, &c).await;
    users.sort();
    assert_eq!(users, ["after-1", "after-2", "owner"]);
    assert_eq!(persisted_column(&db, &c).await, 3);
    for (reason, expected) in [("coupon_id_taken", 1.0), ("rejected_by_database", 1.0)] {
        let name = format!("worker_dead_lettered_total{{reason=\"{reason}\"}}");
        assert_eq!(worker.metric(&name).await, expected, "{name}");
    }
    // Neither was taken for an outage: the partition never paused.
    assert_eq!(worker.metric("worker_db_errors_total").await, 0.0);
    worker.stop().await;
}

/// Rebuilds the gate state again and again while the worker drains a
/// backlog in small batches (committing offsets all the while): every
/// rebuilt set must hold every user, since each one is either a row or a
/// message not consumed yet at the moment of the rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_beside_a_draining_worker_misses_nobody() {
    const USERS: usize = 40_000;
    let mut settings = settings().await;
    settings.worker.batch_size = 5;
    let db = db().await;
    let c = insert_campaign(&db, "rebuild test", USERS as i64).await;
    let topic = IssueTopic::new(&settings.kafka);
    let everyone: Vec<String> = (0..USERS).map(|i| format!("u{i:05}")).collect();
    for chunk in everyone.chunks(2_000) {
        let batch: Vec<CouponIssued> = chunk.iter().map(|u| message(c, u)).collect();
        futures::future::join_all(batch.iter().map(|m| topic.send(m))).await;
    }

    // Nothing is in flight (every message above was acknowledged), so the
    // rebuild's wait for in-flight deliveries can be shorter.
    let mut tool = settings.clone();
    tool.kafka.delivery_timeout_ms = 0;
    let worker = start(&settings).await;
    let mut rebuilds = 0;
    loop {
        let report = issuer_worker::rebuild::run(&tool, &db, c, true)
            .await
            .unwrap();
        rebuilds += 1;
        let (set, count) = gate_state(&c).await;
        assert_eq!(
            set.len(),
            USERS,
            "rebuild {rebuilds} ({report:?}) lost {} users",
            USERS - set.len()
        );
        assert_eq!(set, everyone);
        assert_eq!(count, Some(USERS as i64));
        if report.rows == USERS as u64 {
            break;
        }
    }
    assert!(
        rebuilds >= 2,
        "the worker drained before the rebuilds could race it"
    );
    worker.stop().await;
}

/// `reconcile --repair` repairs both ways: a slot without a row or a
/// message (a leak) is released, and a row without a slot (a phantom) gets
/// its slot back, so that its user reads `duplicate` and the count includes
/// it; afterwards SCARD == counter == rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_repairs_leaked_slots_and_phantom_rows() {
    let settings = settings().await;
    let db = db().await;
    let c = insert_campaign(&db, "reconcile test", 10).await;
    let redis = common::redis_state::RedisClient::new(&settings.redis, None).unwrap();
    let gate = common::redis_state::Gate::new(redis.clone());
    let meta = common::redis_state::CampaignMeta {
        stock: 10,
        starts_at: Utc::now() - chrono::Duration::minutes(1),
        ends_at: None,
        closed: false,
        room: None,
    };
    common::redis_state::CampaignMetas::new(redis)
        .load(&c, &meta)
        .await
        .unwrap();
    // A slot whose request died before producing.
    let leaky = UserId::parse("leaky").unwrap();
    assert_eq!(
        gate.take(&c, &leaky, &CouponId::new()).await.unwrap(),
        common::redis_state::GateReply::Taken { waited: None }
    );
    // A row whose slot the gate lost.
    let topic = IssueTopic::new(&settings.kafka);
    topic.send(&message(c, "ghost")).await;
    let worker = start(&settings).await;
    wait_for_rows(&db, &c, 1, Duration::from_secs(30)).await;

    let report = issuer_worker::reconcile::run(&settings, &db, c, true, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!((report.leaked, report.given_back), (1, 1), "{report:?}");
    assert_eq!((report.phantoms, report.restored), (1, 1), "{report:?}");
    assert_eq!(gate_state(&c).await, (vec!["ghost".to_owned()], Some(1)));
    assert_eq!(row_users(&db, &c).await, ["ghost"]);
    worker.stop().await;
}

fn spawn_worker_process(settings: &Settings) -> Child {
    Command::new(env!("CARGO_BIN_EXE_issuer-worker"))
        .arg("run")
        .env("APP_DATABASE__URL", settings.database.url.expose_secret())
        .env("APP_KAFKA__BROKERS", &settings.kafka.brokers)
        .env("APP_KAFKA__TOPIC", &settings.kafka.topic)
        .env("APP_KAFKA__DLQ_TOPIC", &settings.kafka.dlq_topic)
        .env("APP_KAFKA__GROUP_ID", &settings.kafka.group_id)
        .env("APP_KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("APP_WORKER__BATCH_SIZE", "100")
        .env("APP_WORKER__HTTP_PORT", "0")
        .env("APP_LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_drain_and_restarted_loses_nothing_and_duplicates_nothing() {
    let settings = settings().await;
    let db = db().await;
    const N: u64 = 10_000;
    let c = insert_campaign(&db, "worker test", N as i64).await;
    let topic = IssueTopic::new(&settings.kafka);
    let sends: Vec<_> = (0..N).map(|i| message(c, &format!("user-{i}"))).collect();
    futures::future::join_all(sends.iter().map(|m| topic.send(m))).await;

    let mut child = spawn_worker_process(&settings);
    let started = Instant::now();
    while rows(&db, &c).await < N / 5 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(child.id(), "-KILL");
    child.wait().unwrap();
    let at_kill = rows(&db, &c).await;
    assert!(at_kill < N, "drained before the kill; nothing tested");

    let mut child = spawn_worker_process(&settings);
    wait_for_rows(&db, &c, N, Duration::from_secs(90)).await;
    assert_eq!(persisted_column(&db, &c).await, N as i64);
    let mut users = row_users(&db, &c).await;
    users.sort();
    users.dedup();
    assert_eq!(users.len() as u64, N);
    signal(child.id(), "-TERM");
    assert!(
        child.wait().unwrap().success(),
        "worker did not exit cleanly on SIGTERM"
    );
    assert!(
        read_topic(&settings.kafka.brokers, &settings.kafka.dlq_topic)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_postgres_is_down_the_worker_pauses_dead_letters_nothing_and_resumes() {
    let mut settings = settings().await;
    let (pg, db) = own_postgres(&mut settings).await;
    settings.database.connect_timeout_ms = 500;
    settings.worker.retry_max_ms = 500;
    let c = insert_campaign(&db, "worker test", 100).await;
    let topic = IssueTopic::new(&settings.kafka);
    let worker = start(&settings).await;

    topic.send(&message(c, "before")).await;
    wait_for_rows(&db, &c, 1, Duration::from_secs(30)).await;

    pg.set_running(false);
    for i in 0..20 {
        topic.send(&message(c, &format!("during-{i}"))).await;
    }
    let started = Instant::now();
    while worker.metric("worker_paused").await != 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "worker did not pause"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(worker.metric("worker_db_errors_total").await >= 1.0);

    pg.set_running(true);
    let db = db_at(&pg.url()).await;
    wait_for_rows(&db, &c, 21, Duration::from_secs(30)).await;
    assert_eq!(worker.metric("worker_paused").await, 0.0);
    assert!(
        read_topic(&settings.kafka.brokers, &settings.kafka.dlq_topic)
            .await
            .is_empty(),
        "an outage must not dead-letter anything"
    );
    worker.stop().await;
}

/// The worker pauses its partitions while PostgreSQL is down; a second
/// member joins meanwhile and takes some of them; PostgreSQL comes back and
/// the first worker resumes the partitions it holds; the second leaves and
/// its partitions come back to the first. They must be consumed: librdkafka
/// keeps a paused partition paused across a revoke and an assign, and the
/// worker, resumed already, never resumed them (the fault campaign's seed
/// 953359013: assigned, not paused, its lag never moving, for minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_paused_and_reassigned_in_a_rebalance_is_consumed_again() {
    let mut settings = settings().await;
    let (pg, db) = own_postgres(&mut settings).await;
    settings.database.connect_timeout_ms = 500;
    settings.worker.retry_max_ms = 500;
    let c = insert_campaign(&db, "paused through a rebalance", 1_000).await;
    let partitions = settings.kafka.partitions as f64;
    let topic = IssueTopic::new(&settings.kafka);
    let first = start(&settings).await;
    topic.send(&message(c, "before")).await;
    wait_for_rows(&db, &c, 1, Duration::from_secs(30)).await;

    pg.set_running(false);
    topic.send(&message(c, "during")).await;
    wait_for(
        Duration::from_secs(20),
        "the first worker pauses",
        || async { first.metric("worker_paused").await == 1.0 },
    )
    .await;
    let second = start(&settings).await;
    wait_for(
        Duration::from_secs(60),
        "the second member gets partitions",
        || async {
            second.metric("worker_assigned_partitions").await > 0.0
                && first.metric("worker_assigned_partitions").await < partitions
        },
    )
    .await;
    pg.set_running(true);
    let db = db_at(&pg.url()).await;
    wait_for_rows(&db, &c, 2, Duration::from_secs(30)).await;
    wait_for(
        Duration::from_secs(20),
        "the first worker resumes",
        || async { first.metric("worker_paused").await == 0.0 },
    )
    .await;

    second.stop().await;
    wait_for(
        Duration::from_secs(60),
        "the first worker gets every partition back",
        || async { first.metric("worker_assigned_partitions").await == partitions },
    )
    .await;
    for i in 0..30 {
        topic.send(&message(c, &format!("after-{i}"))).await;
    }
    wait_for_rows(&db, &c, 32, Duration::from_secs(30)).await;
    first.stop().await;
}

/// Polls `done` every 200 ms until it holds; fails after `within`.
async fn wait_for<F, Fut>(within: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// PostgreSQL stops answering without closing anything (SIGSTOP of the
/// server and its backends) for 30 s, at the production settings: the batch
/// times out instead of hanging, the worker pauses and keeps polling (so it
/// keeps its partitions), and when PostgreSQL answers again it drains
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_that_stops_answering_pauses_the_worker_which_keeps_its_partitions() {
    let mut settings = settings().await;
    let (pg, db) = own_postgres(&mut settings).await;
    let c = insert_campaign(&db, "worker test", 100).await;
    let topic = IssueTopic::new(&settings.kafka);
    let worker = start(&settings).await;
    topic.send(&message(c, "before")).await;
    wait_for_rows(&db, &c, 1, Duration::from_secs(30)).await;
    let assigned = worker.metric("worker_assigned_partitions").await;
    assert_eq!(assigned, settings.kafka.partitions as f64);

    pg.freeze(true);
    let frozen_at = Instant::now();
    for i in 0..20 {
        topic.send(&message(c, &format!("during-{i}"))).await;
    }
    let bound = Duration::from_millis(settings.worker.batch_timeout_ms) + Duration::from_secs(10);
    while worker.metric("worker_paused").await != 1.0 {
        assert!(
            frozen_at.elapsed() < bound,
            "the worker did not pause within {bound:?} of PostgreSQL freezing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while frozen_at.elapsed() < Duration::from_secs(30) {
        assert_eq!(
            worker.metric("worker_assigned_partitions").await,
            assigned,
            "the worker lost its partitions while PostgreSQL was frozen"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(worker.metric("worker_db_errors_total").await >= 1.0);

    pg.freeze(false);
    wait_for_rows(&db, &c, 21, Duration::from_secs(60)).await;
    let started = Instant::now();
    while worker.metric("worker_paused").await != 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the worker did not resume"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(worker.metric("worker_assigned_partitions").await, assigned);
    assert_eq!(persisted_column(&db, &c).await, 21);
    assert!(
        read_topic(&settings.kafka.brokers, &settings.kafka.dlq_topic)
            .await
            .is_empty(),
        "an unanswering database must not dead-letter anything"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_are_exported_with_their_types_and_counts_move() {
    let settings = settings().await;
    let db = db().await;
    let c = insert_campaign(&db, "worker test", 10).await;
    let topic = IssueTopic::new(&settings.kafka);
    let key = format!("{c}:metrics");
    let alice = message(c, "alice");
    topic.send_raw(&key, &alice.encode()).await;
    topic.send_raw(&key, &alice.encode()).await; // a redelivery
    topic.send_raw(&key, &message(c, "bob").encode()).await;
    topic.send_raw(&key, b"{not json").await;

    let worker = start(&settings).await;
    wait_for_rows(&db, &c, 2, Duration::from_secs(30)).await;
    let started = Instant::now();
    let scrape = loop {
        let s = Scrape::parse(&reqwest_get(worker.http_port, "/metrics").await);
        if s.sum("worker_messages_consumed_total", &[]) >= 4.0
            && s.sum("worker_dead_lettered_total", &[]) >= 1.0
            || started.elapsed() > Duration::from_secs(20)
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    scrape.assert_families(&[
        ("worker_messages_consumed_total", "counter"),
        ("worker_coupons_persisted_total", "counter"),
        ("worker_duplicates_total", "counter"),
        ("worker_dead_lettered_total", "counter"),
        ("worker_db_errors_total", "counter"),
        ("worker_paused", "gauge"),
        ("worker_batch_size", "histogram"),
        ("worker_batch_duration_seconds", "histogram"),
        ("worker_end_to_end_lag_seconds", "histogram"),
        ("worker_consumer_lag_offsets", "gauge"),
        ("worker_assigned_partitions", "gauge"),
        ("worker_campaigns_taken", "gauge"),
        ("worker_campaigns_persisted", "gauge"),
    ]);
    assert_eq!(scrape.sum("worker_messages_consumed_total", &[]), 4.0);
    assert_eq!(scrape.sum("worker_coupons_persisted_total", &[]), 2.0);
    assert_eq!(scrape.sum("worker_duplicates_total", &[]), 1.0);
    assert_eq!(
        scrape.sum("worker_dead_lettered_total", &[("reason", "unparseable")]),
        1.0
    );
    assert_eq!(
        scrape.sum("worker_dead_lettered_total", &[("reason", "over_stock")]),
        0.0,
        "every reason is exported from the start"
    );
    // Batches cover the four messages; each row written has its lag.
    assert!(scrape.sum("worker_batch_size_count", &[]) >= 1.0);
    assert_eq!(scrape.sum("worker_batch_size_sum", &[]), 4.0);
    assert_eq!(scrape.sum("worker_end_to_end_lag_seconds_count", &[]), 2.0);
    assert!(scrape.sum("worker_end_to_end_lag_seconds_sum", &[]) > 0.0);
    // The lag target's bound is a bucket edge, so its p99 is read, not
    // interpolated across a doubling.
    assert!(
        scrape
            .samples
            .contains_key("worker_end_to_end_lag_seconds_bucket{le=\"0.25\"}"),
        "no 250 ms bucket: {:?}",
        scrape.histogram("worker_end_to_end_lag_seconds")
    );
    assert!(scrape.sum("worker_assigned_partitions", &[]) >= 1.0);
    assert_eq!(scrape.sum("worker_paused", &[]), 0.0);
    worker.stop().await;
}

/// `reconcile --repair` beside traffic gives back only the slots it saw: a
/// leaked slot of `u` is in its snapshot; then, while it waits for takes
/// to settle, `u`'s slot is given back (its broker down) and taken again
/// by a retry whose message is still on its way. That new slot is another
/// one (another coupon id), and the repair leaves it. (It gave back by user
/// id: the new slot went, its message then landed as a row the gate did
/// not count, and the gate could take one slot beyond the stock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_gives_back_only_the_slots_it_saw() {
    let settings = settings().await;
    let db = db().await;
    let c = insert_campaign(&db, "reconcile beside traffic", 10).await;
    let redis = common::redis_state::RedisClient::new(&settings.redis, None).unwrap();
    let gate = common::redis_state::Gate::new(redis.clone());
    let meta = common::redis_state::CampaignMeta {
        stock: 10,
        starts_at: Utc::now() - chrono::Duration::minutes(1),
        ends_at: None,
        closed: false,
        room: None,
    };
    common::redis_state::CampaignMetas::new(redis)
        .load(&c, &meta)
        .await
        .unwrap();
    let u = UserId::parse("u").unwrap();
    let first = CouponId::new();
    assert!(matches!(
        gate.take(&c, &u, &first).await.unwrap(),
        common::redis_state::GateReply::Taken { .. }
    ));
    let worker = start(&settings).await;
    let reconcile = tokio::spawn({
        let (settings, db) = (settings.clone(), db.clone());
        async move {
            issuer_worker::reconcile::run(&settings, &db, c, true, Duration::from_secs(60)).await
        }
    });
    // The snapshot is taken at once; the repair comes after the settle wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(gate.give_back(&c, &u, &first).await.unwrap());
    let second = CouponId::new();
    assert!(matches!(
        gate.take(&c, &u, &second).await.unwrap(),
        common::redis_state::GateReply::Taken { .. }
    ));
    let report = reconcile.await.unwrap().unwrap();
    assert_eq!(report.leaked, 1, "{report:?}");
    assert_eq!(
        report.given_back, 0,
        "the new slot was given back: {report:?}"
    );
    assert_eq!(gate.slot_coupon(&c, &u).await.unwrap(), Some(second));
    assert_eq!(gate_state(&c).await, (vec!["u".to_owned()], Some(1)));
    // Its message lands: one row, counted.
    let mut late = message(c, "u");
    late.coupon_id = second;
    IssueTopic::new(&settings.kafka).send(&late).await;
    wait_for_rows(&db, &c, 1, Duration::from_secs(30)).await;
    assert_eq!(gate_state(&c).await, (vec!["u".to_owned()], Some(1)));
    worker.stop().await;
}

/// A reconcile that a later rebuild overtook (its admin lock lapsed while
/// it waited for the takes to settle) records no cutoff once the later
/// one has: that rebuild may have read the cutoffs already and counted a
/// message this cutoff would make `late` (its slot then without a row).
/// Before the serials, the reconcile recorded its cutoff after the later
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repair_overtaken_by_a_later_one_records_no_cutoff() {
    use issuer_worker::{cutoff, topic};
    let settings = settings().await;
    let db = db().await;
    let c = insert_campaign(&db, "overtaken repair", 10).await;
    open_gate(&settings, &c, 10).await;
    let worker = start(&settings).await;
    let reconcile = tokio::spawn({
        let (settings, db) = (settings.clone(), db.clone());
        async move {
            issuer_worker::reconcile::run(&settings, &db, c, true, Duration::from_secs(60)).await
        }
    });
    // The reconcile has its serial and waits for the takes to settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!reconcile.is_finished());
    let later = cutoff::serial(&db).await.unwrap();
    let ends = topic::end_offsets(&settings.kafka).await.unwrap();
    cutoff::record(&db, &c, later, Utc::now(), &ends, "rebuild")
        .await
        .unwrap();
    let refused = reconcile.await.unwrap().unwrap_err();
    assert!(refused.to_string().contains("overtaken"), "{refused:#}");
    let recorded: Vec<String> = db
        .query_all_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT recorded_by FROM campaign_cutoffs WHERE campaign_id = $1",
            [c.as_uuid().into()],
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String>("", "recorded_by").unwrap())
        .collect();
    assert_eq!(recorded, ["rebuild"]);
    worker.stop().await;
}

/// Loads a campaign's gate state as the api does when it creates one.
async fn open_gate(settings: &Settings, c: &CampaignId, stock: i64) -> common::redis_state::Gate {
    let redis = common::redis_state::RedisClient::new(&settings.redis, None).unwrap();
    let meta = common::redis_state::CampaignMeta {
        stock,
        starts_at: Utc::now() - chrono::Duration::minutes(1),
        ends_at: None,
        closed: false,
        room: None,
    };
    common::redis_state::CampaignMetas::new(redis.clone())
        .load(c, &meta)
        .await
        .unwrap();
    common::redis_state::Gate::new(redis)
}

/// A message whose delivery timed out can still be appended later (a
/// paused broker, a follower that commits it late). Once `reconcile
/// --repair` has given its slot back and someone else has taken it, that
/// message must not become a coupon: it is refused as `late`, and the user
/// who holds the slot now gets the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_landing_after_reconcile_gave_its_slot_back_is_late() {
    let settings = settings().await;
    let db = db().await;
    let c = insert_campaign(&db, "late after reconcile", 1).await;
    let gate = open_gate(&settings, &c, 1).await;
    let slow = UserId::parse("slow").unwrap();
    let mut stranded = message(c, "slow");
    assert!(matches!(
        gate.take(&c, &slow, &stranded.coupon_id).await.unwrap(),
        common::redis_state::GateReply::Taken { .. }
    ));
    stranded.requested_at = Utc::now();

    let worker = start(&settings).await;
    let report = issuer_worker::reconcile::run(&settings, &db, c, true, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!((report.leaked, report.given_back), (1, 1), "{report:?}");
    let next = message(c, "next");
    assert!(matches!(
        gate.take(&c, &next.user_id, &next.coupon_id).await.unwrap(),
        common::redis_state::GateReply::Taken { .. }
    ));
    let topic = IssueTopic::new(&settings.kafka);
    topic
        .send_to_first(&stranded.key(), &stranded.encode())
        .await;
    topic.send_to_first(&next.key(), &next.encode()).await;

    wait_for_rows(&db, &c, 1, Duration::from_secs(30)).await;
    let (_, reasons) = dead_letters(&settings.kafka, 1).await;
    assert_eq!(reasons, ["late"]);
    assert_eq!(row_users(&db, &c).await, ["next"]);
    worker.stop().await;
}

/// A take of `user`'s slot whose message has not reached the topic yet:
/// the message, requested now, to be sent later.
async fn stranded_take(
    gate: &common::redis_state::Gate,
    c: CampaignId,
    user: &str,
) -> CouponIssued {
    let mut stranded = message(c, user);
    assert!(matches!(
        gate.take(&c, &stranded.user_id, &stranded.coupon_id)
            .await
            .unwrap(),
        common::redis_state::GateReply::Taken { .. }
    ));
    stranded.requested_at = Utc::now();
    stranded
}

/// The same after a rebuild: a take the lost Redis state held, whose
/// message reaches the topic after the rebuild read it, is not in the
/// rebuilt gate, so it must not become a coupon either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_landing_after_a_rebuild_left_it_out_is_late() {
    let settings = settings().await;
    let db = db().await;
    let c = insert_campaign(&db, "late after rebuild", 1).await;
    let gate = open_gate(&settings, &c, 1).await;
    let stranded = stranded_take(&gate, c, "slow").await;

    let worker = start(&settings).await;
    let report = issuer_worker::rebuild::run(&settings, &db, c, true)
        .await
        .unwrap();
    assert_eq!(report.users, 0, "{report:?}");
    let next = message(c, "next");
    assert!(matches!(
        gate.take(&c, &next.user_id, &next.coupon_id).await.unwrap(),
        common::redis_state::GateReply::Taken { .. }
    ));
    let topic = IssueTopic::new(&settings.kafka);
    topic
        .send_to_first(&stranded.key(), &stranded.encode())
        .await;
    topic.send_to_first(&next.key(), &next.encode()).await;

    wait_for_rows(&db, &c, 1, Duration::from_secs(30)).await;
    let (_, reasons) = dead_letters(&settings.kafka, 1).await;
    assert_eq!(reasons, ["late"]);
    assert_eq!(row_users(&db, &c).await, ["next"]);
    worker.stop().await;
}

/// A rebuild leaves out the user of a message an earlier cutoff makes
/// `late`: the worker dead-letters it, so a slot kept for it would have no
/// row (the user read `pending` until a reconcile gave the slot back;
/// found by a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_leaves_out_a_message_an_earlier_cutoff_makes_late() {
    let settings = settings().await;
    let db = db().await;
    let c = insert_campaign(&db, "late before a rebuild", 1).await;
    let gate = open_gate(&settings, &c, 1).await;
    let stranded = stranded_take(&gate, c, "slow").await;
    // No worker: the message stays unconsumed for the second rebuild.
    let first = issuer_worker::rebuild::run(&settings, &db, c, true)
        .await
        .unwrap();
    assert_eq!(first.users, 0, "{first:?}");
    IssueTopic::new(&settings.kafka)
        .send_to_first(&stranded.key(), &stranded.encode())
        .await;
    let second = issuer_worker::rebuild::run(&settings, &db, c, true)
        .await
        .unwrap();
    assert_eq!(
        (second.in_flight, second.users),
        (0, 0),
        "the late message's user kept a slot: {second:?}"
    );
}

/// A campaign archived while a rebuild ran (its row marked between the
/// rebuild's reads and its install) is installed archived: the users the
/// rebuild staged are deleted, the count kept. And `reconcile` refuses a
/// archived campaign: every row would read as a phantom, and `--repair`
/// would load every user back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_archived_during_a_rebuild_stays_archived() {
    let mut settings = settings().await;
    settings.kafka.delivery_timeout_ms = 0;
    let db = db().await;
    let c = insert_campaign(&db, "archived during a rebuild", 5).await;
    let gate = open_gate(&settings, &c, 5).await;
    for user in ["alice", "bob"] {
        let taken = stranded_take(&gate, c, user).await;
        IssueTopic::new(&settings.kafka)
            .send_to_first(&taken.key(), &taken.encode())
            .await;
    }
    let redis = common::redis_state::RedisClient::new(&settings.redis, None).unwrap();
    let plan = issuer_worker::rebuild::plan(&settings, &db, &redis, c, true, false)
        .await
        .unwrap()
        .unwrap();
    db.execute_unprepared(&format!(
        "UPDATE campaigns SET state = 'closed', archived_at = now() WHERE id = '{c}'"
    ))
    .await
    .unwrap();
    let report = issuer_worker::rebuild::install(&settings, &db, &redis, plan)
        .await
        .unwrap();
    assert!(report.archived, "{report:?}");
    assert_eq!(
        gate_state(&c).await,
        (vec![], Some(2)),
        "the install loaded an archived campaign's users"
    );
    let keys = common::keys::CampaignKeys::new(&c);
    let staged: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys.rebuild_users("")))
        .query_async(&mut redis_at(&redis_url()).await)
        .await
        .unwrap();
    assert!(staged.is_empty(), "staged users left behind: {staged:?}");

    let refused = issuer_worker::reconcile::run(&settings, &db, c, true, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("archived"), "{refused}");
    assert_eq!(gate_state(&c).await, (vec![], Some(2)));
}
