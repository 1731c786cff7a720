//! Every error row of the contract, each with its status and `outcome`, and
//! with Redis, the topic and the table left as they were.

use std::time::Duration;

use crate::helpers::*;
use chrono::Utc;
use common::entities::campaigns;
use common::ids::CampaignId;
use common::settings::{AuthMode, Settings};
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

/// What an issue request could have changed.
#[derive(Debug, PartialEq)]
struct Footprint {
    gate: (Vec<String>, Option<i64>),
    messages: i64,
    rows: u64,
}

async fn footprint(settings: &Settings, campaign: &CampaignId) -> Footprint {
    Footprint {
        gate: gate_state(campaign).await,
        messages: topic_messages(&settings.kafka.brokers, &settings.kafka.topic).await,
        rows: rows(&db().await, campaign).await,
    }
}

fn assert_reply(reply: &(StatusCode, Value), status: StatusCode, outcome: &str) {
    assert_eq!(reply.0, status, "{}", reply.1);
    assert_eq!(reply.1["outcome"], outcome, "{}", reply.1);
    assert!(reply.1["message"].is_string(), "{}", reply.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_user_credentials_get_401_and_change_nothing() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let before = footprint(&settings, &campaign).await;

    let forged = mint_jwt_with("mallory", 3600, "not-the-secret");
    let expired = mint_jwt("alice", -3600);
    // {"alg":"none"} with a valid-looking payload and no signature.
    let alg_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
                    eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    let bad_subject = mint_jwt("has space", 3600);
    for token in [
        forged.as_str(),
        expired.as_str(),
        alg_none,
        "garbage",
        bad_subject.as_str(),
    ] {
        let reply = api.issue_with_token(&campaign, token).await;
        assert_reply(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let missing = reply(
        api.client
            .post(format!("{}/api/v1/campaigns/{campaign}/issue", api.address))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_reply(&missing, StatusCode::UNAUTHORIZED, "unauthorized");
    let me = reply(
        api.client
            .get(format!(
                "{}/api/v1/campaigns/{campaign}/coupons/me",
                api.address
            ))
            .bearer_auth(&forged)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_reply(&me, StatusCode::UNAUTHORIZED, "unauthorized");

    assert_eq!(footprint(&settings, &campaign).await, before);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_routes_answer_401_without_the_token_and_403_to_users() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(5).await;
    let user = mint_jwt("alice", 3600);
    let base = format!("{}/api/v1/campaigns", api.address);
    let routes = [
        ("POST", base.clone()),
        ("GET", base.clone()),
        ("GET", format!("{base}/{campaign}")),
        ("POST", format!("{base}/{campaign}/close")),
        ("POST", format!("{base}/{campaign}/archive")),
        ("GET", format!("{base}/{campaign}/coupons")),
    ];
    for (method, url) in &routes {
        let send = |token: Option<&str>| {
            let mut req = api
                .client
                .request(method.parse().unwrap(), url)
                .json(&json!({ "name": "x", "stock": 1 }));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send()
        };
        assert_reply(
            &reply(send(None).await.unwrap()).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert_reply(
            &reply(send(Some("wrong-token")).await.unwrap()).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert_reply(
            &reply(send(Some(&user)).await.unwrap()).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    let (_, view) = api.campaign(&campaign).await;
    assert_eq!(
        view["state"], "open",
        "a refused close changed the campaign"
    );
    api.stop().await;
}

/// An archive frees a closed campaign's users and slots from Redis for good.
/// An unknown campaign is 404 and an open one 409 `not_closed`, each
/// changing nothing (an open gate without its users set would let a holder
/// take a second slot). A closed one answers its view with `archived_at`,
/// keeps its count, still refuses issue requests `closed`, answers a second
/// archive the same; and a rebuild (the gate keeper's after a Redis
/// restart) loads its meta and count without its users. Before the mark
/// in the row, a rebuild loaded every user back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_archive_frees_a_closed_campaigns_users_for_good_and_refuses_an_open_one() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let archive = |id: CampaignId| {
        let request = api
            .client
            .post(format!("{}/api/v1/campaigns/{id}/archive", api.address))
            .bearer_auth(ADMIN_TOKEN)
            .send();
        async move { reply(request.await.unwrap()).await }
    };
    assert_reply(
        &archive(CampaignId::new()).await,
        StatusCode::NOT_FOUND,
        "unknown_campaign",
    );

    let campaign = api.open_campaign(5).await;
    for user in ["alice", "bob"] {
        let (status, body) = api.issue(&campaign, user).await;
        assert!(status.is_success(), "{status} {body}");
    }
    let before = footprint(&settings, &campaign).await;
    assert_eq!(before.gate, (vec!["alice".into(), "bob".into()], Some(2)));
    assert_reply(&archive(campaign).await, StatusCode::CONFLICT, "not_closed");
    assert_eq!(footprint(&settings, &campaign).await, before);
    assert_eq!(api.campaign(&campaign).await.1["archived_at"], Value::Null);

    api.close_campaign(&campaign).await;
    // A reconcile, rebuild or re-drive holding the campaign's admin lock:
    // 503, nothing changed.
    let redis = common::redis_state::RedisClient::new(&settings.redis, None).unwrap();
    let held = common::lock::acquire_admin(&redis, &campaign, Duration::from_secs(1))
        .await
        .unwrap();
    let closed = footprint(&settings, &campaign).await;
    assert_reply(
        &archive(campaign).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert_eq!(footprint(&settings, &campaign).await, closed);
    assert_eq!(api.campaign(&campaign).await.1["archived_at"], Value::Null);
    held.release().await.unwrap();

    let (status, view) = archive(campaign).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert!(view["archived_at"].is_string(), "{view}");
    assert_eq!(
        (view["taken"].clone(), view["gate"].clone()),
        (json!(2), json!("loaded"))
    );
    assert_eq!(gate_state(&campaign).await, (vec![], Some(2)));
    for user in ["alice", "carol"] {
        assert_reply(
            &api.issue(&campaign, user).await,
            StatusCode::GONE,
            "closed",
        );
    }
    let (status, again) = archive(campaign).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again["archived_at"], view["archived_at"],
        "a second archive moved the mark"
    );

    // No worker: both users' messages are in flight, read from the topic.
    let mut tool = settings.clone();
    tool.kafka.delivery_timeout_ms = 0;
    let report = issuer_worker::rebuild::run(&tool, &db().await, campaign, true)
        .await
        .unwrap();
    assert!(report.archived && report.closed, "{report:?}");
    assert_eq!((report.in_flight, report.users), (2, 2), "{report:?}");
    assert_eq!(
        gate_state(&campaign).await,
        (vec![], Some(2)),
        "the rebuild loaded an archived campaign's users back"
    );
    assert_reply(
        &api.issue(&campaign, "alice").await,
        StatusCode::GONE,
        "closed",
    );

    // `rebuild --force --unarchive`: the users back, the mark gone.
    let report = issuer_worker::rebuild::run_unarchiving(&tool, &db().await, campaign)
        .await
        .unwrap();
    assert!(!report.archived, "{report:?}");
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["alice".into(), "bob".into()], Some(2))
    );
    assert_eq!(api.campaign(&campaign).await.1["archived_at"], Value::Null);
    api.stop().await;
}

async fn campaigns_named(name: &str) -> u64 {
    campaigns::Entity::find()
        .filter(campaigns::Column::Name.eq(name))
        .count(&db().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_campaign_bodies_get_their_status_and_create_nothing() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let name = format!("contract-{}", uuid::Uuid::now_v7());
    let url = format!("{}/api/v1/campaigns", api.address);
    let raw = |body: Vec<u8>, content_type: &str| {
        api.client
            .post(&url)
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let json_body = |v: Value| serde_json::to_vec(&v).unwrap();

    let cases: Vec<(Vec<u8>, &str, StatusCode, &str)> = vec![
        (
            b"{\"name\": \"x\", \"stock\":".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            b"not json".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json_body(json!({"name": name, "stock": 1})),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            json_body(json!({"name": name, "stock": 1, "pad": "x".repeat(20_000)})),
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            json_body(json!({"name": name, "stock": -1})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            json_body(json!({"name": "", "stock": 1})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            json_body(json!({"name": name, "stock": "ten"})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            json_body(json!({"name": name})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            json_body(
                json!({"name": name, "stock": 1, "starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}),
            ),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            json_body(json!({"name": name, "stock": 1, "starts_at": "yesterday"})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        // What PostgreSQL cannot store is refused before it is asked (it
        // used to answer 503, and page the 5xx alert).
        (
            json_body(json!({"name": format!("{name}\u{0}nul"), "stock": 1})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            json_body(json!({"name": name, "stock": 1, "starts_at": "-010000-01-01T00:00:00Z"})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            json_body(json!({"name": name, "stock": 1, "ends_at": "+200000-01-01T00:00:00Z"})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
    ];
    for (body, content_type, status, outcome) in cases {
        let got = reply(raw(body, content_type).await.unwrap()).await;
        assert_reply(&got, status, outcome);
    }
    assert_eq!(
        campaigns_named(&name).await,
        0,
        "a refused body created a campaign"
    );

    // 1 MB body: refused before it is read.
    let big = reply(raw(vec![b'a'; 1 << 20], "application/json").await.unwrap()).await;
    assert_reply(&big, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_malformed_not_open_and_closed_campaigns() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;

    let unknown = CampaignId::new();
    assert_reply(
        &api.issue(&unknown, "alice").await,
        StatusCode::NOT_FOUND,
        "unknown_campaign",
    );
    assert_reply(
        &api.my_coupon(&unknown, "alice").await,
        StatusCode::NOT_FOUND,
        "unknown_campaign",
    );
    assert_reply(
        &api.campaign(&unknown).await,
        StatusCode::NOT_FOUND,
        "unknown_campaign",
    );
    assert_eq!(
        gate_state(&unknown).await,
        (vec![], None),
        "state created for an unknown id"
    );
    let malformed = reply(
        api.client
            .post(format!("{}/api/v1/campaigns/not-a-uuid/issue", api.address))
            .bearer_auth(mint_jwt("alice", 60))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_reply(&malformed, StatusCode::BAD_REQUEST, "bad_request");

    let starts = Utc::now() + chrono::Duration::hours(1);
    let (status, body) = api
        .create_campaign(json!({ "name": "later", "stock": 5, "starts_at": starts }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["state"], "scheduled");
    let later = CampaignId::parse(body["id"].as_str().unwrap()).unwrap();
    let before = footprint(&settings, &later).await;
    assert_reply(
        &api.issue(&later, "alice").await,
        StatusCode::FORBIDDEN,
        "not_open",
    );
    assert_eq!(footprint(&settings, &later).await, before);

    let campaign = api.open_campaign(5).await;
    let (status, closed) = api.close_campaign(&campaign).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(closed["state"], "closed");
    let before = footprint(&settings, &campaign).await;
    assert_reply(
        &api.issue(&campaign, "alice").await,
        StatusCode::GONE,
        "closed",
    );
    assert_eq!(footprint(&settings, &campaign).await, before);

    let ends = Utc::now() + chrono::Duration::milliseconds(300);
    let (_, body) = api
        .create_campaign(json!({ "name": "short", "stock": 5, "ends_at": ends }))
        .await;
    let short = CampaignId::parse(body["id"].as_str().unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_reply(
        &api.issue(&short, "alice").await,
        StatusCode::GONE,
        "closed",
    );

    // An end before 1970 is an end like any other (not "no end").
    let (status, body) = api
        .create_campaign(json!({
            "name": "long ago", "stock": 5,
            "starts_at": "1960-01-01T00:00:00Z", "ends_at": "1965-01-01T00:00:00Z",
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "closed", "{body}");
    let ancient = CampaignId::parse(body["id"].as_str().unwrap()).unwrap();
    let before = footprint(&settings, &ancient).await;
    assert_reply(
        &api.issue(&ancient, "alice").await,
        StatusCode::GONE,
        "closed",
    );
    assert_eq!(footprint(&settings, &ancient).await, before);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_over_the_rate_limit_gets_429_with_retry_after_and_spends_no_stock() {
    let mut settings = test_settings().await;
    settings.rate_limit.per_user.per_second = 1;
    settings.rate_limit.per_user.burst = 2;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(100).await;

    let started = std::time::Instant::now();
    let responses = futures::future::join_all((0..20).map(|_| {
        api.client
            .post(format!("{}/api/v1/campaigns/{campaign}/issue", api.address))
            .bearer_auth(mint_jwt("hammer", 60))
            .send()
    }))
    .await;
    let elapsed = started.elapsed().as_secs();
    let mut limited = 0;
    for res in responses {
        let res = res.unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry), "retry-after {retry}");
            assert_eq!(reply(res).await.1["outcome"], "rate_limited");
            limited += 1;
        }
    }
    // A burst of 2, then one token a second while the requests were served.
    assert!(
        limited >= 20 - 2 - (elapsed + 1),
        "only {limited} of 20 limited in {elapsed} s"
    );
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["hammer".to_owned()], Some(1))
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_routes_and_methods_answer_json() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let r = reply(
        api.client
            .get(format!("{}/nope", api.address))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_reply(&r, StatusCode::NOT_FOUND, "not_found");
    let r = reply(
        api.client
            .delete(format!("{}/api/v1/campaigns", api.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_reply(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trusted_header_mode_takes_the_user_from_x_user_id() {
    let mut settings = test_settings().await;
    settings.auth.mode = AuthMode::TrustedHeader;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(5).await;
    let send = |value: Option<&str>| {
        let mut req = api
            .client
            .post(format!("{}/api/v1/campaigns/{campaign}/issue", api.address));
        if let Some(v) = value {
            req = req.header("x-user-id", v);
        }
        req.send()
    };
    let ok = reply(send(Some("gateway-user")).await.unwrap()).await;
    assert_eq!(ok.0, StatusCode::ACCEPTED, "{}", ok.1);
    assert_eq!(ok.1["outcome"], "accepted");
    assert_reply(
        &reply(send(None).await.unwrap()).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_reply(
        &reply(send(Some("bad user")).await.unwrap()).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["gateway-user".to_owned()], Some(1))
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_and_metrics() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(5).await;
    api.issue(&campaign, "alice").await;

    let health = reply(
        api.client
            .get(format!("{}/healthz", api.address))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(health.0, StatusCode::OK);
    let ready = reply(
        api.client
            .get(format!("{}/readyz", api.ops_address))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ready.0, StatusCode::OK);
    assert_eq!(ready.1["status"], "ready");
    assert_eq!(ready.1["strategy"], "sync");
    assert_eq!(ready.1["dependencies"]["redis"], "up");
    assert_eq!(ready.1["dependencies"]["postgres"], "up");
    assert_eq!(ready.1["dependencies"]["kafka"], "up");

    let metrics = api
        .client
        .get(format!("{}/metrics", api.ops_address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("issue_outcomes_total{outcome=\"accepted\",strategy=\"sync\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("api_info{strategy=\"sync\""), "{metrics}");
    assert!(
        metrics.contains("route=\"/api/v1/campaigns/{id}/issue\""),
        "{metrics}"
    );
    assert!(
        !metrics.contains(&campaign.to_string()),
        "a campaign id leaked into a label"
    );
    api.stop().await;
}
