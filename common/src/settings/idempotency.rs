//! `Idempotency-Key` records (`idempotency.*`).

use serde::{Deserialize, Serialize};

use super::RedisSettings;

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
    /// A Redis of their own for the records (the same settings as
    /// `redis.*`: `APP_IDEMPOTENCY__REDIS__URL`, `..._TLS_CA_FILE`, ...);
    /// unset, they live in the gate's Redis. The gate's Redis must never
    /// evict (`maxmemory-policy noeviction`: evicting a slot or a meta
    /// breaks the stock); a Redis of records alone may (`allkeys-lru`): an
    /// evicted record only means a retry of its request runs again and is
    /// answered as the campaign stands then (`duplicate` for a slot it
    /// took), never a second coupon.
    pub redis: Option<RedisSettings>,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self {
            ttl_secs: 86_400,
            max_per_caller: 1_000,
            redis: None,
        }
    }
}
