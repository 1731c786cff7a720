//! The fault campaign: a seeded, reproducible run of realistic traffic
//! against one deployment (a cell: Redis with its append-only file,
//! PostgreSQL, Kafka, two api instances, one worker) while faults are
//! injected at random instants, alone and overlapping, under every strategy
//! form, with and without a waiting room; then a checker judges the
//! recorded history against docs/CONTRACT.md.
//!
//! ```sh
//! scripts/faults --campaign                       # 3 minutes, a new seed (printed first)
//! scripts/faults --campaign --seed 42             # the same schedule and traffic choices again
//! scripts/faults --campaign --minutes 60 --forms sync,fair-lock --skip oversized
//! ```
//!
//! (`cargo test -p api --test faults campaign -- --nocapture
//! --test-threads=1` with `COUPON_CAMPAIGN_MINUTES`, `_SEED`, `_FORMS`,
//! `_SKIP` (fault kinds left out), `_FSYNC` (Redis's `appendfsync`,
//! default `always`), `_CLIENTS` (client tasks per campaign, default 8).
//! `COUPON_CAMPAIGN_REJUDGE=<dir>` judges a recorded run again, without
//! running anything.)
//!
//! Everything lands in `target/faults/campaign-<seed>/`: `history.jsonl`
//! (every request), `faults.jsonl`, `samples.jsonl` (metrics every
//! ~500 ms), `final.json` (each round's end state, the dead letters),
//! `report.md`, `violations.jsonl` (every violation), `schedule.txt`,
//! `config.json`, and `logs/` (the processes' output).
//!
//! | module | what |
//! |---|---|
//! | [`schedule`] | the plan drawn from the seed: rounds, stocks, faults |
//! | [`traffic`] | what users do; the driver's probe, final reads, top-up |
//! | [`client`] | every request sent and recorded |
//! | [`inject`] | the faults done to the cell, and the heal |
//! | [`evidence`] | metric samples, the drain, the end state of a campaign |
//! | [`history`] | the records and their files |
//! | [`check`] | the checker: rules, violations, windows of history |
//! | [`report`] | `report.md` and the summary |
//! | [`driver`] | the rounds, phase by phase |

mod check;
mod client;
mod driver;
mod evidence;
mod history;
mod inject;
mod report;
mod schedule;
mod traffic;

use schedule::{Config, FORMS, FaultKind};

/// Client tasks per campaign unless `COUPON_CAMPAIGN_CLIENTS` says.
pub const DEFAULT_CLIENTS: usize = 8;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn list(name: &str) -> Vec<String> {
    env(name)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The run's configuration from the environment (`scripts/faults
/// --campaign` sets it).
fn config_from_env() -> Config {
    let seed = env("COUPON_CAMPAIGN_SEED").map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| u64::from(d.subsec_nanos()) ^ d.as_secs())
                % 1_000_000_000
        },
        |s| s.parse().expect("COUPON_CAMPAIGN_SEED: a number"),
    );
    let forms = match list("COUPON_CAMPAIGN_FORMS") {
        forms if forms.is_empty() => FORMS.iter().map(|f| (*f).to_owned()).collect(),
        forms => {
            for f in &forms {
                assert!(
                    FORMS.contains(&f.as_str()),
                    "unknown form {f}; the forms are {FORMS:?}"
                );
            }
            forms
        }
    };
    let skip = list("COUPON_CAMPAIGN_SKIP")
        .iter()
        .map(|k| {
            FaultKind::parse(k).unwrap_or_else(|| {
                panic!(
                    "unknown fault kind {k}; the kinds are {:?}",
                    FaultKind::ALL.map(FaultKind::name)
                )
            })
        })
        .collect();
    Config {
        seed,
        minutes: env("COUPON_CAMPAIGN_MINUTES").map_or(3.0, |m| {
            m.parse().expect("COUPON_CAMPAIGN_MINUTES: a number")
        }),
        forms,
        skip,
        clients: env("COUPON_CAMPAIGN_CLIENTS").map_or(DEFAULT_CLIENTS, |c| {
            c.parse().expect("COUPON_CAMPAIGN_CLIENTS: a number")
        }),
        fsync: env("COUPON_CAMPAIGN_FSYNC").unwrap_or_else(|| "always".into()),
    }
}

/// The campaign: fails with every violation (and the seed to replay it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run() {
    if env("COUPON_CAMPAIGN_REJUDGE").is_some() {
        return;
    }
    let config = config_from_env();
    let seed = config.seed;
    let outcome = driver::run(config).await;
    assert!(
        outcome.violations.is_empty(),
        "the campaign with seed {seed} found {} violations; see {}",
        outcome.violations.len(),
        outcome.dir.join("report.md").display()
    );
}

/// Judges a recorded run again (`COUPON_CAMPAIGN_REJUDGE=<its directory>`),
/// writing `report-rejudged.md` beside it; nothing runs without it.
#[tokio::test]
async fn rejudge() {
    let Some(dir) = env("COUPON_CAMPAIGN_REJUDGE") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let history = history::read(&dir).expect("a recorded campaign");
    let config: Config =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config.json"))
            .expect("its config");
    let plan = schedule::Plan::draw(&config);
    let violations = check::judge(&history);
    let path = dir.join("report-rejudged.md");
    std::fs::write(
        &path,
        report::markdown(&config, &plan, &history, &violations, 0.0),
    )
    .expect("report-rejudged.md");
    std::fs::write(
        dir.join("violations-rejudged.jsonl"),
        report::jsonl(&violations),
    )
    .expect("violations-rejudged.jsonl");
    print!(
        "{}",
        report::summary(&config, &history, &violations, &path.display().to_string())
    );
    assert!(violations.is_empty(), "{} violations", violations.len());
}
