//! Test helpers: start the real api and worker (the same `Application`s that
//! `main` starts) on port 0 against real Redis, PostgreSQL and the broker,
//! isolated per test by their own topic, consumer group and campaigns; one
//! helper per endpoint. Service locations and reads of the services come
//! from `common::testkit`.
#![allow(dead_code)]

use std::time::Duration;

use api::startup::Application;
use chrono::Utc;
use common::ids::CampaignId;
use common::settings::Settings;
pub use common::testkit::*;
use jsonwebtoken::{EncodingKey, Header, encode};
pub use ngrinder_equivalent::scrape::Scrape;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "test-admin-token-of-thirty-two-bytes";
pub const JWT_SECRET: &str = "test-jwt-secret-of-thirty-two-bytes";

static MIGRATED: OnceCell<()> = OnceCell::const_new();

/// Settings for one test (see `common::testkit::isolated_settings`) with
/// test secrets; migrates the test database once per process and creates
/// the test's topics.
pub async fn test_settings() -> Settings {
    let mut s = isolated_settings();
    s.auth.admin_token = Some(SecretString::from(ADMIN_TOKEN));
    s.auth.jwt_secret = Some(SecretString::from(JWT_SECRET));
    common::telemetry::init(&s.log, "tests");
    MIGRATED
        .get_or_init(|| async {
            issuer_worker::migration::migrate(&db().await)
                .await
                .expect("migrations");
        })
        .await;
    common::kafka::ensure_topics(&s.kafka)
        .await
        .expect("topics");
    s
}

/// A running api instance.
pub struct TestApi {
    pub address: String,
    /// The ops listener (`/readyz`, `/metrics`).
    pub ops_address: String,
    pub client: reqwest::Client,
    /// The instance's own Redis (single node or cluster), for the audit.
    pub redis: common::settings::RedisSettings,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_api(settings: &Settings) -> TestApi {
    let app = Application::build(settings.clone())
        .await
        .expect("api builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let ops_address = format!("http://127.0.0.1:{}", app.ops_port());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    // The server always answers first: a lock wait and a delivery wait,
    // then 30 s of slack for a loaded machine.
    let client_timeout =
        Duration::from_millis(settings.lock.wait_ms + settings.kafka.delivery_timeout_ms + 30_000);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(client_timeout)
        .build()
        .expect("client");
    TestApi {
        address,
        ops_address,
        client,
        redis: settings.redis.clone(),
        stop: Some(tx),
        task: Some(task),
    }
}

impl TestApi {
    /// Graceful stop, as on SIGTERM.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("api task").expect("api stopped cleanly");
        }
    }

    pub async fn create_campaign(&self, body: Value) -> (StatusCode, Value) {
        let res = self
            .client
            .post(format!("{}/api/v1/campaigns", self.address))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("request");
        reply(res).await
    }

    /// An open campaign with `stock`; returns its id.
    pub async fn open_campaign(&self, stock: i64) -> CampaignId {
        let (status, body) = self
            .create_campaign(json!({ "name": "test sale", "stock": stock }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        CampaignId::parse(body["id"].as_str().expect("id")).expect("uuid")
    }

    pub async fn campaign(&self, id: &CampaignId) -> (StatusCode, Value) {
        let res = self
            .client
            .get(format!("{}/api/v1/campaigns/{id}", self.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("request");
        reply(res).await
    }

    pub async fn close_campaign(&self, id: &CampaignId) -> (StatusCode, Value) {
        let res = self
            .client
            .post(format!("{}/api/v1/campaigns/{id}/close", self.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("request");
        reply(res).await
    }

    /// The `/metrics` page as text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.ops_address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The `/metrics` page, parsed.
    pub async fn scrape(&self) -> Scrape {
        Scrape::parse(&self.metrics_text().await)
    }

    pub async fn issue(&self, campaign: &CampaignId, user: &str) -> (StatusCode, Value) {
        self.issue_with_token(campaign, &mint_jwt(user, 3600)).await
    }

    pub async fn issue_with_token(
        &self,
        campaign: &CampaignId,
        token: &str,
    ) -> (StatusCode, Value) {
        self.issue_request(campaign, token, None).await
    }

    /// As `issue`, with an `Idempotency-Key` when `key` is given.
    pub async fn issue_keyed(
        &self,
        campaign: &CampaignId,
        user: &str,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        self.issue_request(campaign, &mint_jwt(user, 3600), key)
            .await
    }

    async fn issue_request(
        &self,
        campaign: &CampaignId,
        token: &str,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!(
                "{}/api/v1/campaigns/{campaign}/issue",
                self.address
            ))
            .bearer_auth(token);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        reply(request.send().await.expect("request")).await
    }

    pub async fn my_coupon(&self, campaign: &CampaignId, user: &str) -> (StatusCode, Value) {
        let res = self
            .client
            .get(format!(
                "{}/api/v1/campaigns/{campaign}/coupons/me",
                self.address
            ))
            .bearer_auth(mint_jwt(user, 3600))
            .send()
            .await
            .expect("request");
        reply(res).await
    }
}

pub async fn reply(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// An HS256 user token; `ttl_secs` may be negative (expired).
pub fn mint_jwt(user: &str, ttl_secs: i64) -> String {
    mint_jwt_with(user, ttl_secs, JWT_SECRET)
}

pub fn mint_jwt_with(user: &str, ttl_secs: i64, secret: &str) -> String {
    let claims = json!({ "sub": user, "exp": Utc::now().timestamp() + ttl_secs });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

/// A running in-process worker.
pub struct TestWorker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_worker(settings: &Settings) -> TestWorker {
    let app = issuer_worker::startup::Application::build(settings.clone())
        .await
        .expect("worker builds");
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    TestWorker { stop, task }
}

impl TestWorker {
    pub async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("worker task")
            .expect("worker stopped cleanly");
    }
}

/// The audit of docs/CONTRACT.md on one campaign after a run, by the rules
/// the harness and the fault suite apply (`ngrinder_equivalent::audit`):
/// waits (bounded) for the deferred users to settle and for the worker to
/// drain, then judges the rows against the replies. `replies` are (user,
/// reply body) pairs.
pub async fn audit(
    api: &TestApi,
    campaign: &CampaignId,
    replies: &[(String, Value)],
) -> ngrinder_equivalent::audit::AuditReport {
    use std::collections::BTreeMap;

    use ngrinder_equivalent::admin::Coupon;
    use ngrinder_equivalent::audit::{Evidence, judge};
    use ngrinder_equivalent::stats::Outcome;

    let mut promised = BTreeMap::new();
    let mut named = BTreeMap::new();
    let (mut sold_out_seen, mut failures_seen) = (false, false);
    for (user, body) in replies {
        let outcome = body["outcome"]
            .as_str()
            .and_then(|o| Outcome::ALL.into_iter().find(|known| known.as_str() == o));
        match outcome {
            Some(o @ (Outcome::Accepted | Outcome::Pending | Outcome::Queued)) => {
                promised.insert(user.clone(), o);
            }
            Some(Outcome::SoldOut) => sold_out_seen = true,
            Some(o) if o.error_kind().is_none() => {}
            // Refusals take nothing; neither does a 503 unless it says a
            // slot may be left for reconciliation. Only those (and replies
            // that never came, or a 500) may leave a slot held without a
            // row or a deferred user unsettled, and relax the rules below.
            Some(
                Outcome::RateLimited
                | Outcome::NotOpen
                | Outcome::Closed
                | Outcome::UnknownCampaign
                | Outcome::Unexpected4xx,
            ) => {}
            Some(Outcome::Unavailable)
                if !body["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("reconciliation") => {}
            _ => failures_seen = true,
        }
        if let Some(id) = body["coupon_id"].as_str() {
            named.insert(user.clone(), id.to_owned());
        }
    }

    let started = std::time::Instant::now();
    let mut finals: BTreeMap<String, String> = BTreeMap::new();
    let mut waiting: Vec<&String> = promised
        .iter()
        .filter(|(_, o)| **o != Outcome::Accepted)
        .map(|(u, _)| u)
        .collect();
    loop {
        let mut still = Vec::new();
        for user in waiting {
            let (_, me) = api.my_coupon(campaign, user).await;
            let state = me["state"].as_str().unwrap_or("?").to_owned();
            if matches!(state.as_str(), "queued" | "pending" | "?")
                && started.elapsed() < Duration::from_secs(60)
            {
                still.push(user);
            }
            finals.insert(user.clone(), state);
        }
        if still.is_empty() {
            break;
        }
        waiting = still;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Drained: the rows reach the users promised a coupon for good
    // (accepted, or deferred and ended issued) and the persisted column
    // matches them.
    let expected = promised
        .iter()
        .filter(|(u, o)| **o == Outcome::Accepted || finals.get(*u).is_some_and(|s| s == "issued"))
        .count() as u64;
    let db = db().await;
    let started = std::time::Instant::now();
    let drained = loop {
        let rows = rows(&db, campaign).await;
        let persisted = persisted_column(&db, campaign).await;
        if rows >= expected && persisted == rows as i64 {
            break true;
        }
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rows: Vec<Coupon> = row_coupons(&db, campaign)
        .await
        .into_iter()
        .map(|(user_id, id)| Coupon {
            user_id,
            coupon_id: id.to_string(),
        })
        .collect();
    let gate = common::redis_state::Gate::new(
        common::redis_state::RedisClient::new(&api.redis, None).expect("redis client"),
    );
    judge(&Evidence {
        stock: stock_of(&db, campaign).await,
        gate_count: gate.taken(campaign).await.expect("gate count"),
        persisted_column: persisted_column(&db, campaign).await,
        rows: &rows,
        promised: &promised,
        named: &named,
        finals: &finals,
        sold_out_seen,
        failures_seen,
        drained,
    })
}

async fn stock_of(db: &sea_orm::DatabaseConnection, campaign: &CampaignId) -> i64 {
    use sea_orm::EntityTrait;
    common::entities::campaigns::Entity::find_by_id(campaign.as_uuid())
        .one(db)
        .await
        .expect("campaign read")
        .expect("campaign row")
        .stock
}

/// The test's settings as the environment of an api or worker process
/// (`APP_*`), for tests that run the binaries themselves.
pub fn process_environment(settings: &Settings) -> Vec<(String, String)> {
    use secrecy::ExposeSecret;
    let k = &settings.kafka;
    [
        (
            "APP_DATABASE__URL",
            settings.database.url.expose_secret().to_owned(),
        ),
        ("APP_REDIS__URL", settings.redis.url.clone()),
        ("APP_KAFKA__BROKERS", k.brokers.clone()),
        ("APP_KAFKA__TOPIC", k.topic.clone()),
        ("APP_KAFKA__DLQ_TOPIC", k.dlq_topic.clone()),
        ("APP_KAFKA__GROUP_ID", k.group_id.clone()),
        ("APP_AUTH__ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("APP_AUTH__JWT_SECRET", JWT_SECRET.to_owned()),
        ("APP_HTTP__WORKERS", "2".to_owned()),
        // Any free port: several processes run at once.
        ("APP_HTTP__OPS_PORT", "0".to_owned()),
        ("APP_LOG__FILTER", "warn".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Starts `program` with `env` and `extra`; its stdout is piped (its logs).
pub fn spawn_process(
    program: std::path::PathBuf,
    args: &[&str],
    env: &[(String, String)],
    extra: (&str, String),
) -> std::process::Child {
    std::process::Command::new(program)
        .args(args)
        .envs(env.iter().cloned())
        .env(extra.0, extra.1)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start")
}

/// SIGTERM, then the exit (the process flushes what it holds); its stdout.
pub fn stop_process(mut child: std::process::Child) -> String {
    use std::io::Read;
    signal(child.id(), "-TERM");
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let _ = child.wait();
    out
}

/// An open campaign with `stock`, created through the admin API of the api
/// process at `base` (`http://127.0.0.1:<port>`).
pub async fn create_campaign_at(base: &str, stock: i64) -> CampaignId {
    let res = reqwest::Client::new()
        .post(format!("{base}/api/v1/campaigns"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "test sale", "stock": stock }))
        .send()
        .await
        .expect("request");
    let (status, body) = reply(res).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    CampaignId::parse(body["id"].as_str().expect("id")).expect("uuid")
}

/// One burst at a time: two at once on two cores starve the api's workers
/// (the lock waiters poll Redis), and actix then answers a connection
/// whose request it could not read within 5 s with 408.
pub static BURSTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
