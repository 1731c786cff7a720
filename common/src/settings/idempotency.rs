//! `Idempotency-Key` records (`idempotency.*`).

use serde::{Deserialize, Serialize};

/// `Idempotency-Key` on the writes: how long a finished request's reply is
/// kept for replays, and how many one caller may keep.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct IdempotencySettings {
    /// Seconds a key's reply is replayed after its request finished.
    pub ttl_secs: u64,
    /// The most records (running or kept) one caller may have at once; a
    /// request with a new key past it is answered 429. Each kept record is
    /// about 0.5 KB of Redis (docs/SECURITY.md), so one caller can hold at
    /// most about this many half-kilobytes.
    pub max_per_caller: u64,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self {
            ttl_secs: 86_400,
            max_per_caller: 1_000,
        }
    }
}
