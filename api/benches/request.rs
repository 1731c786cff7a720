//! The request's own work before any dependency is called: the bearer token
//! checked (HS256), the user and campaign ids parsed, the request id taken
//! or made and its span entered (with the production log subscriber, at its
//! default filter, writing nowhere), and what tracing adds to a request
//! while it is off. `cargo bench -p api --bench request`.

#![allow(clippy::unwrap_used)]

use actix_web::test::TestRequest;
use api::auth::Authenticator;
use common::ids::{CampaignId, UserId};
use common::settings::AuthSettings;
use criterion::{Criterion, criterion_group, criterion_main};
use secrecy::SecretString;

fn token(secret: &str, user: &str) -> String {
    let claims = serde_json::json!({"sub": user, "exp": chrono::Utc::now().timestamp() + 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn request(c: &mut Criterion) {
    let settings = AuthSettings {
        admin_token: Some(SecretString::from("bench-admin")),
        jwt_secret: Some(SecretString::from("bench-secret")),
        ..AuthSettings::default()
    };
    let histogram =
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap();
    let auth = Authenticator::new(&settings, histogram).unwrap();
    let bearer = format!("Bearer {}", token("bench-secret", "user-1234567"));
    let req = TestRequest::post()
        .uri("/api/v1/campaigns/01a20a0f-0000-7000-8000-000000000000/issue")
        .insert_header(("authorization", bearer.as_str()))
        .to_http_request();
    c.bench_function("jwt_verify_hs256", |b| b.iter(|| auth.user(&req).unwrap()));
    c.bench_function("parse_campaign_and_user_ids", |b| {
        b.iter(|| {
            (
                CampaignId::parse(std::hint::black_box("01a20a0f-0000-7000-8000-000000000000"))
                    .unwrap(),
                UserId::parse(std::hint::black_box("user-1234567")).unwrap(),
            )
        })
    });
}

fn request_id(c: &mut Criterion) {
    common::telemetry::init(&common::settings::LogSettings::default(), "api-bench");
    let given = TestRequest::post()
        .insert_header(("x-request-id", "trace-abc-123"))
        .to_http_request();
    let bare = TestRequest::post().to_http_request();
    for (name, req) in [
        ("request_id_given_and_span", &given),
        ("request_id_made_and_span", &bare),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let id = api::request_id::of(req);
                let span = api::request_id::span(req, &id);
                span.in_scope(|| std::hint::black_box(&id).len())
            })
        });
    }
    // Side by side, tracing off (no OTEL_* variables): the request span as
    // it was before tracing (two fields fewer, no tracing check), and the
    // request's `gate` and `produce` child spans and the message's trace
    // headers, against the same work without them.
    c.bench_function("request_span_before_tracing", |b| {
        b.iter(|| {
            let id = api::request_id::of(&given);
            let span = tracing::warn_span!("request", request_id = id.to_str().unwrap_or_default());
            span.in_scope(|| std::hint::black_box(&id).len())
        })
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    c.bench_function("child_spans_and_trace_headers_off", |b| {
        b.iter(|| {
            runtime.block_on(async {
                use common::telemetry::traced;
                let gate = traced(std::future::ready(1), || {
                    tracing::debug_span!("gate", campaign.id = "c")
                })
                .await;
                let headers = common::telemetry::trace_headers();
                let produce = traced(std::future::ready(2), || {
                    tracing::debug_span!("produce", coupon.id = "k")
                })
                .await;
                std::hint::black_box((gate, headers.is_some(), produce))
            })
        })
    });
    c.bench_function("without_child_spans", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let gate = std::future::ready(1).await;
                let produce = std::future::ready(2).await;
                std::hint::black_box((gate, produce))
            })
        })
    });
}

/// The access log line (`log.access`), as JSON into a sink: the request span
/// with the line against the span alone, under the same subscriber.
fn access_log(c: &mut Criterion) {
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(std::io::sink)
        .with_env_filter("warn,access=info")
        .finish();
    let req = TestRequest::post()
        .insert_header(("x-request-id", "trace-abc-123"))
        .to_http_request();
    tracing::subscriber::with_default(subscriber, || {
        for (name, log) in [
            ("request_span_without_access_line", false),
            ("request_span_with_access_line", true),
        ] {
            c.bench_function(name, |b| {
                b.iter(|| {
                    let id = api::request_id::of(&req);
                    let span = api::request_id::span(&req, &id);
                    span.in_scope(|| {
                        if log {
                            tracing::info!(
                                target: "access",
                                method = "POST",
                                route = "/api/v1/campaigns/{id}/issue",
                                status = 202u16,
                                outcome = "accepted",
                                latency_ms = 1.25f64,
                                "request served"
                            );
                        }
                    });
                })
            });
        }
    });
}

criterion_group!(benches, request, request_id, access_log);
criterion_main!(benches);
