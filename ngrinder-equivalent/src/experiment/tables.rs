//! What an experiment writes from its runs: `results.json`, `results.csv`,
//! `report.md` (the seed's table layout beside its published figures, each
//! cell's spread) and the charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::{DEFAULT_LOCK_MODE, Honesty, Plan};
use crate::charts::{self, Scale, Series};
use crate::report::RunResult;
use crate::seed;

/// `results.json`, `results.csv` and `report.md` of the runs so far.
pub(super) fn write_tables(
    out: &Path,
    plan: &Plan,
    results: &[RunResult],
    honesty: &Honesty,
) -> anyhow::Result<()> {
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(results)?,
    )?;
    std::fs::write(out.join("results.csv"), results_csv(results))?;
    std::fs::write(out.join("report.md"), report(plan, results, honesty))?;
    Ok(())
}

/// A cell whose repeats' TPS vary more than this (coefficient of variation)
/// is flagged in the report.
const NOISY_CV: f64 = 0.10;

/// Standard deviation over mean (population), with two values or more.
fn coefficient_of_variation(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if mean <= 0.0 {
        return None;
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    Some(variance.sqrt() / mean)
}

/// The strategy of a run, and its waiting room if it ran behind one (such
/// runs are cells of their own).
fn strategy_of(r: &RunResult) -> String {
    let mut strategy = r.server.strategy.clone().unwrap_or_else(|| "?".into());
    // Spelled as in plans: the mode only when it is not the default.
    if let Some(mode) = r.server.lock_mode.as_deref()
        && mode != DEFAULT_LOCK_MODE
    {
        strategy.push('+');
        strategy.push_str(mode);
    }
    match r.spec.waiting_room {
        Some(room) => format!("{strategy}+room{}", room.admit_per_second),
        None => strategy,
    }
}

fn results_csv(results: &[RunResult]) -> String {
    let mut out = String::from(
        "label,strategy,instances,vusers,tps,peak_tps,mean_ms,executed,errors,p50_us,p90_us,p99_us,p999_us,client_cpu_percent,server_cpu_us_per_test,api_cpu_us_per_test,audit\n",
    );
    for r in results {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "{},{},{},{},{:.1},{:.1},{:.3},{},{},{},{},{},{},{:.0},{},{},{}",
            r.label,
            strategy_of(r),
            r.spec.targets.len(),
            r.spec.model.concurrency(),
            s.tps,
            s.peak_tps,
            s.mean_ms,
            s.executed,
            s.errors,
            s.p50_us,
            s.p90_us,
            s.p99_us,
            s.p999_us,
            r.client.cpu_percent,
            cpu_us_per_test(r, None).map_or(String::new(), |us| format!("{us:.1}")),
            cpu_us_per_test(r, Some("api")).map_or(String::new(), |us| format!("{us:.1}")),
            if r.passed() { "pass" } else { "FAIL" }
        );
    }
    out
}

/// The server side's CPU per test of a run (experiments sample it), µs.
fn cpu_us_per_test(r: &RunResult, only: Option<&str>) -> Option<f64> {
    r.processes.as_ref()?.cpu_us_per(r.summary.tps, only)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// (instances, strategy) → (vusers, repeats) rows of one report table.
type Groups<'a> = BTreeMap<(usize, String), Vec<(u32, Vec<&'a RunResult>)>>;

/// (strategy, instances, vusers) → the repeats of that cell.
type Cells<'a> = BTreeMap<(String, usize, u32), Vec<&'a RunResult>>;

fn cells(results: &[RunResult]) -> Cells<'_> {
    let mut cells: Cells<'_> = BTreeMap::new();
    for r in results {
        let instances = r
            .label
            .split("-i")
            .nth(1)
            .and_then(|s| s.split('-').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(r.spec.targets.len());
        cells
            .entry((strategy_of(r), instances, r.spec.model.concurrency()))
            .or_default()
            .push(r);
    }
    cells
}

fn report(plan: &Plan, results: &[RunResult], honesty: &Honesty) -> String {
    let mut out = String::new();
    let machine = results.first().map(|r| r.machine.clone());
    let _ = writeln!(out, "# Experiment report\n");
    let _ = writeln!(
        out,
        "Date {}. Machine: {} cores, kernel {}. Plan: strategies {:?}, vusers {:?}, instances {:?}, {} repeat(s), {} s after a {} s warm-up, users {}, spread {}, broker Apache Kafka.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine.as_ref().map_or(0, |m| m.cores),
        machine.as_ref().map_or("?", |m| m.kernel.as_str()),
        plan.strategies,
        plan.vusers,
        plan.instances,
        plan.repeats,
        plan.duration_secs,
        plan.warmup_secs,
        plan.users.describe(),
        plan.spread,
    );
    if results.len() < plan.cells() {
        let _ = writeln!(
            out,
            "**Partial**: {} of {} cells so far (the charts come at the end); `experiment --resume <this directory>` runs the rest.\n",
            results.len(),
            plan.cells()
        );
    }
    let _ = writeln!(
        out,
        "Figures are medians over the repeats (min–max in brackets when there are several; the TPS spread column gives the coefficient of variation, flagged ⚠ over {:.0}%: such a cell's median is not to be trusted alone). TPS and mean time are over tests (expected business outcomes); peak TPS is the best 2 s window; p99 in ms. CPU per test is the CPU time of the stack's processes but the load client over the measured window, divided by its tests, the api instances' share in brackets: what a test costs the server side, including what a design burns while it waits (polling a lock, answering 503s). Seed rows are the published nGrinder figures (5-minute cells, peak = best single sample).\n",
        NOISY_CV * 100.0
    );
    let cells = cells(results);
    let mut groups: Groups<'_> = BTreeMap::new();
    for ((strategy, instances, vusers), runs) in cells {
        groups
            .entry((instances, strategy))
            .or_default()
            .push((vusers, runs));
    }
    for ((instances, strategy), rows) in &groups {
        let _ = writeln!(out, "## {strategy}, {instances} instances\n");
        let _ = writeln!(
            out,
            "| vuser | TPS | TPS spread | peak TPS | mean time | executed tests | errors | p99 | CPU per test | audit |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
        for (vusers, runs) in rows {
            let tps: Vec<f64> = runs.iter().map(|r| r.summary.tps).collect();
            let spread = if runs.len() > 1 {
                format!(
                    " ({:.0}–{:.0})",
                    tps.iter().copied().fold(f64::MAX, f64::min),
                    tps.iter().copied().fold(0.0, f64::max)
                )
            } else {
                String::new()
            };
            let passed = runs.iter().filter(|r| r.passed()).count();
            let variation = match coefficient_of_variation(&tps) {
                Some(cv) if cv > NOISY_CV => format!("CV {:.1}% ⚠", cv * 100.0),
                Some(cv) => format!("CV {:.1}%", cv * 100.0),
                None => "–".to_owned(),
            };
            let per_test = |only| {
                let us: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| cpu_us_per_test(r, only))
                    .collect();
                (!us.is_empty()).then(|| median(us))
            };
            let cpu = match (per_test(None), per_test(Some("api"))) {
                (Some(all), Some(api)) => format!("{all:.0} µs (api {api:.0})"),
                (Some(all), None) => format!("{all:.0} µs"),
                _ => "–".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {vusers} | {:.1}{spread} | {variation} | {:.0} | {:.2}ms | {:.0} | {:.0} | {:.1} | {cpu} | {passed}/{} pass |",
                median(tps.clone()),
                median(runs.iter().map(|r| r.summary.peak_tps).collect()),
                median(runs.iter().map(|r| r.summary.mean_ms).collect()),
                median(runs.iter().map(|r| r.summary.executed as f64).collect()),
                median(runs.iter().map(|r| r.summary.errors as f64).collect()),
                median(
                    runs.iter()
                        .map(|r| r.summary.p99_us as f64 / 1000.0)
                        .collect()
                ),
                runs.len(),
            );
        }
        for (vusers, _) in rows {
            if let Some(s) = seed::find(strategy, *instances as u32, *vusers) {
                let _ = writeln!(
                    out,
                    "| seed {} | {:.1} | – | {:.0} | {:.2}ms | {} | {} | – | – | – |",
                    s.vusers, s.tps, s.peak_tps, s.mean_ms, s.executed, s.errors
                );
            }
        }
        let _ = writeln!(out);
    }
    if results.iter().any(|r| r.room.is_some()) {
        let _ = writeln!(out, "{}", rooms_table(results));
    }
    let _ = writeln!(out, "{}", honesty.render());
    let _ = writeln!(
        out,
        "Charts: `tps-<strategy>-i<N>.png` (TPS over time), `tps-by-vusers-i<N>.png`, `p99-by-vusers-i<N>.png`. Every run's JSON and per-second CSV are under `runs/`."
    );
    out
}

/// The direct path and the waiting room side by side, cell by cell: issue
/// TPS and p99, status reads, waits, and what the backend's processes used.
fn rooms_table(results: &[RunResult]) -> String {
    let mut out = String::from(
        "## With and without a waiting room\n\n| strategy | instances | vusers | room (admitted /s) | issue TPS | issue p99 ms | status reads /s | status p99 ms | wait p50 / p99 s | api CPU % | Redis CPU % | audit |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for ((strategy, instances, vusers), runs) in cells(results) {
        let m = |f: &dyn Fn(&RunResult) -> f64| median(runs.iter().map(|r| f(r)).collect());
        let cpu = |component: &str| {
            m(&|r| {
                r.processes
                    .as_ref()
                    .and_then(|p| p.cpu_percent.get(component).copied())
                    .unwrap_or(0.0)
            })
        };
        let room = runs[0]
            .spec
            .waiting_room
            .map_or("–".to_owned(), |r| r.admit_per_second.to_string());
        let reads = |r: &RunResult| {
            r.room.as_ref().map_or(0.0, |f| {
                f.status_reads as f64 / (r.summary.measured_secs.max(1.0))
            })
        };
        let room_cell = |f: &dyn Fn(&crate::load::RoomFigures) -> f64, unit: f64| {
            if runs[0].room.is_some() {
                format!("{:.1}", m(&|r| r.room.as_ref().map_or(0.0, f)) / unit)
            } else {
                "–".to_owned()
            }
        };
        let passed = runs.iter().filter(|r| r.passed()).count();
        let _ = writeln!(
            out,
            "| {} | {instances} | {vusers} | {room} | {:.1} | {:.1} | {} | {} | {} / {} | {:.0} | {:.0} | {passed}/{} pass |",
            strategy.split('+').next().unwrap_or_default(),
            m(&|r| r.summary.tps),
            m(&|r| r.summary.p99_us as f64 / 1000.0),
            if runs[0].room.is_some() {
                format!("{:.0}", m(&reads))
            } else {
                "–".to_owned()
            },
            room_cell(&|f| f.status_p99_us as f64, 1000.0),
            room_cell(&|f| f.wait_p50_ms as f64, 1000.0),
            room_cell(&|f| f.wait_p99_ms as f64, 1000.0),
            cpu("api"),
            cpu("redis"),
            runs.len(),
        );
    }
    out.push_str("\nWith a room, a test is a user's issue once admitted (or the room reply that ended its wait: sold out); TPS is bounded by the rate admitted, by design. Status p99 covers joins and reads, every reply included; the wait runs from the join to the reply that admitted the user.\n");
    out
}

pub(super) fn draw_charts(out: &Path, results: &[RunResult]) -> anyhow::Result<()> {
    let cells = cells(results);
    let instances: std::collections::BTreeSet<usize> = cells.keys().map(|k| k.1).collect();
    for &n in &instances {
        let mut tps: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut p99: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for ((strategy, i, vusers), runs) in &cells {
            if *i != n {
                continue;
            }
            let x = f64::from(*vusers);
            tps.entry(strategy.clone())
                .or_default()
                .push((x, median(runs.iter().map(|r| r.summary.tps).collect())));
            p99.entry(strategy.clone()).or_default().push((
                x,
                median(
                    runs.iter()
                        .map(|r| r.summary.p99_us as f64 / 1000.0)
                        .collect(),
                ),
            ));
        }
        let to_series = |m: BTreeMap<String, Vec<(f64, f64)>>| -> Vec<Series> {
            m.into_iter()
                .map(|(name, points)| Series { name, points })
                .collect()
        };
        let tps = to_series(tps);
        charts::lines(
            &out.join(format!("tps-by-vusers-i{n}.png")),
            &format!("TPS by vusers, {n} instances"),
            "vusers",
            "TPS",
            Scale::fitting(&tps),
            &tps,
        )?;
        let p99 = to_series(p99);
        charts::lines(
            &out.join(format!("p99-by-vusers-i{n}.png")),
            &format!("p99 by vusers, {n} instances"),
            "vusers",
            "p99 (ms)",
            Scale::fitting(&p99),
            &p99,
        )?;
        let strategies: std::collections::BTreeSet<&String> =
            cells.keys().filter(|k| k.1 == n).map(|k| &k.0).collect();
        for strategy in strategies {
            let series: Vec<Series> = cells
                .iter()
                .filter(|((s, i, _), _)| s == strategy && *i == n)
                .map(|((_, _, vusers), runs)| Series {
                    name: format!("{vusers} vusers"),
                    // The last sample covers only part of a second.
                    points: runs[0]
                        .samples
                        .iter()
                        .take(runs[0].samples.len().saturating_sub(1))
                        .map(|s| (s.t as f64, s.tps))
                        .collect(),
                })
                .collect();
            charts::lines(
                &out.join(format!("tps-{strategy}-i{n}.png")),
                &format!("TPS over time, {strategy}, {n} instances"),
                "seconds (negative: warm-up)",
                "TPS",
                Scale::fitting(&series),
                &series,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_is_the_coefficient_of_variation() {
        assert_eq!(coefficient_of_variation(&[100.0]), None);
        assert_eq!(coefficient_of_variation(&[100.0, 100.0]), Some(0.0));
        // Mean 100, population standard deviation 20.
        let cv = coefficient_of_variation(&[80.0, 120.0]).unwrap();
        assert!((cv - 0.2).abs() < 1e-12, "{cv}");
        assert!(cv > NOISY_CV);
    }
}
