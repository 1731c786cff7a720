//! What every handler of one api instance shares: the strategy and the
//! issuance steps it is built on (with the gate and status records
//! `/coupons/me` reads), the Redis client (readiness) and the waiting rooms,
//! the producer, the campaign store, the limiters, the in-flight bound, the
//! metrics, and whether the instance is draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::redis_state::{RedisClient, Rooms};

use crate::campaigns::CampaignStore;
use crate::idempotency::IdempotencyStore;
use crate::metrics::ApiMetrics;
use crate::producer::IssueProducer;
use crate::rate_limit::{Limiter, TrustedProxies};
use crate::strategy::{Issuance, Strategy};

/// Shared by every worker thread of one api instance.
#[derive(Debug)]
pub struct AppState {
    pub strategy: Arc<Strategy>,
    /// The steps the strategy is made of, and the background work they track.
    pub issuance: Arc<Issuance>,
    /// The one Redis connection (readiness pings it).
    pub redis: RedisClient,
    pub rooms: Rooms,
    pub producer: Arc<IssueProducer>,
    pub campaigns: Arc<CampaignStore>,
    pub idempotency: IdempotencyStore,
    /// A user's writes (`rate_limit.per_user`).
    pub limiter: Limiter<common::ids::UserId>,
    /// A user's reads (`rate_limit.per_user_reads`).
    pub read_limiter: Limiter<common::ids::UserId>,
    pub ip_limiter: Limiter<std::net::IpAddr>,
    pub trusted_proxies: TrustedProxies,
    /// Bounds the user requests served at once (`http.max_in_flight`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub metrics: ApiMetrics,
    /// One `access` log line per request (`log.access`).
    pub access_log: bool,
    /// The last readiness probe, reused for a second (`/readyz`).
    pub readiness: crate::readiness::Cached,
    /// Set once on SIGTERM (`Application::run_until_stopped`).
    pub(crate) draining: AtomicBool,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// From now on `/readyz` answers 503, so the balancer stops routing here.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
