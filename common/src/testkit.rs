//! Test support shared by the api's and the worker's integration tests
//! (feature `testkit`, dev-dependencies only): where the real services are,
//! settings isolated per test, services of a test's own to break, and reads
//! of the broker, Redis and PostgreSQL to check outcomes against.
//!
//! The shared services: `COUPON_TEST_DATABASE_URL`, `COUPON_TEST_REDIS_URL`,
//! `COUPON_TEST_BROKERS` (scripts/test sets them and starts the services);
//! A test that runs a broker of its own starts Apache Kafka through
//! `scripts/kafka run` (the jars are fetched once into the cache).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use secrecy::SecretString;

use crate::entities::{campaigns, coupons};
use crate::ids::CampaignId;
use crate::keys::CampaignKeys;
use crate::settings::{DatabaseSettings, Settings};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub fn database_url() -> String {
    env_or(
        "COUPON_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/coupons_test?sslmode=disable",
    )
}

pub fn redis_url() -> String {
    env_or("COUPON_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

pub fn brokers() -> String {
    env_or("COUPON_TEST_BROKERS", "127.0.0.1:9092")
}

/// Settings for one test: the shared services, its own topic, DLQ and
/// consumer group, a short delivery timeout, port 0 everywhere.
pub fn isolated_settings() -> Settings {
    let mut s = Settings::default();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    s.database.url = SecretString::from(database_url());
    s.redis.url = redis_url();
    // Timeouts, lock waits and delivery timeouts stay at their production
    // defaults: the promises are tested where they must hold.
    s.kafka.brokers = brokers();
    s.kafka.topic = format!("coupon.issue.test.{tag}");
    s.kafka.dlq_topic = format!("coupon.issue.test.{tag}.dlq");
    s.kafka.partitions = 3;
    s.kafka.group_id = format!("coupon-issuer-test-{tag}");
    s.kafka.session_timeout_ms = 6_000;
    s.http.port = 0;
    s.http.workers = 2;
    s.http.shutdown_timeout_secs = 10;
    s.worker.http_port = 0;
    s.worker.batch_linger_ms = 5;
    s.log.filter = "warn".into();
    broker_quirks(&mut s);
    s
}

/// The settings that only Tansu needs, when `COUPON_TEST_BROKER` names it
/// (`tansu` or `tansu-memory`; unset or `kafka`: Apache Kafka, the defaults):
/// idempotence off and the worker's gap guard on, as `scripts/stack` sets
/// them (see `KafkaSettings::idempotence`, `WorkerSettings::gap_patience_ms`).
pub fn broker_quirks(s: &mut Settings) {
    if std::env::var("COUPON_TEST_BROKER").is_ok_and(|b| b.starts_with("tansu")) {
        s.kafka.idempotence = false;
        s.worker.gap_patience_ms = 2_000;
    }
}

/// A port nothing listens on right now.
pub fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// A spare port whose Redis Cluster bus port (port + 10000) is spare too: a
/// node whose bus port is taken exits at start.
fn spare_cluster_port() -> u16 {
    loop {
        let port = spare_port();
        if port <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

pub fn wait_for_port(port: u16, within: Duration, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < within,
            "{what} did not open port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coupon-{what}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An Apache Kafka broker of the test's own (one KRaft node, its data in a
/// temporary directory), so that stopping or freezing it affects no other
/// test.
#[derive(Debug)]
pub struct OwnBroker {
    pub port: u16,
    controller_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnBroker {
    pub fn start() -> Self {
        let mut broker = Self {
            port: spare_port(),
            controller_port: spare_port(),
            dir: temp_dir("broker"),
            child: None,
        };
        broker.restart();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the broker process on the same ports and data.
    pub fn restart(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .unwrap();
        // `scripts/kafka run` execs the JVM: the child's pid is the broker's.
        let child = Command::new(script)
            .arg("run")
            .arg(self.dir.join("kafka"))
            .arg(self.port.to_string())
            .arg(self.controller_port.to_string())
            .env("KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m")
            // The client JIT only: a start costs about 5 s of CPU instead of
            // 9, which the tests running beside it need more than the
            // broker's peak throughput.
            .env("KAFKA_JVM_OPTS", "-XX:TieredStopAtLevel=1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the broker (scripts/kafka run)");
        self.child = Some(child);
        self.wait_listening(Duration::from_secs(90));
    }

    /// Waits for the broker's port; fails at once, with its log, if the
    /// process exits first (a bad config or data directory).
    fn wait_listening(&mut self, within: Duration) {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
                panic!("the broker exited ({status}) before it listened:\n{log}");
            }
            assert!(
                started.elapsed() < within,
                "the broker did not open port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT: the broker keeps its connections but answers nothing.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            signal(child.id(), if frozen { "-STOP" } else { "-CONT" });
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.freeze(false);
        self.kill();
        if std::thread::panicking() {
            // Keep the broker's side of a failed test.
            let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
            let tail: Vec<_> = log.lines().rev().take(300).collect();
            eprintln!("--- own broker log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// A Redis of the test's own on a spare port, keeping nothing on disk: a
/// restart comes back empty, as a Redis that lost its state would.
#[derive(Debug)]
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let mut redis = Self {
            port: spare_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it, empty.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10), "redis");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-master Redis Cluster of the test's own, on spare ports.
#[derive(Debug)]
pub struct OwnRedisCluster {
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

impl OwnRedisCluster {
    pub fn start() -> Self {
        let dir = temp_dir("redis-cluster");
        let ports: Vec<u16> = (0..3).map(|_| spare_cluster_port()).collect();
        let mut cluster = Self {
            ports: ports.clone(),
            dir: dir.clone(),
            children: Vec::new(),
        };
        // Pushed one by one into `cluster`, so that a node that fails to
        // start does not leave the others running (its drop kills them).
        for port in &ports {
            cluster.children.push({
                let node_dir = dir.join(port.to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ])
                    .args(["--save", "", "--appendonly", "no"])
                    .current_dir(&node_dir)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("start a cluster node")
            });
            wait_for_port(*port, Duration::from_secs(10), "redis cluster node");
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            output.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let started = Instant::now();
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &cluster.ports[0].to_string(), "cluster", "info"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// `redis.cluster_nodes`: every node's URL, comma-separated.
    pub fn nodes(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL cluster of the test's own on a spare port (Debian's
/// binaries), so that stopping it affects no other test.
#[derive(Debug)]
pub struct OwnPostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    frozen: std::sync::atomic::AtomicBool,
}

impl OwnPostgres {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Debian's PostgreSQL under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb");
        let dir = temp_dir("postgres");
        let pg = Self {
            port: spare_port(),
            dir,
            bin,
            frozen: std::sync::atomic::AtomicBool::new(false),
        };
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres", &pg.dir.display().to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "chown");
        }
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pg.set_running(true);
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// A PostgreSQL tool, run as the `postgres` user when this process is
    /// root (initdb and postgres refuse to run as root).
    fn tool(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = self.tool(tool).args(args).output().expect(tool);
        assert!(
            output.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// SIGSTOP / SIGCONT to the server and every backend: connections stay
    /// open, nothing answers, new connections hang in the handshake.
    pub fn freeze(&self, frozen: bool) {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .expect("postmaster.pid of a running server");
        let postmaster = pid_file
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let sig = if frozen { "-STOP" } else { "-CONT" };
        // The server first, so that it forks no backend the list below
        // misses; a backend may exit between pgrep and kill.
        signal(postmaster.parse().expect("a pid"), sig);
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .expect("pgrep");
        for pid in String::from_utf8_lossy(&children.stdout).split_whitespace() {
            let _ = Command::new("kill").args([sig, pid]).status();
        }
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::Release);
    }

    /// Starts (`true`) or fast-stops (`false`) the server.
    pub fn set_running(&self, running: bool) {
        if running {
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.display()
            );
            let log = self.dir.join("log").display().to_string();
            self.run(
                "pg_ctl",
                &[
                    "-D",
                    &self.data(),
                    "-o",
                    &options,
                    "-l",
                    &log,
                    "-w",
                    "start",
                ],
            );
            wait_for_port(self.port, Duration::from_secs(20), "postgres");
        } else {
            self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.frozen.load(std::sync::atomic::Ordering::Acquire) {
            self.freeze(false);
        }
        let _ = self
            .tool("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// Messages in a topic: the sum over partitions of high − low watermarks.
pub async fn topic_messages(brokers: &str, topic: &str) -> i64 {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer = plain_consumer(&brokers);
        let partitions = partitions(&consumer, &topic);
        (0..partitions)
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(5))
                    .unwrap();
                high - low
            })
            .sum()
    })
    .await
    .unwrap()
}

fn plain_consumer(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "coupon-testkit-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> i32 {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    metadata.topics()[0].partitions().len() as i32
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl ReadMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every message of a topic from the beginning, read without a group commit.
pub async fn read_topic(brokers: &str, topic: &str) -> Vec<ReadMessage> {
    let expected = topic_messages(brokers, topic).await;
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer = plain_consumer(&brokers);
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions(&consumer, &topic) {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let started = Instant::now();
        while (out.len() as i64) < expected && started.elapsed() < Duration::from_secs(20) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let value =
                                    h.value.map(String::from_utf8_lossy).unwrap_or_default();
                                (h.key.to_owned(), value.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(ReadMessage {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        out
    })
    .await
    .unwrap()
}

pub async fn db() -> DatabaseConnection {
    db_at(&database_url()).await
}

pub async fn db_at(url: &str) -> DatabaseConnection {
    let settings = DatabaseSettings {
        url: SecretString::from(url.to_owned()),
        ..DatabaseSettings::default()
    };
    crate::db::connect(&settings).await.unwrap()
}

/// An open campaign row written directly, for tests and benchmarks of the
/// worker (no api in the way).
pub async fn insert_campaign(db: &DatabaseConnection, name: &str, stock: i64) -> CampaignId {
    use sea_orm::{ActiveModelTrait, Set};
    let id = CampaignId::new();
    let now = chrono::Utc::now();
    campaigns::ActiveModel {
        id: Set(id.as_uuid()),
        name: Set(name.to_owned()),
        stock: Set(stock),
        persisted: Set(0),
        starts_at: Set(now),
        ends_at: Set(None),
        state: Set("open".into()),
        created_at: Set(now),
        room_admit_per_second: Set(None),
        room_admission_ttl_secs: Set(None),
        room_shuffle_seed: Set(None),
    }
    .insert(db)
    .await
    .unwrap();
    id
}

pub async fn rows(db: &DatabaseConnection, campaign: &CampaignId) -> u64 {
    coupons::Entity::find()
        .filter(coupons::Column::CampaignId.eq(campaign.as_uuid()))
        .count(db)
        .await
        .unwrap()
}

pub async fn row_users(db: &DatabaseConnection, campaign: &CampaignId) -> Vec<String> {
    row_coupons(db, campaign).await.into_keys().collect()
}

/// The campaign's rows: user id → coupon id.
pub async fn row_coupons(
    db: &DatabaseConnection,
    campaign: &CampaignId,
) -> std::collections::BTreeMap<String, uuid::Uuid> {
    coupons::Entity::find()
        .filter(coupons::Column::CampaignId.eq(campaign.as_uuid()))
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.user_id, r.id))
        .collect()
}

/// The `persisted` column of the campaign's row.
pub async fn persisted_column(db: &DatabaseConnection, campaign: &CampaignId) -> i64 {
    campaigns::Entity::find_by_id(campaign.as_uuid())
        .one(db)
        .await
        .unwrap()
        .expect("campaign row")
        .persisted
}

/// Polls until the campaign has `expected` rows; panics after `within`.
pub async fn wait_for_rows(
    db: &DatabaseConnection,
    campaign: &CampaignId,
    expected: u64,
    within: Duration,
) {
    let started = Instant::now();
    loop {
        let n = rows(db, campaign).await;
        if n == expected {
            return;
        }
        assert!(
            n < expected && started.elapsed() < within,
            "campaign {campaign}: {n} rows after {:?}, expected {expected}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis_at(&redis_url()).await
}

/// A connection to the Redis at `url`.
pub async fn redis_at(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The campaign's gate state: sorted members of the set, and the counter.
pub async fn gate_state(campaign: &CampaignId) -> (Vec<String>, Option<i64>) {
    gate_state_at(&redis_url(), campaign).await
}

/// [`gate_state`] on the Redis at `url` (a test's own).
pub async fn gate_state_at(url: &str, campaign: &CampaignId) -> (Vec<String>, Option<i64>) {
    let keys = CampaignKeys::new(campaign);
    let mut conn = redis_at(url).await;
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.users())
        .query_async(&mut conn)
        .await
        .unwrap();
    members.sort();
    let issued: Option<i64> = redis::cmd("GET")
        .arg(keys.issued())
        .query_async(&mut conn)
        .await
        .unwrap();
    (members, issued)
}

pub async fn redis_del(keys: &[String]) {
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut redis().await)
        .await
        .unwrap();
}

pub async fn redis_exists(key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut redis().await)
        .await
        .unwrap()
        == 1
}

/// A `/metrics` page (Prometheus text format) read back: the type of each
/// family and the value of each sample line.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Family name → `counter`, `gauge`, `histogram`...
    pub types: std::collections::BTreeMap<String, String>,
    /// Sample (name with its labels, as printed) → value.
    pub samples: std::collections::BTreeMap<String, f64>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut scrape = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    scrape.types.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let (sample, value) = line.rsplit_once(' ').expect("a sample line");
                scrape
                    .samples
                    .insert(sample.to_owned(), value.parse().expect("a number"));
            }
        }
        scrape
    }

    /// Sum of a family's samples whose labels contain every `labels` pair
    /// (`name` may be `x_count` or `x_sum` of a histogram).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(sample, _)| {
                let (n, rest) = sample.split_once('{').unwrap_or((sample, ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Panics unless every `(family, type)` is exported with that type.
    pub fn assert_families(&self, expected: &[(&str, &str)]) {
        for (name, kind) in expected {
            assert_eq!(
                self.types.get(*name).map(String::as_str),
                Some(*kind),
                "metric family {name}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Scrape;

    #[test]
    fn a_scrape_reads_types_and_sums_samples_by_label() {
        let s = Scrape::parse(
            "# HELP a_total A.\n# TYPE a_total counter\n\
             a_total{route=\"/x\",status=\"200\"} 3\na_total{route=\"/x\",status=\"500\"} 1\n\
             # TYPE h histogram\nh_count{route=\"/x\"} 7\nh_sum{route=\"/x\"} 0.5\n",
        );
        assert_eq!(s.types["a_total"], "counter");
        assert_eq!(s.sum("a_total", &[("route", "/x")]), 4.0);
        assert_eq!(s.sum("a_total", &[("status", "500")]), 1.0);
        assert_eq!(s.sum("h_count", &[]), 7.0);
        assert_eq!(s.sum("missing", &[]), 0.0);
    }
}
