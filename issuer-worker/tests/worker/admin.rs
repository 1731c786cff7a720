//! The operators' commands as an operator runs them: the `issuer-worker`
//! binary, against the real api (in this process, over HTTP), the worker,
//! Apache Kafka, Redis and PostgreSQL. Letters come from the worker itself
//! where a test can make it set them aside, else from its own dead-letter
//! writer (`dlq::DeadLetters`), as they would after a slot was given back.

use std::path::PathBuf;

use common::message::DlqReason;
use issuer_worker::dlq::{DeadLetter, DeadLetters};
use ngrinder_equivalent::token::Minter;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use super::*;

const ADMIN_TOKEN: &str = "admin-cli-test-token-of-thirty-two-bytes";
const JWT_SECRET: &str = "admin-cli-test-jwt-secret-of-32-bytes";

/// The worker's test settings with the api's secrets.
async fn admin_settings() -> Settings {
    let mut s = settings().await;
    s.auth.admin_token = Some(SecretString::from(ADMIN_TOKEN));
    s.auth.jwt_secret = Some(SecretString::from(JWT_SECRET));
    s
}

/// The real api on port 0, with a user-token minter.
struct Api {
    url: String,
    http: reqwest::Client,
    minter: Minter,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn spawn_api(settings: &Settings) -> Api {
    let app = api::startup::Application::build(settings.clone())
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    Api {
        url,
        http: reqwest::Client::new(),
        minter: Minter::new(JWT_SECRET, 3_600).unwrap(),
        stop,
        task,
    }
}

impl Api {
    async fn as_user(&self, method: reqwest::Method, path: &str, user: &str) -> (u16, Value) {
        let mut bearer = String::new();
        self.minter.bearer(user, &mut bearer);
        let reply = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("authorization", bearer)
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        (status, reply.json().await.unwrap_or(Value::Null))
    }

    async fn issue(&self, campaign: &str, user: &str) -> (u16, Value) {
        let path = format!("/api/v1/campaigns/{campaign}/issue");
        self.as_user(reqwest::Method::POST, &path, user).await
    }

    async fn join(&self, campaign: &str, user: &str) -> u16 {
        let path = format!("/api/v1/campaigns/{campaign}/room");
        self.as_user(reqwest::Method::POST, &path, user).await.0
    }

    async fn my_coupon(&self, campaign: &str, user: &str) -> Value {
        let path = format!("/api/v1/campaigns/{campaign}/coupons/me");
        self.as_user(reqwest::Method::GET, &path, user).await.1
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// The binary with the test's settings in its environment.
struct Cli {
    env: Vec<(String, String)>,
}

/// What one run of the binary left.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not one JSON document ({e}): {self:?}"))
    }

    fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Cli {
    fn new(settings: &Settings, api: &str) -> Self {
        let env = [
            ("APP_DATABASE__URL", settings.database.url.expose_secret()),
            ("APP_REDIS__URL", settings.redis.url.as_str()),
            ("APP_KAFKA__BROKERS", settings.kafka.brokers.as_str()),
            ("APP_KAFKA__TOPIC", settings.kafka.topic.as_str()),
            ("APP_KAFKA__DLQ_TOPIC", settings.kafka.dlq_topic.as_str()),
            ("APP_KAFKA__GROUP_ID", settings.kafka.group_id.as_str()),
            ("APP_AUTH__ADMIN_TOKEN", ADMIN_TOKEN),
            ("APP_ADMIN__API_URL", api),
            ("APP_LOG__FILTER", "warn"),
        ];
        Self {
            env: env
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// The same, with `name` set to `value` (or unset).
    fn with(&self, name: &str, value: Option<&str>) -> Self {
        let mut env: Vec<_> = self
            .env
            .iter()
            .filter(|(k, _)| k != name)
            .cloned()
            .collect();
        if let Some(value) = value {
            env.push((name.to_owned(), value.to_owned()));
        }
        Self { env }
    }

    async fn run(&self, args: &[&str]) -> Ran {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_issuer-worker"))
            .args(args)
            .env_remove("APP_AUTH__ADMIN_TOKEN")
            .env_remove("APP_ADMIN__API_URL")
            .envs(self.env.iter().cloned())
            .output()
            .await
            .unwrap();
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// The place of the letter whose message is `user`'s, waiting for it.
async fn letter_of(settings: &Settings, user: &str) -> String {
    let started = Instant::now();
    loop {
        let letters = read_topic(&settings.kafka.brokers, &settings.kafka.dlq_topic).await;
        let found = letters.iter().find(|l| {
            l.payload
                .as_deref()
                .and_then(|p| CouponIssued::decode(p).ok())
                .is_some_and(|m| m.user_id.as_str() == user)
        });
        if let Some(l) = found {
            return format!("{}:{}", l.partition, l.offset);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no letter for {user}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sets a message aside as the worker would (its reason and source
/// headers), without the worker: the letter of a user whose slot was given
/// back since, or never taken.
async fn dead_letter(settings: &Settings, m: &CouponIssued, reason: DlqReason) {
    let (key, bytes) = (m.key(), m.encode());
    DeadLetters::new(&settings.kafka)
        .unwrap()
        .send(&DeadLetter {
            reason,
            detail: format!("campaign {}", m.campaign_id),
            partition: 0,
            offset: 1_000,
            key: Some(key.as_bytes()),
            payload: Some(&bytes),
        })
        .await
        .unwrap();
}

/// A campaign made with `campaigns create`.
async fn create_with(cli: &Cli, name: &str, stock: &str) -> CampaignId {
    campaign_id(
        &cli.run(&[
            "campaigns",
            "create",
            "--name",
            name,
            "--stock",
            stock,
            "--output",
            "json",
        ])
        .await
        .json(),
    )
}

fn campaign_id(view: &Value) -> CampaignId {
    CampaignId::parse(view["id"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaigns_are_created_listed_shown_and_closed_through_the_api() {
    let settings = admin_settings().await;
    let api = spawn_api(&settings).await;
    let cli = Cli::new(&settings, &api.url);

    let made = cli
        .run(&[
            "campaigns",
            "create",
            "--name",
            "cli sale",
            "--stock",
            "3",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(made.code, 0, "{made:?}");
    let made = made.json();
    assert_eq!(
        (&made["stock"], &made["state"]),
        (&json!(3), &json!("open"))
    );
    let plain = campaign_id(&made);

    // From a file, with a waiting room that opens in an hour; retried with
    // the same key, it is the same campaign.
    let file: PathBuf = std::env::temp_dir().join(format!("campaign-{}.json", CampaignId::new()));
    let starts_at = Utc::now() + chrono::Duration::hours(1);
    std::fs::write(
        &file,
        json!({
            "name": "room sale",
            "stock": 10,
            "starts_at": starts_at,
            "waiting_room": { "admit_per_second": 5, "admission_ttl_secs": 60 },
        })
        .to_string(),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let key = CampaignId::new().to_string();
    let create = [
        "campaigns",
        "create",
        "--file",
        path,
        "--idempotency-key",
        &key,
        "--output",
        "json",
    ];
    let first = cli.run(&create).await;
    let again = cli.run(&create).await;
    assert_eq!(first.code, 0, "{first:?}");
    let room = campaign_id(&first.json());
    assert_eq!(campaign_id(&again.json()), room);
    std::fs::remove_file(&file).unwrap();

    for user in ["ann", "ben"] {
        assert_eq!(api.join(&room.to_string(), user).await, 202);
    }
    let shown = cli
        .run(&["campaigns", "show", &room.to_string(), "--output", "json"])
        .await
        .json();
    let line = &shown["waiting_room"];
    assert_eq!(
        (&line["joined"], &line["admitted"], &line["waiting"]),
        (&json!(2), &json!(0), &json!(2)),
        "{shown}"
    );
    assert_eq!(line["admit_per_second"], 5);
    assert_eq!(shown["state"], "scheduled");
    let text = cli.run(&["campaigns", "show", &room.to_string()]).await;
    assert_eq!(text.code, 0, "{text:?}");
    for expected in [
        "stock      10",
        "taken      0",
        "persisted  0",
        "waiting    2 in line (2 joined, 0 admitted; admits 5/s, 60 s to issue)",
    ] {
        assert!(
            text.stdout.contains(expected),
            "{expected:?} in\n{}",
            text.stdout
        );
    }

    let listed = cli
        .run(&["campaigns", "list", "--limit", "10000", "--output", "json"])
        .await
        .json();
    let ids: Vec<&str> = listed["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert!(ids.contains(&plain.to_string().as_str()) && ids.contains(&room.to_string().as_str()));
    let table = cli.run(&["campaigns", "list"]).await;
    assert!(table.stdout.starts_with("ID "), "{table:?}");
    assert!(table.stdout.contains(&plain.to_string()));

    let closed = cli
        .run(&["campaigns", "close", &plain.to_string(), "--output", "json"])
        .await;
    assert_eq!(
        (closed.code, &closed.json()["state"]),
        (0, &json!("closed"))
    );
    assert_eq!(api.issue(&plain.to_string(), "late").await.0, 410);

    // An archive: refused for a campaign still open, done for a closed one.
    let open = cli.run(&["campaigns", "archive", &room.to_string()]).await;
    assert_eq!(open.code, 4, "{open:?}");
    assert!(open.stderr.contains("not_closed"), "{open:?}");
    let archived = cli
        .run(&[
            "campaigns",
            "archive",
            &plain.to_string(),
            "--output",
            "json",
        ])
        .await;
    assert_eq!(archived.code, 0, "{archived:?}");
    assert!(archived.json()["archived_at"].is_string(), "{archived:?}");
    let card = cli.run(&["campaigns", "show", &plain.to_string()]).await;
    assert!(card.stdout.contains("\narchived   "), "{card:?}");

    // The exit codes.
    let unknown = cli
        .run(&["campaigns", "show", &CampaignId::new().to_string()])
        .await;
    assert_eq!(unknown.code, 3, "{unknown:?}");
    assert!(unknown.stderr.contains("unknown_campaign"), "{unknown:?}");
    assert_eq!(cli.run(&["campaigns", "show", "not-a-uuid"]).await.code, 2);
    let invalid = cli
        .run(&["campaigns", "create", "--name", "x", "--stock", "-1"])
        .await;
    assert_eq!(invalid.code, 4, "{invalid:?}");
    assert!(invalid.stderr.contains("invalid_input"), "{invalid:?}");
    let wrong = cli
        .with(
            "APP_AUTH__ADMIN_TOKEN",
            Some("another-token-of-thirty-two-bytes!!"),
        )
        .run(&["campaigns", "list"])
        .await;
    assert_eq!(wrong.code, 4, "{wrong:?}");
    let tokenless = cli
        .with("APP_AUTH__ADMIN_TOKEN", None)
        .run(&["campaigns", "list"])
        .await;
    assert_eq!(tokenless.code, 2, "{tokenless:?}");
    assert!(tokenless.stderr.contains("APP_AUTH__ADMIN_TOKEN"));
    let nobody = cli
        .run(&[
            "campaigns",
            "list",
            "--api",
            &format!("http://127.0.0.1:{}", spare_port()),
        ])
        .await;
    assert_eq!(nobody.code, 1, "{nobody:?}");
    api.stop().await;
}

/// Letters the worker set aside, read back with where each came from: bytes
/// that are not a message, a message of an unknown campaign, and one too
/// large to set aside whole (a truncated copy, which never goes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_list_and_show_name_each_letter_with_its_source_and_truncated_ones_never_go() {
    let settings = admin_settings().await;
    let cli = Cli::new(&settings, "http://127.0.0.1:1");
    let topic = IssueTopic::new(&settings.kafka);
    topic.send_raw("garbage", b"{not json").await;
    topic.send(&message(CampaignId::new(), "stray")).await;
    // A message of an unknown campaign near message.max.bytes: it fits the
    // issue topic, not the dead-letter topic with the dlq.* headers.
    let mut big = message(CampaignId::new(), "big");
    big.strategy = String::new();
    big.strategy = "x".repeat(999_850 - big.encode().len());
    topic.send_to_first(&big.key(), &big.encode()).await;
    let worker = start(&settings).await;
    dead_letters(&settings.kafka, 3).await;
    worker.stop().await;

    let all = cli.run(&["dlq", "list", "--output", "json"]).await;
    assert_eq!(all.code, 0, "{all:?}");
    let all = all.json();
    assert_eq!(
        (&all["scanned"], &all["matched"]),
        (&json!(3), &json!(3)),
        "{all}"
    );
    let letters = all["letters"].as_array().unwrap();
    let stray = letters.iter().find(|l| l["user_id"] == "stray").unwrap();
    assert_eq!(stray["reason"], "unknown_campaign");
    assert_eq!(stray["source"]["topic"], json!(settings.kafka.topic));
    assert!(stray["source"]["offset"].is_i64(), "{stray}");
    let unparseable = letters
        .iter()
        .find(|l| l["reason"] == "unparseable")
        .unwrap();
    assert!(unparseable["user_id"].is_null());
    let truncated = letters.iter().find(|l| l["truncated"] == true).unwrap();
    assert_eq!(truncated["reason"], "unknown_campaign");
    assert_eq!(truncated["source"]["partition"], 0, "{truncated}");
    let original = format!(
        "{} 0:{}",
        settings.kafka.topic, truncated["source"]["offset"]
    );

    let only = cli
        .run(&["dlq", "list", "--reason", "unparseable", "--output", "json"])
        .await
        .json();
    assert_eq!(only["matched"], 1);
    let one = cli
        .run(&["dlq", "list", "--limit", "1", "--output", "json"])
        .await
        .json();
    assert_eq!(
        (one["letters"].as_array().unwrap().len(), &one["matched"]),
        (1, &json!(3))
    );
    let table = cli.run(&["dlq", "list"]).await;
    assert!(
        table.stdout.contains("unknown_campaign (truncated)"),
        "{table:?}"
    );

    let place = truncated["letter"].as_str().unwrap().to_owned();
    let shown = cli
        .run(&["dlq", "show", &place, "--output", "json"])
        .await
        .json();
    assert_eq!(shown["redrive"]["allowed"], false, "{shown}");
    let why = shown["redrive"]["why"].as_str().unwrap();
    assert!(
        why.contains("truncated") && why.contains(&original),
        "{why}"
    );
    assert!(shown["headers"]["dlq.truncated"].is_string(), "{shown}");
    let card = cli.run(&["dlq", "show", &place]).await;
    assert!(
        card.stdout.contains("re-drive   refused: a truncated copy"),
        "{card:?}"
    );
    assert_eq!(cli.run(&["dlq", "show", "0:999999"]).await.code, 3);
    assert_eq!(cli.run(&["dlq", "show", "zero"]).await.code, 2);

    // Neither the truncated copy, nor the unparseable bytes, nor a message
    // that came late (its take settled without it) goes back.
    let garbage = unparseable["letter"].as_str().unwrap().to_owned();
    dead_letter(
        &settings,
        &message(CampaignId::new(), "tardy"),
        DlqReason::Late,
    )
    .await;
    let tardy = letter_of(&settings, "tardy").await;
    let before = topic_messages(&settings.kafka.brokers, &settings.kafka.topic).await;
    let redrive = cli
        .run(&[
            "dlq", "redrive", "--letter", &place, &garbage, &tardy, "--output", "json",
        ])
        .await;
    assert_eq!(redrive.code, 5, "{redrive:?}");
    let outcomes: Vec<Value> = redrive
        .lines()
        .iter()
        .map(|l| l["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes,
        [json!("truncated"), json!("not_a_message"), json!("late")]
    );
    assert_eq!(
        topic_messages(&settings.kafka.brokers, &settings.kafka.topic).await,
        before
    );
    assert_eq!(
        cli.run(&["dlq", "redrive", "--letter", "0:999999"])
            .await
            .code,
        3,
        "a letter that is not there"
    );
}

/// The case re-drive is for: the api accepted alice's issue, PostgreSQL
/// refused her row (here a CHECK on her campaign; in life a bad
/// migration, a type too narrow), the worker set it aside and told her
/// `none`. Once the database is fixed, her letter is re-driven: a dry run
/// first changes nothing; re-driven twice before the worker catches up, it
/// is still one row, with the coupon id her reply named, and her slot
/// counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_letter_redriven_twice_after_a_fix_is_one_row_with_its_promised_coupon_id() {
    let settings = admin_settings().await;
    let db = db().await;
    let api = spawn_api(&settings).await;
    let cli = Cli::new(&settings, &api.url);
    let made = cli
        .run(&[
            "campaigns",
            "create",
            "--name",
            "refused",
            "--stock",
            "5",
            "--output",
            "json",
        ])
        .await
        .json();
    let c = campaign_id(&made);
    let constraint = format!("admin_test_refuse_{}", c.as_uuid().simple());
    db.execute_unprepared(&format!(
        "ALTER TABLE coupons ADD CONSTRAINT {constraint} CHECK (campaign_id <> '{c}') NOT VALID"
    ))
    .await
    .unwrap();
    let worker = start(&settings).await;
    let (status, reply) = api.issue(&c.to_string(), "alice").await;
    assert_eq!(
        (status, &reply["outcome"]),
        (202, &json!("accepted")),
        "{reply}"
    );
    let promised = reply["coupon_id"].as_str().unwrap().to_owned();
    let letter = letter_of(&settings, "alice").await;
    let started = Instant::now();
    while api.my_coupon(&c.to_string(), "alice").await["state"] != "none" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "alice not told none"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The fix.
    db.execute_unprepared(&format!("ALTER TABLE coupons DROP CONSTRAINT {constraint}"))
        .await
        .unwrap();

    let issue_topic = || topic_messages(&settings.kafka.brokers, &settings.kafka.topic);
    let (messages, gate) = (issue_topic().await, gate_state(&c).await);
    assert_eq!(
        gate,
        (vec!["alice".to_owned()], Some(1)),
        "her slot was never given back"
    );
    let dry = cli
        .run(&[
            "dlq",
            "redrive",
            "--letter",
            &letter,
            "--dry-run",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(dry.code, 0, "{dry:?}");
    let line = &dry.lines()[0];
    assert_eq!(
        (&line["outcome"], &line["slot"], &line["dry_run"]),
        (&json!("would_redrive"), &json!("held"), &json!(true)),
        "{line}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(issue_topic().await, messages, "a dry run produced");
    assert_eq!(gate_state(&c).await, gate);
    assert_eq!(rows(&db, &c).await, 0);
    assert_eq!(
        api.my_coupon(&c.to_string(), "alice").await["state"],
        "none"
    );

    worker.stop().await;
    for _ in 0..2 {
        let ran = cli
            .run(&["dlq", "redrive", "--letter", &letter, "--output", "json"])
            .await;
        assert_eq!(ran.code, 0, "{ran:?}");
        let line = &ran.lines()[0];
        assert_eq!(
            (&line["outcome"], &line["slot"]),
            (&json!("redriven"), &json!("held"))
        );
        assert_eq!(line["coupon_id"], json!(promised));
        assert_eq!(line["from"]["topic"], json!(settings.kafka.dlq_topic));
        assert_eq!(line["to"]["topic"], json!(settings.kafka.topic));
        assert_eq!(line["source"]["topic"], json!(settings.kafka.topic));
    }
    assert_eq!(issue_topic().await, messages + 2);
    assert_eq!(
        api.my_coupon(&c.to_string(), "alice").await["state"],
        "pending"
    );
    let worker = start(&settings).await;
    wait_for_rows(&db, &c, 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(row_coupons(&db, &c).await["alice"].to_string(), promised);
    assert_eq!(rows(&db, &c).await, 1);
    assert_eq!(persisted_column(&db, &c).await, 1);
    assert_eq!(gate_state(&c).await, (vec!["alice".to_owned()], Some(1)));
    let mine = api.my_coupon(&c.to_string(), "alice").await;
    assert_eq!(
        (&mine["state"], &mine["coupon_id"]),
        (&json!("issued"), &json!(promised))
    );

    // Once more: nothing to do, nothing produced.
    let third = cli.run(&["dlq", "redrive", "--letter", &letter]).await;
    assert_eq!(third.code, 0, "{third:?}");
    assert!(third.stdout.starts_with("already_issued"), "{third:?}");
    assert_eq!(issue_topic().await, messages + 2);
    worker.stop().await;
    api.stop().await;
}

/// The usual order in life: the letter first, then `reconcile --repair`
/// (which gives its leaked slot back and records a cutoff), then the fix,
/// then the re-drive. The re-drive takes a slot again, and its message is
/// stamped after the cutoff, so the worker persists it rather than refuse
/// it as `late`; the row carries the coupon id the api promised.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_letter_redriven_after_reconcile_gave_its_slot_back_is_persisted_not_late() {
    let settings = admin_settings().await;
    let db = db().await;
    let api = spawn_api(&settings).await;
    let cli = Cli::new(&settings, &api.url);
    let made = cli
        .run(&[
            "campaigns",
            "create",
            "--name",
            "reconciled",
            "--stock",
            "5",
            "--output",
            "json",
        ])
        .await
        .json();
    let c = campaign_id(&made);
    let constraint = format!("admin_test_refuse_{}", c.as_uuid().simple());
    db.execute_unprepared(&format!(
        "ALTER TABLE coupons ADD CONSTRAINT {constraint} CHECK (campaign_id <> '{c}') NOT VALID"
    ))
    .await
    .unwrap();
    let worker = start(&settings).await;
    let (status, reply) = api.issue(&c.to_string(), "bob").await;
    assert_eq!(status, 202, "{reply}");
    let promised = reply["coupon_id"].as_str().unwrap().to_owned();
    let letter = letter_of(&settings, "bob").await;
    let report = issuer_worker::reconcile::run(&settings, &db, c, true, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(report.given_back, 1, "{report:?}");
    assert_eq!(gate_state(&c).await, (vec![], Some(0)));
    db.execute_unprepared(&format!("ALTER TABLE coupons DROP CONSTRAINT {constraint}"))
        .await
        .unwrap();

    let ran = cli
        .run(&["dlq", "redrive", "--letter", &letter, "--output", "json"])
        .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let line = &ran.lines()[0];
    assert_eq!(
        (&line["outcome"], &line["slot"]),
        (&json!("redriven"), &json!("taken"))
    );
    wait_for_rows(&db, &c, 1, Duration::from_secs(30)).await;
    assert_eq!(row_coupons(&db, &c).await["bob"].to_string(), promised);
    assert_eq!(gate_state(&c).await, (vec!["bob".to_owned()], Some(1)));
    let (_, reasons) = dead_letters(&settings.kafka, 2).await;
    assert_eq!(reasons, ["rejected_by_database"], "re-dead-lettered");
    worker.stop().await;
    api.stop().await;
}

/// A letter whose slot is gone is re-driven only if the gate can take one
/// again within the stock: with stock left it takes one (and the row
/// follows); with the gate's stock all held, even by a message still on
/// its way (carol's), it is refused, and carol, who was accepted, gets her
/// row; once the rows reach the stock it is refused before the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redrive_takes_a_slot_only_within_the_stock() {
    let settings = admin_settings().await;
    let db = db().await;
    let api = spawn_api(&settings).await;
    let cli = Cli::new(&settings, &api.url);
    let create = |name: &'static str, stock: &'static str| create_with(&cli, name, stock);
    let issue_topic = || topic_messages(&settings.kafka.brokers, &settings.kafka.topic);

    // Stock left: a slot is taken for it, and the worker writes the row.
    let roomy = create("roomy", "5").await;
    let worker = start(&settings).await;
    let ed = message(roomy, "ed");
    dead_letter(&settings, &ed, DlqReason::RejectedByDatabase).await;
    let letter = letter_of(&settings, "ed").await;
    let ran = cli
        .run(&["dlq", "redrive", "--letter", &letter, "--output", "json"])
        .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.lines()[0]["slot"], "taken");
    wait_for_rows(&db, &roomy, 1, Duration::from_secs(30)).await;
    assert_eq!(gate_state(&roomy).await, (vec!["ed".to_owned()], Some(1)));

    // Stock 2: alice's row, then carol accepted while the worker is away.
    let tight = create("tight", "2").await;
    assert_eq!(api.issue(&tight.to_string(), "alice").await.0, 202);
    wait_for_rows(&db, &tight, 1, Duration::from_secs(30)).await;
    worker.stop().await;
    let (status, carol) = api.issue(&tight.to_string(), "carol").await;
    assert_eq!((status, &carol["outcome"]), (202, &json!("accepted")));
    dead_letter(
        &settings,
        &message(tight, "bob"),
        DlqReason::RejectedByDatabase,
    )
    .await;
    dead_letter(&settings, &message(tight, "dave"), DlqReason::OverStock).await;
    let (bob, dave) = (
        letter_of(&settings, "bob").await,
        letter_of(&settings, "dave").await,
    );
    let before = issue_topic().await;
    let ran = cli
        .run(&[
            "dlq", "redrive", "--letter", &bob, &dave, "--output", "json",
        ])
        .await;
    assert_eq!(ran.code, 5, "{ran:?}");
    for line in ran.lines() {
        assert_eq!(line["outcome"], "sold_out", "{line}");
        assert!(line["message"].as_str().unwrap().contains("gate"), "{line}");
        assert!(line["to"].is_null());
    }
    assert_eq!(issue_topic().await, before);
    let held = (vec!["alice".to_owned(), "carol".to_owned()], Some(2));
    assert_eq!(gate_state(&tight).await, held);

    let worker = start(&settings).await;
    wait_for_rows(&db, &tight, 2, Duration::from_secs(30)).await;
    let mut users = row_users(&db, &tight).await;
    users.sort();
    assert_eq!(users, ["alice", "carol"]);
    let again = cli.run(&["dlq", "redrive", "--letter", &bob]).await;
    assert_eq!(again.code, 5, "{again:?}");
    assert!(
        again.stdout.contains("the rows reached the stock (2 of 2)"),
        "{again:?}"
    );
    assert_eq!(gate_state(&tight).await, held);
    assert_eq!(persisted_column(&db, &tight).await, 2);
    worker.stop().await;
    api.stop().await;
}

/// A letter of an archived campaign is not re-driven: its users set is not
/// in Redis, so the gate cannot tell whether the letter's slot is counted
/// (a holder would be refused sold out, or counted twice). Once `rebuild
/// --force --unarchive` has loaded the users back, it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_letter_of_an_archived_campaign_waits_for_its_unarchive() {
    let mut settings = admin_settings().await;
    // alice's message is acknowledged before the rebuild starts: its wait
    // for the takes to settle can be short.
    settings.kafka.delivery_timeout_ms = 0;
    let db = db().await;
    let api = spawn_api(&settings).await;
    let cli = Cli::new(&settings, &api.url);
    let c = create_with(&cli, "archived", "5").await;
    assert_eq!(api.issue(&c.to_string(), "alice").await.0, 202);
    for step in ["close", "archive"] {
        let ran = cli.run(&["campaigns", step, &c.to_string()]).await;
        assert_eq!(ran.code, 0, "{step}: {ran:?}");
    }
    dead_letter(&settings, &message(c, "ed"), DlqReason::RejectedByDatabase).await;
    let letter = letter_of(&settings, "ed").await;
    let before = gate_state(&c).await;
    assert_eq!(before, (vec![], Some(1)));
    let ran = cli
        .run(&["dlq", "redrive", "--letter", &letter, "--output", "json"])
        .await;
    assert_eq!(ran.lines()[0]["outcome"], "archived", "{ran:?}");
    assert_eq!(gate_state(&c).await, before, "a slot was taken");

    let report = issuer_worker::rebuild::run_unarchiving(&settings, &db, c)
        .await
        .unwrap();
    assert!(!report.archived, "{report:?}");
    assert_eq!(gate_state(&c).await, (vec!["alice".to_owned()], Some(1)));
    let ran = cli
        .run(&["dlq", "redrive", "--letter", &letter, "--output", "json"])
        .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.lines()[0]["slot"], "taken", "{ran:?}");
    assert_eq!(
        gate_state(&c).await,
        (vec!["alice".to_owned(), "ed".to_owned()], Some(2))
    );

    // The same state with a row that does not say archived (an unarchive
    // that cleared its mark after an archive overtook it): the gate itself
    // refuses, counting slots without a users set.
    let d = create_with(&cli, "unmarked", "5").await;
    assert_eq!(api.issue(&d.to_string(), "alice").await.0, 202);
    redis_del(&[common::keys::CampaignKeys::new(&d).users()]).await;
    dead_letter(&settings, &message(d, "fay"), DlqReason::RejectedByDatabase).await;
    let letter = letter_of(&settings, "fay").await;
    let ran = cli
        .run(&["dlq", "redrive", "--letter", &letter, "--output", "json"])
        .await;
    assert_eq!(ran.lines()[0]["outcome"], "archived", "{ran:?}");
    assert_eq!(gate_state(&d).await, (vec![], Some(1)), "a slot was taken");
    api.stop().await;
}
