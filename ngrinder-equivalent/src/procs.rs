//! Where the CPU of a run goes: the CPU time and resident memory of the
//! stack's processes (found by name under `/proc`), sampled every second
//! while a run is offered. On one machine that runs everything, this says
//! which component a figure is bound by.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Process names (`/proc/<pid>/comm`, at most 15 bytes) and what they are.
/// Apache Kafka runs as `java`: see [`JVM_BROKER`].
pub const COMPONENTS: [(&str, &str); 6] = [
    ("api", "api"),
    ("issuer-worker", "worker"),
    ("redis-server", "redis"),
    ("postgres", "postgresql"),
    ("haproxy", "haproxy"),
    ("ngrinder-equiva", LOAD_CLIENT),
];

/// The harness's own component: not part of what the server side costs.
pub const LOAD_CLIENT: &str = "load client";

/// What the stack's processes used while a run was offered.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcUse {
    /// Component → CPU in percent of one core (summed over its processes).
    pub cpu_percent: BTreeMap<String, f64>,
    /// Component → largest resident set of one of its processes, MiB.
    pub max_rss_mib: BTreeMap<String, f64>,
    pub seconds: f64,
}

impl ProcUse {
    /// The CPU time the server side (every component but the load client)
    /// spent per event at `rate` events a second, in µs; `only` one
    /// component's share. `None` without a rate.
    pub fn cpu_us_per(&self, rate: f64, only: Option<&str>) -> Option<f64> {
        if rate <= 0.0 {
            return None;
        }
        let percent: f64 = self
            .cpu_percent
            .iter()
            .filter(|(c, _)| c.as_str() != LOAD_CLIENT && only.is_none_or(|o| o == c.as_str()))
            .map(|(_, p)| p)
            .sum();
        Some(percent / 100.0 * 1e6 / rate)
    }
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    cpu_ticks: u64,
    rss_kib: u64,
}

/// The main class of the Apache Kafka broker's JVM (`scripts/kafka run`):
/// a `java` process whose command line names it is the broker.
pub const JVM_BROKER: &str = "kafka.Kafka";

fn component(comm: &str, pid: u32) -> Option<&'static str> {
    if comm == "java" {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        return cmdline
            .split(|&b| b == 0)
            .any(|arg| arg == JVM_BROKER.as_bytes())
            .then_some("broker");
    }
    COMPONENTS
        .iter()
        .find(|(name, _)| *name == comm)
        .map(|(_, c)| *c)
}

/// Every process of a known component: pid → (component, reading).
fn read_all() -> BTreeMap<u32, (&'static str, Reading)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((comm, reading)) = parse_stat(&stat, pid)
            && let Some(c) = component(comm, pid)
        {
            out.insert(pid, (c, reading));
        }
    }
    out
}

/// `comm` and the reading from `/proc/<pid>/stat` (+ `status` for the RSS).
fn parse_stat(stat: &str, pid: u32) -> Option<(&str, Reading)> {
    // The name is in parentheses and may hold spaces: split at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    Some((
        comm,
        Reading {
            cpu_ticks: utime + stime,
            rss_kib,
        },
    ))
}

/// `/proc` counts CPU time in USER_HZ, which Linux fixes at 100 per second.
const TICKS_PER_SECOND: f64 = 100.0;

/// This process's CPU time so far (user + system), in seconds.
pub fn own_cpu_seconds() -> f64 {
    let me = std::process::id();
    std::fs::read_to_string(format!("/proc/{me}/stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat, me).map(|(_, r)| r.cpu_ticks as f64 / TICKS_PER_SECOND))
        .unwrap_or(0.0)
}

/// Samples from `skip` after the call (a run's warm-up) for `length` (its
/// measured part), or until `stop` is cancelled, then returns what was used.
pub async fn sample(stop: CancellationToken, skip: Duration, length: Duration) -> ProcUse {
    tokio::select! {
        _ = stop.cancelled() => return ProcUse::default(),
        _ = tokio::time::sleep(skip) => {}
    }
    let started = Instant::now();
    let end = started + length;
    let first = read_all();
    // Each process's latest reading (one that exits keeps its last).
    let mut last = first.clone();
    let mut max_rss: BTreeMap<String, f64> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stopped = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => Instant::now() >= end,
        };
        for (pid, (c, r)) in read_all() {
            let mib = r.rss_kib as f64 / 1024.0;
            let e = max_rss.entry(c.to_owned()).or_insert(0.0);
            *e = e.max(mib);
            last.insert(pid, (c, r));
        }
        if stopped {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let hz = TICKS_PER_SECOND;
    let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, (c, r)) in &last {
        let before = first.get(pid).map_or(0, |(_, b)| b.cpu_ticks);
        // A process started during the run counts from zero.
        let used = r.cpu_ticks.saturating_sub(before) as f64 / hz;
        *cpu.entry((*c).to_owned()).or_insert(0.0) += used / seconds * 100.0;
    }
    ProcUse {
        cpu_percent: cpu,
        max_rss_mib: max_rss,
        seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let stat = "1234 (actix-server wo) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 100 1000 10 18446744073709551615";
        let (comm, r) = parse_stat(stat, u32::MAX).unwrap();
        assert_eq!(comm, "actix-server wo");
        assert_eq!(r.cpu_ticks, 300);
    }

    #[test]
    fn the_cpu_per_test_is_the_server_sides_not_the_load_clients() {
        let used = ProcUse {
            cpu_percent: BTreeMap::from([
                ("api".to_owned(), 100.0),
                ("redis".to_owned(), 50.0),
                (LOAD_CLIENT.to_owned(), 50.0),
            ]),
            max_rss_mib: BTreeMap::new(),
            seconds: 60.0,
        };
        // 1.5 cores over 10,000 tests a second: 150 µs a test.
        assert_eq!(used.cpu_us_per(10_000.0, None), Some(150.0));
        assert_eq!(used.cpu_us_per(10_000.0, Some("api")), Some(100.0));
        assert_eq!(used.cpu_us_per(0.0, None), None);
    }

    #[test]
    fn this_process_is_found_and_costs_cpu() {
        let me = std::process::id();
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let (_, r) = parse_stat(&stat, me).unwrap();
        assert!(r.rss_kib > 0);
    }
}
