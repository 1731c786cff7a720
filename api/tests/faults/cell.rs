//! A cell: a whole deployment of the engine for one fault, on services of
//! its own (Redis, PostgreSQL and the broker on spare ports) and with real
//! api and worker processes, so that a fault can kill, stop or restart any
//! of them without touching another test.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::testkit::{
    OwnBroker, OwnPostgres, OwnRedis, db_at, signal_quietly, spare_port, wait_for_port,
};
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

/// The processes of a cell sit behind locks, so that a fault campaign can
/// kill, freeze and restart them from several tasks at once (`&self`).
pub struct Cell {
    pub redis: OwnRedis,
    pub pg: OwnPostgres,
    pub broker: OwnBroker,
    pub db: DatabaseConnection,
    env: Vec<(String, String)>,
    pub api_ports: Vec<u16>,
    /// Each api's ops listener (`/readyz`, `/metrics`).
    pub ops_ports: Vec<u16>,
    apis: Vec<Mutex<Option<Child>>>,
    /// Each worker's port and process.
    workers: Mutex<Vec<(u16, Option<Child>)>>,
    /// Where the processes' output goes (`api-<i>.log`, `worker-<i>.log`);
    /// `None`: discarded.
    logs: Option<PathBuf>,
    pub admin: AdminClient,
    pub minter: Minter,
}

/// How [`Cell::start_with`] sets a cell up.
#[derive(Debug, Default)]
pub struct CellOptions<'a> {
    pub apis: usize,
    pub workers: usize,
    /// Settings for every process.
    pub extra: &'a [(&'a str, &'a str)],
    /// Redis with its append-only file and this `appendfsync`, as deployed
    /// (`None`: a Redis that keeps nothing, so a restart comes back empty).
    pub redis_fsync: Option<&'a str>,
    /// A directory for the processes' output.
    pub logs: Option<PathBuf>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cell {
    /// Services of its own, the schema and topics, `apis` api processes and
    /// `workers` worker processes; `extra` settings for every process.
    pub async fn start(apis: usize, workers: usize, extra: &[(&str, &str)]) -> Self {
        Self::start_with(CellOptions {
            apis,
            workers,
            extra,
            ..CellOptions::default()
        })
        .await
    }

    /// [`Cell::start`] with every option.
    pub async fn start_with(options: CellOptions<'_>) -> Self {
        let CellOptions {
            apis,
            workers,
            extra,
            redis_fsync,
            logs,
        } = options;
        let redis = match redis_fsync {
            Some(fsync) => OwnRedis::start_persistent(fsync),
            None => OwnRedis::start(),
        };
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
        if let Some(dir) = &logs {
            std::fs::create_dir_all(dir).expect("the log directory");
            env.push(("NO_COLOR".into(), "1".into()));
        }
        let cell = Self {
            redis,
            pg,
            broker,
            db,
            env,
            api_ports,
            ops_ports,
            apis: (0..apis).map(|_| Mutex::new(None)).collect(),
            workers: Mutex::new((0..workers).map(|_| (spare_port(), None)).collect()),
            logs,
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

    /// Where a process's output goes: `<name>.log` in the log directory
    /// (appended, so a restarted process adds to it), else nowhere.
    fn output(&self, name: &str) -> (Stdio, Stdio) {
        let Some(dir) = &self.logs else {
            return (Stdio::null(), Stdio::inherit());
        };
        // (The processes' logs carry no colours when NO_COLOR is set:
        // `Cell::start_with` sets it with a log directory.)
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .expect("a log file");
        (file.try_clone().expect("a log file").into(), file.into())
    }

    /// Starts api `i`. One still running in its place is killed first: a
    /// process the cell lost track of would keep its port, and every later
    /// start would fail to bind.
    pub fn spawn_api(&self, i: usize, extra: &[(&str, &str)]) {
        if let Some(mut old) = lock(&self.apis[i]).take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let (stdout, stderr) = self.output(&format!("api-{i}"));
        let child = Command::new(env!("CARGO_BIN_EXE_api"))
            .envs(self.env.iter().cloned())
            .envs(extra.iter().map(|(k, v)| (*k, *v)))
            .env("APP_HTTP__PORT", self.api_ports[i].to_string())
            .env("APP_HTTP__OPS_PORT", self.ops_ports[i].to_string())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start api");
        *lock(&self.apis[i]) = Some(child);
    }

    /// Sends `sig` (`-TERM`, `-KILL`) to api `i` and waits for it to exit.
    pub fn stop_api(&self, i: usize, sig: &str) -> ExitStatus {
        self.stop_api_if_running(i, sig).expect("api running")
    }

    /// [`Cell::stop_api`] of an api that may not run: `None` then. A frozen
    /// api is thawed after the signal, so that it can act on it.
    pub fn stop_api_if_running(&self, i: usize, sig: &str) -> Option<ExitStatus> {
        let child = lock(&self.apis[i]).take();
        child.map(|mut child| {
            signal_quietly(child.id(), sig);
            signal_quietly(child.id(), "-CONT");
            child.wait().expect("api exit")
        })
    }

    /// The pid of api `i`, if it runs.
    pub fn api_pid(&self, i: usize) -> Option<u32> {
        lock(&self.apis[i]).as_ref().map(Child::id)
    }

    /// Whether api `i` has exited (a crash), reaping it.
    pub fn api_exited(&self, i: usize) -> bool {
        let mut api = lock(&self.apis[i]);
        match api.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                *api = None;
                true
            }
            None => true,
            _ => false,
        }
    }

    /// Starts worker `i` (one still running in its place is killed first,
    /// as for [`Cell::spawn_api`]).
    pub fn spawn_worker(&self, i: usize, extra: &[(&str, &str)]) {
        let mut workers = lock(&self.workers);
        if i >= workers.len() {
            workers.resize_with(i + 1, || (spare_port(), None));
        }
        if let Some(mut old) = workers[i].1.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let (stdout, stderr) = self.output(&format!("worker-{i}"));
        let child = Command::new(binary("issuer-worker"))
            .arg("run")
            .envs(self.env.iter().cloned())
            .envs(extra.iter().map(|(k, v)| (*k, *v)))
            .env("APP_WORKER__HTTP_PORT", workers[i].0.to_string())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start worker");
        workers[i].1 = Some(child);
    }

    pub fn stop_worker(&self, i: usize, sig: &str) {
        let child = lock(&self.workers)[i].1.take();
        if let Some(mut child) = child {
            signal_quietly(child.id(), sig);
            signal_quietly(child.id(), "-CONT");
            let _ = child.wait();
        }
    }

    /// The pid of worker `i`, if it runs.
    pub fn worker_pid(&self, i: usize) -> Option<u32> {
        lock(&self.workers)
            .get(i)
            .and_then(|(_, c)| c.as_ref().map(Child::id))
    }

    /// Whether worker `i` has exited (or never ran), reaping it.
    pub fn worker_exited(&self, i: usize) -> bool {
        let mut workers = lock(&self.workers);
        let Some((_, slot)) = workers.get_mut(i) else {
            return true;
        };
        match slot.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                *slot = None;
                true
            }
            None => true,
            _ => false,
        }
    }

    /// The port of worker `i`'s `/metrics` and `/healthz`.
    pub fn worker_port(&self, i: usize) -> u16 {
        lock(&self.workers)[i].0
    }

    /// A worker's metric (a sample line's value), if the worker answers.
    pub async fn worker_metric(&self, i: usize, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.worker_port(i)))
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
        let output = self.tool_output(args);
        assert!(
            output.status.success(),
            "issuer-worker {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("a JSON report")
    }

    /// `issuer-worker <args>` as it ran, whether it succeeded or not.
    pub fn tool_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary("issuer-worker"))
            .args(args)
            .envs(self.env.iter().cloned())
            .output()
            .expect("issuer-worker")
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
        let mut workers = lock(&self.workers);
        let children = self
            .apis
            .iter_mut()
            .filter_map(|a| a.get_mut().unwrap_or_else(PoisonError::into_inner).take())
            .chain(workers.iter_mut().filter_map(|(_, c)| c.take()));
        for mut child in children {
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
