//! The seed's published nGrinder figures (the seed: README), used as reference
//! rows in experiment reports. Its peak TPS column is a 1-sample maximum,
//! its cells ran 5 minutes, and it published no fair-lock figures and 5
//! instances only at 100 vusers. The async-queue and distributed-lock runs
//! followed its 3-instance conclusion; the text does not restate the count.
//! Its distributed lock was taken once per request: our `+naive` mode.

/// One published row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeedRow {
    pub strategy: &'static str,
    pub instances: u32,
    pub vusers: u32,
    pub tps: f64,
    pub peak_tps: f64,
    pub mean_ms: f64,
    pub executed: u64,
    pub errors: u64,
}

#[allow(clippy::too_many_arguments)] // one table row, column by column
const fn row(
    strategy: &'static str,
    instances: u32,
    vusers: u32,
    tps: f64,
    peak_tps: f64,
    mean_ms: f64,
    executed: u64,
    errors: u64,
) -> SeedRow {
    SeedRow {
        strategy,
        instances,
        vusers,
        tps,
        peak_tps,
        mean_ms,
        executed,
        errors,
    }
}

pub const ROWS: &[SeedRow] = &[
    row("sync", 2, 100, 2674.1, 4025.0, 37.03, 791_905, 0),
    row("sync", 2, 1000, 2751.7, 4632.0, 362.30, 811_837, 0),
    row("sync", 2, 2000, 2171.5, 3881.0, 913.53, 639_509, 226),
    row("sync", 3, 100, 5166.6, 7026.0, 18.99, 1_536_606, 0),
    row("sync", 3, 1000, 3216.1, 4715.0, 311.53, 944_413, 0),
    row("sync", 3, 2000, 2800.2, 5066.0, 708.59, 823_625, 43),
    row("sync", 5, 100, 3749.6, 5465.0, 26.33, 1_110_385, 0),
    row("async-queue", 3, 100, 4528.5, 6366.0, 21.71, 1_346_381, 0),
    row("async-queue", 3, 1000, 3577.1, 5260.0, 278.02, 1_059_232, 0),
    row("async-queue", 3, 2000, 2980.7, 4646.0, 662.59, 879_003, 0),
    row(
        "distributed-lock+naive",
        3,
        100,
        4613.8,
        6890.0,
        21.42,
        1_369_110,
        0,
    ),
    row(
        "distributed-lock+naive",
        3,
        1000,
        4148.1,
        7109.0,
        239.83,
        1_229_175,
        0,
    ),
    row(
        "distributed-lock+naive",
        3,
        2000,
        3465.5,
        5025.0,
        571.77,
        1_020_924,
        0,
    ),
];

pub fn find(strategy: &str, instances: u32, vusers: u32) -> Option<&'static SeedRow> {
    ROWS.iter()
        .find(|r| r.strategy == strategy && r.instances == instances && r.vusers == vusers)
}
