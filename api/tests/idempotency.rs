//! `Idempotency-Key` on the writes: replays, requests still running, keys
//! reused for another request, keys scoped by caller, replies that ask for
//! a retry not kept, and racing retries that never both run.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::time::Duration;

use common::ids::CampaignId;
use helpers::*;
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

    // A refusal is a reply like any other: replayed too.
    let other = api.open_campaign(0).await;
    let k2 = key();
    let sold_out = issue(&api, &other, "bob", Some(&k2)).await;
    assert_eq!(sold_out.status, StatusCode::GONE);
    let again = issue(&api, &other, "bob", Some(&k2)).await;
    assert_eq!(again.status, StatusCode::GONE);
    assert!(again.replayed());
    assert_eq!(again.body, sold_out.body);
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
    api.stop().await;
}
