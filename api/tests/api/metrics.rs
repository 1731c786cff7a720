//! The api's `/metrics`: every family docs/RUNBOOK.md relies on is there
//! with its type (process and librdkafka families too), the counts move with
//! the requests that were made, and no label carries a campaign or user id.

use crate::helpers::*;
use common::settings::StrategyKind;
use reqwest::StatusCode;

const ISSUE_ROUTE: &str = "/api/v1/campaigns/{id}/issue";

async fn scrape(api: &TestApi) -> (Scrape, String) {
    let text = api.metrics_text().await;
    (Scrape::parse(&text), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_family_is_exported_and_counts_move_with_requests() {
    let mut settings = test_settings().await;
    settings.strategy = StrategyKind::DistributedLock;
    let api = spawn_api(&settings).await;
    let worker = spawn_worker(&settings).await;
    let campaign = api.open_campaign(2).await;
    let (before, _) = scrape(&api).await;

    // Two admitted (`pending`: the lock strategies produce after answering),
    // one duplicate, one sold out, one bad token (401), one
    // unknown campaign (404).
    for user in ["m-alice", "m-bob", "m-alice", "m-carol"] {
        api.issue(&campaign, user).await;
    }
    let (status, _) = api.issue_with_token(&campaign, "not-a-jwt").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api.issue(&common::ids::CampaignId::new(), "m-dave").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (after, text) = scrape(&api).await;
    after.assert_families(&[
        ("http_requests_total", "counter"),
        ("http_request_duration_seconds", "histogram"),
        ("http_requests_in_flight", "gauge"),
        ("issue_outcomes_total", "counter"),
        ("jwt_verify_duration_seconds", "histogram"),
        ("gate_duration_seconds", "histogram"),
        ("gate_batch_takes", "histogram"),
        ("produce_duration_seconds", "histogram"),
        ("redis_pool_wait_seconds", "histogram"),
        ("gate_compensations_total", "counter"),
        ("producer_buffered_messages", "gauge"),
        ("issue_queue_depth", "gauge"),
        ("lock_wait_seconds", "histogram"),
        ("api_info", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
    ]);
    assert!(
        after.sum("process_resident_memory_bytes", &[]) > 0.0,
        "{text}"
    );
    assert!(after.sum("process_open_fds", &[]) > 0.0, "{text}");
    let moved =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    let issue = [("route", ISSUE_ROUTE), ("method", "POST")];
    assert_eq!(moved("http_requests_total", &issue), 6.0, "{text}");
    assert_eq!(
        moved(
            "http_requests_total",
            &[("route", ISSUE_ROUTE), ("status", "401")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "http_request_duration_seconds_count",
            &[("route", ISSUE_ROUTE), ("status", "202")]
        ),
        2.0,
        "{text}"
    );
    let outcome = |o: &'static str| [("strategy", "distributed-lock"), ("outcome", o)];
    assert_eq!(
        moved("issue_outcomes_total", &outcome("pending")),
        2.0,
        "{text}"
    );
    assert_eq!(moved("issue_outcomes_total", &outcome("duplicate")), 1.0);
    assert_eq!(moved("issue_outcomes_total", &outcome("sold_out")), 1.0);
    // Five tokens checked (the bad one too); the lock taken by the requests
    // the precheck let through (the duplicate is refused before it), each
    // deciding at the gate; two messages produced (in the background: wait).
    assert!(
        moved("jwt_verify_duration_seconds_count", &[]) >= 5.0,
        "{text}"
    );
    let locked = moved("lock_wait_seconds_count", &[]);
    assert!(locked >= 2.0, "{text}");
    assert_eq!(moved("gate_duration_seconds_count", &[]), locked, "{text}");
    let started = std::time::Instant::now();
    let mut produced = moved("produce_duration_seconds_count", &[]);
    while produced < 2.0 && started.elapsed() < std::time::Duration::from_secs(15) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        produced = scrape(&api)
            .await
            .0
            .sum("produce_duration_seconds_count", &[])
            - before.sum("produce_duration_seconds_count", &[]);
    }
    assert_eq!(produced, 2.0);
    assert!(moved("redis_pool_wait_seconds_count", &[]) >= 4.0, "{text}");
    assert_eq!(after.sum("gate_compensations_total", &[]), 0.0);
    assert_eq!(
        after.sum("api_info", &[("strategy", "distributed-lock")]),
        1.0
    );
    // librdkafka's statistics (every 5 s): the producer's round trip to
    // its broker.
    let started = std::time::Instant::now();
    let rtt = loop {
        let (now, text) = scrape(&api).await;
        let rtt = now.sum("kafka_broker_rtt_seconds", &[("client", "producer")]);
        if rtt > 0.0 || started.elapsed() > std::time::Duration::from_secs(20) {
            now.assert_families(&[
                ("kafka_broker_rtt_seconds", "gauge"),
                ("kafka_broker_outbuf_requests", "gauge"),
                ("kafka_broker_request_errors_total", "counter"),
            ]);
            assert!(text.contains("broker=\""), "{text}");
            break rtt;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert!(rtt > 0.0 && rtt < 5.0, "round trip {rtt} s");
    // What the broker was asked: the two messages in at least one produce
    // request (over the producer's lanes).
    let started = std::time::Instant::now();
    loop {
        let (now, text) = scrape(&api).await;
        let sent = now.sum("kafka_client_messages_sent_total", &[]);
        let produces = now.sum("kafka_broker_requests_total", &[("type", "Produce")]);
        if sent >= 2.0 || started.elapsed() > std::time::Duration::from_secs(20) {
            assert_eq!(sent, 2.0, "{text}");
            assert!((1.0..=2.0).contains(&produces), "{text}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // Bounded labels: no id of a campaign or user anywhere.
    for id in [campaign.to_string(), "m-alice".into()] {
        assert!(!text.contains(&id), "{id} leaked into a label");
    }
    worker.stop().await;
    api.stop().await;
}
