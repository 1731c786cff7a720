//! A `/metrics` page (Prometheus text format) read back: the harness reads
//! the worker's end-to-end lag from it, the tests every other family.

/// A `/metrics` page (Prometheus text format) read back: the type of each
/// family and the value of each sample line.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Family name → `counter`, `gauge`, `histogram`...
    pub types: std::collections::BTreeMap<String, String>,
    /// Sample (name with its labels, as printed) → value.
    pub samples: std::collections::BTreeMap<String, f64>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut scrape = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    scrape.types.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                // A line that is not `sample value` is skipped, not fatal:
                // the harness reads pages of servers it does not control.
                if let Some((sample, value)) = line.rsplit_once(' ')
                    && let Ok(value) = value.parse()
                {
                    scrape.samples.insert(sample.to_owned(), value);
                }
            }
        }
        scrape
    }

    /// Sum of a family's samples whose labels contain every `labels` pair
    /// (`name` may be `x_count` or `x_sum` of a histogram).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(sample, _)| {
                let (n, rest) = sample.split_once('{').unwrap_or((sample, ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// The buckets of histogram `name` (its `<name>_bucket{le="…"}` samples
    /// without other labels).
    pub fn histogram(&self, name: &str) -> Histogram {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(sample, value)| {
                let le = sample.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram(buckets)
    }

    /// Panics unless every `(family, type)` is exported with that type.
    pub fn assert_families(&self, expected: &[(&str, &str)]) {
        for (name, kind) in expected {
            assert_eq!(
                self.types.get(*name).map(String::as_str),
                Some(*kind),
                "metric family {name}"
            );
        }
    }
}

/// A cumulative Prometheus histogram: (upper bound, count) pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram(Vec<(f64, f64)>);

impl Histogram {
    pub fn minus(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(l, _)| *l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (le, n - before)
                })
                .collect(),
        )
    }

    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, n)| *n)
    }

    /// The q-quantile, interpolated linearly inside its bucket (as
    /// Prometheus's `histogram_quantile`); `None` without observations or
    /// when it falls in the `+Inf` bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &self.0 {
            if n >= rank {
                if le.is_infinite() {
                    return None;
                }
                let (low_le, low_n) = lower;
                let width = n - low_n;
                let within = if width > 0.0 {
                    (rank - low_n) / width
                } else {
                    1.0
                };
                return Some(low_le + (le - low_le) * within);
            }
            lower = (le, n);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_reads_types_and_sums_samples_by_label() {
        let s = Scrape::parse(
            "# HELP a_total A.\n# TYPE a_total counter\n\
             a_total{route=\"/x\",status=\"200\"} 3\na_total{route=\"/x\",status=\"500\"} 1\n\
             # TYPE h histogram\nh_count{route=\"/x\"} 7\nh_sum{route=\"/x\"} 0.5\n",
        );
        assert_eq!(s.types["a_total"], "counter");
        assert_eq!(s.sum("a_total", &[("route", "/x")]), 4.0);
        assert_eq!(s.sum("a_total", &[("status", "500")]), 1.0);
        assert_eq!(s.sum("h_count", &[]), 7.0);
        assert_eq!(s.sum("missing", &[]), 0.0);
    }

    const SCRAPE: &str = "# TYPE worker_end_to_end_lag_seconds histogram\n\
        worker_end_to_end_lag_seconds_bucket{le=\"0.1\"} 10\n\
        worker_end_to_end_lag_seconds_bucket{le=\"0.2\"} 90\n\
        worker_end_to_end_lag_seconds_bucket{le=\"0.4\"} 100\n\
        worker_end_to_end_lag_seconds_bucket{le=\"+Inf\"} 100\n\
        worker_end_to_end_lag_seconds_sum 15\n\
        worker_end_to_end_lag_seconds_count 100\n";

    #[test]
    fn histogram_quantiles_interpolate_inside_the_bucket() {
        let h = Scrape::parse(SCRAPE).histogram("worker_end_to_end_lag_seconds");
        assert_eq!(h.count(), 100.0);
        // Rank 50 of 100 lies half-way through the (0.1, 0.2] bucket.
        let p50 = h.quantile(0.5).unwrap();
        assert!((p50 - 0.15).abs() < 1e-9, "{p50}");
        // Rank 99 lies 90% of the way through (0.2, 0.4].
        let p99 = h.quantile(0.99).unwrap();
        assert!((p99 - 0.38).abs() < 1e-9, "{p99}");
        assert_eq!(Histogram::default().quantile(0.99), None);
    }

    #[test]
    fn the_delta_of_two_scrapes_counts_only_what_happened_between() {
        let before = Scrape::parse(SCRAPE).histogram("worker_end_to_end_lag_seconds");
        let later = SCRAPE
            .replace("} 100\n", "} 200\n")
            .replace("} 90\n", "} 190\n");
        let after = Scrape::parse(&later).histogram("worker_end_to_end_lag_seconds");
        let delta = after.minus(&before);
        assert_eq!(delta.count(), 100.0);
        // All 100 new observations fell in (0.1, 0.2].
        assert!(delta.quantile(0.99).unwrap() <= 0.2);
    }
}
