//! Redis (`redis.*`): where, how many connections, the timeouts, TLS.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check_tls_files;

/// How many command timeouts one Redis call may take in all
/// ([`RedisSettings::longest_call`]).
pub const LONGEST_CALL_FACTOR: u32 = 4;

/// `Debug` hides a password in the URLs (`redis://:secret@host` prints as
/// `redis://:***@host`).
#[derive(Clone, Deserialize, Serialize)]
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

    /// The longest one call can take before it is given up: the command
    /// timeout, extended while this process was too busy to read the reply
    /// or Redis answered other calls meanwhile
    /// (`redis_state::RedisClient::run_on`).
    pub fn longest_call(&self) -> Duration {
        self.command_timeout() * LONGEST_CALL_FACTOR
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

    /// Whether the URL (or every cluster node) carries a password.
    pub fn authenticates(&self) -> bool {
        let nodes = self.nodes();
        let urls = if nodes.is_empty() {
            vec![self.url.clone()]
        } else {
            nodes
        };
        urls.iter().all(|u| {
            redis::IntoConnectionInfo::into_connection_info(u.as_str())
                .is_ok_and(|info| info.redis_settings().password().is_some())
        })
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

    pub(super) fn tls_problems(&self, problems: &mut Vec<String>) {
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
