//! The per-user and per-address token buckets (`rate_limit.*`).

use serde::{Deserialize, Serialize};

/// Token buckets per user and per client IP, checked before the gate. They
/// live in each api instance: with N instances a client gets up to N times
/// the rate (a Redis-backed limit is the option for exact totals).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RateLimitSettings {
    /// The writes of a user (issue, join a room).
    pub per_user: TokenBucket,
    /// The reads of a user (`/coupons/me`, `/room/me`): each is a
    /// PostgreSQL query or a room script, and a waiting page polls them.
    pub per_user_reads: TokenBucket,
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
            per_user_reads: TokenBucket {
                enabled: true,
                per_second: 20,
                burst: 40,
            },
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
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
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
