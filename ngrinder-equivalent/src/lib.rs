//! The load harness and experiment runner of the coupon engine.
//!
//! - [`spec`] — what a run does (targets, closed or open model, users).
//! - [`load`] — offering the load and measuring it; [`client`] is the
//!   keep-alive HTTP/1.1 connection of each virtual user, [`token`] mints
//!   the users' JWTs, [`users`] names users and keeps the ledger the audit
//!   reads.
//! - [`stats`] — nGrinder's definitions (tests, errors, TPS, peak TPS, mean
//!   test time) and the latency histogram.
//! - [`admin`], [`audit`] — the service's API around a run, and the audit.
//! - [`run`] — one run from campaign to audit; [`report`] its outputs.
//! - [`experiment`] — plans of strategies × vusers × instances × repeats on
//!   the local stack, with [`charts`] and the [`seed`]'s published figures.
//! - [`bench`] — the performance plan (docs/PERFORMANCE.md) with
//!   baselines side by side, and [`procs`], the CPU and memory of the
//!   stack's processes during a run.
//! - [`compare`] — results side by side with verdicts.
//! - [`scrape`] — a `/metrics` page read back (also the tests' reader).

pub mod admin;
pub mod audit;
pub mod bench;
pub mod charts;
pub mod client;
pub mod compare;
pub mod experiment;
pub mod load;
pub mod procs;
pub mod report;
pub mod run;
pub mod scrape;
pub mod seed;
pub mod spec;
pub mod stats;
pub mod token;
pub mod users;
