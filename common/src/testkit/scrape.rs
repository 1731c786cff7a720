//! A `/metrics` page read back.
#![allow(clippy::unwrap_used, missing_docs)]

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
                let (sample, value) = line.rsplit_once(' ').expect("a sample line");
                scrape
                    .samples
                    .insert(sample.to_owned(), value.parse().expect("a number"));
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

#[cfg(test)]
mod tests {
    use super::Scrape;

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
}
