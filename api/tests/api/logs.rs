//! The access log: with `log.access` on, one JSON line per request in the
//! api's own output, carrying the request's id, route, status, outcome and
//! latency.

use std::path::PathBuf;
use std::time::Duration;

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;

/// An api process with the test settings and `extra` in its environment,
/// its output captured (`stop_process` returns it); and its base URL.
async fn spawn_api_logging(extra: &[(&str, &str)]) -> (std::process::Child, String) {
    let settings = test_settings().await;
    let mut env = process_environment(&settings);
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let port = spare_port();
    let api = spawn_process(
        PathBuf::from(env!("CARGO_BIN_EXE_api")),
        &[],
        &env,
        ("APP_HTTP__PORT", port.to_string()),
    );
    wait_for_port(port, Duration::from_secs(30), "api");
    (api, format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_gets_one_access_line_with_its_id_status_and_outcome() {
    let (api, base) = spawn_api_logging(&[
        ("APP_LOG__ACCESS", "true"),
        ("APP_LOG__FORMAT", "json"),
        ("APP_LOG__FILTER", "warn,access=info"),
    ])
    .await;
    let campaign = create_campaign_at(&base, 10).await;
    let client = reqwest::Client::new();
    let issue = |request_id: &'static str| {
        client
            .post(format!("{base}/api/v1/campaigns/{campaign}/issue"))
            .bearer_auth(mint_jwt("logged-user", 600))
            .header("X-Request-Id", request_id)
            .send()
    };
    assert_eq!(
        issue("access-1").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        issue("access-2").await.unwrap().status(),
        StatusCode::CONFLICT
    );
    let out = stop_process(api);

    let lines: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "access")
        .collect();
    let line_of = |id: &str| {
        let of: Vec<&Value> = lines
            .iter()
            .filter(|l| l["span"]["request_id"] == id)
            .collect();
        assert_eq!(of.len(), 1, "one access line for {id}: {out}");
        of[0].clone()
    };
    for (id, status, outcome) in [
        ("access-1", 202, "accepted"),
        ("access-2", 409, "duplicate"),
    ] {
        let line = line_of(id);
        assert_eq!(line["route"], "/api/v1/campaigns/{id}/issue", "{line}");
        assert_eq!(line["method"], "POST", "{line}");
        assert_eq!(line["status"], status, "{line}");
        assert_eq!(line["outcome"], outcome, "{line}");
        assert!(line["latency_ms"].as_f64().unwrap() > 0.0, "{line}");
    }
    // The create request has a line too, with no outcome word of its own.
    assert!(
        lines.iter().any(|l| l["route"] == "/api/v1/campaigns"
            && l["status"] == 201
            && l["outcome"] == "-"),
        "{out}"
    );
}

/// In `combining` mode one task holds the lock for a batch of requests; its
/// log lines are its own (`lock_hold` in `lock_line`, with the campaign),
/// never under the request id of the request that happened to start it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_combining_batch_logs_in_its_own_span_not_a_requests() {
    let (api, base) = spawn_api_logging(&[
        ("APP_STRATEGY", "distributed-lock"),
        ("APP_LOCK__MODE", "combining"),
        // The batch's holder logs this warning from inside the hold.
        ("APP_FAULTS__PAUSE_LOCK_HOLDER_USER", "held-user"),
        ("APP_FAULTS__PAUSE_LOCK_HOLDER_MS", "10"),
        ("APP_LOG__FORMAT", "json"),
    ])
    .await;
    let campaign = create_campaign_at(&base, 10).await;
    let reply = reqwest::Client::new()
        .post(format!("{base}/api/v1/campaigns/{campaign}/issue"))
        .bearer_auth(mint_jwt("held-user", 600))
        .header("X-Request-Id", "started-the-batch")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::ACCEPTED);
    let out = stop_process(api);

    let held: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "fault: lock holder paused")
        .collect();
    assert_eq!(held.len(), 1, "{out}");
    let line = &held[0];
    assert_eq!(line["span"]["name"], "lock_hold", "{line}");
    assert_eq!(line["span"]["batch"], 1, "{line}");
    let spans = line["spans"].as_array().unwrap();
    assert_eq!(spans[0]["name"], "lock_line", "{line}");
    assert_eq!(spans[0]["campaign.id"], campaign.to_string(), "{line}");
    assert!(
        !line.to_string().contains("started-the-batch"),
        "the hold's line carries a request's id: {line}"
    );
}
