//! Shared by the api and the issuer-worker; no HTTP here.
//!
//! - [`ids`] — `CampaignId`, `UserId`, `CouponId`, parsed at the edge.
//! - [`message`] — the `coupon.issue.v1` Kafka message and DLQ reasons.
//! - [`settings`] — typed settings (defaults, file, `APP_*` environment).
//! - [`keys`], [`scripts`], [`redis_state`] — the Redis key layout, the Lua
//!   scripts (`lua/*.lua`) and one handle per concept of a campaign's Redis
//!   state (the gate, meta, status records, queued marks, waiting rooms, lock
//!   sections, repair) over one [`redis_state::RedisClient`], on the shared
//!   multiplexed connections of [`redis_pool`].
//! - [`lock`], [`lock_waker`] — Redis locks (a lease lock and a fair ticket
//!   lock) and the pub/sub wake-ups of their waiters.
//! - [`kafka`] — client configuration (TLS, SASL) and topic creation.
//! - [`misconfigured`] — telling a refused certificate or credential from an
//!   outage.
//! - [`entities`], [`db`] — the PostgreSQL schema as sea-orm entities, and the pool.
//! - [`metrics`] — declaring and rendering Prometheus metrics.
//! - [`shutdown`] — the SIGINT/SIGTERM future both binaries stop on.
//! - [`healthcheck`] — the binaries' own container healthcheck.
//! - [`telemetry`] — logging.

pub mod db;
pub mod entities;
pub mod healthcheck;
pub mod ids;
pub mod kafka;
pub mod keys;
pub mod lock;
pub mod lock_waker;
pub mod message;
pub mod metrics;
pub mod misconfigured;
pub mod redis_pool;
pub mod redis_state;
pub mod scripts;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
