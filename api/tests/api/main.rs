//! The api's integration tests, one binary (the reliability suite,
//! `tests/faults/`, is a binary of its own, run by `scripts/faults`). Every
//! test runs against real Redis, PostgreSQL and Apache Kafka (the test kit,
//! `common::testkit`; the api's own helpers in `tests/helpers/`).
//!
//! - `burst`: bursts of concurrent requests through real instances, audited;
//! - `cluster`: Redis Cluster (three masters started for the test);
//! - `contract`: every error row of the contract, its status and outcome;
//! - `encrypted`: TLS and authentication to Redis, Kafka and PostgreSQL;
//! - `failures`: the broker, Redis or PostgreSQL failing: 503, nothing lost;
//! - `hardening`: tokens, per-IP limits, the in-flight bound, the OpenAPI;
//! - `idempotency`: `Idempotency-Key` replays, conflicts and bounds;
//! - `locks`: the Redis locks (lease and ticket) on real Redis;
//! - `logs`: the access log of a real api process;
//! - `metrics`: the `/metrics` families the runbook relies on;
//! - `shutdown`: SIGTERM to a real api process with requests in flight;
//! - `strategies`: the four strategies and both lock modes, audited;
//! - `traces`: one issue, one trace, from the api to the worker's row;
//! - `waiting_room`: positions, admission at the rate, the room's bounds.

#![allow(clippy::unwrap_used)]

#[path = "../helpers/mod.rs"]
mod helpers;

mod burst;
mod cluster;
mod contract;
mod encrypted;
mod failures;
mod hardening;
mod idempotency;
mod locks;
mod logs;
mod metrics;
mod shutdown;
mod strategies;
mod traces;
mod waiting_room;
