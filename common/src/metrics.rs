//! Helpers to declare Prometheus metrics into a registry and render it.
//!
//! Registration fails only for a programming error (a name declared twice or
//! malformed), so these helpers panic at start-up rather than return errors.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique and well-formed");
    c
}

pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("valid counter"),
    )
}

pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter vec"),
    )
}

pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid gauge"))
}

pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge vec"),
    )
}

pub fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid histogram"),
    )
}

pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    register(
        registry,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid histogram vec"),
    )
}

/// Latency buckets in seconds, from 50 µs to about 13 s: past the longest
/// request (a lock wait and a delivery timeout at their defaults, 2 s and
/// 5 s), so a slow request lands in a bucket of its own, not in `+Inf`.
pub fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.000_05, 2.0, 19).expect("valid buckets")
}

/// The process's own CPU, memory, open files and threads
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_threads`...), read from
/// `/proc` at each scrape.
pub fn register_process(registry: &Registry) {
    let _ = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
}

/// librdkafka's view of each broker, from its statistics (every
/// `statistics.interval.ms`): round-trip time, requests waiting to be sent,
/// and failed or timed-out requests. The `broker` label is librdkafka's
/// broker name (`host:port/id`): as many values as brokers.
#[derive(Debug, Clone)]
pub struct KafkaClientMetrics {
    rtt_seconds: GaugeVec,
    outbuf_requests: IntGaugeVec,
    request_errors: IntCounterVec,
    request_timeouts: IntCounterVec,
    requests: IntCounterVec,
    messages_sent: IntCounterVec,
}

/// The request types counted by `kafka_broker_requests_total`: what the
/// broker is asked to do on the issue path (a bounded label set).
const COUNTED_REQUESTS: [&str; 2] = ["Produce", "Fetch"];

impl KafkaClientMetrics {
    /// `client` (`producer`, `consumer`) labels every series too.
    pub fn new(registry: &Registry) -> Self {
        let labels = &["client", "broker"];
        Self {
            rtt_seconds: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "kafka_broker_rtt_seconds",
                        "Average request round-trip time to each broker over the last statistics window.",
                    ),
                    labels,
                )
                .expect("valid gauge vec"),
            ),
            outbuf_requests: gauge_vec(
                registry,
                "kafka_broker_outbuf_requests",
                "Requests queued for each broker, not yet sent.",
                labels,
            ),
            request_errors: counter_vec(
                registry,
                "kafka_broker_request_errors_total",
                "Requests to each broker that failed to be sent.",
                labels,
            ),
            request_timeouts: counter_vec(
                registry,
                "kafka_broker_request_timeouts_total",
                "Requests to each broker that timed out.",
                labels,
            ),
            requests: counter_vec(
                registry,
                "kafka_broker_requests_total",
                "Produce and Fetch requests sent to each broker (messages per produce request: kafka_client_messages_sent_total over these).",
                &["client", "broker", "type"],
            ),
            messages_sent: counter_vec(
                registry,
                "kafka_client_messages_sent_total",
                "Messages sent to the brokers (librdkafka's txmsgs).",
                &["client"],
            ),
        }
    }

    /// Takes one statistics report of the client `client`.
    pub fn observe(&self, client: &str, statistics: &rdkafka::Statistics) {
        for broker in statistics.brokers.values() {
            if broker.nodeid < 0 {
                // The bootstrap entry, before the broker's id is known.
                continue;
            }
            let labels = [client, broker.name.as_str()];
            if let Some(rtt) = &broker.rtt {
                self.rtt_seconds
                    .with_label_values(&labels)
                    .set(rtt.avg as f64 / 1e6);
            }
            self.outbuf_requests
                .with_label_values(&labels)
                .set(broker.outbuf_cnt);
            // librdkafka's counts are totals since the client started.
            let catch_up = |counter: &IntCounterVec, total: u64| {
                let c = counter.with_label_values(&labels);
                c.inc_by(total.saturating_sub(c.get()));
            };
            catch_up(&self.request_errors, broker.txerrs);
            catch_up(&self.request_timeouts, broker.req_timeouts);
            for kind in COUNTED_REQUESTS {
                if let Some(&sent) = broker.req.get(kind) {
                    let c = self
                        .requests
                        .with_label_values(&[client, broker.name.as_str(), kind]);
                    c.inc_by((sent.max(0) as u64).saturating_sub(c.get()));
                }
            }
        }
        let sent = self.messages_sent.with_label_values(&[client]);
        sent.inc_by((statistics.txmsgs.max(0) as u64).saturating_sub(sent.get()));
    }
}

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    // Encoding into a Vec fails only on a malformed metric family, which the
    // registry refuses at registration.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buffer);
    String::from_utf8(buffer).unwrap_or_default()
}
