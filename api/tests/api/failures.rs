//! Failures of the broker, Redis and PostgreSQL: a clear 503, nothing
//! admitted that is not promised, never `accepted` without the broker's
//! word. Each test that breaks a service breaks one of its own.

use std::time::{Duration, Instant};

use crate::helpers::*;
use common::entities::campaigns;
use common::ids::CampaignId;
use common::keys::CampaignKeys;
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use secrecy::SecretString;
use serde_json::json;

/// Retries an issue request until it is accepted (a client that got 503).
async fn issue_until_accepted(api: &TestApi, campaign: &CampaignId, user: &str, within: Duration) {
    let started = Instant::now();
    loop {
        let (status, body) = api.issue(campaign, user).await;
        if body["outcome"] == "accepted" {
            return;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            started.elapsed() < within,
            "not accepted within {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_down_means_503_with_nothing_admitted_and_unconfirmed_means_pending() {
    let mut broker = OwnBroker::start();
    let mut settings = test_settings().await;
    settings.kafka.brokers = broker.address();
    common::kafka::ensure_topics(&settings.kafka).await.unwrap();
    let api = spawn_api(&settings).await;
    let worker = spawn_worker(&settings).await;
    let campaign = api.open_campaign(10).await;
    issue_until_accepted(&api, &campaign, "before", Duration::from_secs(20)).await;

    // Stopped: the message never reaches a broker, so the slot is given back.
    broker.kill();
    let started = Instant::now();
    let (status, body) = api.issue(&campaign, "during").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["outcome"], "unavailable");
    assert!(
        took < Duration::from_millis(settings.kafka.delivery_timeout_ms + 2_000),
        "took {took:?}"
    );
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["before".to_owned()], Some(1))
    );
    let (_, me) = api.my_coupon(&campaign, "during").await;
    assert_eq!(me["state"], "none");

    // Back: issuance works again, and the refused user can retry.
    broker.restart();
    issue_until_accepted(&api, &campaign, "during", Duration::from_secs(30)).await;

    // Frozen: the message leaves for the broker and no report comes back in
    // time. It may be in the log, so the answer is pending, never accepted.
    broker.freeze(true);
    let (status, body) = api.issue(&campaign, "unconfirmed").await;
    broker.freeze(false);
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["outcome"], "pending");
    assert!(body["coupon_id"].is_string());
    let (members, _) = gate_state(&campaign).await;
    assert!(
        members.contains(&"unconfirmed".to_owned()),
        "a pending slot must stay taken"
    );
    let (_, me) = api.my_coupon(&campaign, "unconfirmed").await;
    assert!(me["state"] == "pending" || me["state"] == "issued", "{me}");

    // Both accepted users get their rows. Not "any two rows": the pending
    // one's may land first, the worker's partitions being fetched anew at
    // their own pace after the broker's restart.
    let db = db().await;
    let started = Instant::now();
    loop {
        let users = row_users(&db, &campaign).await;
        if users.contains(&"before".to_owned()) && users.contains(&"during".to_owned()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "accepted users lack rows: {users:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_redis_state_answers_503_and_is_never_recreated() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let (status, _) = api.issue(&campaign, "alice").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let keys = CampaignKeys::new(&campaign);

    redis_del(&[keys.meta()]).await;
    let (status, body) = api.issue(&campaign, "bob").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["outcome"], "unavailable");
    assert!(!redis_exists(&keys.meta()).await, "meta recreated");
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["alice".to_owned()], Some(1))
    );

    redis_del(&[keys.users(), keys.taken()]).await;
    let (status, _) = api.issue(&campaign, "carol").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        gate_state(&campaign).await,
        (vec![], None),
        "state rebuilt from zero"
    );
    let (_, view) = api.campaign(&campaign).await;
    assert_eq!(view["gate"], "missing");
    assert!(view["taken"].is_null());
    // Closing still closes the row, and does not create a partial meta.
    let (status, view) = api.close_campaign(&campaign).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["state"], "closed");
    assert!(!redis_exists(&keys.meta()).await);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_unreachable_means_503_and_a_campaign_created_without_its_gate() {
    let mut settings = test_settings().await;
    let healthy = spawn_api(&settings).await;
    let campaign = healthy.open_campaign(10).await;
    settings.redis.url = format!("redis://127.0.0.1:{}", spare_port());
    let api = spawn_api(&settings).await;

    let started = Instant::now();
    let (status, body) = api.issue(&campaign, "alice").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["outcome"], "unavailable");
    assert!(started.elapsed() < Duration::from_secs(3), "not a fast 503");

    // A campaign is its row: created, its gate reads `missing` (the
    // worker's gate keeper loads the meta once Redis answers), and its
    // issue requests are 503 meanwhile. Never a meta without a row.
    let name = format!("half-{}", uuid::Uuid::now_v7());
    let (status, body) = api
        .create_campaign(json!({ "name": name, "stock": 1 }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["gate"], "missing", "{body}");
    assert!(body["taken"].is_null(), "{body}");
    let same_name = campaigns::Entity::find()
        .filter(campaigns::Column::Name.eq(name.as_str()))
        .count(&db().await)
        .await
        .unwrap();
    assert_eq!(same_name, 1);
    let created = body["id"].as_str().unwrap().parse().unwrap();
    assert!(!redis_exists(&CampaignKeys::new(&created).meta()).await);
    let ready = reply(
        api.client
            .get(format!("{}/readyz", api.ops_address))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        ready.0,
        StatusCode::OK,
        "readiness must not fail on a shared dependency"
    );
    assert_eq!(ready.1["dependencies"]["redis"], "down");
    api.stop().await;
    healthy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_unreachable_means_503_on_admin_routes_and_unknown_ids() {
    let mut settings = test_settings().await;
    settings.database.url = SecretString::from(format!(
        "postgres://postgres@127.0.0.1:{}/coupons?sslmode=disable",
        spare_port()
    ));
    settings.database.connect_timeout_ms = 500;
    let api = spawn_api(&settings).await;

    let (status, body) = api
        .create_campaign(json!({ "name": "x", "stock": 1 }))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["outcome"], "unavailable");
    // An id with no gate meta cannot be told unknown from lost: 503, not 404.
    let unknown = CampaignId::new();
    let (status, body) = api.issue(&unknown, "alice").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(gate_state(&unknown).await, (vec![], None));
    api.stop().await;
}

/// Stalls the Redis `admin` is connected to for `stall` (`CLIENT PAUSE
/// ALL`): it reads nothing and runs nothing until then, and then runs what
/// it was sent meanwhile.
async fn pause_redis(admin: &mut redis::aio::MultiplexedConnection, stall: Duration) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(stall.as_millis() as u64)
        .arg("ALL")
        .query_async(admin)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gate_call_that_times_out_is_withdrawn_and_the_retry_is_accepted() {
    let redis = OwnRedis::start();
    let mut settings = test_settings().await;
    settings.redis.url = redis.url();
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    issue_until_accepted(&api, &campaign, "before", Duration::from_secs(20)).await;

    // Redis stalls past the command timeout (500 ms) with the gate script
    // in its input buffer: the script runs when Redis resumes, after the
    // api has answered. Without the withdrawal the user would have a slot
    // no message fills, and read `duplicate` until reconciliation.
    let stall = settings.redis.command_timeout() * 3;
    let mut admin = redis_at(&redis.url()).await;
    pause_redis(&mut admin, stall).await;
    let started = Instant::now();
    let (status, body) = api.issue(&campaign, "alice").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        started.elapsed() >= settings.redis.command_timeout(),
        "answered before the gate call timed out: {body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nothing was issued"),
        "{body}"
    );
    // Every command sent during the stall has run by now.
    let _: String = redis::cmd("PING").query_async(&mut admin).await.unwrap();
    assert_eq!(
        gate_state_at(&redis.url(), &campaign).await,
        (vec!["before".to_owned()], Some(1)),
        "the timed-out take left a slot behind"
    );
    let (status, body) = api.issue(&campaign, "alice").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["outcome"], "accepted");
    assert_eq!(
        gate_state_at(&redis.url(), &campaign).await,
        (vec!["alice".to_owned(), "before".to_owned()], Some(2))
    );
    let scrape = api.scrape().await;
    assert_eq!(
        scrape.sum("gate_compensations_total", &[("result", "withdrawn")])
            + scrape.sum("gate_compensations_total", &[("result", "voided")]),
        1.0
    );
    api.stop().await;
}

/// The withdrawal, script by script: whichever of the take and its
/// withdrawal Redis runs first, the request ends with no slot, and a slot
/// the user has from another request is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_take_holds_nothing_whichever_runs_first() {
    use common::ids::{CouponId, UserId};
    use common::redis_state::{Gate, GateReply, RedisClient, Withdrawal};
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let gate = Gate::new(RedisClient::new(&settings.redis, None).unwrap());
    let alice = UserId::parse("alice").unwrap();

    // Withdrawn before it ran: voided; when it runs, it writes nothing.
    let first = CouponId::new();
    assert_eq!(
        gate.withdraw(&campaign, &alice, &first).await.unwrap(),
        Withdrawal::Voided
    );
    assert_eq!(
        gate.take(&campaign, &alice, &first).await.unwrap(),
        GateReply::Withdrawn
    );
    assert_eq!(gate_state(&campaign).await, (vec![], Some(0)));

    // Another request of the same user takes a slot; withdrawing the first
    // again leaves that slot alone.
    let second = CouponId::new();
    assert_eq!(
        gate.take(&campaign, &alice, &second).await.unwrap(),
        GateReply::Taken { waited: None }
    );
    assert_eq!(
        gate.withdraw(&campaign, &alice, &first).await.unwrap(),
        Withdrawal::Voided
    );
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["alice".to_owned()], Some(1))
    );

    // Withdrawn after it ran: its slot is given back, once.
    assert_eq!(
        gate.withdraw(&campaign, &alice, &second).await.unwrap(),
        Withdrawal::GivenBack
    );
    assert_eq!(gate_state(&campaign).await, (vec![], Some(0)));
    assert_eq!(
        gate.withdraw(&campaign, &alice, &second).await.unwrap(),
        Withdrawal::Voided
    );
    assert_eq!(gate_state(&campaign).await, (vec![], Some(0)));
    api.stop().await;
}

/// The gate's batch, script by script: its takes run in order as calls of
/// their own would (a user twice: `duplicate`; the stock counted across the
/// batch; a withdrawn take writes nothing), and the same batch sent again
/// (a cluster client after a lost reply) answers what it did and writes
/// nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_batch_runs_its_takes_in_order_and_again_acts_once() {
    use common::ids::{CouponId, UserId};
    use common::redis_state::{Gate, GateReply, RedisClient, Refusal, Withdrawal};
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(2).await;
    let gate = Gate::new(RedisClient::new(&settings.redis, None).unwrap());
    let user = |u: &str| UserId::parse(u).unwrap();
    let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
    let coupons: Vec<CouponId> = (0..5).map(|_| CouponId::new()).collect();
    // Carol's take is withdrawn before the batch runs.
    assert_eq!(
        gate.withdraw(&campaign, &carol, &coupons[1]).await.unwrap(),
        Withdrawal::Voided
    );
    let batch = [
        (&alice, &coupons[0]),
        (&carol, &coupons[1]),
        (&alice, &coupons[2]),
        (&bob, &coupons[3]),
        (&dave, &coupons[4]),
    ];
    let taken = GateReply::Taken { waited: None };
    let expected = vec![
        taken,
        GateReply::Withdrawn,
        GateReply::Refused(Refusal::Duplicate),
        taken,
        GateReply::Refused(Refusal::SoldOut),
    ];
    assert_eq!(gate.take_batch(&campaign, &batch).await.unwrap(), expected);
    let state = (vec!["alice".to_owned(), "bob".to_owned()], Some(2));
    assert_eq!(gate_state(&campaign).await, state);
    assert_eq!(gate.take_batch(&campaign, &batch).await.unwrap(), expected);
    assert_eq!(gate_state(&campaign).await, state);
    api.stop().await;
}

/// Takes that wait in the gate's line behind a call that hangs (Redis
/// stalled past the command timeout, `gate.batch_size` at its default) are
/// answered 503 "nothing was issued" and withdrawn, each by its own coupon
/// id: when Redis resumes and runs their batch, nobody is left with a slot
/// no message fills, and a retry is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takes_waiting_behind_a_gate_call_that_hangs_are_withdrawn() {
    let redis = OwnRedis::start();
    let mut settings = test_settings().await;
    settings.redis.url = redis.url();
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(100).await;
    issue_until_accepted(&api, &campaign, "before", Duration::from_secs(20)).await;
    let before = api.scrape().await;

    let stall = settings.redis.command_timeout() * 3;
    let mut admin = redis_at(&redis.url()).await;
    pause_redis(&mut admin, stall).await;
    let users: Vec<String> = (0..20).map(|i| format!("user-{i}")).collect();
    let replies =
        futures::future::join_all(users.iter().map(|user| api.issue(&campaign, user))).await;
    for (status, body) in &replies {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("nothing was issued"),
            "{body}"
        );
    }
    // Every command sent during the stall has run by now.
    let _: String = redis::cmd("PING").query_async(&mut admin).await.unwrap();
    assert_eq!(
        gate_state_at(&redis.url(), &campaign).await,
        (vec!["before".to_owned()], Some(1)),
        "a take that waited in line left a slot behind"
    );
    // (Each take was withdrawn or voided, but one sent on a connection its
    // thread opened during the stall, which never left: a 503 with nothing
    // to withdraw. So the count of compensations is not the promise; the
    // gate's state above is.)
    let scrape = api.scrape().await;
    let since = |name: &str| scrape.sum(name, &[]) - before.sum(name, &[]);
    let (calls, takes) = (
        since("gate_batch_takes_count"),
        since("gate_batch_takes_sum"),
    );
    assert_eq!(takes, users.len() as f64);
    assert!(calls < takes, "no take waited in line: {calls} calls");
    let (status, body) = api.issue(&campaign, "user-0").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    api.stop().await;
}

/// The gate's line, step by step, on a Redis stalled by `CLIENT PAUSE`: a
/// take waiting behind the call out for longer than its wait leaves the line
/// unsent (`NotSent`: nothing to withdraw, and it never runs); a line that
/// fills a whole batch sends it at once, beside the call out; with
/// `gate.calls_out` 2, two takes go out alone before a line forms. (The line's
/// wait is given a short `longest_call` here, the client its production
/// timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_that_waits_in_the_gate_line_too_long_leaves_it_unsent() {
    use api::strategy::gate_batch::GateBatches;
    use common::ids::{CouponId, UserId};
    use common::redis_state::{
        CampaignMeta, CampaignMetas, Gate, GateReply, RedisCallError, RedisClient,
    };
    let redis = OwnRedis::start();
    let mut settings = test_settings().await;
    settings.redis.url = redis.url();
    settings.redis.command_timeout_ms = 5_000;
    let client = RedisClient::new(&settings.redis, None).unwrap();
    let campaign = CampaignId::new();
    let meta = CampaignMeta {
        stock: 100,
        starts_at: chrono::Utc::now() - chrono::Duration::minutes(1),
        ends_at: None,
        closed: false,
        room: None,
    };
    CampaignMetas::new(client.clone())
        .load(&campaign, &meta)
        .await
        .unwrap();
    let takes = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
    let gate = Gate::new(client.clone());
    let user = |i: usize| UserId::parse(&format!("user-{i}")).unwrap();
    let users: Vec<UserId> = (0..11).map(user).collect();
    let coupons: Vec<CouponId> = users.iter().map(|_| CouponId::new()).collect();
    // Every connection of the pool opened before the stall (a connection
    // opened during it would time out: another test's path).
    for _ in 0..2 * settings.redis.pool_size {
        client.server().await.unwrap();
    }
    let mut admin = redis_at(&redis.url()).await;
    // A wait of 200 ms: the second take leaves while the first is out.
    let line = GateBatches::new(
        gate.clone(),
        takes.clone(),
        64,
        1,
        Duration::from_millis(100),
    );
    pause_redis(&mut admin, Duration::from_secs(1)).await;
    let (first, second) = tokio::join!(
        line.take(&campaign, &users[0], &coupons[0]),
        line.take(&campaign, &users[1], &coupons[1]),
    );
    assert_eq!(first.unwrap(), GateReply::Taken { waited: None });
    let second = second.unwrap_err();
    assert!(matches!(second, RedisCallError::NotSent(_)), "{second}");
    assert!(!second.may_have_run());
    let _: String = redis::cmd("PING").query_async(&mut admin).await.unwrap();
    assert_eq!(
        gate_state_at(&redis.url(), &campaign).await,
        (vec!["user-0".to_owned()], Some(1)),
        "the take that left the line ran"
    );
    assert_eq!(takes.get_sample_count(), 1);

    // Batches of 2: behind the call out, each pair goes at once.
    let line = GateBatches::new(gate.clone(), takes.clone(), 2, 1, Duration::from_secs(20));
    pause_redis(&mut admin, Duration::from_millis(500)).await;
    take_all(&line, &campaign, &users[1..6], &coupons[1..6]).await;
    // One alone, then two pairs: with the first part's call, four calls
    // and six takes.
    assert_eq!(takes.get_sample_count(), 4);
    assert_eq!(takes.get_sample_sum(), 6.0);
    assert_eq!(gate_state_at(&redis.url(), &campaign).await.1, Some(6));

    // `gate.calls_out` 2: the first two takes go at once, each alone, and
    // the other three wait together behind them.
    let line = GateBatches::new(gate, takes.clone(), 64, 2, Duration::from_secs(20));
    pause_redis(&mut admin, Duration::from_millis(500)).await;
    take_all(&line, &campaign, &users[6..11], &coupons[6..11]).await;
    assert_eq!(takes.get_sample_count(), 4 + 3);
    assert_eq!(takes.get_sample_sum(), 6.0 + 5.0);
    assert_eq!(gate_state_at(&redis.url(), &campaign).await.1, Some(11));
}

/// Takes `users`' slots (with `coupons`) at once through `line`: every one
/// taken.
async fn take_all(
    line: &std::sync::Arc<api::strategy::gate_batch::GateBatches>,
    campaign: &CampaignId,
    users: &[common::ids::UserId],
    coupons: &[common::ids::CouponId],
) {
    let takes = users
        .iter()
        .zip(coupons)
        .map(|(user, coupon)| line.take(campaign, user, coupon));
    for reply in futures::future::join_all(takes).await {
        assert_eq!(
            reply.unwrap(),
            common::redis_state::GateReply::Taken { waited: None }
        );
    }
}

/// A busy instance is not a dead Redis: when the thread that would read a
/// gate call's reply is kept busy past the command timeout (a burst on two
/// cores), Redis having answered at once, the call is still answered: the
/// reply is `accepted`, not "redis did not answer in time" with the take
/// withdrawn. (It was: the timeout fired on the late timer before the
/// reply waiting in the socket was read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_instance_does_not_take_itself_for_a_dead_redis() {
    let mut settings = test_settings().await;
    settings.faults.busy_thread_user = Some("busy".into());
    settings.faults.busy_thread_ms = settings.redis.command_timeout_ms * 2;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let (status, body) = api.issue(&campaign, "busy").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["outcome"], "accepted", "{body}");
    let scrape = api.scrape().await;
    assert_eq!(
        scrape.sum("gate_compensations_total", &[("result", "withdrawn")])
            + scrape.sum("gate_compensations_total", &[("result", "voided")]),
        0.0,
        "the take was withdrawn"
    );
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["busy".to_owned()], Some(1))
    );
    api.stop().await;
}

/// Settings for a test of the gate keeper: `redis` and a PostgreSQL of the
/// test's own (migrated; kept alive by the returned handle), the keeper at
/// its production cadence. Its own PostgreSQL because the keeper rebuilds
/// every recent campaign it finds in the database, and the shared one holds
/// every other test's campaigns (missing on this Redis): rebuilding those
/// kept the keeper busy past the tests' bounds, and recorded cutoffs in
/// their campaigns.
async fn keeper_cell(
    redis: &common::testkit::OwnRedis,
) -> (
    common::testkit::OwnPostgres,
    sea_orm::DatabaseConnection,
    common::settings::Settings,
) {
    let pg = common::testkit::OwnPostgres::start();
    let db = common::testkit::db_at(&pg.url()).await;
    issuer_worker::migration::migrate(&db).await.unwrap();
    let mut settings = test_settings().await;
    settings.redis.url = redis.url();
    settings.database.url = SecretString::from(pg.url());
    settings.worker.keeper_interval_ms =
        common::settings::WorkerSettings::default().keeper_interval_ms;
    (pg, db, settings)
}

/// A keeper cell (above) with the api and the worker running on it, and a
/// sale on now whose user `before` has its row. `full_scan_secs` replaces
/// the keeper's full scan interval when given.
struct KeeperSale {
    _pg: common::testkit::OwnPostgres,
    db: sea_orm::DatabaseConnection,
    settings: common::settings::Settings,
    api: TestApi,
    worker: TestWorker,
    sale: CampaignId,
}

async fn keeper_sale(redis: &common::testkit::OwnRedis, full_scan_secs: Option<u64>) -> KeeperSale {
    let (pg, db, mut settings) = keeper_cell(redis).await;
    if let Some(secs) = full_scan_secs {
        settings.worker.keeper_scan_secs = secs;
    }
    let api = spawn_api(&settings).await;
    let worker = spawn_worker(&settings).await;
    let sale = api.open_campaign(10).await;
    let (status, body) = api.issue(&sale, "before").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_for_rows(&db, &sale, 1, Duration::from_secs(30)).await;
    KeeperSale {
        _pg: pg,
        db,
        settings,
        api,
        worker,
        sale,
    }
}

/// Redis killed (-9) and restarted on its append-only file, which may have
/// lost its last writes (`appendfsync everysec` keeps up to a second in
/// memory): the take of `lost` is made to be one of those lost writes. No
/// slot is taken against that state: every campaign answers 503 until the
/// worker's gate keeper has rebuilt it from the rows, with no operator,
/// within the bound docs/RELIABILITY.md states; then `lost`, whose row
/// exists, is a duplicate again, and a new user is accepted. (Before the
/// fence, the gate took a second slot for `lost`: a second `accepted` with
/// another coupon id than its row's, and one slot beyond the stock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_fences_campaigns_until_the_gate_keeper_rebuilds_them() {
    let mut redis = common::testkit::OwnRedis::start_persistent("everysec");
    let (_pg, db, settings) = keeper_cell(&redis).await;
    let api = spawn_api(&settings).await;
    let worker = spawn_worker(&settings).await;
    let campaign = api.open_campaign(10).await;
    for user in ["u1", "u2", "lost"] {
        let (status, body) = api.issue(&campaign, user).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    wait_for_rows(&db, &campaign, 3, Duration::from_secs(30)).await;

    redis.kill();
    redis.restart();
    // The write the AOF did not keep.
    let keys = CampaignKeys::new(&campaign);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::pipe()
        .srem(keys.users(), "lost")
        .decr(keys.taken(), 1)
        .hdel(keys.slots(), "lost")
        .query_async(&mut conn)
        .await
        .unwrap();

    // Until the rebuild, `lost` is answered 503 (the connection broken by
    // the restart, then the fence), never taken again; afterwards it is a
    // duplicate: its row is back in the set.
    let healed = Instant::now();
    let mut fenced = false;
    loop {
        let (status, body) = api.issue(&campaign, "lost").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            fenced |= body["message"].as_str().unwrap().contains("rebuilt");
            assert!(
                healed.elapsed() < Duration::from_secs(30),
                "not rebuilt within 30 s: {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["outcome"], "duplicate");
        break;
    }
    assert!(fenced, "the fence never answered");
    eprintln!("accepting again {:?} after the restart", healed.elapsed());
    let (status, body) = api.issue(&campaign, "after").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_for_rows(&db, &campaign, 4, Duration::from_secs(30)).await;
    let (members, count) = common::testkit::gate_state_at(&redis.url(), &campaign).await;
    assert_eq!(members, ["after", "lost", "u1", "u2"]);
    assert_eq!(count, Some(4));
    worker.stop().await;
    api.stop().await;
}

/// After a Redis restart the gate keeper rebuilds 16 campaigns at a time
/// (`keeper::AT_ONCE`): a sale on now first, whatever was created after
/// it, then those still to open (the soonest first), then the closed ones,
/// each wave following the one before as soon as it ends. Here the sale
/// comes before 47 newer campaigns: 31 opening within the next hours
/// (created in an order that is neither their opening order nor its
/// reverse) and 16 closed ones among them, so the waves are the sale and
/// the 15 opening soonest, the other 16 still to open, then the closed.
/// Before, the newest went first and each further wave waited for the
/// keeper's full scan: the sale answered 503 for 78 s at the defaults (two
/// full scans and a wave) while closed campaigns were rebuilt; it now
/// accepts after about 16 s, and all 48 are rebuilt after about 46 s. The
/// full scan is set out of reach, as in the test below, so that only the
/// waves' own pace can rebuild the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_on_now_is_rebuilt_first_and_the_rest_follow_in_waves() {
    use common::redis_state::{CampaignMetas, EpochState, RedisClient};
    let mut redis = common::testkit::OwnRedis::start_persistent("everysec");
    let KeeperSale {
        _pg,
        settings,
        api,
        worker,
        sale,
        ..
    } = keeper_sale(&redis, Some(3_600)).await;
    // Opening i minutes after the first, i a permutation of 0..31 (7 is
    // prime to 31); every third created is closed instead.
    let first_opening = chrono::Utc::now() + chrono::Duration::hours(1);
    let mut opening: Vec<(i64, CampaignId)> = Vec::new();
    let mut closed = Vec::new();
    for n in 0..47 {
        if n % 3 == 0 {
            let id = api.open_campaign(10).await;
            let (status, body) = api.close_campaign(&id).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            closed.push(id);
        } else {
            let minute = (opening.len() as i64 * 7) % 31;
            let starts_at = (first_opening + chrono::Duration::minutes(minute)).to_rfc3339();
            let (status, body) = api
                .create_campaign(json!({ "name": "later", "stock": 10, "starts_at": starts_at }))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            opening.push((
                minute,
                CampaignId::parse(body["id"].as_str().unwrap()).unwrap(),
            ));
        }
    }
    assert_eq!((opening.len(), closed.len()), (31, 16));
    opening.sort();
    let mut waves: Vec<Vec<CampaignId>> = vec![vec![sale]];
    waves[0].extend(opening[..15].iter().map(|(_, id)| *id));
    waves.push(opening[15..].iter().map(|(_, id)| *id).collect());
    waves.push(closed);

    redis.kill();
    redis.restart();
    let restarted = Instant::now();
    let metas = CampaignMetas::new(RedisClient::new(&settings.redis, None).unwrap());
    let mut accepted = false;
    loop {
        // How many of each wave are rebuilt (an unanswered read counts as
        // not): a wave may begin only once the one before has ended.
        let mut rebuilt = Vec::new();
        for wave in &waves {
            let mut n = 0;
            for campaign in wave {
                if matches!(
                    metas.epoch_state(campaign).await,
                    Ok((EpochState::Current, _))
                ) {
                    n += 1;
                }
            }
            rebuilt.push(n);
        }
        for k in 1..waves.len() {
            assert!(
                rebuilt[k] == 0 || rebuilt[k - 1] == waves[k - 1].len(),
                "wave {k} began before wave {} ended: {rebuilt:?} of 16 each, {:?} after the restart",
                k - 1,
                restarted.elapsed()
            );
        }
        if !accepted {
            let (status, body) = api.issue(&sale, "after").await;
            accepted = body["outcome"] == "accepted";
            if accepted {
                eprintln!(
                    "the sale accepts {:?} after the restart",
                    restarted.elapsed()
                );
            } else {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
                // The bound of a lone campaign: the sale is in the first wave.
                assert!(
                    restarted.elapsed() < Duration::from_secs(30),
                    "the sale not accepted within 30 s: {body}"
                );
            }
        }
        if accepted && rebuilt.iter().sum::<usize>() == 48 {
            break;
        }
        // Three waves back to back (each the settle wait of 14 s and the
        // reads), none waiting for the full scan.
        assert!(
            restarted.elapsed() < Duration::from_secs(90),
            "{rebuilt:?} of 16 each rebuilt within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "every campaign rebuilt {:?} after the restart",
        restarted.elapsed()
    );
    worker.stop().await;
    api.stop().await;
}

/// A sale created longer ago than the keeper's 30 days of closed campaigns
/// (`keeper::RECENT_DAYS`) is still on sale, and the keeper rebuilds it
/// after a Redis restart. Before, the keeper looked only at campaigns
/// created within those 30 days: an open-ended sale created 40 days ago
/// answered 503 after a restart until an operator ran `issuer-worker
/// rebuild`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_created_long_ago_is_rebuilt_after_a_redis_restart() {
    use sea_orm::ConnectionTrait;
    let mut redis = common::testkit::OwnRedis::start_persistent("everysec");
    let KeeperSale {
        _pg,
        db,
        api,
        worker,
        sale,
        ..
    } = keeper_sale(&redis, None).await;
    db.execute_unprepared(&format!(
        "UPDATE campaigns SET created_at = now() - interval '40 days' WHERE id = '{sale}'"
    ))
    .await
    .unwrap();

    redis.kill();
    redis.restart();
    let restarted = Instant::now();
    issue_until_accepted(&api, &sale, "after", Duration::from_secs(30)).await;
    eprintln!(
        "the sale accepts {:?} after the restart",
        restarted.elapsed()
    );
    let (status, body) = api.issue(&sale, "before").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    worker.stop().await;
    api.stop().await;
}

/// A forced rebuild that fails after it fenced its campaign (here the
/// broker cannot be reached) leaves the campaign answering 503. The gate
/// keeper finds it by the hint the fence leaves (`keys::FENCED_CAMPAIGNS`)
/// at its next tick and rebuilds it: the campaign accepts again within a
/// tick, the rebuild's settle wait and its reads. The keeper's full scan is
/// set out of reach here: before the hint, the campaign stayed fenced until
/// that scan (30 s at the defaults, the fault campaign's rule 10 findings).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_a_failed_forced_rebuild_fenced_is_rebuilt_within_a_tick() {
    use common::redis_state::RedisClient;
    let redis = common::testkit::OwnRedis::start();
    let KeeperSale {
        _pg,
        db,
        settings,
        api,
        worker,
        sale: campaign,
    } = keeper_sale(&redis, Some(3_600)).await;
    // The keeper's first (full) scan has run by now: the next is an hour off.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut no_broker = settings.clone();
    no_broker.kafka.brokers = format!("127.0.0.1:{}", common::testkit::spare_port());
    let redis_client = RedisClient::new(&settings.redis, None).unwrap();
    let failed =
        issuer_worker::rebuild::rebuild(&no_broker, &db, &redis_client, campaign, true).await;
    assert!(failed.is_err(), "the rebuild did not fail: {failed:?}");
    let (status, body) = api.issue(&campaign, "fenced").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let failed_at = Instant::now();
    let bound = settings.takes_settle_within() + Duration::from_secs(10);
    issue_until_accepted(&api, &campaign, "after", bound).await;
    eprintln!(
        "accepting again {:?} after the failed rebuild",
        failed_at.elapsed()
    );
    worker.stop().await;
    api.stop().await;
}

/// The admin lock is given back as soon as Redis answers again after a
/// restart refused its release: the lock was persisted (`appendfsync
/// always`), so a release tried once left it to its whole lease, and the
/// next rebuild (the gate keeper's, healing that very restart) waited for
/// it (the fault campaign's rule 10 findings: campaigns fenced 26–60 s
/// after a Redis restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_lock_whose_release_a_redis_restart_refused_is_released_after_it() {
    use common::redis_state::RedisClient;
    let redis = std::sync::Arc::new(common::testkit::OwnRedis::start_persistent("always"));
    let mut settings = test_settings().await;
    settings.redis.url = redis.url();
    let client = RedisClient::new(&settings.redis, None).unwrap();
    let campaign = CampaignId::new();
    let restarted = tokio::spawn({
        let redis = redis.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::spawn_blocking(move || redis.launch())
                .await
                .unwrap();
            Instant::now()
        }
    });
    issuer_worker::admin_lock::holding(&client, &campaign, |_| async {
        // Redis dies while the lock is held: its release is refused.
        redis.sigkill();
        Ok(())
    })
    .await
    .unwrap();
    let restarted = restarted.await.unwrap();
    let key = CampaignKeys::new(&campaign).admin_lock();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let held: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!held, "the admin lock outlived the restart");
    assert!(
        restarted.elapsed() < Duration::from_secs(3),
        "released {:?} after the restart",
        restarted.elapsed()
    );
    // The next taker gets it at once.
    let taken = Instant::now();
    let lock = issuer_worker::admin_lock::acquire(&client, &campaign)
        .await
        .unwrap();
    assert!(
        taken.elapsed() < Duration::from_secs(1),
        "{:?}",
        taken.elapsed()
    );
    lock.release().await.unwrap();
}

/// A reconcile whose admin lock another repair took while it waited for
/// the takes to settle (its lease ran out: a pause, or a Redis that lost
/// the key) gives nothing back: the slots it saw may have changed under the
/// other repair (a re-drive keeping a slot for its message). Its repair's
/// writes are fenced on the lock (`lua/admin_fence.lua`); before, it gave
/// the leaked slot back regardless.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconcile_that_lost_its_admin_lock_gives_nothing_back() {
    use common::ids::{CouponId, UserId};
    use common::redis_state::{Gate, GateReply, RedisClient};
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let worker = spawn_worker(&settings).await;
    let campaign = api.open_campaign(10).await;
    let redis_client = RedisClient::new(&settings.redis, None).unwrap();
    // A leaked slot: taken, its message never sent.
    let leaked = UserId::parse("leaked").unwrap();
    assert!(matches!(
        Gate::new(redis_client)
            .take(&campaign, &leaked, &CouponId::new())
            .await
            .unwrap(),
        GateReply::Taken { .. }
    ));
    let reconcile = tokio::spawn({
        let settings = settings.clone();
        async move {
            issuer_worker::reconcile::run(
                &settings,
                &db().await,
                campaign,
                true,
                Duration::from_secs(60),
            )
            .await
        }
    });
    // It holds the lock and waits for the takes to settle; then another
    // repair has the lock.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!reconcile.is_finished());
    let mut conn = redis::Client::open(settings.redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(CampaignKeys::new(&campaign).admin_lock())
        .arg("another-repair")
        .query_async(&mut conn)
        .await
        .unwrap();
    let refused = reconcile.await.unwrap().unwrap_err();
    assert!(
        format!("{refused:#}").contains("admin lock is no longer"),
        "{refused:#}"
    );
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["leaked".to_owned()], Some(1))
    );
    worker.stop().await;
    api.stop().await;
}

/// Every write of the request path, run twice with the same arguments,
/// answers as once: a Redis Cluster client sends a call again when the
/// connection it went out on broke before the reply came back, and the first
/// run may have happened. (A take run again used to answer `duplicate` or
/// `lost` for its own slot, a give-back to take the user's newer slot, a
/// withdraw's give-back to let the take run again take it once more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_take_and_give_back_run_twice_acts_once() {
    use common::ids::{CouponId, UserId};
    use common::lock::{LeaseLock, LockTiming};
    use common::redis_state::{
        CampaignMeta, CampaignMetas, FencedTake, Gate, GateReply, LockSections, RedisClient,
        Refusal, Withdrawal,
    };
    let settings = test_settings().await;
    let redis = RedisClient::new(&settings.redis, None).unwrap();
    let (gate, metas) = (Gate::new(redis.clone()), CampaignMetas::new(redis.clone()));
    let sections = LockSections::new(redis.clone());
    let open = || CampaignMeta {
        stock: 10,
        starts_at: chrono::Utc::now() - chrono::Duration::seconds(1),
        ends_at: None,
        closed: false,
        room: None,
    };
    let user = UserId::parse("twice").unwrap();
    let taken = |reply: &GateReply| matches!(reply, GateReply::Taken { .. });

    // The gate: its own slot answers `taken`, another request's `duplicate`,
    // and after a close its own slot is still `taken`.
    let campaign = CampaignId::new();
    metas.load(&campaign, &open()).await.unwrap();
    let coupon = CouponId::new();
    assert!(taken(&gate.take(&campaign, &user, &coupon).await.unwrap()));
    assert!(taken(&gate.take(&campaign, &user, &coupon).await.unwrap()));
    assert_eq!(
        gate.take(&campaign, &user, &CouponId::new()).await.unwrap(),
        GateReply::Refused(Refusal::Duplicate)
    );
    metas.close(&campaign).await.unwrap();
    assert!(taken(&gate.take(&campaign, &user, &coupon).await.unwrap()));
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["twice".to_owned()], Some(1))
    );

    // The give-back: only the request's own slot.
    let campaign = CampaignId::new();
    metas.load(&campaign, &open()).await.unwrap();
    let (first, second) = (CouponId::new(), CouponId::new());
    assert!(taken(&gate.take(&campaign, &user, &first).await.unwrap()));
    assert!(gate.give_back(&campaign, &user, &first).await.unwrap());
    assert!(taken(&gate.take(&campaign, &user, &second).await.unwrap()));
    assert!(!gate.give_back(&campaign, &user, &first).await.unwrap());
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["twice".to_owned()], Some(1))
    );

    // A withdraw that gave the slot back voids the take too.
    let campaign = CampaignId::new();
    metas.load(&campaign, &open()).await.unwrap();
    let coupon = CouponId::new();
    assert!(taken(&gate.take(&campaign, &user, &coupon).await.unwrap()));
    assert_eq!(
        gate.withdraw(&campaign, &user, &coupon).await.unwrap(),
        Withdrawal::GivenBack
    );
    assert_eq!(
        gate.take(&campaign, &user, &coupon).await.unwrap(),
        GateReply::Withdrawn
    );
    assert_eq!(gate_state(&campaign).await, (vec![], Some(0)));

    // The fenced take: its own slot is `taken`, the lock held or released.
    let campaign = CampaignId::new();
    metas.load(&campaign, &open()).await.unwrap();
    let keys = CampaignKeys::new(&campaign);
    let timing = LockTiming {
        lease: Duration::from_millis(settings.lock.lease_ms),
        wait: Duration::from_millis(settings.lock.wait_ms),
    };
    let lock = LeaseLock::new(redis.clone(), timing, None);
    let guard = lock.acquire(&keys.lock()).await.unwrap();
    let (key, token) = (guard.key().to_owned(), guard.token().to_owned());
    let coupon = CouponId::new();
    let take = |coupon: CouponId| {
        let (sections, keys, user, key, token) = (&sections, &keys, &user, &key, &token);
        async move {
            sections
                .take(key, token, keys, user, &coupon)
                .await
                .unwrap()
        }
    };
    assert_eq!(take(coupon).await, FencedTake::Taken);
    assert_eq!(take(coupon).await, FencedTake::Taken);
    assert_eq!(
        take(CouponId::new()).await,
        FencedTake::Refused(Refusal::Duplicate)
    );
    assert!(guard.release().await.unwrap());
    assert_eq!(take(coupon).await, FencedTake::Taken);
    assert_eq!(take(CouponId::new()).await, FencedTake::Lost);
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["twice".to_owned()], Some(1))
    );
}

/// A late rejection never hides a newer slot: a request's background
/// settle gives its slot back (the broker never took its message) and
/// records `rejected`; if the user's retry took a new slot in between, the
/// record is left out and `/coupons/me` keeps showing the new slot
/// (`pending` with its coupon id). (The record used to be written over it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_rejection_never_hides_a_newer_slot() {
    use common::ids::{CouponId, UserId};
    use common::redis_state::{
        Gate, GateReply, RecordedState, RedisClient, StatusRecord, StatusRecords,
    };
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let redis = RedisClient::new(&settings.redis, None).unwrap();
    let gate = Gate::new(redis.clone());
    let status = StatusRecords::new(redis, settings.redis.status_ttl_secs);
    let alice = UserId::parse("alice").unwrap();
    let (first, second) = (CouponId::new(), CouponId::new());
    assert!(matches!(
        gate.take(&campaign, &alice, &first).await.unwrap(),
        GateReply::Taken { .. }
    ));
    // The first request's settle: its slot given back...
    assert!(gate.give_back(&campaign, &alice, &first).await.unwrap());
    // ...the retry's take...
    assert!(matches!(
        gate.take(&campaign, &alice, &second).await.unwrap(),
        GateReply::Taken { .. }
    ));
    // ...and then the first request's record.
    let late = StatusRecord {
        state: RecordedState::Rejected,
        coupon_id: Some(first),
        outcome: Some("unavailable".into()),
        at: chrono::Utc::now(),
    };
    assert!(!status.record(&campaign, &alice, &late).await.unwrap());
    let (status_code, me) = api.my_coupon(&campaign, "alice").await;
    assert_eq!(status_code, StatusCode::OK);
    assert_eq!(me["state"], "pending", "{me}");
    assert_eq!(me["coupon_id"], second.to_string(), "{me}");
    // Without a newer slot, the rejection is recorded as before.
    assert!(gate.give_back(&campaign, &alice, &second).await.unwrap());
    assert!(status.record(&campaign, &alice, &late).await.unwrap());
    let (_, me) = api.my_coupon(&campaign, "alice").await;
    assert_eq!(me["state"], "rejected", "{me}");
    api.stop().await;
}

/// The api's statement bound holds on the server too: PostgreSQL itself
/// cancels a statement past `database.statement_timeout_ms` (SQLSTATE
/// 57014) and ends a session idle in a transaction as long (25P03), so
/// work nobody waits for any more stops, and its locks go, even when the
/// client's own timeout has already given up on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_itself_stops_what_the_api_stopped_waiting_for() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let settings = isolated_settings();
    let longest = Duration::from_millis(settings.database.statement_timeout_ms);
    let db = common::db::connect(&settings.database, longest)
        .await
        .unwrap();
    let started = Instant::now();
    let slow = db
        .execute_unprepared("SELECT pg_sleep(30)")
        .await
        .expect_err("a 30 s statement outlived the statement timeout");
    let took = started.elapsed();
    assert!(
        slow.to_string().contains("statement timeout"),
        "not cancelled by the server: {slow}"
    );
    assert!(
        took >= longest && took < longest + Duration::from_secs(5),
        "cancelled after {took:?}"
    );

    let txn = db.begin().await.unwrap();
    txn.execute_unprepared("SELECT 1").await.unwrap();
    tokio::time::sleep(longest + Duration::from_secs(1)).await;
    let idle = txn
        .execute_unprepared("SELECT 1")
        .await
        .expect_err("a transaction idle past the bound was kept");
    assert!(
        idle.to_string().contains("idle-in-transaction")
            || idle.to_string().contains("terminat")
            || idle.to_string().contains("closed"),
        "{idle}"
    );
}

/// After a Redis restart, one call finds the broken connection, not one
/// per connection: the pool retires every connection opened before the
/// break. (Each pooled connection used to fail its first call after a
/// restart: a take to withdraw, a status record or a give-back lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_redis_restart_one_call_finds_the_broken_connections() {
    use common::redis_state::RedisClient;
    let mut redis = common::testkit::OwnRedis::start();
    let mut settings = test_settings().await.redis;
    settings.url = redis.url();
    settings.pool_size = 4;
    let client = RedisClient::new(&settings, None).unwrap();
    client.warm_up().await.unwrap();
    for _ in 0..8 {
        client.ping().await.unwrap();
    }
    redis.kill();
    redis.restart();
    let mut failed = 0;
    for _ in 0..8 {
        if client.ping().await.is_err() {
            failed += 1;
        }
    }
    assert!(
        failed <= 1,
        "{failed} of 8 calls failed on connections broken by the restart"
    );
}

/// A close answered while a rebuild waits holds: the rebuild read the
/// campaign's row (open) before the close, and used to load the meta from
/// it, reopening the gate (the fault campaign's finding: users answered
/// `pending` after the close reply got coupons). The close written to the
/// fenced meta now survives the load, and the rebuild reads the row again
/// just before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_answered_during_a_rebuild_stays_closed() {
    use common::redis_state::RedisClient;
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let (status, body) = api.issue(&campaign, "before").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let rebuild = tokio::spawn({
        let settings = settings.clone();
        async move {
            let db = db().await;
            let redis = RedisClient::new(&settings.redis, None).unwrap();
            issuer_worker::rebuild::rebuild(&settings, &db, &redis, campaign, true).await
        }
    });
    // The rebuild has fenced the campaign and waits for takes to settle.
    let started = Instant::now();
    loop {
        let (status, body) = api.issue(&campaign, "probe").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never fenced: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = api.close_campaign(&campaign).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    rebuild.await.unwrap().unwrap();
    let (status, body) = api.issue(&campaign, "after-close").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::GONE, Some("closed")),
        "{body}"
    );
    api.stop().await;
}

/// A slot the rebuild drops (no row, no message in the topic: its take's
/// message never reached the broker) ends `none` with outcome
/// `given_back` in `/coupons/me`. The user used to read the `pending`
/// record of its take for the record's 7 days (the fault campaign's
/// finding, after `rebuild --force` beside a broker kill).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_a_rebuild_drops_ends_none_not_pending() {
    use common::ids::{CouponId, UserId};
    use common::redis_state::{
        Gate, GateReply, RecordedState, RedisClient, StatusRecord, StatusRecords,
    };
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let redis = RedisClient::new(&settings.redis, None).unwrap();
    // A take whose message never reached the broker, answered `pending`.
    let (user, coupon) = (UserId::parse("lost").unwrap(), CouponId::new());
    assert!(matches!(
        Gate::new(redis.clone())
            .take(&campaign, &user, &coupon)
            .await
            .unwrap(),
        GateReply::Taken { .. }
    ));
    let pending = StatusRecord {
        state: RecordedState::Pending,
        coupon_id: Some(coupon),
        outcome: None,
        at: chrono::Utc::now(),
    };
    StatusRecords::new(redis.clone(), settings.redis.status_ttl_secs)
        .record(&campaign, &user, &pending)
        .await
        .unwrap();
    let (_, body) = api.my_coupon(&campaign, "lost").await;
    assert_eq!(body["state"], "pending", "{body}");

    let report = issuer_worker::rebuild::rebuild(&settings, &db().await, &redis, campaign, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.users, 0);
    let (status, body) = api.my_coupon(&campaign, "lost").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["state"].as_str(), body["outcome"].as_str()),
        (Some("none"), Some("given_back")),
        "{body}"
    );
    api.stop().await;
}

/// A rebuild that lost its admin lock and went on (a Redis restart wipes
/// the lock; a pause past the lease ends it) installs nothing once a
/// rebuild that started after it has finished: it used to replace the set
/// the other had unfenced, dropping the slots taken since, so that the
/// stock was handed out again past users answered `pending`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_overtaken_by_a_later_one_installs_nothing() {
    use common::redis_state::RedisClient;
    use issuer_worker::rebuild;
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(2).await;
    let (status, body) = api.issue(&campaign, "before").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (db, redis) = (db().await, RedisClient::new(&settings.redis, None).unwrap());

    // The first rebuild reads and stages, then stalls before its install
    // (its admin lock gone); the second runs to the end and unfences.
    let overtaken = rebuild::plan(&settings, &db, &redis, campaign, true, false)
        .await
        .unwrap()
        .expect("forced");
    let report = rebuild::rebuild(&settings, &db, &redis, campaign, true)
        .await
        .unwrap()
        .expect("forced");
    assert_eq!(report.users, 1, "{report:?}");
    let (status, body) = api.issue(&campaign, "after").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let refused = rebuild::install(&settings, &db, &redis, overtaken)
        .await
        .expect_err("the overtaken rebuild installed its state");
    assert!(
        refused.to_string().contains("took the campaign over"),
        "{refused:#}"
    );
    let (mut users, taken) = gate_state(&campaign).await;
    users.sort();
    assert_eq!(
        (users, taken),
        (vec!["after".to_owned(), "before".to_owned()], Some(2))
    );
    let (status, body) = api.issue(&campaign, "one-too-many").await;
    assert_eq!(body["outcome"], "sold_out", "{status}: {body}");
    let (_, body) = api.my_coupon(&campaign, "after").await;
    assert_ne!(body["state"], "none", "{body}");
    api.stop().await;
}

/// A rebuild's install replaces the campaign's users set and slots hash,
/// and for a large campaign it must not hold Redis while it frees them:
/// every gate call of every campaign waits behind a script. It deleted them
/// (`DEL`, freed in the script: a `DEL` of 600,000 users took 347 ms on this
/// machine, and the keeper installs up to 16 at a time after a restart;
/// here, with a million, the install's own call timed out at the 500 ms
/// command timeout); it now unlinks them (`UNLINK`: freed on Redis's
/// background thread). The install may not show in the slow log at 200 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_install_over_a_large_set_does_not_hold_redis() {
    use common::redis_state::RedisClient;
    use issuer_worker::rebuild;
    let own = common::testkit::OwnRedis::start();
    let mut settings = test_settings().await;
    settings.redis.url = own.url();
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(2_000_000).await;
    let (status, body) = api.issue(&campaign, "before").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (db, redis) = (db().await, RedisClient::new(&settings.redis, None).unwrap());
    let plan = rebuild::plan(&settings, &db, &redis, campaign, true, false)
        .await
        .unwrap()
        .expect("forced");

    let keys = CampaignKeys::new(&campaign);
    let mut conn = redis::Client::open(own.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // A million members, in steps short of the connection's response
    // timeout. They stand for the users of a large campaign's rows, which
    // a real rebuild stages too and keeps; here they are ids no request can
    // carry (a space in each), which the install skips (it writes a `none`
    // record only for a valid user it drops), so that it only frees them.
    let fill = redis::Script::new(
        "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do \
           redis.call('SADD', KEYS[1], 'user ' .. i) end \
         return redis.call('SCARD', KEYS[1])",
    );
    let mut added = 0;
    for step in 0..100 {
        added = fill
            .key(keys.users())
            .arg(step * 10_000 + 1)
            .arg((step + 1) * 10_000)
            .invoke_async(&mut conn)
            .await
            .unwrap();
    }
    assert!(added >= 1_000_000, "{added}");
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "slowlog-log-slower-than", "200000"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut conn)
        .await
        .unwrap();

    let report = rebuild::install(&settings, &db, &redis, plan)
        .await
        .unwrap();
    assert_eq!(report.users, 1, "{report:?}");
    let held: i64 = redis::cmd("SLOWLOG")
        .arg("LEN")
        .query_async(&mut conn)
        .await
        .unwrap();
    if held > 0 {
        let slow: redis::Value = redis::cmd("SLOWLOG")
            .arg("GET")
            .query_async(&mut conn)
            .await
            .unwrap();
        panic!("Redis held for 200 ms or more: {slow:?}");
    }
    let (users, taken) = common::testkit::gate_state_at(&own.url(), &campaign).await;
    assert_eq!((users, taken), (vec!["before".to_owned()], Some(1)));
    api.stop().await;
}

/// A close answered while the campaign's meta is missing (Redis restarted
/// empty, the rebuild under way) is kept by the rebuild's install, whatever
/// row it read: `close.lua` had no meta to write on, and the install loaded
/// the meta `open` from a row read before the close (found by a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_answered_while_the_meta_is_missing_survives_the_rebuild() {
    use common::ids::{CouponId, UserId};
    use common::redis_state::{
        CampaignMeta, CampaignMetas, EpochState, Gate, GateReply, Installed, RebuildId,
        RedisClient, Refusal, Repair,
    };
    let settings = test_settings().await;
    let redis = RedisClient::new(&settings.redis, None).unwrap();
    let (metas, repair) = (
        CampaignMetas::new(redis.clone()),
        Repair::new(redis.clone()),
    );
    let campaign = CampaignId::new();
    let (state, server) = metas.epoch_state(&campaign).await.unwrap();
    assert_eq!(state, EpochState::Missing);
    let token = "a-rebuild";
    repair.begin_rebuild(&campaign, token).await.unwrap();
    repair
        .stage(&campaign, token, &["before".to_owned()])
        .await
        .unwrap();
    // The rebuild has read the row (open); the close is answered now.
    assert!(
        !metas.close(&campaign).await.unwrap(),
        "the meta was missing"
    );
    let read_before_the_close = CampaignMeta {
        stock: 10,
        starts_at: chrono::Utc::now() - chrono::Duration::minutes(1),
        ends_at: None,
        closed: false,
        room: None,
    };
    let rebuild = RebuildId {
        token,
        server: &server,
    };
    let installed = repair
        .install(&campaign, &rebuild, &read_before_the_close, &[], 60, None)
        .await
        .unwrap();
    assert_eq!(installed, Installed::Done { recorded: 0 });
    let taken = Gate::new(redis.clone())
        .take(
            &campaign,
            &UserId::parse("after").unwrap(),
            &CouponId::new(),
        )
        .await
        .unwrap();
    assert!(
        matches!(taken, GateReply::Refused(Refusal::Closed)),
        "a slot was taken after the close: {taken:?}"
    );
    redis_del(&[
        CampaignKeys::new(&campaign).meta(),
        CampaignKeys::new(&campaign).closed(),
    ])
    .await;
}

/// The release docs/RUNBOOK.md gives for a closed campaign's memory (and
/// the harness does after each run): its users set and slots hash removed,
/// its meta, close mark and counter kept. Every request is still answered
/// 410 `closed` (`sync`'s gate reads the meta before the users), the
/// holder's too, `/coupons/me` answers from the row, and the counter still
/// counts the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_campaign_whose_users_and_slots_were_released_still_answers_closed() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let worker = spawn_worker(&settings).await;
    let db = db().await;
    let campaign = api.open_campaign(10).await;
    let (status, body) = api.issue(&campaign, "holder").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_for_rows(&db, &campaign, 1, Duration::from_secs(30)).await;
    let (status, body) = api.close_campaign(&campaign).await;
    assert!(status.is_success(), "{status}: {body}");
    let keys = CampaignKeys::new(&campaign);
    redis_del(&[keys.users(), keys.slots()]).await;

    for user in ["holder", "newcomer"] {
        let (status, body) = api.issue(&campaign, user).await;
        assert_eq!(
            (status, body["outcome"].as_str()),
            (StatusCode::GONE, Some("closed")),
            "{user}: {body}"
        );
    }
    let (_, body) = api.my_coupon(&campaign, "holder").await;
    assert_eq!(body["state"], "issued", "{body}");
    let (_, body) = api.campaign(&campaign).await;
    assert_eq!(body["taken"], 1, "{body}");
    assert_eq!(gate_state(&campaign).await, (Vec::new(), Some(1)));
    redis_del(&[keys.meta(), keys.closed(), keys.taken()]).await;
    worker.stop().await;
    api.stop().await;
}
