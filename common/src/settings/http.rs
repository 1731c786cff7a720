//! The api's HTTP server (`http.*`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpSettings {
    pub host: String,
    /// The public listener: the API, `/openapi.json`, `/docs`, the waiting
    /// room's page, `/healthz`. 0 picks a free port (tests).
    pub port: u16,
    /// The operations listener: `/healthz`, `/readyz`, `/metrics`, never
    /// routed by the public balancer. 0 picks a free port (tests).
    pub ops_port: u16,
    /// actix worker threads; 0 means one per core this process may use (a
    /// CPU quota counts). Instances sharing cores should share them out.
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
    /// Comma-separated origins (`https://shop.example`) whose pages may
    /// embed the waiting room's page in a frame and hand it the user's
    /// token by `postMessage`; also its `frame-ancestors`. Empty: the page
    /// refuses to be framed.
    pub room_page_origins: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8081,
            ops_port: 9000,
            workers: 0,
            max_connections: 25_000,
            keep_alive_secs: 75,
            shutdown_timeout_secs: 30,
            drain_delay_ms: 0,
            body_limit_bytes: 16 * 1024,
            max_in_flight: 4_096,
            room_page_origins: String::new(),
        }
    }
}
