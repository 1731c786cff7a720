//! Logging and tracing. Logs: human-readable text locally, JSON lines in
//! production (`log.*` settings). Traces: OpenTelemetry spans exported over
//! OTLP/HTTP, configured by the standard `OTEL_*` variables (read here and
//! by the OpenTelemetry SDK, the one exception to "only `settings` reads the
//! environment") and off when no OTLP endpoint is set.
//!
//! With tracing on, one issue is one trace: the api's `request` span, its
//! `gate` and `produce` spans, the W3C `traceparent` in the Kafka message's
//! headers ([`trace_headers`]), and the worker's `persist` span, a child of
//! that context ([`parent_of`]). The spans below `request` are `debug`
//! spans: with tracing off, the log filter (`info`) disables them at their
//! call sites and they cost nothing.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use tracing_subscriber::filter::{FilterFn, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::settings::{LogFormat, LogSettings};

/// Set once tracing is exported; checked before any propagation work.
static ON: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// Installs a log-only subscriber writing to stderr, for a command whose
/// stdout is its output for scripts (`issuer-worker campaigns`, `dlq`).
pub fn init_stderr(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Installs the global subscriber (a second call, in tests, is a no-op):
/// logs by `settings`, and spans to OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// (or `..._TRACES_ENDPOINT`) is set, unless `OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none`. `service` names the process in traces
/// unless `OTEL_SERVICE_NAME` does.
pub fn init(settings: &LogSettings, service: &str) {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let Some(provider) = otlp_requested().then(|| tracer_provider(service)).flatten() else {
        // Tracing off: one global filter, so that the `debug` spans are
        // disabled at their call sites once and for all (per-layer filters
        // would ask at every span: about 25 ns each).
        let builder = fmt().with_env_filter(filter).with_target(true);
        let _ = match settings.format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
        return;
    };
    let logs = match settings.format {
        LogFormat::Text => fmt::layer().with_target(true).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_target(true)
            .boxed(),
    }
    .with_filter(filter);
    // Spans only (log events stay in the logs): this project's down to
    // `debug`, others' from `info`.
    let spans = Targets::new()
        .with_target("api", tracing::Level::DEBUG)
        .with_target("issuer_worker", tracing::Level::DEBUG)
        .with_target("common", tracing::Level::DEBUG)
        .with_default(tracing::Level::INFO);
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("coupon-engine"))
        .with_filter(spans)
        .with_filter(FilterFn::new(|meta| meta.is_span()));
    if tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok()
    {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let _ = PROVIDER.set(provider);
        ON.store(true, Ordering::Release);
        tracing::info!(service, "exporting traces over OTLP");
    }
}

/// Sends the spans not exported yet; call once before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "traces not all exported");
    }
}

/// `future` inside the span `span` makes, with tracing on; as it is with
/// tracing off (even a disabled span's wrapper costs about 25 ns a poll).
pub fn traced<F: std::future::Future>(
    future: F,
    span: impl FnOnce() -> tracing::Span,
) -> impl std::future::Future<Output = F::Output> {
    use futures::future::Either;
    use tracing::Instrument;
    if tracing_on() {
        Either::Left(future.instrument(span()))
    } else {
        Either::Right(future)
    }
}

/// Whether spans are exported (and trace context propagated).
pub fn tracing_on() -> bool {
    ON.load(Ordering::Acquire)
}

fn otlp_requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let is = |name: &str, value: &str| {
        std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

/// An OTLP/HTTP exporter (protocol, endpoint, headers and timeout from the
/// `OTEL_EXPORTER_OTLP_*` variables) behind a batch processor, sampled by
/// `OTEL_TRACES_SAMPLER` (default: parent-based, always on).
fn tracer_provider(service: &str) -> Option<SdkTracerProvider> {
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("OTLP exporter not created, traces stay off: {e}");
            return None;
        }
    };
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}

/// The current span's trace context as Kafka headers (`traceparent`), when
/// tracing is on and the span is sampled.
pub fn trace_headers() -> Option<OwnedHeaders> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !tracing_on() {
        return None;
    }
    let context = tracing::Span::current().context();
    let mut carrier = HeaderCarrier::default();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    let value = carrier.traceparent?;
    Some(OwnedHeaders::new().insert(Header {
        key: TRACEPARENT,
        value: Some(value.as_bytes()),
    }))
}

/// The trace context a message's headers carry, when tracing is on.
pub fn parent_of(headers: Option<&BorrowedHeaders>) -> Option<opentelemetry::Context> {
    if !tracing_on() {
        return None;
    }
    let value = headers?
        .iter()
        .find(|h| h.key == TRACEPARENT)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())?;
    parent_from(value)
}

/// The trace context of a `traceparent` value (an HTTP request's header),
/// when tracing is on and the value is valid.
pub fn parent_from(traceparent: &str) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::TraceContextExt;
    if !tracing_on() {
        return None;
    }
    let carrier = HeaderCarrier {
        traceparent: Some(traceparent.to_owned()),
    };
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// Carries `traceparent` between the propagator and Kafka headers (the
/// only header the W3C propagator needs besides `tracestate`, which this
/// project does not set).
#[derive(Default)]
struct HeaderCarrier {
    traceparent: Option<String>,
}

impl Injector for HeaderCarrier {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.traceparent = Some(value);
        }
    }
}

impl Extractor for HeaderCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT)
            .then_some(self.traceparent.as_deref())
            .flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}
