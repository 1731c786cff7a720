//! Each dependency as this instance sees it: up, down, or refusing this
//! instance's configuration (a certificate that does not verify, rejected
//! credentials; `common::misconfigured`). `/readyz` reports it, and the api
//! logs it once at start, so that a wrong CA or secret is named at once
//! rather than found by the first request.
//!
//! Only a refusal takes the instance out of rotation: it is this instance's
//! configuration (a rollout with a wrong secret stops at its first
//! instance), while an outage is shared by every instance, and taking them
//! all out would only replace the api's JSON 503 with the balancer's page.

use std::time::Duration;

use common::misconfigured::refusal;
use serde::Serialize;

use crate::state::AppState;

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// How recent a broker's refusal must be to count (librdkafka retries the
/// connection every half second at most, and reports each failure).
const KAFKA_REFUSAL_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependency {
    Up,
    /// Unreachable or not answering: why.
    Down(String),
    /// Refused this instance's TLS or credentials: what it said.
    Misconfigured(String),
}

impl Dependency {
    fn from_result<E: std::error::Error + 'static>(
        result: Result<Result<(), E>, tokio::time::error::Elapsed>,
    ) -> Self {
        match result {
            Ok(Ok(())) => Self::Up,
            Ok(Err(e)) => {
                refusal(&e).map_or_else(|| Self::Down(e.to_string()), Self::Misconfigured)
            }
            Err(_) => Self::Down(format!("no answer within {PROBE_TIMEOUT:?}")),
        }
    }

    /// `up`, `down` or `misconfigured` (the reason stays in the logs: it
    /// can name hosts and users).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down(_) => "down",
            Self::Misconfigured(_) => "misconfigured",
        }
    }
}

impl Serialize for Dependency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub redis: Dependency,
    pub postgres: Dependency,
    pub kafka: Dependency,
}

impl Readiness {
    /// Probes the three at once, each within [`PROBE_TIMEOUT`].
    pub async fn probe(state: &AppState) -> Self {
        let producer = state.producer.clone();
        let (redis, postgres, kafka) = tokio::join!(
            tokio::time::timeout(PROBE_TIMEOUT, state.redis.ping()),
            tokio::time::timeout(PROBE_TIMEOUT, state.campaigns.ping()),
            tokio::task::spawn_blocking(move || {
                if producer.broker_reachable(PROBE_TIMEOUT) {
                    Dependency::Up
                } else if let Some(reason) = producer.refused_within(KAFKA_REFUSAL_WITHIN) {
                    Dependency::Misconfigured(reason)
                } else {
                    Dependency::Down(format!("no broker answered within {PROBE_TIMEOUT:?}"))
                }
            }),
        );
        Self {
            redis: Dependency::from_result(redis),
            postgres: Dependency::from_result(postgres),
            kafka: kafka.unwrap_or_else(|e| Dependency::Down(e.to_string())),
        }
    }

    fn each(&self) -> [(&'static str, &Dependency, &'static str); 3] {
        [
            ("redis", &self.redis, "APP_REDIS__URL, APP_REDIS__TLS_*"),
            (
                "postgres",
                &self.postgres,
                "APP_DATABASE__URL, APP_DATABASE__SSL_ROOT_CERT",
            ),
            (
                "kafka",
                &self.kafka,
                "APP_KAFKA__SECURITY_PROTOCOL, APP_KAFKA__SSL_*, APP_KAFKA__SASL_*",
            ),
        ]
    }

    pub fn misconfigured(&self) -> bool {
        self.each()
            .iter()
            .any(|(_, d, _)| matches!(d, Dependency::Misconfigured(_)))
    }

    /// One line per dependency that is not up: an error for a refusal
    /// (naming the settings to check), a warning for an outage.
    pub fn log(&self) {
        for (name, dependency, settings) in self.each() {
            match dependency {
                Dependency::Up => {}
                Dependency::Down(why) => {
                    tracing::warn!(dependency = name, reason = %why, "not reachable; connecting on demand");
                }
                Dependency::Misconfigured(why) => tracing::error!(
                    dependency = name,
                    reason = %why,
                    settings,
                    "refused this instance's TLS or credentials; /readyz answers 503 until it accepts them"
                ),
            }
        }
    }
}

/// How long a probe's result answers `/readyz` before it is probed again:
/// a loop of anonymous requests costs the dependencies at most one probe
/// of each a second.
const REUSED_FOR: Duration = Duration::from_secs(1);

/// The last probe and when it ran; concurrent requests share one probe.
#[derive(Debug, Default)]
pub struct Cached {
    last: tokio::sync::Mutex<Option<(std::time::Instant, Readiness)>>,
}

impl Cached {
    /// The last probe's result if it is under [`REUSED_FOR`] old, else a
    /// new probe's.
    pub async fn get(&self, state: &AppState) -> Readiness {
        let mut last = self.last.lock().await;
        if let Some((at, readiness)) = last.as_ref()
            && at.elapsed() < REUSED_FOR
        {
            return readiness.clone();
        }
        let readiness = Box::pin(Readiness::probe(state)).await;
        *last = Some((std::time::Instant::now(), readiness.clone()));
        readiness
    }
}
