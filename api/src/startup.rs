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

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use common::redis_state::{CampaignMetas, Gate, RedisClient, Rooms, StatusRecords};
use common::settings::Settings;

use crate::auth::Authenticator;
use crate::campaigns::CampaignStore;
use crate::idempotency::IdempotencyStore;
use crate::metrics::ApiMetrics;
use crate::producer::IssueProducer;
use crate::rate_limit::{Limiter, TrustedProxies};
use crate::state::AppState;
use crate::strategy::gate_batch::GateBatches;
use crate::strategy::{Issuance, Strategy};

pub struct Application {
    port: u16,
    ops_port: u16,
    server: Server,
    ops: Server,
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
        let db = common::db::connect(
            &settings.database,
            Duration::from_millis(settings.database.statement_timeout_ms),
        )
        .await?;
        let gate = Gate::new(redis.clone());
        let campaigns = Arc::new(CampaignStore::new(
            db,
            redis.clone(),
            CampaignMetas::new(redis.clone()),
            gate.clone(),
            Rooms::new(redis.clone()),
            Duration::from_millis(settings.database.statement_timeout_ms),
        ));
        crate::faults::warn_if_ignored(&settings.faults);
        let producer = Arc::new(IssueProducer::new(
            &settings.kafka,
            metrics.kafka.clone(),
            crate::strategy::report_wait(settings.strategy),
        )?);
        let gate_batches = GateBatches::new(
            gate,
            metrics.gate_batch_takes.clone(),
            settings.gate.batch_size,
            settings.gate.calls_out,
            settings.redis.longest_call(),
        );
        let issuance = Arc::new(Issuance::new(
            gate_batches,
            StatusRecords::new(redis.clone(), settings.redis.status_ttl_secs),
            producer.clone(),
            campaigns.clone(),
            metrics.clone(),
            settings.strategy,
            settings.faults.clone(),
        ));
        // The records' own Redis, if they have one (idempotency.redis).
        let records_redis = match &settings.idempotency.redis {
            Some(own) => RedisClient::new(own, None)?,
            None => redis.clone(),
        };
        let state = web::Data::new(AppState {
            strategy: Arc::new(Strategy::build(&settings, issuance.clone(), &redis)),
            idempotency: IdempotencyStore::new(
                records_redis,
                &settings.idempotency,
                settings.longest_request().as_secs(),
                metrics.clone(),
            ),
            issuance,
            rooms: Rooms::new(redis.clone()),
            redis,
            producer,
            campaigns,
            limiter: Limiter::new(&settings.rate_limit.per_user),
            read_limiter: Limiter::new(&settings.rate_limit.per_user_reads),
            ip_limiter: Limiter::new(&settings.rate_limit.per_ip),
            trusted_proxies: TrustedProxies::parse(&settings.rate_limit.trusted_proxies)?,
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                settings.http.max_in_flight.max(1),
            )),
            metrics: metrics.clone(),
            access_log: settings.log.access,
            readiness: Default::default(),
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
                    state.read_limiter.forget_idle();
                    state.ip_limiter.forget_idle();
                }
            }
        });

        let address = format!("{}:{}", settings.http.host, settings.http.port);
        let listener = TcpListener::bind(&address).with_context(|| format!("binding {address}"))?;
        let port = listener.local_addr()?.port();
        let ops_address = format!("{}:{}", settings.http.host, settings.http.ops_port);
        let ops_listener =
            TcpListener::bind(&ops_address).with_context(|| format!("binding {ops_address}"))?;
        let ops_port = ops_listener.local_addr()?.port();
        let body_limit = settings.http.body_limit_bytes;
        let room_page = crate::routes::page::RoomPage::new(&settings.http)?;
        let server_state = state.clone();
        let mut server = HttpServer::new(move || {
            // Runs on each worker thread; the first serves the reports.
            server_state.producer.serve_reports_here();
            App::new()
                .wrap(actix_web::middleware::from_fn(crate::middleware::observe))
                .wrap(actix_web::middleware::from_fn(
                    crate::middleware::known_methods,
                ))
                .app_data(server_state.clone())
                .app_data(auth.clone())
                .configure(crate::routes::configure(body_limit, room_page.clone()))
        })
        .max_connections(settings.http.max_connections)
        .keep_alive(Duration::from_secs(settings.http.keep_alive_secs))
        .shutdown_timeout(settings.http.shutdown_timeout_secs)
        .disable_signals();
        if settings.http.workers > 0 {
            server = server.workers(settings.http.workers);
        }
        let server = server.listen(listener)?.run();
        // The ops listener (/healthz, /readyz, /metrics): one thread, never
        // behind the public balancer, open until the very end of shutdown so
        // that readiness says `draining` meanwhile.
        let ops_state = state.clone();
        let ops = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(
                    crate::middleware::known_methods,
                ))
                .app_data(ops_state.clone())
                .configure(crate::routes::ops::configure)
        })
        .workers(1)
        .disable_signals()
        .listen(ops_listener)?
        .run();
        tracing::info!(
            port,
            ops_port,
            strategy = settings.strategy.as_str(),
            "api listening"
        );

        Ok(Self {
            port,
            ops_port,
            server,
            ops,
            state,
            drain_delay: Duration::from_millis(settings.http.drain_delay_ms),
            queue_drain: Duration::from_millis(settings.queue.drain_timeout_ms),
            flush_timeout: settings.kafka.delivery_timeout() + Duration::from_secs(1),
            housekeeping,
        })
    }

    /// The public listener's port (the API).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The ops listener's port (`/healthz`, `/readyz`, `/metrics`).
    pub fn ops_port(&self) -> u16 {
        self.ops_port
    }

    /// Serves until `shutdown` resolves, then drains (see the module docs).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let ops_handle = self.ops.handle();
        let ops = tokio::spawn(self.ops);
        let mut server = tokio::spawn(self.server);
        tokio::select! {
            result = &mut server => {
                self.housekeeping.abort();
                ops_handle.stop(false).await;
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
        ops_handle.stop(true).await;
        let _ = ops.await;
        tracing::info!("stopped");
        served.context("server task")?.context("http server")
    }
}
