//! What a run measures, and nGrinder's definitions of its figures.
//!
//! - A *test* is a request answered with an expected business outcome
//!   (accepted, pending, queued, duplicate, sold out); anything else is an
//!   *error*: an unexpected 4xx, a 5xx, a timeout, or a connection failure.
//! - *Executed* = tests + errors.
//! - *TPS* and *mean test time* are over tests only, for the measured part
//!   of the run (after the warm-up).
//! - *Peak TPS* is the highest TPS of any 2 s window of 1 s samples (the
//!   seed's nGrinder tables report a 1-sample maximum).
//! - Latency percentiles come from an HdrHistogram in microseconds, also
//!   over tests only, as nGrinder shows them; beside them, the same
//!   percentiles over every request (errors included: a timeout counts its
//!   wait, a refused connection its time to fail), which is what a user
//!   sees. The open model measures from each send's intended time
//!   (coordinated omission corrected); the closed model does not (a vuser
//!   waiting for a slow reply sends nothing meanwhile, so a stall shows in
//!   fewer requests rather than in higher percentiles).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use serde::{Deserialize, Serialize};

/// The reply to one request, as the harness classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 200 from the trivial endpoint (`--trivial` baseline runs).
    Ok,
    Accepted,
    Pending,
    Queued,
    Duplicate,
    SoldOut,
    NotOpen,
    Closed,
    UnknownCampaign,
    RateLimited,
    Unavailable,
    Unexpected4xx,
    Unexpected5xx,
    Timeout,
    Connection,
    /// Open model: the send's time came but no connection had sent it when
    /// the run stopped; recorded with the time it had waited by then.
    Unsent,
}

/// How an error failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Unexpected4xx,
    Server5xx,
    Timeout,
    Connection,
    /// Never left the client (the open model's backlog at the stop).
    Unsent,
}

impl Outcome {
    pub const ALL: [Outcome; 16] = [
        Self::Ok,
        Self::Accepted,
        Self::Pending,
        Self::Queued,
        Self::Duplicate,
        Self::SoldOut,
        Self::NotOpen,
        Self::Closed,
        Self::UnknownCampaign,
        Self::RateLimited,
        Self::Unavailable,
        Self::Unexpected4xx,
        Self::Unexpected5xx,
        Self::Timeout,
        Self::Connection,
        Self::Unsent,
    ];

    fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Accepted => "accepted",
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Duplicate => "duplicate",
            Self::SoldOut => "sold_out",
            Self::NotOpen => "not_open",
            Self::Closed => "closed",
            Self::UnknownCampaign => "unknown_campaign",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Unexpected4xx => "unexpected_4xx",
            Self::Unexpected5xx => "unexpected_5xx",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Unsent => "unsent",
        }
    }

    /// From the status and the reply's `outcome` field.
    pub fn from_reply(status: u16, outcome: Option<&[u8]>) -> Self {
        match (status, outcome) {
            (200, _) => Self::Ok,
            (202, Some(b"accepted")) => Self::Accepted,
            (202, Some(b"pending")) => Self::Pending,
            (202, Some(b"queued")) => Self::Queued,
            (409, Some(b"duplicate")) => Self::Duplicate,
            (410, Some(b"sold_out")) => Self::SoldOut,
            (410, Some(b"closed")) => Self::Closed,
            (403, Some(b"not_open")) => Self::NotOpen,
            (404, Some(b"unknown_campaign")) => Self::UnknownCampaign,
            (429, _) => Self::RateLimited,
            (503, _) => Self::Unavailable,
            (500..=599, _) => Self::Unexpected5xx,
            _ => Self::Unexpected4xx,
        }
    }

    /// `None` for a test (an expected business outcome).
    pub fn error_kind(self) -> Option<ErrorKind> {
        match self {
            Self::Ok
            | Self::Accepted
            | Self::Pending
            | Self::Queued
            | Self::Duplicate
            | Self::SoldOut => None,
            Self::NotOpen
            | Self::Closed
            | Self::UnknownCampaign
            | Self::RateLimited
            | Self::Unexpected4xx => Some(ErrorKind::Unexpected4xx),
            Self::Unavailable | Self::Unexpected5xx => Some(ErrorKind::Server5xx),
            Self::Timeout => Some(ErrorKind::Timeout),
            Self::Connection => Some(ErrorKind::Connection),
            Self::Unsent => Some(ErrorKind::Unsent),
        }
    }

    /// The user holds (or will hold) a slot: the audit expects a row or a
    /// settled final state for it.
    pub fn is_promise(self) -> bool {
        matches!(self, Self::Accepted | Self::Pending | Self::Queued)
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// One interval's worth of measurements.
#[derive(Debug)]
struct Interval {
    /// Tests only.
    latency: Histogram<u64>,
    /// Every request, errors included.
    every: Histogram<u64>,
    latency_sum_us: u64,
    outcomes: [u64; Outcome::ALL.len()],
}

impl Default for Interval {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            every: new_histogram(),
            latency_sum_us: 0,
            outcomes: [0; Outcome::ALL.len()],
        }
    }
}

/// Where the load tasks record; sharded so they rarely contend.
#[derive(Debug)]
pub struct Recorder {
    shards: Vec<Mutex<Interval>>,
}

impl Recorder {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Interval::default()))
                .collect(),
        }
    }

    pub fn record(&self, shard: usize, outcome: Outcome, latency: Duration) {
        let mut s = self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.outcomes[outcome.index()] += 1;
        let us = (latency.as_micros() as u64).max(1);
        let _ = s.every.record(us);
        if outcome.error_kind().is_none() {
            s.latency_sum_us += us;
            let _ = s.latency.record(us);
        }
    }

    /// Takes what was recorded since the last call.
    fn take(&self) -> Interval {
        let mut merged = Interval::default();
        for shard in &self.shards {
            let taken = std::mem::take(
                &mut *shard
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            let _ = merged.latency.add(&taken.latency);
            let _ = merged.every.add(&taken.every);
            merged.latency_sum_us += taken.latency_sum_us;
            for (m, t) in merged.outcomes.iter_mut().zip(taken.outcomes) {
                *m += t;
            }
        }
        merged
    }
}

/// One row of the per-sample CSV.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Sample {
    /// Seconds since the start of measurement (negative during warm-up).
    pub t: i64,
    pub vusers: u64,
    pub tests: u64,
    pub errors: u64,
    pub mean_ms: f64,
    pub tps: f64,
    /// Percentiles of the sample's tests.
    #[serde(default)]
    pub p50_ms: f64,
    pub p99_ms: f64,
    #[serde(default)]
    pub p999_ms: f64,
    /// p99 of every request of the sample, errors included.
    #[serde(default)]
    pub all_p99_ms: f64,
    /// Requests by outcome, in the order of [`Outcome::ALL`].
    #[serde(default)]
    pub outcomes: Vec<u64>,
}

/// Accumulates samples, the run's totals, and the HdrHistogram interval
/// log of every sample.
#[derive(Debug)]
pub struct Collector {
    total: Interval,
    pub samples: Vec<Sample>,
    measured: Duration,
    started: std::time::Instant,
    /// An HdrHistogram interval log (the format of HdrHistogram's
    /// `HistogramLogProcessor` and `hdrhistogram::serialization`): per
    /// sample, the tests' latency (tag `tests`) and every request's (tag
    /// `all`), in microseconds.
    hlog: Vec<u8>,
}

impl Default for Collector {
    fn default() -> Self {
        let mut hlog = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        let _ = IntervalLogWriterBuilder::new()
            .add_comment("coupon engine load harness: latency in microseconds")
            .add_comment("tag tests: tests only (nGrinder's figures); tag all: every request, errors included")
            .with_start_time(std::time::SystemTime::now())
            .begin_log_with(&mut hlog, &mut serializer);
        Self {
            total: Interval::default(),
            samples: Vec::new(),
            measured: Duration::ZERO,
            started: std::time::Instant::now(),
            hlog,
        }
    }
}

impl Collector {
    /// Closes one sample of `length` at time `t`; only samples with `t >= 0`
    /// count toward the totals.
    pub fn sample(&mut self, recorder: &Recorder, t: i64, length: Duration, vusers: u64) -> Sample {
        let interval = recorder.take();
        let tests: u64 = Outcome::ALL
            .iter()
            .filter(|o| o.error_kind().is_none())
            .map(|o| interval.outcomes[o.index()])
            .sum();
        let errors = interval.outcomes.iter().sum::<u64>() - tests;
        let secs = length.as_secs_f64().max(1e-9);
        let ms_at = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let sample = Sample {
            t,
            vusers,
            tests,
            errors,
            mean_ms: if tests > 0 {
                interval.latency_sum_us as f64 / tests as f64 / 1000.0
            } else {
                0.0
            },
            tps: tests as f64 / secs,
            p50_ms: ms_at(&interval.latency, 0.50),
            p99_ms: ms_at(&interval.latency, 0.99),
            p999_ms: ms_at(&interval.latency, 0.999),
            all_p99_ms: ms_at(&interval.every, 0.99),
            outcomes: interval.outcomes.to_vec(),
        };
        self.log_interval(&interval, length);
        if t >= 0 {
            let _ = self.total.latency.add(&interval.latency);
            let _ = self.total.every.add(&interval.every);
            self.total.latency_sum_us += interval.latency_sum_us;
            for (m, o) in self.total.outcomes.iter_mut().zip(interval.outcomes) {
                *m += o;
            }
            self.measured += length;
        }
        self.samples.push(sample.clone());
        sample
    }

    /// Appends one sample's histograms to the interval log.
    fn log_interval(&mut self, interval: &Interval, length: Duration) {
        let start = self.started.elapsed().saturating_sub(length);
        let mut serializer = V2DeflateSerializer::new();
        if let Ok(mut log) =
            IntervalLogWriterBuilder::new().begin_log_with(&mut self.hlog, &mut serializer)
        {
            let _ = log.write_histogram(&interval.latency, start, length, Tag::new("tests"));
            let _ = log.write_histogram(&interval.every, start, length, Tag::new("all"));
        }
    }

    /// The run's HdrHistogram interval log (text).
    pub fn hlog(&self) -> &[u8] {
        &self.hlog
    }

    pub fn summary(&self) -> Summary {
        let mut outcomes = BTreeMap::new();
        let mut errors_by_kind = BTreeMap::new();
        let mut tests = 0;
        let mut errors = 0;
        for o in Outcome::ALL {
            let n = self.total.outcomes[o.index()];
            if n == 0 {
                continue;
            }
            outcomes.insert(o.as_str().to_owned(), n);
            match o.error_kind() {
                None => tests += n,
                Some(kind) => {
                    errors += n;
                    *errors_by_kind.entry(kind).or_insert(0) += n;
                }
            }
        }
        let secs = self.measured.as_secs_f64();
        let h = &self.total.latency;
        let q = |p: f64| if tests > 0 { h.value_at_quantile(p) } else { 0 };
        let every = &self.total.every;
        let all = |p: f64| {
            if every.is_empty() {
                0
            } else {
                every.value_at_quantile(p)
            }
        };
        let measured: Vec<&Sample> = self.samples.iter().filter(|s| s.t >= 0).collect();
        Summary {
            measured_secs: secs,
            tests,
            errors,
            executed: tests + errors,
            errors_by_kind,
            outcomes,
            tps: if secs > 0.0 { tests as f64 / secs } else { 0.0 },
            peak_tps: peak_tps(&measured),
            mean_ms: if tests > 0 {
                self.total.latency_sum_us as f64 / tests as f64 / 1000.0
            } else {
                0.0
            },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if tests > 0 { h.max() } else { 0 },
            all_p50_us: all(0.50),
            all_p99_us: all(0.99),
            all_p999_us: all(0.999),
            all_max_us: if every.is_empty() { 0 } else { every.max() },
        }
    }
}

/// Highest TPS over any two consecutive 1 s samples (one sample alone if
/// there is only one).
pub fn peak_tps(samples: &[&Sample]) -> f64 {
    match samples {
        [] => 0.0,
        [only] => only.tps,
        _ => samples
            .windows(2)
            .map(|w| (w[0].tps + w[1].tps) / 2.0)
            .fold(0.0, f64::max),
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub measured_secs: f64,
    pub tests: u64,
    pub errors: u64,
    pub executed: u64,
    pub errors_by_kind: BTreeMap<ErrorKind, u64>,
    pub outcomes: BTreeMap<String, u64>,
    pub tps: f64,
    pub peak_tps: f64,
    pub mean_ms: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The same percentiles over every request, errors included.
    #[serde(default)]
    pub all_p50_us: u64,
    #[serde(default)]
    pub all_p99_us: u64,
    #[serde(default)]
    pub all_p999_us: u64,
    #[serde(default)]
    pub all_max_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn replies_are_classified_by_status_and_outcome() {
        assert_eq!(
            Outcome::from_reply(202, Some(b"accepted")),
            Outcome::Accepted
        );
        assert_eq!(
            Outcome::from_reply(409, Some(b"duplicate")),
            Outcome::Duplicate
        );
        assert_eq!(
            Outcome::from_reply(410, Some(b"sold_out")),
            Outcome::SoldOut
        );
        assert_eq!(
            Outcome::from_reply(429, Some(b"rate_limited")),
            Outcome::RateLimited
        );
        assert_eq!(Outcome::from_reply(503, None), Outcome::Unavailable);
        assert_eq!(Outcome::from_reply(500, None), Outcome::Unexpected5xx);
        assert_eq!(
            Outcome::from_reply(404, Some(b"not_found")),
            Outcome::Unexpected4xx
        );
        assert_eq!(Outcome::Duplicate.error_kind(), None);
        assert_eq!(
            Outcome::RateLimited.error_kind(),
            Some(ErrorKind::Unexpected4xx)
        );
        assert_eq!(
            Outcome::Unavailable.error_kind(),
            Some(ErrorKind::Server5xx)
        );
    }

    #[test]
    fn tps_and_mean_are_over_tests_and_the_measured_part_only() {
        let recorder = Recorder::new(4);
        let mut c = Collector::default();
        // Warm-up: counted in the sample, not in the totals.
        for _ in 0..50 {
            recorder.record(0, Outcome::Accepted, ms(100));
        }
        c.sample(&recorder, -1, Duration::from_secs(1), 10);
        // Two measured seconds: 100 then 300 tests at 10 ms, plus errors.
        for i in 0..100 {
            recorder.record(i, Outcome::Accepted, ms(10));
        }
        recorder.record(0, Outcome::Timeout, ms(5_000));
        c.sample(&recorder, 0, Duration::from_secs(1), 10);
        for i in 0..300 {
            recorder.record(i, Outcome::SoldOut, ms(10));
        }
        recorder.record(1, Outcome::Unavailable, ms(1));
        c.sample(&recorder, 1, Duration::from_secs(1), 10);

        let s = c.summary();
        assert_eq!(s.tests, 400);
        assert_eq!(s.errors, 2);
        assert_eq!(s.executed, 402);
        assert_eq!(s.errors_by_kind[&ErrorKind::Timeout], 1);
        assert_eq!(s.errors_by_kind[&ErrorKind::Server5xx], 1);
        assert!((s.tps - 200.0).abs() < 1e-9, "{}", s.tps);
        assert!((s.peak_tps - 200.0).abs() < 1e-9, "{}", s.peak_tps);
        assert!((s.mean_ms - 10.0).abs() < 0.01, "{}", s.mean_ms);
        assert_eq!(s.outcomes["accepted"], 100);
        assert_eq!(s.outcomes["sold_out"], 300);
        assert!(!s.outcomes.contains_key("pending"));
    }

    #[test]
    fn peak_is_the_best_two_second_window() {
        let sample = |tps| Sample {
            t: 0,
            vusers: 1,
            tps,
            ..Sample::default()
        };
        let s = [
            sample(10.0),
            sample(50.0),
            sample(30.0),
            sample(90.0),
            sample(0.0),
        ];
        let refs: Vec<&Sample> = s.iter().collect();
        assert_eq!(peak_tps(&refs), 60.0); // (30 + 90) / 2
        assert_eq!(peak_tps(&refs[..1]), 10.0);
        assert_eq!(peak_tps(&[]), 0.0);
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_microseconds() {
        let recorder = Recorder::new(1);
        let mut c = Collector::default();
        for i in 1..=1000u64 {
            recorder.record(0, Outcome::Accepted, Duration::from_micros(i * 1000));
        }
        c.sample(&recorder, 0, Duration::from_secs(1), 1);
        let s = c.summary();
        let near = |got: u64, want: u64| (got as f64 - want as f64).abs() / want as f64 <= 0.002;
        assert!(near(s.p50_us, 500_000), "{}", s.p50_us);
        assert!(near(s.p90_us, 900_000), "{}", s.p90_us);
        assert!(near(s.p99_us, 990_000), "{}", s.p99_us);
        assert!(near(s.max_us, 1_000_000), "{}", s.max_us);
    }

    #[test]
    fn every_request_percentiles_include_the_errors_a_user_waited_for() {
        let recorder = Recorder::new(1);
        let mut c = Collector::default();
        // 980 fast tests and 20 timeouts of 5 s: the tests' p99 stays fast,
        // every request's p99 is the timeout.
        for _ in 0..980 {
            recorder.record(0, Outcome::Accepted, ms(2));
        }
        for _ in 0..20 {
            recorder.record(0, Outcome::Timeout, ms(5_000));
        }
        let sample = c.sample(&recorder, 0, Duration::from_secs(1), 1);
        let s = c.summary();
        assert!(s.p99_us < 3_000, "{}", s.p99_us);
        assert!(s.all_p99_us >= 4_990_000, "{}", s.all_p99_us);
        assert!(s.all_p50_us < 3_000, "{}", s.all_p50_us);
        assert!(
            sample.p99_ms < 3.0 && sample.all_p99_ms >= 4_990.0,
            "{sample:?}"
        );
        assert_eq!(sample.outcomes[Outcome::Accepted as usize], 980);
        assert_eq!(sample.outcomes[Outcome::Timeout as usize], 20);
    }

    #[test]
    fn the_interval_log_holds_each_sample_twice_and_reads_back() {
        use hdrhistogram::serialization::Deserializer;
        use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
        let recorder = Recorder::new(1);
        let mut c = Collector::default();
        for second in 0..3 {
            for _ in 0..100 {
                recorder.record(0, Outcome::Accepted, ms(2));
            }
            recorder.record(0, Outcome::Timeout, ms(5_000));
            c.sample(&recorder, second, Duration::from_secs(1), 1);
        }
        let mut tests = Vec::new();
        let mut all = Vec::new();
        for entry in IntervalLogIterator::new(c.hlog()) {
            if let Ok(LogEntry::Interval(h)) = entry {
                let bytes = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    h.encoded_histogram(),
                )
                .unwrap();
                let histogram: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut std::io::Cursor::new(bytes))
                    .unwrap();
                match h.tag().map(|t| t.as_str()) {
                    Some("tests") => tests.push(histogram),
                    Some("all") => all.push(histogram),
                    other => panic!("tag {other:?}"),
                }
            }
        }
        assert_eq!(tests.len(), 3);
        assert_eq!(all.len(), 3);
        assert_eq!(tests[0].len(), 100);
        assert_eq!(all[0].len(), 101);
        assert!(all[2].max() >= 4_990_000);
    }
}
