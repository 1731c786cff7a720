//! What a client can send (9, 10, 11): bad input, authorization, one user
//! hammering. Each changes nothing it should not.

use std::collections::BTreeMap;
use std::time::Instant;

use ngrinder_equivalent::load::{self};
use ngrinder_equivalent::spec::LoadModel;
use ngrinder_equivalent::users::UserMode;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cell::{ADMIN_TOKEN, Cell};
use crate::support::*;

/// What bad input could change: a campaign's gate state, the topic, the rows.
async fn footprint(cell: &Cell, campaign: &str) -> (Value, i64, u64) {
    let id = common::ids::CampaignId::parse(campaign).unwrap();
    let state = cell.admin.campaign(campaign).await.unwrap();
    (
        json!([state.taken, state.persisted, state.state]),
        common::testkit::topic_messages(&cell.broker.address(), "coupon.issue.v1").await,
        common::testkit::rows(&cell.db, &id).await,
    )
}

/// 9. Bad input: hand-written cases, then schemathesis when available.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f09_bad_input() {
    let started = Instant::now();
    let cell = Cell::start(1, 1, &[]).await;
    let campaign = cell.campaign(100).await;
    let before = footprint(&cell, &campaign).await;
    let base = cell.targets()[0].clone();
    let client = reqwest::Client::new();
    let mut token = String::new();
    cell.minter.bearer("fuzzer", &mut token);
    let expired = {
        let m = ngrinder_equivalent::token::Minter::new(crate::cell::JWT_SECRET, -3_600).unwrap();
        let mut t = String::new();
        m.bearer("fuzzer", &mut t);
        t
    };
    let long_id = "x".repeat(10_000);
    let cases: Vec<(reqwest::Method, String, Option<String>, Vec<u8>)> = vec![
        (
            reqwest::Method::POST,
            format!("/api/v1/campaigns/{long_id}/issue"),
            Some(token.clone()),
            vec![],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns/%FF%FE/issue".into(),
            Some(token.clone()),
            vec![],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns/1'%20OR%20'1'='1/issue".into(),
            Some(token.clone()),
            vec![],
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/campaigns/{campaign}/issue"),
            Some(expired.clone()),
            vec![],
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/campaigns/{campaign}/issue"),
            Some("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.".into()),
            vec![],
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/campaigns/{campaign}/issue"),
            Some(format!("Bearer {}", "a".repeat(100_000))),
            vec![],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns".into(),
            Some(format!("Bearer {ADMIN_TOKEN}")),
            vec![b'{'; 1 << 20],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns".into(),
            Some(format!("Bearer {ADMIN_TOKEN}")),
            br#"{"name": 5, "stock": "many"}"#.to_vec(),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns".into(),
            Some(format!("Bearer {ADMIN_TOKEN}")),
            vec![0xff, 0xfe, 0x00],
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/campaigns/{campaign}/coupons?after=%FF&limit=-1"),
            Some(format!("Bearer {ADMIN_TOKEN}")),
            vec![],
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/campaigns/{campaign}/coupons?limit=99999999999999999999"),
            Some(format!("Bearer {ADMIN_TOKEN}")),
            vec![],
        ),
    ];
    let mut statuses = BTreeMap::new();
    for (method, path, auth, body) in &cases {
        let mut req = client
            .request(method.clone(), format!("{base}{path}"))
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req = req.header("content-type", "application/json");
        // A request that got no reply at all (a dropped connection, a
        // timeout) is a failure like a 5xx: bad input gets a clear 4xx.
        let status = match req.send().await {
            Ok(r) => r.status().as_u16(),
            Err(e) => panic!("{method} {}: no reply: {e}", &path[..path.len().min(80)]),
        };
        assert!(
            (400..500).contains(&status),
            "{method} {} → {status}",
            &path[..path.len().min(80)]
        );
        *statuses.entry(status).or_insert(0) += 1;
    }
    // A header byte no client library sends (DEL), written on the wire.
    let raw = raw_status(
        &base,
        &format!(
            "POST /api/v1/campaigns/{campaign}/issue HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer \x7f\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!((400..500).contains(&raw), "a DEL in the token → {raw}");
    *statuses.entry(raw).or_insert(0) += 1;
    let schemathesis = std::env::var("COUPON_SCHEMATHESIS").ok();
    let mut fuzz = json!("not run (COUPON_SCHEMATHESIS unset)");
    if let Some(bin) = &schemathesis {
        let output = std::process::Command::new(bin)
            .args(["run", &format!("{base}/openapi.json")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,response_schema_conformance",
            ])
            .args(["--header", &format!("Authorization: {token}")])
            .args(["--max-examples", &pick(30, 300).to_string()])
            .output()
            .expect("schemathesis");
        let text = String::from_utf8_lossy(&output.stdout);
        fuzz = json!({"passed": output.status.success(), "tail": text.lines().rev().take(8).collect::<Vec<_>>()});
        assert!(
            output.status.success(),
            "schemathesis found failures:\n{text}"
        );
    }
    let after = footprint(&cell, &campaign).await;
    Figures::new("09-bad-input")
        .note("hand_written_cases", cases.len())
        .note("statuses", &statuses)
        .note("schemathesis", fuzz)
        .report(started);
    assert_eq!(before, after, "bad input changed state");
}

/// Sends `request` as written to the server at `base` (`http://host:port`)
/// and returns the status of its reply; panics if there is none.
async fn raw_status(base: &str, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    let text = String::from_utf8_lossy(&reply);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no reply to a raw request: {text:?}"))
}

/// 10. Authorization.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f10_authorization() {
    let started = Instant::now();
    let cell = Cell::start(1, 1, &[]).await;
    let campaign = cell.campaign(10).await;
    let base = cell.targets()[0].clone();
    let client = reqwest::Client::new();
    let user = |name: &str| {
        let mut t = String::new();
        cell.minter.bearer(name, &mut t);
        t
    };
    let admin_routes = [
        (reqwest::Method::POST, "/api/v1/campaigns".to_owned()),
        (reqwest::Method::GET, "/api/v1/campaigns".to_owned()),
        (
            reqwest::Method::GET,
            format!("/api/v1/campaigns/{campaign}"),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/campaigns/{campaign}/close"),
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/campaigns/{campaign}/coupons"),
        ),
    ];
    for (method, path) in &admin_routes {
        let none = client
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let as_user = client
            .request(method.clone(), format!("{base}{path}"))
            .header("authorization", user("alice"))
            .json(&json!({"name": "x", "stock": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(as_user.status(), StatusCode::FORBIDDEN, "{method} {path}");
    }
    // The user id comes from the token only: a body naming another user is ignored.
    let issued = client
        .post(format!("{base}/api/v1/campaigns/{campaign}/issue"))
        .header("authorization", user("alice"))
        .json(&json!({"user_id": "mallory", "sub": "mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), StatusCode::ACCEPTED);
    let me = |name: &str| {
        client
            .get(format!("{base}/api/v1/campaigns/{campaign}/coupons/me"))
            .header("authorization", user(name))
            .send()
    };
    let alice: Value = me("alice").await.unwrap().json().await.unwrap();
    let mallory: Value = me("mallory").await.unwrap().json().await.unwrap();
    assert!(
        alice["state"] == "issued" || alice["state"] == "pending",
        "{alice}"
    );
    assert_eq!(
        mallory["state"], "none",
        "mallory sees someone else's coupon: {mallory}"
    );
    Figures::new("10-authorization")
        .note("admin_routes_checked", admin_routes.len())
        .report(started);
}

/// 11. One user hammering with the per-user limit on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f11_rate_limiting() {
    let started = Instant::now();
    let limits = [
        ("APP_RATE_LIMIT__PER_USER__ENABLED", "true"),
        ("APP_RATE_LIMIT__PER_USER__PER_SECOND", "2"),
        ("APP_RATE_LIMIT__PER_USER__BURST", "5"),
    ];
    let cell = Cell::start(1, 1, &limits).await;
    let campaign = cell.campaign(1_000_000).await;
    let seconds = pick(5, 30);
    let polite = |duration| {
        let mut s = spec(cell.targets(), 20, None, Some(duration), UserMode::Unique);
        if let LoadModel::Closed { think_ms, .. } = &mut s.model {
            *think_ms = 20;
        }
        s
    };
    let alone = if full() {
        Some(offer(&cell, &campaign, &polite(seconds)).await)
    } else {
        None
    };
    let hammer = {
        let (spec, campaign, minter) = (
            spec(
                cell.targets(),
                20,
                None,
                Some(seconds),
                UserMode::Hot { users: 1 },
            ),
            campaign.clone(),
            cell.minter.clone(),
        );
        tokio::spawn(async move { load::execute(&spec, &campaign, minter).await.unwrap() })
    };
    let beside = if full() {
        Some(offer(&cell, &campaign, &polite(seconds)).await)
    } else {
        None
    };
    let hammer = hammer.await.unwrap();
    let limited = hammer
        .summary
        .outcomes
        .get("rate_limited")
        .copied()
        .unwrap_or(0);
    let accepted = hammer
        .summary
        .outcomes
        .get("accepted")
        .copied()
        .unwrap_or(0);
    let mut figures = Figures::new("11-rate-limiting")
        .note("hammer_requests", hammer.summary.executed)
        .note("hammer_rate_limited", limited)
        .note("hammer_accepted", accepted);
    if let (Some(alone), Some(beside)) = (&alone, &beside) {
        figures = figures
            .note("polite_p99_us_unloaded", alone.summary.p99_us)
            .note("polite_p99_us_beside_hammer", beside.summary.p99_us);
    }
    figures.report(started);
    assert!(
        limited > hammer.summary.executed / 2,
        "the hammer was not limited"
    );
    assert_eq!(accepted, 1);
    let state = cell.admin.campaign(&campaign).await.unwrap();
    let polite_accepted: u64 = [&alone, &beside]
        .iter()
        .filter_map(|o| o.as_ref())
        .map(|o| o.summary.outcomes.get("accepted").copied().unwrap_or(0))
        .sum();
    assert_eq!(
        state.taken,
        Some(1 + polite_accepted as i64),
        "the hammer spent stock"
    );
}
