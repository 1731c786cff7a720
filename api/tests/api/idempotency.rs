//! `Idempotency-Key` on the writes: replays, requests still running, keys
//! reused for another request, keys scoped by caller, replies that ask for
//! a retry not kept, and racing retries that never both run.

use std::time::Duration;

use crate::helpers::*;
use common::ids::CampaignId;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// A reply with its headers.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    async fn of(res: reqwest::Response) -> Self {
        let headers = res.headers().clone();
        let (status, body) = reply(res).await;
        Self {
            status,
            headers,
            body,
        }
    }

    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

async fn issue(api: &TestApi, campaign: &CampaignId, user: &str, key: Option<&str>) -> Reply {
    let mut req = api
        .client
        .post(format!("{}/api/v1/campaigns/{campaign}/issue", api.address))
        .bearer_auth(mint_jwt(user, 3600));
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    Reply::of(req.send().await.unwrap()).await
}

async fn create(api: &TestApi, body: &str, key: &str) -> Reply {
    let res = api
        .client
        .post(format!("{}/api/v1/campaigns", api.address))
        .bearer_auth(ADMIN_TOKEN)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", key)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    Reply::of(res).await
}

fn key() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_issue_gets_its_first_reply_again() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let k = key();

    let first = issue(&api, &campaign, "alice", Some(&k)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert_eq!(first.body["outcome"], "accepted");
    assert!(!first.replayed());

    let again = issue(&api, &campaign, "alice", Some(&k)).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(again.body, first.body, "not the first reply");
    assert!(again.replayed());
    assert_eq!(
        again.headers.get("content-type").unwrap(),
        "application/json"
    );

    // Without the key, the same user is a duplicate, as always.
    let plain = issue(&api, &campaign, "alice", None).await;
    assert_eq!(plain.status, StatusCode::CONFLICT);
    assert_eq!(plain.body["outcome"], "duplicate");
    // One slot, whatever the retries.
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["alice".to_owned()], Some(1))
    );

    // A refusal changed nothing and keeps no record: its retry runs again
    // (and, nothing having changed, is refused again).
    let other = api.open_campaign(0).await;
    let k2 = key();
    let bob = format!("bob-{}", key());
    let sold_out = issue(&api, &other, &bob, Some(&k2)).await;
    assert_eq!(sold_out.status, StatusCode::GONE);
    assert_eq!(records_of(&caller(&bob)).await, 0);
    let again = issue(&api, &other, &bob, Some(&k2)).await;
    assert_eq!(again.status, StatusCode::GONE);
    assert!(!again.replayed());
    api.stop().await;
}

/// The caller a user's keys belong to (as the api names it).
fn caller(user: &str) -> String {
    format!("user:{user}")
}

/// How many records (running or kept) `caller` has in Redis: the members
/// of its index, `idempotency:{<digest of caller>}`.
async fn records_of(caller: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update((caller.len() as u64).to_be_bytes());
    hasher.update(caller.as_bytes());
    let index = format!("idempotency:{{{:x}}}", hasher.finalize());
    redis::cmd("ZCARD")
        .arg(index)
        .query_async(&mut common::testkit::redis().await)
        .await
        .unwrap()
}

/// What refuses before the key is claimed keeps nothing: 300 requests with
/// fresh keys on a malformed id (400) once kept 300 records for 24 h; and
/// the per-user bucket (429) answers before the claim too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_that_change_nothing_keep_no_record() {
    let mut settings = test_settings().await;
    settings.rate_limit.per_user.per_second = 1;
    settings.rate_limit.per_user.burst = 1;
    let api = spawn_api(&settings).await;
    let user = format!("u-{}", key());
    for _ in 0..300 {
        let res = api
            .client
            .post(format!("{}/api/v1/campaigns/not-a-uuid/issue", api.address))
            .bearer_auth(mint_jwt(&user, 3600))
            .header("Idempotency-Key", key())
            .send()
            .await
            .unwrap();
        assert!(
            [StatusCode::BAD_REQUEST, StatusCode::TOO_MANY_REQUESTS].contains(&res.status()),
            "{}",
            res.status()
        );
    }
    assert_eq!(records_of(&caller(&user)).await, 0);
    let campaign = api.open_campaign(10).await;
    let mut limited = 0;
    for _ in 0..5 {
        let r = issue(&api, &campaign, &user, Some(&key())).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert!(limited >= 3, "{limited} limited");
    // Only the one that took a slot is kept.
    assert_eq!(records_of(&caller(&user)).await, 1);
    api.stop().await;
}

/// One caller keeps at most `idempotency.max_per_caller` records: past it
/// a new key is answered 429, a kept one still replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_caller_keeps_a_bounded_number_of_records() {
    let mut settings = test_settings().await;
    settings.idempotency.max_per_caller = 3;
    let api = spawn_api(&settings).await;
    let user = format!("u-{}", key());
    let mut keys = Vec::new();
    for _ in 0..3 {
        let campaign = api.open_campaign(10).await;
        let k = key();
        assert_eq!(
            issue(&api, &campaign, &user, Some(&k)).await.status,
            StatusCode::ACCEPTED
        );
        keys.push((campaign, k));
    }
    assert_eq!(records_of(&caller(&user)).await, 3);
    let fourth = api.open_campaign(10).await;
    let refused = issue(&api, &fourth, &user, Some(&key())).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert!(refused.headers.get("retry-after").is_some());
    assert_eq!(gate_state(&fourth).await.0, Vec::<String>::new());
    let (campaign, k) = &keys[0];
    let replay = issue(&api, campaign, &user, Some(k)).await;
    assert!(replay.replayed());
    // Without a key, the user is served as ever.
    assert_eq!(
        issue(&api, &fourth, &user, None).await.status,
        StatusCode::ACCEPTED
    );
    api.stop().await;
}

/// Two spellings of one campaign id are one request: a retry in upper case
/// replays instead of being refused as another request (422).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_in_another_spelling_of_the_id_is_the_same_request() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let k = key();
    let first = issue(&api, &campaign, "alice", Some(&k)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let upper = campaign.to_string().to_uppercase();
    let res = api
        .client
        .post(format!("{}/api/v1/campaigns/{upper}/issue", api.address))
        .bearer_auth(mint_jwt("alice", 3600))
        .header("Idempotency-Key", &k)
        .send()
        .await
        .unwrap();
    let again = Reply::of(res).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_used_for_another_request_is_refused_and_keys_belong_to_their_caller() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let elsewhere = api.open_campaign(10).await;
    let k = key();
    assert_eq!(
        issue(&api, &campaign, "alice", Some(&k)).await.status,
        StatusCode::ACCEPTED
    );

    // Same caller, same key, another path: 422, and nothing issued there.
    let reused = issue(&api, &elsewhere, "alice", Some(&k)).await;
    assert_eq!(
        reused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reused.body
    );
    assert_eq!(reused.body["outcome"], "idempotency_key_reused");
    assert_eq!(gate_state(&elsewhere).await, (vec![], Some(0)));

    // Another caller with the same key: its own key, its own request. It
    // neither replays alice's reply nor learns that she used the key.
    let bob = issue(&api, &campaign, "bob", Some(&k)).await;
    assert_eq!(bob.status, StatusCode::ACCEPTED, "{}", bob.body);
    assert!(!bob.replayed());
    assert_ne!(bob.body["coupon_id"], reused.body["coupon_id"]);

    // Keys that are not 1–255 visible ASCII characters: 400, nothing run.
    for bad in ["", "has space", &"k".repeat(256)] {
        let r = issue(&api, &campaign, "carol", Some(bad)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}: {}", r.body);
    }
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["alice".to_owned(), "bob".to_owned()], Some(2))
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_while_the_first_runs_is_told_to_wait_and_racing_retries_run_once() {
    let mut settings = test_settings().await;
    // The first request stops after the gate for a second (under the 2 s
    // bound between the take and produce), as a slow step would.
    settings.faults.pause_after_gate_user = Some("slow".into());
    settings.faults.pause_after_gate_ms = 1_000;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let k = key();

    let first = {
        let (api_client, address, k) = (api.client.clone(), api.address.clone(), k.clone());
        tokio::spawn(async move {
            let res = api_client
                .post(format!("{address}/api/v1/campaigns/{campaign}/issue"))
                .bearer_auth(mint_jwt("slow", 3600))
                .header("Idempotency-Key", k)
                .send()
                .await
                .unwrap();
            Reply::of(res).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = issue(&api, &campaign, "slow", Some(&k)).await;
    assert_eq!(during.status, StatusCode::CONFLICT, "{}", during.body);
    assert_eq!(during.body["outcome"], "request_in_progress");
    assert_eq!(during.headers.get("retry-after").unwrap(), "1");
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let after = issue(&api, &campaign, "slow", Some(&k)).await;
    assert!(after.replayed());
    assert_eq!(after.body, first.body);

    // Twenty retries at once with one key: one runs, the others wait or
    // replay; never a second take.
    let k = key();
    let replies =
        futures::future::join_all((0..20).map(|_| issue(&api, &campaign, "racer", Some(&k)))).await;
    let ran: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED && !r.replayed())
        .collect();
    assert_eq!(ran.len(), 1, "requests that ran");
    for r in &replies {
        match r.status {
            StatusCode::ACCEPTED => assert_eq!(r.body, ran[0].body),
            StatusCode::CONFLICT => assert_eq!(r.body["outcome"], "request_in_progress"),
            other => panic!("{other}: {}", r.body),
        }
    }
    let (users, count) = gate_state(&campaign).await;
    assert_eq!((users.len(), count), (2, Some(2)), "{users:?}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_that_asks_for_a_retry_is_not_kept() {
    let mut settings = test_settings().await;
    settings.rate_limit.per_user.per_second = 1;
    settings.rate_limit.per_user.burst = 1;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    assert_eq!(
        issue(&api, &campaign, "alice", Some(&key())).await.status,
        StatusCode::ACCEPTED
    );
    let k = key();
    let limited = issue(&api, &campaign, "alice", Some(&k)).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // The key was freed: the retry runs (and finds alice's slot) instead
    // of replaying the 429.
    let retried = issue(&api, &campaign, "alice", Some(&k)).await;
    assert_eq!(retried.status, StatusCode::CONFLICT, "{}", retried.body);
    assert_eq!(retried.body["outcome"], "duplicate");
    assert!(!retried.replayed());
    let scrape = api.scrape().await;
    assert_eq!(
        scrape.sum("idempotency_keys_total", &[("result", "freed")]),
        1.0
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_campaign_creation_creates_one_campaign() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let name = format!("idem-{}", key());
    let k = key();
    let body = json!({ "name": name, "stock": 5 }).to_string();

    let first = create(&api, &body, &k).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    // The same body, spaced and ordered differently: the same request.
    let respaced = format!("{{ \"stock\" : 5 , \"name\" : \"{name}\" }}");
    let again = create(&api, &respaced, &k).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed());
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.headers.get("location"), first.headers.get("location"));

    let other = create(&api, &json!({ "name": name, "stock": 6 }).to_string(), &k).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["outcome"], "idempotency_key_reused");

    // A create whose first try's reply was lost (its record gone, the row
    // there, as after a 503 on a commit that did happen): the retry's id
    // comes from the key, finds the row, and answers with it, not with a
    // second campaign; another body under that key is still refused.
    let lost_key = key();
    let lost_name = format!("idem-lost-{}", key());
    let lost_body = json!({ "name": lost_name, "stock": 7 }).to_string();
    let made = create(&api, &lost_body, &lost_key).await;
    assert_eq!(made.status, StatusCode::CREATED);
    forget_records(&caller_of_admin()).await;
    let retried = create(&api, &lost_body, &lost_key).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.body);
    assert!(!retried.replayed(), "the record was gone: this ran again");
    assert_eq!(retried.body["id"], made.body["id"]);
    forget_records(&caller_of_admin()).await;
    let reused = create(
        &api,
        &json!({ "name": lost_name, "stock": 8 }).to_string(),
        &lost_key,
    )
    .await;
    assert_eq!(
        reused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reused.body
    );

    let (_, list) = {
        let res = api
            .client
            .get(format!("{}/api/v1/campaigns?limit=10000", api.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        reply(res).await
    };
    let named = list["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name.as_str())
        .count();
    assert_eq!(named, 1, "campaigns created");
    let lost_named = list_named(&api, &lost_name).await;
    assert_eq!(lost_named, 1, "campaigns created after a lost reply");
    api.stop().await;
}

/// A create retried after Redis lost the campaign (a restart that came back
/// empty wipes the create's record too, so the retry runs again) leaves the
/// gate alone: it used to load the meta on the empty state, unfencing the
/// campaign with a count of 0 while its users held slots, so that a user
/// with a coupon got a second one. The gate keeper rebuilds the campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_retried_after_redis_lost_the_campaign_leaves_it_fenced() {
    use common::keys::CampaignKeys;
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let k = key();
    let body = json!({ "name": format!("idem-gate-{}", key()), "stock": 5 }).to_string();
    let made = create(&api, &body, &k).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let campaign = CampaignId::parse(made.body["id"].as_str().unwrap()).unwrap();
    let holder = format!("holder-{}", key());
    let first = issue(&api, &campaign, &holder, None).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);

    // Redis came back empty: the campaign's gate state and the record gone.
    let keys = CampaignKeys::new(&campaign);
    redis_del(&[keys.meta(), keys.users(), keys.taken(), keys.slots()]).await;
    forget_records(&caller_of_admin()).await;
    let retried = create(&api, &body, &k).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.body);
    assert!(!retried.replayed(), "the record was gone: this ran again");

    let again = issue(&api, &campaign, &holder, None).await;
    assert_eq!(
        again.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the retried create reopened the gate: {}",
        again.body
    );
    api.stop().await;
}

fn caller_of_admin() -> String {
    "admin".to_owned()
}

/// Deletes every record of `caller` (as a reply lost with its record).
async fn forget_records(caller: &str) {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update((caller.len() as u64).to_be_bytes());
    hasher.update(caller.as_bytes());
    let index = format!("idempotency:{{{:x}}}", hasher.finalize());
    let mut conn = common::testkit::redis().await;
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    for member in members {
        let _: () = redis::cmd("DEL")
            .arg(&member)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("DEL")
        .arg(&index)
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn list_named(api: &TestApi, name: &str) -> usize {
    let res = api
        .client
        .get(format!("{}/api/v1/campaigns?limit=10000", api.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (_, list) = reply(res).await;
    list["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name)
        .count()
}

/// With a Redis of their own (`idempotency.redis`), the records live there
/// and nowhere near the gate: a retry is replayed from it, and with it down
/// a request that carries a key gets 503 while one without still issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_can_live_in_a_redis_of_their_own() {
    let records = common::testkit::OwnRedis::start();
    let mut settings = test_settings().await;
    settings.idempotency.redis = Some(common::settings::RedisSettings {
        url: records.url(),
        ..Default::default()
    });
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let k = key();
    let first = issue(&api, &campaign, "own-records", Some(&k)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let again = issue(&api, &campaign, "own-records", Some(&k)).await;
    assert!(again.replayed(), "{:?}", again.headers);
    assert_eq!(again.body, first.body);

    let mut conn = redis::Client::open(records.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let kept: Vec<String> = redis::cmd("KEYS")
        .arg("idempotency:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept.len(), 2, "a record and its caller's index: {kept:?}");
    let (members, _) = gate_state(&campaign).await;
    assert_eq!(members, ["own-records"]);

    drop(records);
    let keyed = issue(&api, &campaign, "keyed", Some(&key())).await;
    assert_eq!(
        keyed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        keyed.body
    );
    let plain = issue(&api, &campaign, "plain", None).await;
    assert_eq!(plain.status, StatusCode::ACCEPTED, "{}", plain.body);
    assert_eq!(gate_state(&campaign).await.0.len(), 2);
    api.stop().await;
}
