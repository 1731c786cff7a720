//! Auth hardening (RS256, `iss`/`aud`), per-IP limits behind trusted
//! proxies, the bound on requests in flight, and the OpenAPI document.

use std::time::Duration;

use crate::helpers::*;
use chrono::Utc;
use common::settings::JwtAlgorithm;
use futures::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PRIVATE_PEM: &str = include_str!("../fixtures/rs256-test-private.pem");
const PUBLIC_PEM: &str = include_str!("../fixtures/rs256-test-public.pem");

fn rs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(PRIVATE_PEM.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rs256_tokens_need_the_right_key_issuer_and_audience() {
    let mut settings = test_settings().await;
    settings.auth.jwt_algorithm = JwtAlgorithm::RS256;
    settings.auth.jwt_secret = None;
    settings.auth.jwt_public_key = Some(PUBLIC_PEM.into());
    settings.auth.jwt_issuer = Some("https://id.example".into());
    settings.auth.jwt_audience = Some("coupons".into());
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let exp = Utc::now().timestamp() + 600;

    let good =
        rs256(json!({"sub": "ada", "exp": exp, "iss": "https://id.example", "aud": "coupons"}));
    let (status, body) = api.issue_with_token(&campaign, &good).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let refused = [
        rs256(json!({"sub": "bob", "exp": exp, "iss": "https://evil.example", "aud": "coupons"})),
        rs256(json!({"sub": "bob", "exp": exp, "iss": "https://id.example", "aud": "other"})),
        rs256(json!({"sub": "bob", "exp": exp, "iss": "https://id.example"})),
        rs256(json!({"sub": "bob", "exp": exp, "aud": "coupons"})),
        rs256(
            json!({"sub": "bob", "exp": Utc::now().timestamp() - 600, "iss": "https://id.example", "aud": "coupons"}),
        ),
        // Algorithm confusion: HS256 "signed" with the public key as secret.
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "bob", "exp": exp, "iss": "https://id.example", "aud": "coupons"}),
            &EncodingKey::from_secret(PUBLIC_PEM.as_bytes()),
        )
        .unwrap(),
        // An HS256 token with the suite's usual secret.
        mint_jwt("bob", 600),
    ];
    for token in &refused {
        let (status, body) = api.issue_with_token(&campaign, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["ada".to_owned()], Some(1))
    );
    api.stop().await;
}

/// Time claims are held to what they say: a token valid from later (`nbf`)
/// or issued in the future (`iat`) is refused now, and so is one that
/// claims to live longer than `auth.jwt_max_lifetime_secs` (a year 9999
/// `exp`). A refusal names its kind, never the JWT library's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_held_to_their_time_claims_and_refusals_say_little() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let hs256 = |claims: Value| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    let now = Utc::now().timestamp();
    let refused = [
        (
            json!({"sub": "later", "exp": now + 600, "nbf": now + 300}),
            "not valid yet",
        ),
        (
            json!({"sub": "future", "exp": now + 600, "iat": now + 300}),
            "issued in the future",
        ),
        (
            json!({"sub": "forever", "exp": 253_402_300_799_i64}),
            "longer than",
        ),
        (json!({"sub": "expired", "exp": now - 600}), "expired"),
    ];
    for (claims, says) in &refused {
        let (status, body) = api
            .issue_with_token(&campaign, &hs256(claims.clone()))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{claims}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(says), "{claims}: {body}");
        assert!(
            !message.contains("Error") && !message.contains("Kind"),
            "{body}"
        );
    }
    let (status, body) = api.issue_with_token(&campaign, "not.a.token").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid token"))
    );
    // Valid now, issued now, living an hour: fine.
    let fine = hs256(json!({"sub": "fine", "exp": now + 3600, "iat": now, "nbf": now}));
    let (status, body) = api.issue_with_token(&campaign, &fine).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(gate_state(&campaign).await.0, ["fine"]);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_ip_limit_uses_forwarded_for_only_from_trusted_proxies() {
    let mut settings = test_settings().await;
    settings.rate_limit.per_ip.enabled = true;
    settings.rate_limit.per_ip.per_second = 1;
    settings.rate_limit.per_ip.burst = 2;
    settings.rate_limit.trusted_proxies = "127.0.0.1".into();
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(100).await;
    let send = |user: &str, forwarded: &str| {
        api.client
            .post(format!("{}/api/v1/campaigns/{campaign}/issue", api.address))
            .bearer_auth(mint_jwt(user, 60))
            .header("x-forwarded-for", forwarded)
            .send()
    };
    // One client behind the proxy, several users: the third request is limited.
    let mut statuses = Vec::new();
    for i in 0..3 {
        statuses.push(
            send(&format!("u{i}"), "198.51.100.1")
                .await
                .unwrap()
                .status(),
        );
    }
    assert_eq!(statuses[..2], [StatusCode::ACCEPTED, StatusCode::ACCEPTED]);
    assert_eq!(statuses[2], StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same proxy is not.
    assert_eq!(
        send("other", "198.51.100.2").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    // A forged leading entry does not make a new client.
    assert_eq!(
        send("sneaky", "1.2.3.4, 198.51.100.1")
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Nor does a forged line of its own: a proxy that appends sends the
    // client's line first and its own last (two header lines), and every
    // line is read, from the right.
    let two_lines = api
        .client
        .post(format!("{}/api/v1/campaigns/{campaign}/issue", api.address))
        .bearer_auth(mint_jwt("two-lines", 60))
        .header("x-forwarded-for", "1.2.3.4")
        .header("x-forwarded-for", "198.51.100.1")
        .send()
        .await
        .unwrap();
    assert_eq!(two_lines.status(), StatusCode::TOO_MANY_REQUESTS);
    // The refused users spent nothing.
    let (members, _) = gate_state(&campaign).await;
    for refused in ["u2", "sneaky", "two-lines"] {
        assert!(
            !members.contains(&refused.to_owned()),
            "{refused} took a slot"
        );
    }
    api.stop().await;

    // Without trusted proxies the header is ignored: every request is 127.0.0.1.
    settings.rate_limit.trusted_proxies = String::new();
    let api = spawn_api(&settings).await;
    let mut limited = 0;
    for i in 0..4 {
        let res = api
            .client
            .post(format!("{}/api/v1/campaigns/{campaign}/issue", api.address))
            .bearer_auth(mint_jwt(&format!("v{i}"), 60))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert!(limited >= 1, "spoofed forwarded-for escaped the limit");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_in_flight_bound_requests_get_a_fast_503() {
    let broker = OwnBroker::start();
    let mut settings = test_settings().await;
    settings.kafka.brokers = broker.address();
    settings.kafka.delivery_timeout_ms = 5_000;
    settings.http.max_in_flight = 2;
    common::kafka::ensure_topics(&settings.kafka).await.unwrap();
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(100).await;
    let (status, _) = api.issue(&campaign, "warm").await;
    assert_eq!(status, StatusCode::ACCEPTED);

    broker.freeze(true);
    let slow = tokio::spawn({
        let (client, url) = (
            api.client.clone(),
            format!("{}/api/v1/campaigns/{campaign}/issue", api.address),
        );
        async move {
            join_all((0..2).map(|i| {
                client
                    .post(&url)
                    .bearer_auth(mint_jwt(&format!("slow{i}"), 60))
                    .send()
            }))
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let (status, body) = api.issue(&campaign, "third").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "not a fast 503"
    );
    let (members, _) = gate_state(&campaign).await;
    assert!(!members.contains(&"third".to_owned()));
    // Refused before any handler ran, it is still counted.
    let scrape = api.scrape().await;
    assert!(scrape.sum("http_requests_total", &[("status", "503")]) >= 1.0);
    broker.freeze(false);
    for r in slow.await.unwrap() {
        assert_eq!(r.unwrap().status(), StatusCode::ACCEPTED);
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openapi_document_lists_every_route_and_status() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let doc: Value = api
        .client
        .get(format!("{}/openapi.json", api.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/v1/campaigns",
        "/api/v1/campaigns/{id}",
        "/api/v1/campaigns/{id}/close",
        "/api/v1/campaigns/{id}/coupons",
        "/api/v1/campaigns/{id}/issue",
        "/api/v1/campaigns/{id}/coupons/me",
        "/healthz",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    let issue = &paths["/api/v1/campaigns/{id}/issue"]["post"]["responses"];
    for status in ["202", "401", "404", "409", "410", "429", "503"] {
        assert!(issue.get(status).is_some(), "issue lacks {status}");
    }
    assert!(doc["components"]["schemas"]["CampaignRequest"].is_object());
    assert!(doc["components"]["securitySchemes"]["user"].is_object());
    // The words a client switches on are enums; the headers are declared.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["IssueOutcome"]["enum"],
        json!(["accepted", "pending", "queued"])
    );
    assert_eq!(
        schemas["CouponState"]["enum"],
        json!(["none", "queued", "pending", "issued", "rejected"])
    );
    assert_eq!(
        schemas["PlaceState"]["enum"],
        json!([
            "none", "waiting", "admitted", "expired", "taken", "sold_out", "closed"
        ])
    );
    for (status, response) in issue.as_object().unwrap() {
        let headers = &response["headers"];
        assert!(headers["X-Request-Id"].is_object(), "{status}: {response}");
        assert!(
            headers["Idempotent-Replayed"].is_object(),
            "{status}: {response}"
        );
    }
    for status in ["429", "503"] {
        assert!(
            issue[status]["headers"]["Retry-After"].is_object(),
            "{status}"
        );
    }
    assert!(issue["202"]["headers"]["Retry-After"].is_null());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_reference_is_served_from_the_binary() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let get = |path: &str| {
        let url = format!("{}{path}", api.address);
        let client = api.client.clone();
        async move {
            let res = client.get(url).send().await.unwrap();
            let status = res.status();
            let kind = res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, kind, res.text().await.unwrap())
        }
    };
    let (status, kind, page) = get("/docs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/html"), "{kind}");
    for file in [
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/docs/docs.js",
    ] {
        assert!(page.contains(file), "the page does not load {file}");
        let (status, _, body) = get(file).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        assert!(!body.is_empty(), "{file}");
    }
    let (_, kind, bundle) = get("/docs/swagger-ui-bundle.js").await;
    assert!(kind.starts_with("text/javascript"), "{kind}");
    assert!(bundle.contains("SwaggerUIBundle"));
    let (_, _, init) = get("/docs/docs.js").await;
    assert!(init.contains("\"/openapi.json\""), "{init}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_reply_carries_a_request_id_taken_from_the_request_when_usable() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let issue = |id: Option<&str>| {
        let mut req = api
            .client
            .post(format!("{}/api/v1/campaigns/{campaign}/issue", api.address))
            .bearer_auth(mint_jwt("rid", 3600));
        if let Some(id) = id {
            req = req.header("X-Request-Id", id);
        }
        req.send()
    };
    let id_of = |res: &reqwest::Response| {
        res.headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // Given: echoed, on a success and on a refusal alike.
    let res = issue(Some("trace-abc-123")).await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(id_of(&res).as_deref(), Some("trace-abc-123"));
    let res = issue(Some("trace-abc-124")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(id_of(&res).as_deref(), Some("trace-abc-124"));
    // Absent or unusable: one is made (a UUID), different each time.
    let made: Vec<String> = [
        issue(None).await.unwrap(),
        issue(Some(&"x".repeat(129))).await.unwrap(),
    ]
    .iter()
    .map(|r| id_of(r).unwrap())
    .collect();
    for id in &made {
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }
    assert_ne!(made[0], made[1]);
    // Routes that do not exist, and operations endpoints, too.
    for path in ["/nowhere", "/healthz"] {
        let res = api
            .client
            .get(format!("{}{path}", api.address))
            .send()
            .await
            .unwrap();
        assert!(id_of(&res).is_some(), "{path}");
    }
    api.stop().await;
}

/// A method nobody defined is answered 405 before anything records it: no
/// metric label, however many or long the methods (a label per made-up
/// method once grew `/metrics` by 1.65 KB each, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn made_up_methods_are_refused_and_grow_nothing() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let before = api.metrics_text().await.len();
    let mut methods: Vec<String> = (0..60).map(|i| format!("MADEUP{i}")).collect();
    methods.push("X".repeat(4_000));
    for method in &methods {
        let res = api
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}/api/v1/campaigns", api.address),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{method:.20}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["outcome"], "method_not_allowed");
    }
    let text = api.metrics_text().await;
    assert!(!text.contains("MADEUP"), "a made-up method became a label");
    // The counter of unknown methods is the only growth (a few bytes).
    assert!(
        text.len() < before + 200,
        "/metrics grew from {before} to {} bytes",
        text.len()
    );
    let scrape = api.scrape().await;
    assert_eq!(scrape.sum("http_unknown_methods_total", &[]), 61.0);
    api.stop().await;
}

/// `/readyz` and `/metrics` are the ops listener's only: an anonymous
/// client of the public port can neither read the metrics nor make the
/// instance probe its dependencies. `/healthz` is on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_and_metrics_are_not_on_the_public_port() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    for path in ["/readyz", "/metrics"] {
        let public = api
            .client
            .get(format!("{}{path}", api.address))
            .send()
            .await
            .unwrap();
        assert_eq!(
            public.status(),
            StatusCode::NOT_FOUND,
            "{path} on the public port"
        );
        let ops = api
            .client
            .get(format!("{}{path}", api.ops_address))
            .send()
            .await
            .unwrap();
        assert_eq!(ops.status(), StatusCode::OK, "{path} on the ops port");
    }
    for base in [&api.address, &api.ops_address] {
        let health = api
            .client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }
    api.stop().await;
}
