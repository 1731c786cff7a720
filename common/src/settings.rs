//! Typed settings, loaded in one place.
//!
//! Sources, later ones winning: the defaults below, an optional TOML file
//! named by `APP_CONFIG_FILE`, then `APP_`-prefixed environment variables
//! with `__` between levels (`APP_AUTH__ADMIN_TOKEN`, `APP_KAFKA__BROKERS`).
//! No other module reads the environment.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Where the process runs. It only changes the hint given when secrets are
/// missing: every environment refuses to start without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    #[default]
    Local,
    Production,
}

/// The request-path strategy of the api (docs/STRATEGIES.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// Lua gate, produce, await the delivery report.
    #[default]
    Sync,
    /// A bounded in-process queue; background tasks run the `sync` path.
    AsyncQueue,
    /// A per-campaign lease lock around separate Redis commands.
    DistributedLock,
    /// A fair ticket lock (arrival order) around the same section.
    FairLock,
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 4] = [
        Self::Sync,
        Self::AsyncQueue,
        Self::DistributedLock,
        Self::FairLock,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::AsyncQueue => "async-queue",
            Self::DistributedLock => "distributed-lock",
            Self::FairLock => "fair-lock",
        }
    }
}

impl std::str::FromStr for StrategyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown strategy {s:?}; expected one of {}",
                    known.join(", ")
                )
            })
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Settings {
    pub environment: Environment,
    pub strategy: StrategyKind,
    pub http: HttpSettings,
    pub redis: RedisSettings,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    pub auth: AuthSettings,
    pub rate_limit: RateLimitSettings,
    pub queue: QueueSettings,
    pub lock: LockSettings,
    pub idempotency: IdempotencySettings,
    pub worker: WorkerSettings,
    pub log: LogSettings,
    pub faults: FaultSettings,
}

/// `Idempotency-Key` on the writes: how long a finished request's reply is
/// kept for replays.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct IdempotencySettings {
    /// Seconds a key's reply is replayed after its request finished.
    pub ttl_secs: u64,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self { ttl_secs: 86_400 }
    }
}

/// Test-only fault hooks. Honoured by debug builds only; release builds
/// compile the hooks out and ignore these settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct FaultSettings {
    /// Lock strategies: a request of this user, once it holds the lock and
    /// has read the count, stops as a paused process would (its lease is no
    /// longer renewed) for `pause_lock_holder_ms`.
    pub pause_lock_holder_user: Option<String>,
    pub pause_lock_holder_ms: u64,
    /// The process aborts right after the gate admitted this user, before
    /// its message is produced (a crash between gate and produce).
    pub crash_after_gate_user: Option<String>,
    /// Right after the gate admitted this user, the request stops for
    /// `pause_after_gate_ms` (a slow step between gate and produce, during
    /// which its client can give up).
    pub pause_after_gate_user: Option<String>,
    pub pause_after_gate_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// actix worker threads; 0 means one per core.
    pub workers: usize,
    /// Open connections per worker thread before the server stops accepting.
    pub max_connections: usize,
    pub keep_alive_secs: u64,
    /// How long a stopping server waits for in-flight requests.
    pub shutdown_timeout_secs: u64,
    /// After SIGTERM, how long `/readyz` answers 503 before the listener
    /// closes, so that a load balancer stops routing here first.
    pub drain_delay_ms: u64,
    /// Largest accepted request body (admin JSON).
    pub body_limit_bytes: usize,
    /// User requests served at once by this instance; more answer 503 at
    /// once instead of queueing behind a slow dependency.
    pub max_in_flight: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8081,
            workers: 0,
            max_connections: 25_000,
            keep_alive_secs: 75,
            shutdown_timeout_secs: 30,
            drain_delay_ms: 0,
            body_limit_bytes: 16 * 1024,
            max_in_flight: 4_096,
        }
    }
}

/// `Debug` hides a password in the URLs (`redis://:secret@host` prints as
/// `redis://:***@host`).
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS); may carry a password.
    pub url: String,
    /// Comma-separated node URLs of a Redis Cluster; when set, `url` is
    /// unused and the pool talks to the cluster.
    pub cluster_nodes: String,
    /// Shared multiplexed connections; each carries many requests at once.
    pub pool_size: usize,
    /// Longest wait for a connection (opening one included) before 503.
    pub connect_timeout_ms: u64,
    /// Longest wait for one Redis call before answering 503.
    pub command_timeout_ms: u64,
    /// How long async states (`pending`, `queued`, `rejected`) stay readable
    /// through `/coupons/me`.
    pub status_ttl_secs: u64,
    /// With a `rediss://` URL: a PEM file of the CA(s) that signed the
    /// server's certificate (unset: the system's trust store). The server's
    /// name in the URL is verified against its certificate.
    pub tls_ca_file: Option<String>,
    /// With `rediss://`: PEM files of a client certificate and its key, for
    /// a server that authenticates clients (`tls-auth-clients yes`).
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster_nodes: String::new(),
            pool_size: 4,
            connect_timeout_ms: 500,
            command_timeout_ms: 500,
            status_ttl_secs: 7 * 24 * 3600,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &without_password(&self.url))
            .field("cluster_nodes", &without_password(&self.cluster_nodes))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("status_ttl_secs", &self.status_ttl_secs)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

/// `urls` (one, or comma-separated) with each password replaced by `***`.
fn without_password(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &url[scheme + 3..at];
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
            }
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl RedisSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }

    /// The cluster's node URLs (empty: a single server at `url`).
    pub fn nodes(&self) -> Vec<String> {
        self.cluster_nodes
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Whether the URL (or every cluster node) asks for TLS.
    pub fn uses_tls(&self) -> bool {
        let nodes = self.nodes();
        if nodes.is_empty() {
            self.url.starts_with("rediss://")
        } else {
            nodes.iter().all(|n| n.starts_with("rediss://"))
        }
    }

    fn tls_problems(&self, problems: &mut Vec<String>) {
        let files = [
            ("APP_REDIS__TLS_CA_FILE", &self.tls_ca_file),
            ("APP_REDIS__TLS_CERT_FILE", &self.tls_cert_file),
            ("APP_REDIS__TLS_KEY_FILE", &self.tls_key_file),
        ];
        check_tls_files(
            &files,
            self.uses_tls(),
            "the Redis URL is not rediss://",
            problems,
        );
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            problems.push(
                "APP_REDIS__TLS_CERT_FILE and APP_REDIS__TLS_KEY_FILE go together".to_owned(),
            );
        }
    }
}

/// Appends a problem for each file of `files` (setting name, path) that is
/// set while TLS is off (`why_off` says why), or that is not there.
fn check_tls_files(
    files: &[(&str, &Option<String>)],
    tls: bool,
    why_off: &str,
    problems: &mut Vec<String>,
) {
    for (name, path) in files {
        let Some(path) = path else { continue };
        if !tls {
            problems.push(format!("{name} is set but {why_off} (no TLS)"));
        } else if !std::path::Path::new(path).is_file() {
            problems.push(format!("{name}: no file at {path}"));
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    /// May carry a password, so it is kept secret and never logged.
    pub url: SecretString,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
    /// Longest wait for one statement of the request path (admin reads,
    /// `/coupons/me`, the unknown-campaign check).
    pub statement_timeout_ms: u64,
    /// A PEM file of the CA(s) that signed the server's certificate, for
    /// `sslmode=verify-ca` / `verify-full` in the URL (the URL's own
    /// `sslrootcert` works too).
    pub ssl_root_cert: Option<String>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/coupons?sslmode=disable"),
            max_connections: 10,
            connect_timeout_ms: 2_000,
            statement_timeout_ms: 2_000,
            ssl_root_cert: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    /// Partitions of the issue topic when `migrate` creates it.
    pub partitions: i32,
    /// Replication factor when `migrate` creates topics (3 on a real cluster).
    pub replication_factor: i32,
    /// `message.timeout.ms`: how long a request may wait for its delivery
    /// report once the gate admitted it.
    pub delivery_timeout_ms: u64,
    pub linger_ms: u64,
    /// How the api spreads messages over the topic's partitions.
    pub partitioning: Partitioning,
    /// `sticky` partitioning: how long a producer stays on one partition.
    pub sticky_partition_ms: u64,
    /// `compression.codec`: none, gzip, snappy or lz4 (zstd is not compiled
    /// into the bundled librdkafka; the producer refuses it at start-up).
    pub compression: String,
    /// Longest wait for space in the producer's buffer before answering 503.
    pub enqueue_timeout_ms: u64,
    pub group_id: String,
    /// Static membership (`group.instance.id`); unset means dynamic.
    pub group_instance_id: Option<String>,
    pub session_timeout_ms: u64,
    /// `partition.assignment.strategy` of the worker group.
    pub assignment_strategy: String,
    /// Consumer `fetch.min.bytes` / `fetch.wait.max.ms`: the broker answers a
    /// fetch when this much data is there, or after this long. The local
    /// broker waits about half of `fetch_wait_max_ms` even when it has data:
    /// 100 ms (not Kafka's 500) took the end-to-end lag p99 at 10,000 TPS
    /// from about 1 s to 255 ms, at no measurable cost in TPS.
    pub fetch_min_bytes: u32,
    pub fetch_wait_max_ms: u32,
    /// `security.protocol`: how every client (producer, consumer, admin,
    /// tools) talks to the brokers.
    pub security_protocol: KafkaSecurityProtocol,
    /// `ssl.ca.location`: a PEM file with the CA certificates that signed
    /// the brokers' certificates; unset, the system's trust store. Broker
    /// host names are verified against their certificates.
    pub ssl_ca_location: Option<String>,
    /// `ssl.certificate.location` / `ssl.key.location`: PEM files of a
    /// client certificate and its key, for brokers that authenticate
    /// clients by certificate (mutual TLS).
    pub ssl_certificate_location: Option<String>,
    pub ssl_key_location: Option<String>,
    /// `ssl.key.password`, when the key file is encrypted.
    pub ssl_key_password: Option<SecretString>,
    /// `sasl.mechanism` for `sasl_plaintext` / `sasl_ssl`.
    pub sasl_mechanism: SaslMechanism,
    /// `sasl.username` / `sasl.password` (both required with SASL).
    pub sasl_username: Option<String>,
    pub sasl_password: Option<SecretString>,
}

/// Kafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KafkaSecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl KafkaSecurityProtocol {
    /// The value librdkafka takes.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_tls(&self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn uses_sasl(&self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// Kafka's `sasl.mechanism` (the ones a managed Kafka offers with a user
/// name and password).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "coupon.issue.v1".into(),
            dlq_topic: "coupon.issue.v1.dlq".into(),
            partitions: 12,
            replication_factor: 1,
            delivery_timeout_ms: 5_000,
            linger_ms: 1,
            partitioning: Partitioning::Sticky,
            sticky_partition_ms: 10,
            compression: "none".into(),
            enqueue_timeout_ms: 50,
            group_id: "coupon-issuer".into(),
            group_instance_id: None,
            session_timeout_ms: 10_000,
            assignment_strategy: "cooperative-sticky".into(),
            fetch_min_bytes: 1,
            fetch_wait_max_ms: 100,
            security_protocol: KafkaSecurityProtocol::Plaintext,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            sasl_mechanism: SaslMechanism::ScramSha512,
            sasl_username: None,
            sasl_password: None,
        }
    }
}

/// Where the api's producer puts each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Partitioning {
    /// Every producer writes to one partition for `sticky_partition_ms`,
    /// then moves to another (Kafka's KIP-480, applied to keyed messages):
    /// each produce request carries one large batch instead of a small one
    /// per partition. Nothing here needs a key's messages in one partition:
    /// each (campaign, user) has one message, and the worker deduplicates
    /// on `UNIQUE(campaign_id, user_id)` whichever partition a copy is in.
    #[default]
    Sticky,
    /// The partition is the Java client's murmur2 hash of the key.
    Key,
}

impl KafkaSettings {
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }

    /// Why the connection settings cannot work, if they cannot: SASL without
    /// a user name or password (empty counts as missing), a certificate
    /// without its key, a file that is not there. Messages name the setting,
    /// never a secret's value.
    fn security_problems(&self, problems: &mut Vec<String>) {
        let protocol = self.security_protocol;
        if protocol.uses_sasl() {
            if self
                .sasl_username
                .as_deref()
                .is_none_or(|u| u.trim().is_empty())
            {
                problems.push(format!(
                    "APP_KAFKA__SASL_USERNAME not set (security protocol {})",
                    protocol.as_str()
                ));
            }
            if self
                .sasl_password
                .as_ref()
                .is_none_or(|p| p.expose_secret().is_empty())
            {
                problems.push(format!(
                    "APP_KAFKA__SASL_PASSWORD not set (security protocol {})",
                    protocol.as_str()
                ));
            }
        }
        let files = [
            ("APP_KAFKA__SSL_CA_LOCATION", &self.ssl_ca_location),
            (
                "APP_KAFKA__SSL_CERTIFICATE_LOCATION",
                &self.ssl_certificate_location,
            ),
            ("APP_KAFKA__SSL_KEY_LOCATION", &self.ssl_key_location),
        ];
        let why_off = format!("APP_KAFKA__SECURITY_PROTOCOL is {}", protocol.as_str());
        check_tls_files(&files, protocol.uses_tls(), &why_off, problems);
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            problems.push(
                "APP_KAFKA__SSL_CERTIFICATE_LOCATION and APP_KAFKA__SSL_KEY_LOCATION go together"
                    .to_owned(),
            );
        }
    }
}

/// The longest an api lets pass between the gate taking a slot and the
/// slot's message entering the producer's buffer. Past it (a process paused,
/// a starved runtime) the slot is given back and the reply is 503, so that
/// repair tools can bound how long a take stays unsettled.
pub const PRODUCE_WITHIN: Duration = Duration::from_secs(2);

/// How long a request keeps trying to withdraw a take whose reply from
/// Redis never came, before it leaves the slot to reconciliation.
pub const WITHDRAW_WITHIN: Duration = Duration::from_secs(3);

/// How the api learns who the user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// `Authorization: Bearer <JWT>`, `sub` is the user id.
    #[default]
    Jwt,
    /// `X-User-Id` set by a gateway that verified the caller.
    TrustedHeader,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub admin_token: Option<SecretString>,
    /// HS256 or RS256; only the configured algorithm is accepted.
    pub jwt_algorithm: JwtAlgorithm,
    /// HS256 key for user JWTs.
    pub jwt_secret: Option<SecretString>,
    /// RS256 public key (PEM), inline...
    pub jwt_public_key: Option<String>,
    /// ...or in a file.
    pub jwt_public_key_file: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub jwt_audience: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`.
    pub jwt_leeway_secs: u64,
    /// Header read in `trusted-header` mode.
    pub user_header: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum JwtAlgorithm {
    #[default]
    HS256,
    RS256,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::Jwt,
            admin_token: None,
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 5,
            user_header: "X-User-Id".into(),
        }
    }
}

/// Token buckets per user and per client IP, checked before the gate. They
/// live in each api instance: with N instances a client gets up to N times
/// the rate (a Redis-backed limit is the option for exact totals).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RateLimitSettings {
    pub per_user: TokenBucket,
    pub per_ip: TokenBucket,
    /// Comma-separated addresses or CIDR ranges of proxies whose
    /// `X-Forwarded-For` is believed; the client is the rightmost address
    /// not in this list. Empty: the peer address is the client.
    pub trusted_proxies: String,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            per_user: TokenBucket::default(),
            per_ip: TokenBucket {
                enabled: false,
                per_second: 200,
                burst: 400,
            },
            trusted_proxies: String::new(),
        }
    }
}

/// A token bucket: `per_second` refill, `burst` capacity.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct TokenBucket {
    pub enabled: bool,
    pub per_second: u32,
    pub burst: u32,
}

impl Default for TokenBucket {
    fn default() -> Self {
        Self {
            enabled: true,
            per_second: 10,
            burst: 20,
        }
    }
}

/// The `async-queue` strategy's queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct QueueSettings {
    /// Requests waiting at most.
    pub capacity: usize,
    /// How long a request waits for space in a full queue before it is
    /// answered 503 (0: at once). Back-pressure instead of a 503 storm.
    pub enqueue_wait_ms: u64,
    /// Background tasks taking requests off the queue.
    pub consumers: usize,
    /// The most requests one consumer takes off the queue at once and runs
    /// together: their gate calls share the Redis connection's pipeline and
    /// their messages one producer batch, so the drain keeps pace with the
    /// `sync` path (up to `consumers × batch_size` requests in flight).
    pub batch_size: usize,
    /// On shutdown, how long the queue may take to drain; what is left is
    /// recorded as rejected (`unavailable`).
    pub drain_timeout_ms: u64,
    /// TTL of the `queued` mark: a request lost with its process stops
    /// blocking its user after this.
    pub mark_ttl_secs: u64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            enqueue_wait_ms: 1_000,
            consumers: 64,
            batch_size: 64,
            drain_timeout_ms: 10_000,
            mark_ttl_secs: 60,
        }
    }
}

/// How the lock strategies use their campaign's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LockMode {
    /// One lock hold per request: the seed's design, kept for the
    /// comparison.
    Naive,
    /// One lock hold serves every request of this instance waiting for the
    /// campaign's lock at that moment (flat combining, as a database's group
    /// commit): the holder reads the meta once and sends its users' fenced
    /// writes together, in arrival order. The default.
    #[default]
    Combining,
}

impl LockMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Naive => "naive",
            Self::Combining => "combining",
        }
    }
}

/// The lock strategies' per-campaign lock.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LockSettings {
    /// `combining` (one hold per batch of this instance's waiting requests,
    /// the default) or `naive` (one hold per request, the seed's design).
    pub mode: LockMode,
    /// Lease; a watchdog renews it every third while the lock is held.
    pub lease_ms: u64,
    /// How long a request waits for the lock before answering 503.
    pub wait_ms: u64,
    /// `fair-lock`: the most requests of one campaign in line for its lock
    /// (across instances, the holder included); a request finding the line
    /// full is answered 503 at once rather than after `wait_ms`.
    pub max_waiters: u64,
}

impl Default for LockSettings {
    fn default() -> Self {
        Self {
            mode: LockMode::Combining,
            lease_ms: 3_000,
            wait_ms: 2_000,
            max_waiters: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// Messages per database transaction, at most.
    pub batch_size: usize,
    /// How long a batch waits to fill before it is written anyway.
    pub batch_linger_ms: u64,
    /// On SIGTERM, how long the current batch may take before it is abandoned
    /// (its offsets are not stored, so it is redelivered).
    pub shutdown_timeout_ms: u64,
    /// Longest a batch's transaction may take. Past it the batch counts as a
    /// database failure (nothing of it is kept; it is retried after a pause
    /// while the consumer keeps polling), so a PostgreSQL that stops
    /// answering without closing its connections cannot hang the batch
    /// until the group drops the member.
    pub batch_timeout_ms: u64,
    /// First and largest pause between retries while PostgreSQL is down.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// `/metrics` and `/healthz` of the worker; 0 picks a free port.
    pub http_port: u16,
    pub http_host: String,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            batch_linger_ms: 10,
            shutdown_timeout_ms: 10_000,
            batch_timeout_ms: 10_000,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            http_port: 9100,
            http_host: "127.0.0.1".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    /// A `tracing` filter, e.g. `info` or `info,api=debug`.
    pub filter: String,
    pub format: LogFormat,
    /// One `access` log line per request (method, route, status, outcome,
    /// latency),
    /// with its request id.
    pub access: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info,sqlx=warn,sea_orm_migration=warn".into(),
            format: LogFormat::Text,
            access: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("could not load settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("refusing to start: {0}")]
    Missing(String),
    #[error("refusing to start: {0}")]
    Invalid(String),
}

impl Settings {
    /// Defaults, then `APP_CONFIG_FILE` (if set), then `APP_*` variables.
    pub fn load() -> Result<Self, SettingsError> {
        let file = std::env::var("APP_CONFIG_FILE").ok();
        Self::load_from(file.as_deref(), std::env::vars())
    }

    /// The same as [`Settings::load`] with the environment given explicitly,
    /// so tests need not touch the process environment.
    pub fn load_from(
        file: Option<&str>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let vars: config::Map<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("APP_") && k != "APP_CONFIG_FILE")
            .collect();
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::with_name(path).required(true));
        }
        let settings = builder
            .add_source(
                config::Environment::with_prefix("APP")
                    .prefix_separator("_")
                    .separator("__")
                    .source(Some(vars)),
            )
            .build()?
            .try_deserialize::<Self>()?;
        settings.check_connections()?;
        Ok(settings)
    }

    /// Every process refuses to start with connection settings that cannot
    /// work (TLS files that are missing or set without TLS, SASL without
    /// credentials), with a message naming each problem.
    pub fn check_connections(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        self.kafka.security_problems(&mut problems);
        self.redis.tls_problems(&mut problems);
        let db_tls = !self
            .database
            .url
            .expose_secret()
            .contains("sslmode=disable");
        check_tls_files(
            &[("APP_DATABASE__SSL_ROOT_CERT", &self.database.ssl_root_cert)],
            db_tls,
            "the database URL says sslmode=disable",
            &mut problems,
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Invalid(problems.join("; ")))
        }
    }

    /// How long after the gate took a slot its message has reached the
    /// broker or never will: the gate call itself, [`PRODUCE_WITHIN`], and
    /// the delivery timeout. `reconcile` and `rebuild` wait this long before
    /// they trust the topic and the rows.
    pub fn takes_settle_within(&self) -> Duration {
        self.redis.command_timeout() + PRODUCE_WITHIN + self.kafka.delivery_timeout()
    }

    /// The longest an api request can run: a lock wait, the gate call and
    /// its withdrawal, [`PRODUCE_WITHIN`] and the delivery timeout, plus a
    /// margin. An `Idempotency-Key` still marked running after it belongs
    /// to a request that died; its key is free again.
    pub fn longest_request(&self) -> Duration {
        Duration::from_millis(self.lock.wait_ms)
            + self.takes_settle_within()
            + WITHDRAW_WITHIN
            + Duration::from_secs(30)
    }

    /// The api needs an admin token, and a JWT secret unless a gateway
    /// vouches for users (`trusted-header`). Both must be at least
    /// [`MIN_SECRET_BYTES`] long after trimming, in every environment: an
    /// empty or short value is refused like a missing one (RFC 7518 §3.2 asks
    /// an HS256 key of at least 256 bits).
    pub fn require_api_secrets(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        check_secret(
            "APP_AUTH__ADMIN_TOKEN",
            self.auth.admin_token.as_ref(),
            &mut problems,
        );
        if self.auth.mode == AuthMode::Jwt {
            match self.auth.jwt_algorithm {
                JwtAlgorithm::HS256 => check_secret(
                    "APP_AUTH__JWT_SECRET",
                    self.auth.jwt_secret.as_ref(),
                    &mut problems,
                ),
                JwtAlgorithm::RS256
                    if self.auth.jwt_public_key.is_none()
                        && self.auth.jwt_public_key_file.is_none() =>
                {
                    problems.push("APP_AUTH__JWT_PUBLIC_KEY (or _FILE) not set".to_owned())
                }
                JwtAlgorithm::RS256 => {}
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let hint = match self.environment {
            Environment::Production => "production needs real secrets from its secret store",
            Environment::Local => "scripts/stack up generates local ones",
        };
        Err(SettingsError::Missing(format!(
            "{} ({hint})",
            problems.join("; ")
        )))
    }
}

/// The shortest admin token or HS256 secret the api starts with.
pub const MIN_SECRET_BYTES: usize = 32;

/// Appends why `secret` (the value of `name`) is unusable, if it is. The
/// message never contains the value.
fn check_secret(name: &str, secret: Option<&SecretString>, problems: &mut Vec<String>) {
    let len = secret.map_or(0, |s| s.expose_secret().trim().len());
    match (secret, len) {
        (None, _) => problems.push(format!("{name} not set")),
        (Some(_), 0) => problems.push(format!("{name} is empty")),
        (Some(_), len) if len < MIN_SECRET_BYTES => problems.push(format!(
            "{name} is {len} bytes; at least {MIN_SECRET_BYTES} are needed"
        )),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_without_any_source() {
        let s = Settings::load_from(None, vars(&[])).unwrap();
        assert_eq!(s.environment, Environment::Local);
        assert_eq!(s.strategy, StrategyKind::Sync);
        assert_eq!(s.kafka.topic, "coupon.issue.v1");
        assert_eq!(s.kafka.partitions, 12);
        assert_eq!(s.http.body_limit_bytes, 16 * 1024);
        assert!(s.auth.admin_token.is_none());
    }

    #[test]
    fn nested_environment_variables_override_defaults() {
        let s = Settings::load_from(
            None,
            vars(&[
                ("APP_ENVIRONMENT", "production"),
                ("APP_STRATEGY", "fair-lock"),
                ("APP_HTTP__PORT", "9000"),
                ("APP_AUTH__ADMIN_TOKEN", "12345"),
                ("APP_AUTH__MODE", "trusted-header"),
                ("APP_RATE_LIMIT__PER_USER__ENABLED", "false"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.environment, Environment::Production);
        assert_eq!(s.strategy, StrategyKind::FairLock);
        assert_eq!(s.http.port, 9000);
        assert_eq!(s.auth.mode, AuthMode::TrustedHeader);
        assert_eq!(s.auth.admin_token.unwrap().expose_secret(), "12345");
        assert!(!s.rate_limit.per_user.enabled);
    }

    #[test]
    fn every_strategy_parses_from_its_own_name() {
        for kind in StrategyKind::ALL {
            assert_eq!(kind.as_str().parse::<StrategyKind>(), Ok(kind));
            let s = Settings::load_from(None, vars(&[("APP_STRATEGY", kind.as_str())])).unwrap();
            assert_eq!(s.strategy, kind);
        }
    }

    #[test]
    fn an_unknown_strategy_is_refused() {
        assert!(Settings::load_from(None, vars(&[("APP_STRATEGY", "yolo")])).is_err());
        assert!("yolo".parse::<StrategyKind>().is_err());
    }

    #[test]
    fn the_api_refuses_to_start_without_its_secrets() {
        let s = Settings::load_from(None, vars(&[("APP_ENVIRONMENT", "production")])).unwrap();
        let err = s.require_api_secrets().unwrap_err().to_string();
        assert!(err.contains("APP_AUTH__ADMIN_TOKEN not set"), "{err}");
        assert!(err.contains("APP_AUTH__JWT_SECRET not set"), "{err}");

        let long = "k".repeat(MIN_SECRET_BYTES);
        let s = Settings::load_from(
            None,
            vars(&[
                ("APP_AUTH__ADMIN_TOKEN", long.as_str()),
                ("APP_AUTH__MODE", "trusted-header"),
            ]),
        )
        .unwrap();
        assert!(s.require_api_secrets().is_ok());
    }

    #[test]
    fn empty_or_short_secrets_are_refused_in_every_environment() {
        let long = "k".repeat(MIN_SECRET_BYTES);
        let short = "k".repeat(MIN_SECRET_BYTES - 1);
        for environment in ["local", "production"] {
            for (token, secret, expected) in [
                ("", long.as_str(), "APP_AUTH__ADMIN_TOKEN is empty"),
                ("   ", long.as_str(), "APP_AUTH__ADMIN_TOKEN is empty"),
                (long.as_str(), "", "APP_AUTH__JWT_SECRET is empty"),
                (
                    short.as_str(),
                    long.as_str(),
                    "APP_AUTH__ADMIN_TOKEN is 31 bytes",
                ),
                (
                    long.as_str(),
                    short.as_str(),
                    "APP_AUTH__JWT_SECRET is 31 bytes",
                ),
            ] {
                let s = Settings::load_from(
                    None,
                    vars(&[
                        ("APP_ENVIRONMENT", environment),
                        ("APP_AUTH__ADMIN_TOKEN", token),
                        ("APP_AUTH__JWT_SECRET", secret),
                    ]),
                )
                .unwrap();
                let err = s.require_api_secrets().unwrap_err().to_string();
                assert!(err.contains(expected), "{environment}: {err}");
                assert!(!err.contains(&short), "a value leaked: {err}");
            }
            let s = Settings::load_from(
                None,
                vars(&[
                    ("APP_ENVIRONMENT", environment),
                    ("APP_AUTH__ADMIN_TOKEN", long.as_str()),
                    ("APP_AUTH__JWT_SECRET", long.as_str()),
                ]),
            )
            .unwrap();
            assert!(s.require_api_secrets().is_ok(), "{environment}");
        }
    }

    #[test]
    fn kafka_sasl_without_credentials_is_refused_and_says_which() {
        let err = Settings::load_from(
            None,
            vars(&[
                ("APP_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
                ("APP_KAFKA__SASL_USERNAME", "coupon"),
                ("APP_KAFKA__SASL_PASSWORD", ""),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("APP_KAFKA__SASL_PASSWORD not set"), "{err}");
        assert!(!err.contains("APP_KAFKA__SASL_USERNAME"), "{err}");

        let err = Settings::load_from(
            None,
            vars(&[
                ("APP_KAFKA__SECURITY_PROTOCOL", "ssl"),
                ("APP_KAFKA__SSL_CA_LOCATION", "/nonexistent/ca.pem"),
                ("APP_KAFKA__SSL_KEY_LOCATION", "/nonexistent/key.pem"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("APP_KAFKA__SSL_CA_LOCATION: no file at /nonexistent/ca.pem"),
            "{err}"
        );
        assert!(err.contains("go together"), "{err}");

        let err = Settings::load_from(
            None,
            vars(&[("APP_KAFKA__SSL_CA_LOCATION", "/etc/hostname")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("(no TLS)"), "{err}");

        let s = Settings::load_from(
            None,
            vars(&[
                ("APP_KAFKA__SECURITY_PROTOCOL", "sasl_plaintext"),
                ("APP_KAFKA__SASL_MECHANISM", "PLAIN"),
                ("APP_KAFKA__SASL_USERNAME", "coupon"),
                ("APP_KAFKA__SASL_PASSWORD", "hunter2-kafka"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kafka.sasl_mechanism, SaslMechanism::Plain);
        assert!(!format!("{s:?}").contains("hunter2-kafka"));
        assert!(
            Settings::load_from(None, vars(&[("APP_KAFKA__SASL_MECHANISM", "GSSAPI")])).is_err(),
            "an unsupported mechanism is refused"
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let s = Settings::load_from(
            None,
            vars(&[
                ("APP_AUTH__JWT_SECRET", "hunter2-very-secret"),
                (
                    "APP_REDIS__URL",
                    "rediss://default:hunter3-redis@cache:6380/0",
                ),
                (
                    "APP_REDIS__CLUSTER_NODES",
                    "redis://:hunter4@a:7000, redis://b:7001",
                ),
            ]),
        )
        .unwrap();
        let printed = format!("{s:?}");
        for secret in ["hunter2-very-secret", "hunter3-redis", "hunter4"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("rediss://default:***@cache:6380/0"),
            "{printed}"
        );
    }
}
