//! One issue is one trace, from the api through Kafka to the worker's row:
//! the api and worker binaries run with the standard `OTEL_*` variables
//! pointing at an OTLP/HTTP receiver of the test's own, and every span they
//! export for the request carries the trace id the caller sent in its
//! `traceparent` header.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::*;
use actix_web::{App, HttpResponse, HttpServer, web};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/HTTP receiver (JSON encoding) on a spare port, keeping every span.
async fn receiver() -> (u16, Arc<Mutex<Vec<Received>>>, actix_web::dev::ServerHandle) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = web::Data::new(spans.clone());
    let server = HttpServer::new(move || {
        App::new().app_data(kept.clone()).route(
            "/v1/traces",
            web::post().to(
                |body: web::Bytes, kept: web::Data<Arc<Mutex<Vec<Received>>>>| async move {
                    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let mut spans = kept.lock().unwrap();
                    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
                        let service = resource["resource"]["attributes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|a| a["key"] == "service.name")
                            .and_then(|a| a["value"]["stringValue"].as_str())
                            .unwrap_or_default()
                            .to_owned();
                        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                            for span in scope["spans"].as_array().into_iter().flatten() {
                                let text =
                                    |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                                spans.push(Received {
                                    service: service.clone(),
                                    name: text("name"),
                                    trace_id: text("traceId"),
                                    span_id: text("spanId"),
                                    parent_span_id: text("parentSpanId"),
                                });
                            }
                        }
                    }
                    HttpResponse::Ok().json(json!({}))
                },
            ),
        )
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, spans, handle)
}

/// The test's settings as the binaries' environment, plus OTLP export to
/// `otlp_port` (JSON, exported every 100 ms).
fn environment(settings: &common::settings::Settings, otlp_port: u16) -> Vec<(String, String)> {
    let mut env = process_environment(settings);
    env.extend(
        [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{otlp_port}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_issue_is_one_trace_from_the_api_to_the_worker() {
    let settings = test_settings().await;
    let (otlp_port, spans, receiver) = receiver().await;
    let env = environment(&settings, otlp_port);
    let api_bin = PathBuf::from(env!("CARGO_BIN_EXE_api"));
    let worker_bin = api_bin.with_file_name("issuer-worker");
    assert!(
        worker_bin.exists(),
        "build the worker first (cargo build -p issuer-worker)"
    );
    let api_port = spare_port();
    let api = spawn_process(api_bin, &[], &env, ("APP_HTTP__PORT", api_port.to_string()));
    let worker = spawn_process(
        worker_bin,
        &["run"],
        &env,
        ("APP_WORKER__HTTP_PORT", spare_port().to_string()),
    );
    wait_for_port(api_port, Duration::from_secs(30), "api");

    let base = format!("http://127.0.0.1:{api_port}");
    let campaign = create_campaign_at(&base, 10).await;
    let client = reqwest::Client::new();
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let res = client
        .post(format!("{base}/api/v1/campaigns/{campaign}/issue"))
        .bearer_auth(mint_jwt("traced-user", 600))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    wait_for_rows(&db().await, &campaign, 1, Duration::from_secs(60)).await;
    stop_process(worker);
    stop_process(api);
    receiver.stop(true).await;

    let spans = spans.lock().unwrap().clone();
    let ours: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let find = |service: &str, name: &str| {
        ours.iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap_or_else(|| {
                panic!("no {name} span from {service} in trace {trace_id}: {spans:#?}")
            })
    };
    let request = find("coupon-api", "POST /api/v1/campaigns/{id}/issue");
    assert_eq!(
        request.parent_span_id, "00f067aa0ba902b7",
        "the caller's span is the parent"
    );
    let gate = find("coupon-api", "gate");
    let produce = find("coupon-api", "produce");
    assert_eq!(gate.parent_span_id, request.span_id);
    assert_eq!(produce.parent_span_id, request.span_id);
    let persist = find("coupon-issuer-worker", "persist");
    assert_eq!(
        persist.parent_span_id, produce.span_id,
        "the worker's span continues the produce span through the message's headers"
    );
}
