//! A cell: a whole deployment of the engine for one fault, on services of
//! its own (Redis, PostgreSQL and the broker on spare ports) and with real
//! api and worker processes, so that a fault can kill, stop or restart any
//! of them without touching another test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::testkit::{OwnBroker, OwnPostgres, OwnRedis, db_at, signal, spare_port, wait_for_port};
use ngrinder_equivalent::admin::AdminClient;
use ngrinder_equivalent::token::Minter;
use sea_orm::DatabaseConnection;
use serde_json::Value;

pub const ADMIN_TOKEN: &str = "faults-admin-token-of-thirty-two-bytes";
pub const JWT_SECRET: &str = "faults-jwt-secret-of-thirty-two-bytes";

fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_api")).with_file_name(name);
    assert!(
        path.exists(),
        "{} missing: build it first (cargo build -p issuer-worker)",
        path.display()
    );
    path
}

pub struct Cell {
    pub redis: OwnRedis,
    pub pg: OwnPostgres,
    pub broker: OwnBroker,
    pub db: DatabaseConnection,
    env: Vec<(String, String)>,
    pub api_ports: Vec<u16>,
    /// Each api's ops listener (`/readyz`, `/metrics`).
    pub ops_ports: Vec<u16>,
    apis: Vec<Option<Child>>,
    pub worker_ports: Vec<u16>,
    workers: Vec<Option<Child>>,
    pub admin: AdminClient,
    pub minter: Minter,
}

impl Cell {
    /// Services of its own, the schema and topics, `apis` api processes and
    /// `workers` worker processes; `extra` settings for every process.
    pub async fn start(apis: usize, workers: usize, extra: &[(&str, &str)]) -> Self {
        let redis = OwnRedis::start();
        let pg = OwnPostgres::start();
        let broker = OwnBroker::start();
        let mut env: Vec<(String, String)> = vec![
            ("APP_DATABASE__URL".into(), pg.url()),
            ("APP_REDIS__URL".into(), redis.url()),
            ("APP_KAFKA__BROKERS".into(), broker.address()),
            ("APP_KAFKA__PARTITIONS".into(), "6".into()),
            ("APP_KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()),
            ("APP_AUTH__ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            ("APP_AUTH__JWT_SECRET".into(), JWT_SECRET.into()),
            ("APP_RATE_LIMIT__PER_USER__ENABLED".into(), "false".into()),
            ("APP_HTTP__WORKERS".into(), "2".into()),
            ("APP_LOG__FILTER".into(), "warn".into()),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let status = Command::new(binary("issuer-worker"))
            .arg("migrate")
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .status()
            .expect("migrate");
        assert!(status.success(), "migrate failed");
        let db = db_at(&pg.url()).await;
        let api_ports: Vec<u16> = (0..apis).map(|_| spare_port()).collect();
        let ops_ports: Vec<u16> = (0..apis).map(|_| spare_port()).collect();
        let admin = AdminClient::new(&format!("http://127.0.0.1:{}", api_ports[0]), ADMIN_TOKEN)
            .expect("admin client");
        let mut cell = Self {
            redis,
            pg,
            broker,
            db,
            env,
            api_ports,
            ops_ports,
            apis: (0..apis).map(|_| None).collect(),
            worker_ports: (0..workers).map(|_| spare_port()).collect(),
            workers: (0..workers).map(|_| None).collect(),
            admin,
            minter: Minter::new(JWT_SECRET, 7_200).expect("minter"),
        };
        for i in 0..apis {
            cell.spawn_api(i, &[]);
        }
        for i in 0..workers {
            cell.spawn_worker(i, &[]);
        }
        for &port in &cell.ops_ports {
            wait_ready(port).await;
        }
        cell
    }

    pub fn targets(&self) -> Vec<String> {
        self.api_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    pub fn spawn_api(&mut self, i: usize, extra: &[(&str, &str)]) {
        let child = Command::new(env!("CARGO_BIN_EXE_api"))
            .envs(self.env.iter().cloned())
            .envs(extra.iter().map(|(k, v)| (*k, *v)))
            .env("APP_HTTP__PORT", self.api_ports[i].to_string())
            .env("APP_HTTP__OPS_PORT", self.ops_ports[i].to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start api");
        self.apis[i] = Some(child);
    }

    /// Sends `sig` (`-TERM`, `-KILL`) to api `i` and waits for it to exit.
    pub fn stop_api(&mut self, i: usize, sig: &str) -> std::process::ExitStatus {
        let mut child = self.apis[i].take().expect("api running");
        signal(child.id(), sig);
        child.wait().expect("api exit")
    }

    /// Whether api `i` has exited (a crash), reaping it.
    pub fn api_exited(&mut self, i: usize) -> bool {
        match self.apis[i].as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                self.apis[i] = None;
                true
            }
            None => true,
            _ => false,
        }
    }

    pub fn spawn_worker(&mut self, i: usize, extra: &[(&str, &str)]) {
        if i >= self.workers.len() {
            self.workers.resize_with(i + 1, || None);
            self.worker_ports.resize_with(i + 1, spare_port);
        }
        let child = Command::new(binary("issuer-worker"))
            .arg("run")
            .envs(self.env.iter().cloned())
            .envs(extra.iter().map(|(k, v)| (*k, *v)))
            .env("APP_WORKER__HTTP_PORT", self.worker_ports[i].to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start worker");
        self.workers[i] = Some(child);
    }

    pub fn stop_worker(&mut self, i: usize, sig: &str) {
        if let Some(mut child) = self.workers[i].take() {
            signal(child.id(), sig);
            let _ = child.wait();
        }
    }

    /// A worker's metric (a sample line's value), if the worker answers.
    pub async fn worker_metric(&self, i: usize, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.worker_ports[i]))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Waits until worker `i` holds partitions (its first assignment: on a
    /// fresh broker the group coordinator's topic is created first, which
    /// takes seconds on a busy machine). How long it waited.
    pub async fn wait_assigned(&self, i: usize) -> Duration {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        while self
            .worker_metric(i, "worker_assigned_partitions")
            .await
            .unwrap_or(0.0)
            < 1.0
        {
            assert!(
                Instant::now() < deadline,
                "worker {i} had no partitions after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        started.elapsed()
    }

    /// `issuer-worker <args>` (reconcile, rebuild); its JSON report.
    pub fn tool(&self, args: &[&str]) -> Value {
        let output = Command::new(binary("issuer-worker"))
            .args(args)
            .envs(self.env.iter().cloned())
            .output()
            .expect("issuer-worker");
        assert!(
            output.status.success(),
            "issuer-worker {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("a JSON report")
    }

    /// A new campaign with `stock`; its id.
    pub async fn campaign(&self, stock: i64) -> String {
        self.admin
            .create_campaign("fault", stock, None)
            .await
            .expect("campaign")
            .id
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        for child in self
            .apis
            .iter_mut()
            .chain(self.workers.iter_mut())
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until the api whose ops listener is `port` answers `/readyz` 200.
pub async fn wait_ready(port: u16) {
    wait_for_port(port, Duration::from_secs(30), "api");
    let started = Instant::now();
    loop {
        let last = match reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "api on {port} not ready; /readyz said {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
