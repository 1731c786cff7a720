//! The reliability suite: real faults injected into a real deployment of
//! the engine, each on services of its own (see `cell.rs`). Every fault
//! prints its figures — requests, accepted, rows, duplicates, lost, leaked —
//! and writes them to `target/faults/<fault>.json`.
//!
//! Run serially (`scripts/faults`, or `cargo test -p api --test faults --
//! --test-threads=1`). CI runs scaled-down numbers; `COUPON_FAULTS=full`
//! runs the full ones (docs/RELIABILITY.md).
//!
//! The faults of the request path (1, 3, 4, 5, 12) run once per strategy
//! (the lock strategies in both lock modes), each on a cell of its own;
//! `COUPON_FAULTS_STRATEGIES` (comma-separated) narrows them. The worker's faults and the input checks do not depend on
//! the strategy and run once.
//!
//! `campaign` is the fault campaign (`scripts/faults --campaign`): seeded
//! traffic under faults injected at random instants, alone and
//! overlapping, over every strategy form, judged afterwards from the
//! recorded history; `scripts/faults` alone skips it (`--skip
//! campaign::run`) and runs its checker's unit tests.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

// Declared before the modules that use it (macros are in scope from their
// definition on).
/// A fault of the request path as one test that runs `$fault` once per
/// strategy of `support::strategies()`, each on a cell of its own.
macro_rules! per_strategy {
    ($test:ident => $fault:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $test() {
            for strategy in $crate::support::strategies() {
                $fault(strategy).await;
            }
        }
    };
}

mod campaign;
mod cell;
mod input;
mod request_path;
mod support;
mod worker;
