//! The waiting room: joins get dense, unique positions (early joiners
//! shuffled at the start from the recorded seed), positions are admitted at
//! the room's rate and in order, the gate takes slots only for users admitted just
//! now, expired places go to the next, and a sold-out campaign ends every
//! wait at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::helpers::*;
use chrono::Utc;
use common::ids::CampaignId;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn room_campaign(
    api: &TestApi,
    stock: i64,
    rate: i64,
    ttl: i64,
    starts_in_ms: i64,
) -> (CampaignId, Value) {
    let starts_at = Utc::now() + chrono::Duration::milliseconds(starts_in_ms);
    let (status, body) = api
        .create_campaign(json!({
            "name": "room sale",
            "stock": stock,
            "starts_at": starts_at,
            "waiting_room": { "admit_per_second": rate, "admission_ttl_secs": ttl },
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        CampaignId::parse(body["id"].as_str().unwrap()).unwrap(),
        body,
    )
}

async fn join(api: &TestApi, campaign: &CampaignId, user: &str) -> (StatusCode, Value) {
    let res = api
        .client
        .post(format!("{}/api/v1/campaigns/{campaign}/room", api.address))
        .bearer_auth(mint_jwt(user, 3600))
        .send()
        .await
        .unwrap();
    reply(res).await
}

async fn place(api: &TestApi, campaign: &CampaignId, user: &str) -> Value {
    let res = api
        .client
        .get(format!(
            "{}/api/v1/campaigns/{campaign}/room/me",
            api.address
        ))
        .bearer_auth(mint_jwt(user, 3600))
        .send()
        .await
        .unwrap();
    let (status, body) = reply(res).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Polls the user's place until it reads `state`.
async fn wait_for(
    api: &TestApi,
    campaign: &CampaignId,
    user: &str,
    state: &str,
    within: Duration,
) -> Value {
    let started = Instant::now();
    loop {
        let body = place(api, campaign, user).await;
        if body["state"] == state {
            return body;
        }
        assert!(
            started.elapsed() < within,
            "{user} not {state} within {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_are_let_in_at_the_rate_in_position_order_and_only_they_can_issue() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let (campaign, view) = room_campaign(&api, 100, 4, 120, 0).await;
    assert_eq!(view["waiting_room"]["admit_per_second"], 4);
    assert_eq!(view["waiting_room"]["admission_ttl_secs"], 120);
    assert!(view["waiting_room"]["shuffle_seed"].is_i64());

    let users: Vec<String> = (1..=12).map(|i| format!("fifo-{i}")).collect();
    for (i, user) in users.iter().enumerate() {
        let (status, body) = join(&api, &campaign, user).await;
        assert!(
            status == StatusCode::ACCEPTED || status == StatusCode::OK,
            "{status}: {body}"
        );
        assert_eq!(
            body["position"],
            i + 1,
            "joined after the start: first come, first served"
        );
        // Joining again: the same place.
        let (_, again) = join(&api, &campaign, user).await;
        assert_eq!(again["position"], i + 1);
    }
    let last = users.last().unwrap();
    let (status, body) = api.issue(&campaign, last).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["outcome"], "not_admitted");
    let (status, body) = api.issue(&campaign, "never-joined").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_admitted"))
    );

    // Admitted at 4 a second, always a prefix of the positions.
    let started = Instant::now();
    let mut let_in_at = BTreeMap::new();
    while let_in_at.len() < users.len() {
        let mut states = Vec::new();
        for user in &users {
            states.push(
                place(&api, &campaign, user).await["state"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        let first_waiting = states
            .iter()
            .position(|s| s == "waiting")
            .unwrap_or(states.len());
        assert!(
            states[first_waiting..].iter().all(|s| s == "waiting"),
            "admitted out of order: {states:?}"
        );
        for i in 0..first_waiting {
            let_in_at.entry(i).or_insert_with(|| started.elapsed());
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spread = let_in_at[&(users.len() - 1)].saturating_sub(let_in_at[&0]);
    assert!(
        spread >= Duration::from_millis(2_000),
        "12 users at 4 a second admitted within {spread:?}"
    );

    // Admitted users issue; the admission says until when.
    let admitted = place(&api, &campaign, &users[0]).await;
    assert_eq!(admitted["state"], "admitted");
    assert!(admitted["admitted_until"].is_string(), "{admitted}");
    let (status, body) = api.issue(&campaign, &users[0]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(place(&api, &campaign, &users[0]).await["state"], "taken");
    let scrape = api.scrape().await;
    assert_eq!(scrape.sum("waiting_room_wait_seconds_count", &[]), 1.0);
    assert!(
        scrape.sum(
            "waiting_room_replies_total",
            &[("call", "look"), ("state", "waiting")]
        ) > 0.0
    );

    // Without a waiting room the queue is not there; unknown campaigns 404.
    let plain = api.open_campaign(10).await;
    let (status, body) = join(&api, &plain, "alice").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_waiting_room"))
    );
    let (status, body) = join(&api, &CampaignId::new(), "alice").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_campaign"))
    );
    // A user who never joined: no position; the room's rate and start, as
    // every reply about a campaign with a room (a waiting page's estimate).
    let nobody = place(&api, &campaign, "nobody").await;
    assert_eq!(nobody["state"], "none");
    assert!(nobody.get("position").is_none(), "{nobody}");
    assert_eq!(nobody["admit_per_second"], 4);
    let millis = |v: &Value| {
        v.as_str()
            .unwrap()
            .parse::<chrono::DateTime<Utc>>()
            .unwrap()
            .timestamp_millis()
    };
    assert_eq!(millis(&nobody["starts_at"]), millis(&view["starts_at"]));
    assert_eq!(
        join(&api, &campaign, &users[0]).await.1["admit_per_second"],
        4
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn early_joiners_are_shuffled_at_the_start_from_the_recorded_seed() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let (campaign, view) = room_campaign(&api, 100, 1_000, 120, 2_000).await;
    let seed = view["waiting_room"]["shuffle_seed"].as_i64().unwrap();

    let early: Vec<String> = (1..=30).map(|i| format!("early-{i}")).collect();
    for user in &early {
        let (status, body) = join(&api, &campaign, user).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["state"], "waiting");
        assert!(
            body["position"].is_null(),
            "placed before the start: {body}"
        );
    }
    let (status, body) = api.issue(&campaign, &early[0]).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_open"))
    );
    tokio::time::sleep(Duration::from_millis(2_200)).await;

    let mut positions = Vec::new();
    for (j, user) in early.iter().enumerate() {
        let body = place(&api, &campaign, user).await;
        let position = body["position"]
            .as_u64()
            .unwrap_or_else(|| panic!("{body}"));
        assert_eq!(
            position,
            common::redis_state::shuffled_position(j as u64 + 1, early.len() as u64, seed),
            "not the recorded seed's order"
        );
        positions.push(position);
    }
    assert_ne!(positions, (1..=30).collect::<Vec<_>>(), "not shuffled");
    positions.sort_unstable();
    assert_eq!(
        positions,
        (1..=30).collect::<Vec<_>>(),
        "not dense and unique"
    );
    let (_, late) = join(&api, &campaign, "late").await;
    assert_eq!(
        late["position"], 31,
        "after the start: first come, first served"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admission_that_expires_gives_its_place_to_the_next() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    // 2 a second, 1 s to issue, nobody issues.
    let (campaign, _) = room_campaign(&api, 100, 2, 1, 0).await;
    let users: Vec<String> = (1..=40).map(|i| format!("idle-{i}")).collect();
    for user in &users {
        join(&api, &campaign, user).await;
    }
    let started = Instant::now();
    let expired = wait_for(
        &api,
        &campaign,
        &users[0],
        "expired",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(expired["position"], 1);
    let (status, body) = join(&api, &campaign, &users[0]).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::GONE, Some("expired"))
    );
    assert_eq!(body["position"], 1);
    let (status, body) = api.issue(&campaign, &users[0]).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_admitted"))
    );

    // Three seconds of users asking, as waiting users do: the room moves
    // when it is asked.
    let asking = Instant::now();
    while asking.elapsed() < Duration::from_secs(3) {
        place(&api, &campaign, &users[39]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Read from the back of the line: the room moves while it is read, so
    // a user read waiting before a later one was let in may have been let in
    // between the two reads; read last to first, a user let in means every
    // one before it is let in by the time it is read.
    let mut let_in = 0;
    let mut seen_let_in = false;
    for user in users.iter().rev() {
        match place(&api, &campaign, user).await["state"]
            .as_str()
            .unwrap()
        {
            "admitted" | "expired" => {
                seen_let_in = true;
                let_in += 1;
            }
            "waiting" => assert!(!seen_let_in, "admitted out of order: {user} waits"),
            other => panic!("{other}"),
        }
    }
    // The rate alone admits 2 a second; each expired place is given again.
    let by_rate = (started.elapsed().as_secs_f64() + 1.0) * 2.0;
    assert!(
        f64::from(let_in) > by_rate + 2.0,
        "{let_in} admitted after {:?}: expired places were not given again",
        started.elapsed()
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sold_out_campaign_ends_every_wait_at_once() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let (campaign, _) = room_campaign(&api, 1, 1, 120, 0).await;
    for user in ["first", "second", "third"] {
        join(&api, &campaign, user).await;
    }
    wait_for(&api, &campaign, "first", "admitted", Duration::from_secs(3)).await;
    let (status, body) = api.issue(&campaign, "first").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let third = place(&api, &campaign, "third").await;
    assert_eq!(third["state"], "sold_out", "{third}");
    assert_eq!(third["position"], 3);
    let (status, body) = join(&api, &campaign, "second").await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(
        (body["state"].as_str(), body["outcome"].as_str()),
        (Some("sold_out"), Some("sold_out"))
    );
    assert_eq!(body["position"], 2);
    let (status, body) = join(&api, &campaign, "newcomer").await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::GONE, Some("sold_out"))
    );
    assert!(body.get("position").is_none(), "{body}");

    let (status, body) = api
        .create_campaign(
            json!({ "name": "bad room", "stock": 1, "waiting_room": { "admit_per_second": 0 } }),
        )
        .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_input"))
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_harness_goes_through_the_room_as_a_user_would_and_the_audit_passes() {
    use ngrinder_equivalent::run::{RunRequest, perform};
    use ngrinder_equivalent::spec::{Endpoint, LoadModel, RoomSpec, RunSpec};
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let worker = spawn_worker(&settings).await;
    let spec = RunSpec {
        label: "room".into(),
        targets: vec![api.address.clone()],
        endpoint: Endpoint::Issue,
        waiting_room: Some(RoomSpec {
            admit_per_second: 100,
            admission_ttl_secs: 30,
        }),
        model: LoadModel::Closed {
            vusers: 40,
            ramp_initial: 40,
            ramp_step: 40,
            ramp_interval_secs: 1,
            think_ms: 0,
        },
        duration_secs: None,
        requests: Some(150),
        warmup_secs: 0,
        users: ngrinder_equivalent::users::UserMode::Unique,
        request_timeout_ms: 10_000,
        stop_error_ratio: 1.0,
        stop_zero_tps_secs: 30,
        threads: 2,
    };
    let result = perform(&RunRequest {
        spec,
        admin_url: api.address.clone(),
        ops_url: Some(api.ops_address.clone()),
        admin_token: ADMIN_TOKEN.into(),
        jwt_secret: JWT_SECRET.into(),
        stock: Some(100),
        campaign: None,
        audit: true,
        audit_patience: Duration::from_secs(60),
        redis_url: Some(settings.redis.url.clone()),
    })
    .await
    .unwrap();
    let s = &result.summary;
    assert_eq!(s.errors, 0, "{}", result.render());
    assert_eq!(s.executed, 150, "{}", result.render());
    assert_eq!(
        s.outcomes.get("accepted"),
        Some(&100),
        "{}",
        result.render()
    );
    assert!(result.passed(), "{}", result.render());
    let room = result.room.as_ref().unwrap();
    assert_eq!(room.joins, 150);
    assert!(room.admitted >= 100, "{room:?}");
    assert!(room.status_reads > 0 && room.wait_p99_ms > 0, "{room:?}");
    let audit = result.audit.as_ref().unwrap().room.as_ref().unwrap();
    // Users who came after the stock was gone were told so, not placed.
    assert!((100..=150).contains(&audit.joined), "{audit:?}");
    assert_eq!(audit.slot_users, 100, "{audit:?}");
    assert!(
        audit.admitted >= 100 && audit.failures.is_empty(),
        "{audit:?}"
    );
    worker.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_joins_an_empty_line_is_let_in_at_once_but_a_burst_is_held_to_the_rate() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let (campaign, _) = room_campaign(&api, 100, 10, 120, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = join(&api, &campaign, "alone").await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("admitted")),
        "{body}"
    );
    // Twenty more at once: at 10 a second, with at most a tick (100 ms) of
    // credit kept, no more than a couple of them are admitted right away.
    let mut at_once = 0;
    for i in 0..20 {
        let (status, _) = join(&api, &campaign, &format!("burst-{i}")).await;
        if status == StatusCode::OK {
            at_once += 1;
        }
    }
    assert!(
        at_once <= 3,
        "{at_once} of a burst of 20 admitted at once at 10 a second"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_rate_limited_replayed_by_key_and_refused_once_closed() {
    let mut settings = test_settings().await;
    settings.rate_limit.per_user.per_second = 1;
    settings.rate_limit.per_user.burst = 1;
    let api = spawn_api(&settings).await;
    let (campaign, _) = room_campaign(&api, 10, 1, 120, 60_000).await;
    let keyed = |user: &str, key: &str| {
        api.client
            .post(format!("{}/api/v1/campaigns/{campaign}/room", api.address))
            .bearer_auth(mint_jwt(user, 3600))
            .header("Idempotency-Key", key.to_owned())
    };
    let key = uuid::Uuid::now_v7().to_string();
    let first = keyed("alice", &key).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let (_, first) = reply(first).await;
    // The same key again: the first reply, without running (nor spending
    // the user's token bucket).
    let again = keyed("alice", &key).send().await.unwrap();
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(reply(again).await.1, first);
    // A second join within the second, without a key: the bucket is empty.
    let (status, body) = join(&api, &campaign, "alice").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );

    let (status, _) = api.close_campaign(&campaign).await;
    assert_eq!(status, StatusCode::OK);
    let view = place(&api, &campaign, "alice").await;
    assert_eq!(view["state"], "closed", "{view}");
    // Joined before the start, never placed: its position is null, not absent.
    assert!(
        view["position"].is_null() && view.get("position").is_some(),
        "{view}"
    );
    let (status, body) = join(&api, &campaign, "bob").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::GONE, Some("closed")),
        "{body}"
    );
    api.stop().await;
}

/// A poll of a line where nothing happens writes nothing: the room's
/// counters are written only when they move (the rate's clock once it moved
/// a tick). Shoppers poll; each poll used to be a write to the AOF and to
/// every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_a_line_where_nothing_happens_writes_nothing() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    // From before the campaign exists: the clock's last write (at the join)
    // is then within the time measured, whatever the wait before the polls.
    let started = Instant::now();
    // Started a second ago: the rate has credit for the first joiner at
    // once (a start this instant has none for its first tick).
    let (campaign, _) = room_campaign(&api, 100, 10, 120, -1_000).await;
    let (status, body) = join(&api, &campaign, "in-line").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Every command Redis runs, scripts' own included, from here on.
    let address = common::testkit::redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let mut monitor = tokio::net::TcpStream::connect(address).await.unwrap();
    monitor.write_all(b"MONITOR\r\n").await.unwrap();
    let mut lines = tokio::io::BufReader::new(monitor).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("+OK"));
    let room_key = format!("\"coupon:{{{campaign}}}:room\"");
    let watching = tokio::spawn(async move {
        let mut writes = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("\"HSET\"") && line.contains(&room_key) {
                writes += 1;
            }
            if line.contains("polls-done") {
                break;
            }
        }
        writes
    });

    let polls = 30;
    for _ in 0..polls {
        let view = place(&api, &campaign, "in-line").await;
        assert_eq!(view["state"], "admitted", "{view}");
    }
    let took = started.elapsed();
    let mut redis = common::testkit::redis().await;
    let _: Option<String> = redis::cmd("GET")
        .arg("polls-done")
        .query_async(&mut redis)
        .await
        .unwrap();
    let writes = watching.await.unwrap();
    // The empty line's clock moves with time: one write a tick at most.
    let most = took.as_millis() / 100 + 1;
    assert!(
        writes as u128 <= most,
        "{writes} writes to the room for {polls} polls in {took:?} (at most {most})"
    );
    api.stop().await;
}

/// The admin view of a room campaign counts its line: who joined, how many
/// positions were admitted, how many still wait. Before the start nobody is
/// admitted; a line with credit to spare lets joiners in at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_view_counts_the_line_of_a_room() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let (later, view) = room_campaign(&api, 10, 1_000, 120, 3_600_000).await;
    assert_eq!(
        (
            &view["waiting_room"]["joined"],
            &view["waiting_room"]["waiting"]
        ),
        (&json!(0), &json!(0)),
        "{view}"
    );
    let (now, _) = room_campaign(&api, 10, 1_000, 120, 0).await;
    for user in ["ann", "ben", "cid"] {
        assert_eq!(join(&api, &later, user).await.0, StatusCode::ACCEPTED);
        assert_eq!(join(&api, &now, user).await.0, StatusCode::OK);
    }
    let line = |view: &Value| {
        let room = &view["waiting_room"];
        (
            room["joined"].clone(),
            room["admitted"].clone(),
            room["waiting"].clone(),
        )
    };
    let (_, view) = api.campaign(&later).await;
    assert_eq!(line(&view), (json!(3), json!(0), json!(3)), "{view}");
    let (_, view) = api.campaign(&now).await;
    assert_eq!(line(&view), (json!(3), json!(3), json!(0)), "{view}");
    // A campaign without a room has no such figures.
    let plain = api.open_campaign(10).await;
    assert!(api.campaign(&plain).await.1.get("waiting_room").is_none());
    api.stop().await;
}
