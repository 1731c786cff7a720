//! SIGTERM to a real api process with requests in flight: readiness turns
//! 503, the listener closes, the in-flight requests complete, and every one
//! of them that was accepted has its row.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;
use futures::future::join_all;
use reqwest::StatusCode;
use secrecy::ExposeSecret;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_requests_and_loses_no_accepted_issuance() {
    let broker = OwnBroker::start();
    let mut settings = test_settings().await;
    settings.kafka.brokers = broker.address();
    common::kafka::ensure_topics(&settings.kafka).await.unwrap();
    let worker = spawn_worker(&settings).await;
    let admin = spawn_api(&settings).await;
    let campaign = admin.open_campaign(1_000).await;

    let port = spare_port();
    let ops_port = spare_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_api"))
        .env("APP_HTTP__PORT", port.to_string())
        .env("APP_HTTP__OPS_PORT", ops_port.to_string())
        .env("APP_HTTP__DRAIN_DELAY_MS", "400")
        .env("APP_DATABASE__URL", settings.database.url.expose_secret())
        .env("APP_REDIS__URL", &settings.redis.url)
        .env("APP_KAFKA__BROKERS", &settings.kafka.brokers)
        .env("APP_KAFKA__TOPIC", &settings.kafka.topic)
        .env("APP_KAFKA__DELIVERY_TIMEOUT_MS", "10000")
        .env("APP_AUTH__ADMIN_TOKEN", ADMIN_TOKEN)
        .env("APP_AUTH__JWT_SECRET", JWT_SECRET)
        .env("APP_LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start api");
    let base = format!("http://127.0.0.1:{port}");
    let ops = format!("http://127.0.0.1:{ops_port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client
        .get(format!("{ops}/readyz"))
        .send()
        .await
        .map(|r| r.status())
        .ok()
        != Some(StatusCode::OK)
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "api did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm the producer's connection so the frozen broker holds requests in flight.
    let (status, _) = reply(
        client
            .post(format!("{base}/api/v1/campaigns/{campaign}/issue"))
            .bearer_auth(mint_jwt("warm-up", 60))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // Requests that will be in flight (waiting for delivery reports) at SIGTERM.
    broker.freeze(true);
    let in_flight = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move {
            join_all((0..50).map(|i| {
                let (client, base) = (client.clone(), base.clone());
                async move {
                    let res = client
                        .post(format!("{base}/api/v1/campaigns/{campaign}/issue"))
                        .bearer_auth(mint_jwt(&format!("inflight-{i}"), 60))
                        .send()
                        .await
                        .expect("an in-flight request must get its reply");
                    reply(res).await
                }
            }))
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());

    tokio::time::sleep(Duration::from_millis(100)).await;
    let draining = client.get(format!("{ops}/readyz")).send().await.unwrap();
    assert_eq!(
        draining.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "readiness during drain"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        reqwest::Client::new()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "the listener still accepts after the drain delay"
    );

    broker.freeze(false);
    let replies = in_flight.await.unwrap();
    for (status, body) in &replies {
        assert_eq!(*status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["outcome"], "accepted", "{body}");
    }
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "api exited with {exit}");

    let db = db().await;
    wait_for_rows(&db, &campaign, 51, Duration::from_secs(30)).await;
    worker.stop().await;
    admin.stop().await;
}
