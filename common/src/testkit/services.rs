//! Services of a test's own, on spare ports and temporary directories, so
//! that stopping, freezing or restarting one affects no other test.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{spare_cluster_port, spare_port, temp_dir, wait_for_port, wait_for_port_or};

/// An Apache Kafka broker of the test's own (one KRaft node, its data in a
/// temporary directory), so that stopping or freezing it affects no other
/// test.
#[derive(Debug)]
pub struct OwnBroker {
    pub port: u16,
    controller_port: u16,
    dir: PathBuf,
    /// Behind a lock so that a fault campaign can stop and start it from
    /// several tasks ([`OwnBroker::launch`], [`OwnBroker::sigkill`], …).
    child: Mutex<Option<Child>>,
    /// `Some` for [`OwnBroker::start_secured`].
    pub secured: Option<SecuredListeners>,
}

/// The TLS listeners of [`OwnBroker::start_secured`], beside its plaintext
/// one: `SSL` (server certificate only) and `SASL_SSL` with a SCRAM-SHA-512
/// user and a PLAIN user ([`KAFKA_USER`], [`KAFKA_PASSWORD`] for both).
#[derive(Debug, Clone, Copy)]
pub struct SecuredListeners {
    pub ssl_port: u16,
    pub sasl_ssl_port: u16,
}

pub const KAFKA_USER: &str = "coupon-engine";
pub const KAFKA_PASSWORD: &str = "kafka-password-of-the-tests";

impl OwnBroker {
    pub fn start() -> Self {
        let mut broker = Self {
            port: spare_port(),
            controller_port: spare_port(),
            dir: temp_dir("broker"),
            child: Mutex::new(None),
            secured: None,
        };
        broker.restart();
        broker
    }

    /// A broker with TLS listeners whose certificate `ca` signed (the key
    /// store and trust store are PEM files, which Kafka reads since 2.7):
    /// what a managed Kafka offers, for the clients' TLS and SASL settings.
    pub fn start_secured(ca: &super::tls::TestCa) -> Self {
        let server = ca.issue("kafka");
        let secured = SecuredListeners {
            ssl_port: spare_port(),
            sasl_ssl_port: spare_port(),
        };
        let mut broker = Self {
            port: spare_port(),
            controller_port: spare_port(),
            dir: temp_dir("broker"),
            child: Mutex::new(None),
            secured: Some(secured),
        };
        let (p, c) = (broker.port, broker.controller_port);
        let (s, t) = (secured.ssl_port, secured.sasl_ssl_port);
        let properties = format!(
            "listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c},SSL://127.0.0.1:{s},SASL_SSL://127.0.0.1:{t}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c},SSL://127.0.0.1:{s},SASL_SSL://127.0.0.1:{t}\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL\n\
             ssl.keystore.type=PEM\n\
             ssl.keystore.location={keystore}\n\
             ssl.truststore.type=PEM\n\
             ssl.truststore.location={truststore}\n\
             sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN\n\
             listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
             listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_{KAFKA_USER}=\"{KAFKA_PASSWORD}\";\n",
            keystore = server.key_and_cert.display(),
            truststore = ca.cert().display(),
        );
        std::fs::write(broker.dir.join("extra.properties"), properties).unwrap();
        broker.restart();
        broker
    }

    /// `host:port` of the SSL (`sasl == false`) or SASL_SSL listener.
    pub fn secured_address(&self, sasl: bool) -> String {
        let l = self.secured.expect("a broker from start_secured");
        format!(
            "127.0.0.1:{}",
            if sasl { l.sasl_ssl_port } else { l.ssl_port }
        )
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the broker process on the same ports and data.
    pub fn restart(&mut self) {
        self.launch();
    }

    /// [`OwnBroker::restart`] through a shared reference: stops a process
    /// still running first (kill -9), then starts one on the same ports and
    /// data and waits until it listens.
    pub fn launch(&self) {
        self.sigkill();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .unwrap();
        // `scripts/kafka run` execs the JVM: the child's pid is the broker's.
        let mut command = Command::new(script);
        if self.secured.is_some() {
            command
                .env("KAFKA_EXTRA_PROPERTIES", self.dir.join("extra.properties"))
                .env(
                    "KAFKA_FORMAT_ARGS",
                    format!(
                        "--add-scram SCRAM-SHA-512=[name={KAFKA_USER},password={KAFKA_PASSWORD}]"
                    ),
                );
        }
        let child = command
            .arg("run")
            .arg(self.dir.join("kafka"))
            .arg(self.port.to_string())
            .arg(self.controller_port.to_string())
            .env("KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m")
            // The client JIT only: a start costs about 5 s of CPU instead of
            // 9, which the tests running beside it need more than the
            // broker's peak throughput.
            .env("KAFKA_JVM_OPTS", "-XX:TieredStopAtLevel=1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the broker (scripts/kafka run)");
        *lock(&self.child) = Some(child);
        self.wait_listening(Duration::from_secs(90));
    }

    /// Waits for the broker's port; fails at once, with its log, if the
    /// process exits first (a bad config or data directory).
    fn wait_listening(&self, within: Duration) {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = lock(&self.child)
                .as_mut()
                .and_then(|c| c.try_wait().unwrap());
            if let Some(status) = exited {
                let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
                panic!("the broker exited ({status}) before it listened:\n{log}");
            }
            assert!(
                started.elapsed() < within,
                "the broker did not open port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        self.sigkill();
    }

    /// [`OwnBroker::kill`] through a shared reference: kill -9, reaped.
    pub fn sigkill(&self) {
        let child = lock(&self.child).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (a controlled shutdown), then waits for the process to exit;
    /// its exit status, or `None` if it was not running. A frozen broker is
    /// thawed first, or it would never see the signal.
    pub fn terminate(&self) -> Option<std::process::ExitStatus> {
        let child = lock(&self.child).take();
        child.map(|mut child| {
            signal_quietly(child.id(), "-CONT");
            signal_quietly(child.id(), "-TERM");
            child.wait().unwrap()
        })
    }

    /// Whether the broker process runs (reaping it if it exited).
    pub fn is_running(&self) -> bool {
        running(&self.child)
    }

    /// SIGSTOP / SIGCONT: the broker keeps its connections but answers nothing.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = lock(&self.child).as_ref() {
            signal_quietly(child.id(), if frozen { "-STOP" } else { "-CONT" });
        }
    }

    /// The broker's data and log directory (its log is `broker.log`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.freeze(false);
        self.kill();
        if std::thread::panicking() {
            // Keep the broker's side of a failed test.
            let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
            let tail: Vec<_> = log.lines().rev().take(300).collect();
            eprintln!("--- own broker log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// [`signal`] to a process that may have exited meanwhile: whether it was
/// delivered.
pub fn signal_quietly(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the child in `slot` still runs; an exited one is reaped and
/// removed.
fn running(slot: &Mutex<Option<Child>>) -> bool {
    let mut slot = lock(slot);
    match slot.as_mut().map(Child::try_wait) {
        Some(Ok(None)) => true,
        Some(_) => {
            *slot = None;
            false
        }
        None => false,
    }
}

/// A Redis of the test's own on a spare port. [`OwnRedis::start`] keeps
/// nothing on disk: a restart comes back empty, as a Redis that lost its
/// state would. [`OwnRedis::start_persistent`] runs as a deployment does,
/// with its append-only file: a restart (after kill -9 too) reloads it.
#[derive(Debug)]
pub struct OwnRedis {
    pub port: u16,
    child: Mutex<Option<Child>>,
    /// `--tls-*` arguments: TLS only (no plaintext port).
    tls: Vec<String>,
    /// The persistence arguments (`--save "" --appendonly no` without).
    persistence: Vec<String>,
    /// The data directory of a persistent Redis, removed on drop.
    dir: Option<PathBuf>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let redis = Self {
            port: spare_port(),
            child: Mutex::new(None),
            tls: Vec::new(),
            persistence: not_persistent(),
            dir: None,
        };
        redis.launch();
        redis
    }

    /// A Redis with the persistence of a deployment: AOF on
    /// (`appendonly yes`), `appendfsync` = `fsync` (`always`, `everysec`,
    /// `no`), in a data directory of its own; a restart reloads the AOF.
    /// With `everysec` a kill -9 can lose the last second of writes.
    pub fn start_persistent(fsync: &str) -> Self {
        let dir = temp_dir("redis");
        let redis = Self {
            port: spare_port(),
            child: Mutex::new(None),
            tls: Vec::new(),
            persistence: vec![
                "--dir".into(),
                dir.display().to_string(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                fsync.into(),
            ],
            dir: Some(dir),
        };
        redis.launch();
        redis
    }

    /// A Redis that speaks TLS only, with a certificate `ca` signed; with
    /// `client_auth`, it also asks clients for a certificate from `ca`.
    pub fn start_tls(ca: &super::tls::TestCa, client_auth: bool) -> Self {
        let server = ca.issue("redis");
        let path = |p: &std::path::Path| p.display().to_string();
        let redis = Self {
            port: spare_port(),
            child: Mutex::new(None),
            persistence: not_persistent(),
            dir: None,
            tls: vec![
                "--tls-cert-file".into(),
                path(&server.cert),
                "--tls-key-file".into(),
                path(&server.key),
                "--tls-ca-cert-file".into(),
                path(&ca.cert()),
                "--tls-auth-clients".into(),
                if client_auth { "yes" } else { "no" }.into(),
            ],
        };
        redis.launch();
        redis
    }

    /// `redis://` (or `rediss://` for [`OwnRedis::start_tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_empty() {
            "redis"
        } else {
            "rediss"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it: empty, or from its AOF when persistent.
    pub fn restart(&mut self) {
        self.launch();
    }

    /// [`OwnRedis::restart`] through a shared reference: kill -9 of a
    /// process still running, then a new one on the same port.
    pub fn launch(&self) {
        self.sigkill();
        let port = self.port.to_string();
        let ports = if self.tls.is_empty() {
            vec!["--port", &port]
        } else {
            vec!["--port", "0", "--tls-port", &port]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(&self.tls)
            .args(&self.persistence)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        *lock(&self.child) = Some(child);
        // A persistent Redis opens its port before it has loaded the AOF
        // (it answers LOADING meanwhile): the port is enough for the
        // clients, which retry.
        wait_for_port(self.port, Duration::from_secs(30), "redis");
    }

    /// `kill -9`: what was not yet written to its file is gone.
    pub fn kill(&mut self) {
        self.sigkill();
    }

    /// [`OwnRedis::kill`] through a shared reference: kill -9, reaped.
    pub fn sigkill(&self) {
        let child = lock(&self.child).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT: connections stay open, nothing is answered.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = lock(&self.child).as_ref() {
            signal_quietly(child.id(), if frozen { "-STOP" } else { "-CONT" });
        }
    }

    /// Whether the server process runs (reaping it if it exited).
    pub fn is_running(&self) -> bool {
        running(&self.child)
    }
}

fn not_persistent() -> Vec<String> {
    ["--save", "", "--appendonly", "no"]
        .map(str::to_owned)
        .to_vec()
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.freeze(false);
        self.sigkill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A three-master Redis Cluster of the test's own, on spare ports.
#[derive(Debug)]
pub struct OwnRedisCluster {
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
    /// [`OwnRedisCluster::start_behind_proxies`]: one proxy per node, the
    /// port each node announces to clients.
    proxies: Vec<CuttingProxy>,
    cut: Arc<CutSwitch>,
}

impl OwnRedisCluster {
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// As [`OwnRedisCluster::start`], each node behind a TCP proxy whose port
    /// it announces (`cluster-announce-port`): clients that follow the
    /// cluster's topology talk to the nodes through the proxies, and
    /// [`OwnRedisCluster::cut_after`] can lose one command's reply.
    pub fn start_behind_proxies() -> Self {
        Self::launch(true)
    }

    fn launch(behind_proxies: bool) -> Self {
        let dir = temp_dir("redis-cluster");
        let ports: Vec<u16> = (0..3).map(|_| spare_cluster_port()).collect();
        let cut = Arc::new(CutSwitch::default());
        let proxies: Vec<CuttingProxy> = if behind_proxies {
            ports
                .iter()
                .map(|port| CuttingProxy::start(*port, cut.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let mut cluster = Self {
            ports: ports.clone(),
            dir: dir.clone(),
            children: Vec::new(),
            proxies,
            cut,
        };
        // Pushed one by one into `cluster`, so that a node that fails to
        // start does not leave the others running (its drop kills them).
        for port in &ports {
            cluster.children.push({
                let node_dir = dir.join(port.to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ])
                    .args(["--save", "", "--appendonly", "no"])
                    .args(["--logfile", "node.log"])
                    .args(cluster.announced(*port))
                    .current_dir(&node_dir)
                    .spawn()
                    .expect("start a cluster node")
            });
            let log = dir.join(port.to_string()).join("node.log");
            wait_for_port_or(*port, Duration::from_secs(10), || {
                format!(
                    "redis cluster node did not open port {port}; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            output.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let started = Instant::now();
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &cluster.ports[0].to_string(), "cluster", "info"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// The arguments that make the node on `port` announce its proxy.
    fn announced(&self, port: u16) -> Vec<String> {
        let Some(i) = self.ports.iter().position(|p| *p == port) else {
            return Vec::new();
        };
        let Some(proxy) = self.proxies.get(i) else {
            return Vec::new();
        };
        [
            "--cluster-announce-ip".to_owned(),
            "127.0.0.1".to_owned(),
            "--cluster-announce-port".to_owned(),
            proxy.port.to_string(),
            "--cluster-announce-bus-port".to_owned(),
            (port + 10_000).to_string(),
        ]
        .into()
    }

    /// `redis.cluster_nodes`: every node's URL (its proxy's, behind
    /// proxies), comma-separated.
    pub fn nodes(&self) -> String {
        let ports: Vec<u16> = if self.proxies.is_empty() {
            self.ports.clone()
        } else {
            self.proxies.iter().map(|p| p.port).collect()
        };
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Behind proxies: the first chunk a client sends through any of them
    /// that holds every needle (case-insensitive) is forwarded, then its
    /// connection is cut before the reply comes back: the command ran on
    /// the node, its reply is lost. Once.
    pub fn cut_after(&self, needles: &[&[u8]]) {
        assert!(!self.proxies.is_empty(), "not started behind proxies");
        *self.cut.dropped.lock().unwrap() = None;
        *self.cut.needles.lock().unwrap() = Some(needles.iter().map(|n| n.to_vec()).collect());
    }

    /// The reply [`OwnRedisCluster::cut_after`]'s last cut kept from the
    /// client (what the node answered the first run), once it was made.
    pub fn cut_reply(&self) -> Option<String> {
        self.cut
            .dropped
            .lock()
            .unwrap()
            .as_deref()
            .map(|reply| String::from_utf8_lossy(reply).into_owned())
    }
}

/// The one cut the proxies of a cluster share (armed with needles, made
/// once), and the reply it kept from the client.
#[derive(Debug, Default)]
struct CutSwitch {
    needles: Mutex<Option<Vec<Vec<u8>>>>,
    dropped: Mutex<Option<Vec<u8>>>,
}

impl CutSwitch {
    /// Whether `chunk` is the one to cut after (and disarms it if so).
    fn takes(&self, chunk: &[u8]) -> bool {
        let mut needles = self.needles.lock().unwrap();
        let hit = needles.as_ref().is_some_and(|needles| {
            needles.iter().all(|needle| {
                chunk
                    .windows(needle.len())
                    .any(|w| w.eq_ignore_ascii_case(needle))
            })
        });
        if hit {
            *needles = None;
        }
        hit
    }
}

/// A TCP proxy on a spare port in front of `upstream` (threads, no
/// runtime: it serves while a test's runtime thread blocks), that cuts a
/// connection after the chunk its [`CutSwitch`] takes.
#[derive(Debug)]
struct CuttingProxy {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl CuttingProxy {
    fn start(upstream: u16, cut: Arc<CutSwitch>) -> Self {
        let port = spare_port();
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                Self::serve(client, server, cut.clone());
            }
        });
        Self { port, stop }
    }

    /// Forwards both ways; after the chunk `cut` takes, no byte of the
    /// server's comes back and both sides are shut.
    fn serve(client: TcpStream, server: TcpStream, cut: Arc<CutSwitch>) {
        let cutting = Arc::new(AtomicBool::new(false));
        let kept = cut.clone();
        let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone())
        else {
            return;
        };
        let up_cutting = cutting.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0_u8; 1 << 16];
            loop {
                let n = match from_client.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                // Marked before the command is written: its reply can then
                // never be forwarded.
                let last = cut.takes(&buf[..n]);
                if last {
                    up_cutting.store(true, Ordering::SeqCst);
                }
                if to_server.write_all(&buf[..n]).is_err() || last {
                    break;
                }
            }
            let _ = to_server.shutdown(std::net::Shutdown::Write);
        });
        std::thread::spawn(move || {
            let (mut from_server, mut to_client) = (server, client);
            let mut buf = vec![0_u8; 1 << 16];
            loop {
                let n = match from_server.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if cutting.load(Ordering::SeqCst) {
                    *kept.dropped.lock().unwrap() = Some(buf[..n].to_vec());
                    break;
                }
                if to_client.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to_client.shutdown(std::net::Shutdown::Both);
            let _ = from_server.shutdown(std::net::Shutdown::Both);
        });
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL cluster of the test's own on a spare port (Debian's
/// binaries), so that stopping it affects no other test.
#[derive(Debug)]
pub struct OwnPostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    frozen: std::sync::atomic::AtomicBool,
    /// Started (not fast-stopped) by [`OwnPostgres::set_running`].
    running: std::sync::atomic::AtomicBool,
    /// Serves TLS with `server.crt` / `server.key` in its directory.
    tls: bool,
}

impl OwnPostgres {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A PostgreSQL that also serves TLS (`ssl=on`), with a certificate
    /// `ca` signed for `localhost` and `127.0.0.1`.
    pub fn start_tls(ca: &super::tls::TestCa) -> Self {
        Self::start_with(Some(ca))
    }

    fn start_with(ca: Option<&super::tls::TestCa>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Debian's PostgreSQL under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb");
        let dir = temp_dir("postgres");
        let pg = Self {
            port: spare_port(),
            dir,
            bin,
            frozen: std::sync::atomic::AtomicBool::new(false),
            running: std::sync::atomic::AtomicBool::new(false),
            tls: ca.is_some(),
        };
        if let Some(ca) = ca {
            let issued = ca.issue("postgres");
            std::fs::copy(&issued.cert, pg.dir.join("server.crt")).unwrap();
            std::fs::copy(&issued.key, pg.dir.join("server.key")).unwrap();
            // PostgreSQL refuses a key that others can read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                pg.dir.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres", &pg.dir.display().to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "chown");
        }
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pg.set_running(true);
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// A PostgreSQL tool, run as the `postgres` user when this process is
    /// root (initdb and postgres refuse to run as root).
    fn tool(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = self.tool(tool).args(args).output().expect(tool);
        assert!(
            output.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// SIGSTOP / SIGCONT to the server and every backend: connections stay
    /// open, nothing answers, new connections hang in the handshake.
    pub fn freeze(&self, frozen: bool) {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .expect("postmaster.pid of a running server");
        let postmaster = pid_file
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let sig = if frozen { "-STOP" } else { "-CONT" };
        // The server first, so that it forks no backend the list below
        // misses; a backend may exit between pgrep and kill.
        signal(postmaster.parse().expect("a pid"), sig);
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .expect("pgrep");
        for pid in String::from_utf8_lossy(&children.stdout).split_whitespace() {
            let _ = Command::new("kill")
                .args([sig, pid])
                .stderr(std::process::Stdio::null())
                .status();
        }
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::Release);
    }

    /// Whether it was frozen by [`OwnPostgres::freeze`] and not thawed.
    pub fn is_frozen(&self) -> bool {
        self.frozen.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether it was started and not stopped by [`OwnPostgres::set_running`].
    pub fn is_running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Starts (`true`) or fast-stops (`false`) the server.
    pub fn set_running(&self, running: bool) {
        if running {
            let mut options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.display()
            );
            if self.tls {
                let dir = self.dir.display();
                options.push_str(&format!(
                    " -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key"
                ));
            }
            let log = self.dir.join("log").display().to_string();
            self.run(
                "pg_ctl",
                &[
                    "-D",
                    &self.data(),
                    "-o",
                    &options,
                    "-l",
                    &log,
                    "-w",
                    "start",
                ],
            );
            wait_for_port(self.port, Duration::from_secs(20), "postgres");
        } else {
            self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
        }
        self.running
            .store(running, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.frozen.load(std::sync::atomic::Ordering::Acquire) {
            self.freeze(false);
        }
        let _ = self
            .tool("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}
