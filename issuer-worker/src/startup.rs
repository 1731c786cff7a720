//! Builds the worker and its operations server from settings.

use std::net::TcpListener;

use anyhow::Context;
use common::settings::Settings;
use tokio_util::sync::CancellationToken;

use crate::consumer::Worker;
use crate::metrics::WorkerMetrics;

pub struct Application {
    worker: Worker,
    http: actix_web::dev::Server,
    http_port: u16,
    ledger: tokio::task::JoinHandle<()>,
    keeper: tokio::task::JoinHandle<()>,
    keeper_stop: CancellationToken,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("worker", &self.worker)
            .field("http_port", &self.http_port)
            .finish_non_exhaustive()
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = common::db::connect(
            &settings.database,
            std::time::Duration::from_millis(settings.worker.batch_timeout_ms),
        )
        .await?;
        let metrics = WorkerMetrics::new();
        let ledger = tokio::spawn(crate::ledger::run(
            db.clone(),
            common::redis_state::Gate::new(common::redis_state::RedisClient::new(
                &settings.redis,
                None,
            )?),
            metrics.campaigns_taken.clone(),
            metrics.campaigns_persisted.clone(),
        ));
        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(crate::keeper::run(
            settings.clone(),
            db.clone(),
            metrics.clone(),
            keeper_stop.clone(),
        ));
        let worker = Worker::new(&settings, db, metrics.clone())?;
        let address = format!(
            "{}:{}",
            settings.worker.http_host, settings.worker.http_port
        );
        let listener = TcpListener::bind(&address).with_context(|| format!("binding {address}"))?;
        let http_port = listener.local_addr()?.port();
        let http = crate::http::serve(listener, metrics.registry.clone())?;
        Ok(Self {
            worker,
            http,
            http_port,
            ledger,
            keeper,
            keeper_stop,
        })
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Runs until `shutdown` is cancelled; then drains (see [`Worker::run`]).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let handle = self.http.handle();
        let http = tokio::spawn(self.http);
        let result = self.worker.run(shutdown).await;
        self.ledger.abort();
        // A rebuild in progress is left: the campaign stays fenced, and the
        // next keeper rebuilds it.
        self.keeper_stop.cancel();
        let _ = self.keeper.await;
        handle.stop(true).await;
        let _ = http.await;
        result
    }
}
