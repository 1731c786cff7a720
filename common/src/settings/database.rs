//! PostgreSQL (`database.*`).

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DatabaseSettings {
    /// May carry a password, so it is kept secret and never logged.
    #[serde(serialize_with = "super::redacted")]
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
    /// The role the services connect as, when `migrate` runs as the
    /// tables' owner: it grants this role what the services do (SELECT,
    /// INSERT, UPDATE, DELETE on the tables, USAGE on sequences) and nothing
    /// more. Unset: no grants (one role for everything, as locally).
    pub service_role: Option<String>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/coupons?sslmode=disable"),
            max_connections: 10,
            connect_timeout_ms: 2_000,
            statement_timeout_ms: 2_000,
            ssl_root_cert: None,
            service_role: None,
        }
    }
}
