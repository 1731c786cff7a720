//! The coupon issuance api (actix-web).
//!
//! - [`startup`] — `Application::build(settings)` and `run_until_stopped`;
//!   shutdown order.
//! - [`state`] — [`state::AppState`], what every handler shares.
//! - [`routes`] — the HTTP contract: admin ([`routes::campaigns`]), user
//!   ([`routes::issue`]) and operations ([`routes::ops`]) endpoints.
//! - [`strategy`] — the issue request path behind `APP_STRATEGY`, built from
//!   the steps of [`strategy::issuance`] (gate, produce, settle).
//! - [`producer`] — the Kafka producer with per-message persistence status.
//! - [`campaigns`] — campaigns in PostgreSQL with their gate meta in Redis.
//! - [`auth`], [`rate_limit`] — who is calling, and how often.
//! - [`idempotency`] — `Idempotency-Key` on the writes: replays, conflicts.
//! - [`error`] — every error reply and its status.
//! - [`middleware`] — what wraps every request: unknown methods refused,
//!   request ids, metrics and access lines, the in-flight bound.
//! - [`request_id`] — `X-Request-Id` on every reply and in every log line.
//! - [`readiness`] — each dependency up, down or refusing this instance's
//!   TLS or credentials (`/readyz`, the start-up log).
//! - [`faults`] — test-only fault hooks (debug builds).
//! - [`metrics`] — the api's Prometheus metrics.

pub mod auth;
pub mod campaigns;
pub mod error;
pub mod faults;
pub mod idempotency;
pub mod metrics;
pub mod middleware;
pub mod producer;
pub mod rate_limit;
pub mod readiness;
pub mod request_id;
pub mod routes;
pub mod startup;
pub mod state;
pub mod strategy;
