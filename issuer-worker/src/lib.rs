//! The issuer-worker: a Kafka consumer group that persists admitted
//! issuances to PostgreSQL.
//!
//! - [`startup`] — `Application::build(settings)` wires the pieces; `main.rs`
//!   and the tests start exactly this.
//! - [`consumer`] — the batch loop, offsets stored after the commit, pausing
//!   while PostgreSQL is down, draining on shutdown.
//! - [`gaps`] — re-reads offsets a broker skipped.
//! - [`persist`] — one transaction per batch, with the stock guard.
//! - [`dlq`] — the dead-letter topic.
//! - [`migration`] — the schema (`issuer-worker migrate`).
//! - [`metrics`], [`http`] — `/metrics` and `/healthz`.

pub mod admin_lock;
pub mod consumer;
pub mod dlq;
pub mod gaps;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod migration;
pub mod persist;
pub mod rebuild;
pub mod reconcile;
pub mod startup;
pub mod topic;
