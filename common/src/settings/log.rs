//! Logs (`log.*`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
