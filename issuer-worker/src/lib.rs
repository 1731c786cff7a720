//! The issuer-worker: a Kafka consumer group that persists the issuances
//! whose slots the gate took to PostgreSQL.
//!
//! - [`startup`] — `Application::build(settings)` wires the pieces; `main.rs`
//!   and the tests start exactly this.
//! - [`consumer`] — the batch loop, offsets stored after the commit, pausing
//!   while PostgreSQL is down, draining on shutdown.
//! - [`persist`] — one transaction per batch, with the stock guard; the
//!   decisions (insert, duplicate, dead letter) and which errors are the
//!   data's fault rather than an outage.
//! - [`dlq`] — the dead-letter topic.
//! - [`ledger`] — the taken-vs-persisted gauges per campaign.
//! - [`keeper`] — the gate keeper: rebuilds, with no operator, a gate state
//!   Redis lost or that is fenced after a restart or failover.
//! - [`migration`] — the schema (`issuer-worker migrate`).
//! - [`reconcile`], [`rebuild`] — the repair tools (`issuer-worker reconcile`,
//!   `rebuild`), one at a time per campaign under [`admin_lock`]; [`topic`]
//!   reads the group's offsets and ranges of the topic for them.
//! - [`metrics`], [`http`] — `/metrics` and `/healthz`.
//! - [`admin`] — the operators' commands: `campaigns` (through the api's
//!   admin endpoints) and `dlq` (the dead letters read and re-driven).

pub mod admin;
pub mod admin_lock;
pub mod consumer;
pub mod cutoff;
pub mod dlq;
pub mod http;
pub mod keeper;
pub mod ledger;
pub mod metrics;
pub mod migration;
pub mod persist;
pub mod rebuild;
pub mod reconcile;
pub mod startup;
pub mod topic;
