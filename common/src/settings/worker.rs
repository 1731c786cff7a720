//! The issuer-worker (`worker.*`): batches, retries, its HTTP port.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// How long the dead-letter topic may refuse a letter (missing, access
    /// refused, no leader) before the worker parks the batch's letters in
    /// PostgreSQL's `parked_letters` and moves on; letters then go straight
    /// there for as long again before the topic is tried anew. A letter too
    /// large for the topic is never retried: it goes as a truncated copy.
    pub dead_letter_patience_ms: u64,
    /// First and largest pause between retries while PostgreSQL is down.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// The gate keeper (`issuer-worker`'s `keeper`): how often it asks
    /// which Redis server answers, and rebuilds every campaign whose gate
    /// state is missing or was loaded on another server. Off (0): only
    /// `issuer-worker rebuild` repairs them.
    pub keeper_interval_ms: u64,
    /// The keeper looks at every campaign it keeps at least this often, even
    /// when the server did not change (a meta deleted by hand, Redis
    /// Cluster where no one server's run_id is known).
    pub keeper_scan_secs: u64,
    /// The most the wall clocks of the api's hosts and the host running
    /// `reconcile` or `rebuild` may differ. A message whose `requested_at`
    /// is older than a campaign's cutoff is refused as `late`; the cutoff
    /// and the wait before it are widened by this much (NTP keeps hosts
    /// within milliseconds; a host off by more can see `pending` messages
    /// turned away, never an `accepted` one).
    pub clock_skew_ms: u64,
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
            dead_letter_patience_ms: 30_000,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            keeper_interval_ms: 1_000,
            keeper_scan_secs: 30,
            clock_skew_ms: 1_000,
            http_port: 9100,
            http_host: "127.0.0.1".into(),
        }
    }
}
