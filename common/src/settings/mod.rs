//! Typed settings, loaded in one place.
//!
//! Sources, later ones winning: the defaults (each group's `Default`), an
//! optional TOML file named by `APP_CONFIG_FILE`, then `APP_`-prefixed
//! environment variables with `__` between levels (`APP_AUTH__ADMIN_TOKEN`,
//! `APP_KAFKA__BROKERS`). No other module reads the environment.
//!
//! One file per group of settings:
//!
//! | file | group |
//! |---|---|
//! | this one | [`Settings`], loading, the checks at start-up |
//! | [`strategy`] | `strategy`, `gate.*`, `queue.*`, `lock.*`, the take-to-message bounds |
//! | [`admin`] | `admin.*` (the admin commands of `issuer-worker`) |
//! | [`http`] | `http.*` |
//! | [`redis`] | `redis.*` |
//! | [`database`] | `database.*` |
//! | [`kafka`] | `kafka.*` |
//! | [`auth`] | `auth.*` |
//! | [`rate_limit`] | `rate_limit.*` |
//! | [`idempotency`] | `idempotency.*` |
//! | [`worker`] | `worker.*` |
//! | [`log`] | `log.*` |
//! | [`faults`] | `faults.*` (test hooks) |

use chrono::{DateTime, Utc};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

mod admin;
mod auth;
mod database;
mod faults;
mod http;
mod idempotency;
mod kafka;
mod log;
mod rate_limit;
mod redis;
mod strategy;
mod worker;

pub use admin::*;
pub use auth::*;
pub use database::*;
pub use faults::*;
pub use http::*;
pub use idempotency::*;
pub use kafka::*;
pub use log::*;
pub use rate_limit::*;
pub use redis::*;
pub use strategy::*;
pub use worker::*;

/// Where the process runs. It only changes the hint given when secrets are
/// missing: every environment refuses to start without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    #[default]
    Local,
    Production,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
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
    pub gate: GateSettings,
    pub queue: QueueSettings,
    pub lock: LockSettings,
    pub idempotency: IdempotencySettings,
    pub worker: WorkerSettings,
    pub log: LogSettings,
    pub admin: AdminSettings,
    pub faults: FaultSettings,
    /// In production, the processes refuse plaintext or unauthenticated
    /// Redis and Kafka (anything on the network could otherwise rewrite a
    /// gate or forge issue messages) unless this says the risk is taken.
    pub allow_insecure_dependencies: bool,
    /// What loading noticed and the process should log once its logging is
    /// up (an `APP_` variable no setting reads, with the nearest one).
    #[serde(skip)]
    pub notices: Vec<String>,
}

/// Serializes a secret as `***`: the names of the settings can be listed
/// (`issuer-worker settings --names`) without a value.
fn redacted<S: serde::Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("***")
}

fn redacted_option<S: serde::Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}

/// Every `APP_` variable a setting is read from, sorted: the defaults'
/// shape, `APP_` and the path in capitals with `__` between levels.
pub fn known_names() -> Vec<String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (name, value) in fields {
                    let path = if prefix.is_empty() {
                        format!("APP_{}", name.to_uppercase())
                    } else {
                        format!("{prefix}__{}", name.to_uppercase())
                    };
                    walk(&path, value, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut names = Vec::new();
    // Optional sections present, so that their fields are named too.
    let mut all = Settings::default();
    all.idempotency.redis = Some(RedisSettings::default());
    if let Ok(defaults) = serde_json::to_value(all) {
        walk("", &defaults, &mut names);
    }
    names.sort();
    names
}

/// The known name nearest `name` (edit distance), for a hint.
fn nearest<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut previous = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let current = row[j + 1];
                row[j + 1] = (previous + usize::from(ca != *cb))
                    .min(row[j] + 1)
                    .min(current + 1);
                previous = current;
            }
        }
        row[b.len()]
    }
    known
        .iter()
        .map(|k| (distance(name, k), k))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= name.len() / 2)
        .map(|(_, k)| k.as_str())
}

/// Appends a problem for each file of `files` (setting name, path) that is
/// set while TLS is off (`why_off` says why), or that is not there.
pub(super) fn check_tls_files(
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
        let known = known_names();
        let unknown: Vec<String> = vars
            .keys()
            .filter(|k| !known.contains(&k.to_uppercase()))
            .map(|k| match nearest(&k.to_uppercase(), &known) {
                Some(near) => format!("{k} is not a setting (did you mean {near}?)"),
                None => format!("{k} is not a setting"),
            })
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
        if settings.environment == Environment::Production && !unknown.is_empty() {
            return Err(SettingsError::Invalid(unknown.join("; ")));
        }
        let mut settings = settings;
        settings.notices = unknown;
        settings.check_connections()?;
        Ok(settings)
    }

    /// Logs what loading noticed (call once logging is up).
    pub fn log_notices(&self) {
        for notice in &self.notices {
            tracing::warn!(notice = %notice, "unknown setting ignored");
        }
    }

    /// In production, refuses a process that talks to Redis (`redis`) or
    /// Kafka (`kafka`) over plaintext or without authentication, unless
    /// `allow_insecure_dependencies` is set: Redis must be `rediss://` with
    /// a password (an ACL user), Kafka `sasl_ssl` (or `ssl` with a client
    /// certificate). A process that talks to neither is not checked.
    pub fn require_secure_dependencies(
        &self,
        redis: bool,
        kafka: bool,
    ) -> Result<(), SettingsError> {
        if self.environment != Environment::Production || self.allow_insecure_dependencies {
            return Ok(());
        }
        let mut problems = Vec::new();
        if redis {
            let own = self.idempotency.redis.as_ref();
            for (name, redis) in std::iter::once(("APP_REDIS__URL", &self.redis))
                .chain(own.map(|r| ("APP_IDEMPOTENCY__REDIS__URL", r)))
            {
                if !redis.uses_tls() {
                    problems.push(format!("{name} is not rediss:// (TLS)"));
                }
                if !redis.authenticates() {
                    problems.push(format!("{name} carries no password (an ACL user)"));
                }
            }
        }
        if kafka {
            let ok = match self.kafka.security_protocol {
                KafkaSecurityProtocol::SaslSsl => true,
                KafkaSecurityProtocol::Ssl => self.kafka.ssl_certificate_location.is_some(),
                KafkaSecurityProtocol::Plaintext | KafkaSecurityProtocol::SaslPlaintext => false,
            };
            if !ok {
                problems.push(format!(
                    "APP_KAFKA__SECURITY_PROTOCOL is {} (sasl_ssl, or ssl with a client certificate, is needed)",
                    self.kafka.security_protocol.as_str()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Invalid(format!(
                "{} (production; APP_ALLOW_INSECURE_DEPENDENCIES=true takes the risk)",
                problems.join("; ")
            )))
        }
    }

    /// Every process refuses to start with connection settings that cannot
    /// work (TLS files that are missing or set without TLS, SASL without
    /// credentials), with a message naming each problem.
    pub fn check_connections(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        self.kafka.security_problems(&mut problems);
        self.redis.tls_problems(&mut problems);
        if let Some(redis) = &self.idempotency.redis {
            redis.tls_problems(&mut problems);
        }
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
    /// broker, or will be refused as `late` if it ever does: the gate call
    /// (at its longest: the api stamps the take when the reply arrives),
    /// [`PRODUCE_WITHIN`] twice (from the take to `requested_at`, and from
    /// the take to the enqueue), the delivery timeout and twice the clock
    /// skew. `reconcile` and `rebuild` wait this long after the takes they
    /// settle stopped, then read the topic's end offsets and record a
    /// cutoff ([`Settings::requested_before`]): a message beyond those
    /// offsets whose `requested_at` is before the cutoff committed later
    /// than its delivery timeout, so its user was told `pending`, and the
    /// worker refuses it.
    pub fn takes_settle_within(&self) -> Duration {
        self.redis.longest_call()
            + PRODUCE_WITHIN * 2
            + self.kafka.delivery_timeout()
            + self.clock_skew() * 2
    }

    /// The cutoff for takes made before `taken_before` (on this host's
    /// clock): every such take's message has a `requested_at` before it.
    pub fn requested_before(&self, taken_before: DateTime<Utc>) -> DateTime<Utc> {
        taken_before
            + chrono::Duration::from_std(
                self.redis.longest_call() + PRODUCE_WITHIN + self.clock_skew(),
            )
            .unwrap_or(chrono::Duration::MAX)
    }

    /// The most two hosts' wall clocks differ (`worker.clock_skew_ms`).
    pub fn clock_skew(&self) -> Duration {
        Duration::from_millis(self.worker.clock_skew_ms)
    }

    /// The longest an api request can run: two lock waits (combining: the
    /// wait for a batch, then the batch's wait for the lock), the gate call
    /// and its withdrawal, [`PRODUCE_WITHIN`] and the delivery timeout, plus
    /// a margin. An `Idempotency-Key` still marked running after it belongs
    /// to a request that died; its key is free again.
    pub fn longest_request(&self) -> Duration {
        Duration::from_millis(self.lock.wait_ms) * 2
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
            // A token minted for another service of the same issuer, or by
            // another issuer sharing the key, must not pass in production.
            if self.environment == Environment::Production {
                if self.auth.jwt_issuer.is_none() {
                    problems.push("APP_AUTH__JWT_ISSUER not set".to_owned());
                }
                if self.auth.jwt_audience.is_none() {
                    problems.push("APP_AUTH__JWT_AUDIENCE not set".to_owned());
                }
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
    fn production_refuses_plaintext_or_anonymous_redis_and_kafka_unless_told() {
        let production = |extra: &[(&str, &str)]| {
            let mut pairs = vec![("APP_ENVIRONMENT", "production")];
            pairs.extend_from_slice(extra);
            Settings::load_from(None, vars(&pairs)).unwrap()
        };
        let err = production(&[])
            .require_secure_dependencies(true, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("APP_REDIS__URL is not rediss://"), "{err}");
        assert!(err.contains("APP_REDIS__URL carries no password"), "{err}");
        assert!(
            err.contains("APP_KAFKA__SECURITY_PROTOCOL is plaintext"),
            "{err}"
        );
        // A process that talks to neither is not checked (migrate without
        // topics).
        production(&[])
            .require_secure_dependencies(false, false)
            .unwrap();

        let secure = [
            ("APP_REDIS__URL", "rediss://coupon:pw@redis:6380"),
            ("APP_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("APP_KAFKA__SASL_USERNAME", "coupon"),
            ("APP_KAFKA__SASL_PASSWORD", "pw"),
        ];
        production(&secure)
            .require_secure_dependencies(true, true)
            .unwrap();
        // The records' own Redis is held to the same.
        let mut own = secure.to_vec();
        own.push(("APP_IDEMPOTENCY__REDIS__URL", "redis://records:6379"));
        let err = production(&own)
            .require_secure_dependencies(true, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("APP_IDEMPOTENCY__REDIS__URL is not rediss://"),
            "{err}"
        );
        // Taking the risk, said out loud.
        let mut allowed = own.clone();
        allowed.push(("APP_ALLOW_INSECURE_DEPENDENCIES", "true"));
        production(&allowed)
            .require_secure_dependencies(true, true)
            .unwrap();
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
        assert_eq!(s.admin.api_url, "http://127.0.0.1:8080");
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
        assert!(err.contains("APP_AUTH__JWT_ISSUER not set"), "{err}");
        assert!(err.contains("APP_AUTH__JWT_AUDIENCE not set"), "{err}");

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
                    ("APP_AUTH__JWT_ISSUER", "https://id.example"),
                    ("APP_AUTH__JWT_AUDIENCE", "coupons"),
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
