//! Builds the api from settings: `Application::build(settings)`, then
//! `run_until_stopped(shutdown)`. `main.rs` and the tests start exactly this.
//!
//! Shutdown, in order: `/readyz` turns 503 (`draining`) so the balancer stops
//! routing here; after `http.drain_delay_ms` the listener closes and
//! in-flight requests get `http.shutdown_timeout_secs` to finish (each waits
//! at most one delivery timeout for its report); the strategy drains what it
//! holds (the async queue, within `queue.drain_timeout_ms`); the producer is
//! flushed, so every message it still holds gets its report; and background
//! work settling those reports finishes before exit.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, Service};
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use common::redis_state::{CampaignMetas, Gate, RedisClient, Rooms, StatusRecords};
use common::settings::Settings;
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::campaigns::CampaignStore;
use crate::idempotency::IdempotencyStore;
use crate::metrics::ApiMetrics;
use crate::producer::IssueProducer;
use crate::rate_limit::{Limiter, TrustedProxies};
use crate::state::AppState;
use crate::strategy::{Issuance, Strategy};

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    drain_delay: Duration,
    queue_drain: Duration,
    flush_timeout: Duration,
    housekeeping: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Needs no dependency to start: Redis connections are opened here if
    /// Redis answers (else on demand), PostgreSQL and Kafka connections on
    /// first use, so the api starts (and answers 503) while a dependency is
    /// still coming up.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.require_api_secrets()?;
        let metrics = ApiMetrics::new();
        metrics
            .info
            .with_label_values(&[settings.strategy.as_str(), env!("CARGO_PKG_VERSION")])
            .set(1);

        let redis = RedisClient::new(
            &settings.redis,
            Some(metrics.redis_pool_wait_seconds.clone()),
        )?;
        // A failure is logged with the other dependencies' below.
        let _ = redis.warm_up().await;
        let db = common::db::connect(&settings.database).await?;
        let gate = Gate::new(redis.clone());
        let campaigns = Arc::new(CampaignStore::new(
            db,
            CampaignMetas::new(redis.clone()),
            gate.clone(),
            Duration::from_millis(settings.database.statement_timeout_ms),
        ));
        crate::faults::warn_if_ignored(&settings.faults);
        let producer = Arc::new(IssueProducer::new(&settings.kafka, metrics.kafka.clone())?);
        let issuance = Arc::new(Issuance::new(
            gate,
            StatusRecords::new(redis.clone(), settings.redis.status_ttl_secs),
            producer.clone(),
            campaigns.clone(),
            metrics.clone(),
            settings.strategy,
            settings.faults.clone(),
        ));
        let state = web::Data::new(AppState {
            strategy: Arc::new(Strategy::build(&settings, issuance.clone(), &redis)),
            idempotency: IdempotencyStore::new(
                redis.clone(),
                settings.idempotency.ttl_secs,
                settings.longest_request().as_secs(),
                metrics.clone(),
            ),
            issuance,
            rooms: Rooms::new(redis.clone()),
            redis,
            producer,
            campaigns,
            limiter: Limiter::new(&settings.rate_limit.per_user),
            ip_limiter: Limiter::new(&settings.rate_limit.per_ip),
            trusted_proxies: TrustedProxies::parse(&settings.rate_limit.trusted_proxies)?,
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                settings.http.max_in_flight.max(1),
            )),
            metrics: metrics.clone(),
            draining: AtomicBool::new(false),
        });
        // Boxed: the three probes would make this future too large to
        // keep on the caller's stack (clippy::large_futures).
        Box::pin(crate::readiness::Readiness::probe(&state))
            .await
            .log();
        let auth = web::Data::new(Authenticator::new(
            &settings.auth,
            metrics.jwt_verify_seconds.clone(),
        )?);

        let housekeeping = tokio::spawn({
            let state = state.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tick.tick().await;
                    state.limiter.forget_idle();
                    state.ip_limiter.forget_idle();
                }
            }
        });

        let address = format!("{}:{}", settings.http.host, settings.http.port);
        let listener = TcpListener::bind(&address).with_context(|| format!("binding {address}"))?;
        let port = listener.local_addr()?.port();
        let body_limit = settings.http.body_limit_bytes;
        let server_state = state.clone();
        let access_log = settings.log.access;
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap_fn(move |req, srv| {
                    let metrics = req
                        .app_data::<web::Data<AppState>>()
                        .map(|s| s.metrics.clone());
                    let method = req.method().clone();
                    let started = Instant::now();
                    if let Some(m) = &metrics {
                        m.in_flight.inc();
                    }
                    // Every log line of the request carries its id.
                    let request_id = crate::request_id::of(req.request());
                    let span = crate::request_id::span(req.request(), &request_id);
                    let response = srv.call(req).instrument(span.clone());
                    async move {
                        // Every route turns its errors into replies, so an
                        // `Err` here is actix's own (it answers it itself).
                        let mut res = response.await?;
                        res.headers_mut()
                            .insert(crate::request_id::X_REQUEST_ID, request_id);
                        let route = res.request().match_pattern();
                        let route = route.as_deref().unwrap_or("unmatched");
                        let status = res.status();
                        let took = started.elapsed();
                        if let Some(m) = metrics {
                            m.in_flight.dec();
                            let labels = [route, method.as_str(), status.as_str()];
                            m.requests.with_label_values(&labels).inc();
                            m.request_seconds
                                .with_label_values(&labels)
                                .observe(took.as_secs_f64());
                        }
                        if access_log {
                            let outcome = res
                                .response()
                                .extensions()
                                .get::<crate::error::ReplyOutcome>()
                                .map_or("-", |o| o.0);
                            span.in_scope(|| {
                                tracing::info!(
                                    target: "access",
                                    method = method.as_str(),
                                    route,
                                    status = status.as_u16(),
                                    outcome,
                                    latency_ms = took.as_secs_f64() * 1000.0,
                                    "request served"
                                );
                            });
                        }
                        Ok(res)
                    }
                })
                .app_data(server_state.clone())
                .app_data(auth.clone())
                .configure(crate::routes::configure(body_limit))
        })
        .max_connections(settings.http.max_connections)
        .keep_alive(Duration::from_secs(settings.http.keep_alive_secs))
        .shutdown_timeout(settings.http.shutdown_timeout_secs)
        .disable_signals();
        if settings.http.workers > 0 {
            server = server.workers(settings.http.workers);
        }
        let server = server.listen(listener)?.run();
        tracing::info!(port, strategy = settings.strategy.as_str(), "api listening");

        Ok(Self {
            port,
            server,
            state,
            drain_delay: Duration::from_millis(settings.http.drain_delay_ms),
            queue_drain: Duration::from_millis(settings.queue.drain_timeout_ms),
            flush_timeout: settings.kafka.delivery_timeout() + Duration::from_secs(1),
            housekeeping,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves, then drains (see the module docs).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        tokio::select! {
            result = &mut server => {
                self.housekeeping.abort();
                return result.context("server task")?.context("http server");
            }
            () = shutdown => {}
        }
        tracing::info!("draining: readiness now reports 503");
        self.state.start_draining();
        tokio::time::sleep(self.drain_delay).await;
        handle.stop(true).await;
        let served = server.await;
        self.housekeeping.abort();
        self.state
            .strategy
            .drain(Instant::now() + self.queue_drain)
            .await;
        let producer = self.state.producer.clone();
        let timeout = self.flush_timeout;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("producer flushed"),
            Ok(Err(e)) => tracing::error!(error = %e, "producer flush incomplete"),
            Err(e) => tracing::error!(error = %e, "producer flush task failed"),
        }
        if !self
            .state
            .issuance
            .wait_for_background(Instant::now() + self.flush_timeout)
            .await
        {
            tracing::error!("background settling did not finish; reconciliation settles the rest");
        }
        tracing::info!("stopped");
        served.context("server task")?.context("http server")
    }
}
