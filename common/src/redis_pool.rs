//! A pool of shared, multiplexed Redis connections.
//!
//! Every call takes the next connection round-robin and sends its command on
//! it while other calls do the same: commands from concurrent requests are
//! pipelined on a few sockets instead of each request holding a connection
//! of its own for a round trip. Measured on the 2-core development machine
//! with the gate-sized script and 2,000 concurrent callers: about 190,000
//! calls/s multiplexed against about 40,000/s with an exclusive-checkout
//! pool of 64 (deadpool-redis, which also PINGs every connection on
//! checkout). See docs/ARCHITECTURE.md.
//!
//! Connections are opened on first use, so a process starts while Redis is
//! down; a connection that breaks is dropped and reopened by the next call.
//! One broken connection retires all the others opened before it (a
//! generation count): they reach the same server, and a Redis that
//! restarted broke them all. Without that, the first call on each of them
//! (every thread's own and every shared one) failed after a restart, each
//! a take to withdraw or a status record not written.
//!
//! With `redis.cluster_nodes` set, the pool holds one Redis Cluster
//! connection instead (itself multiplexed over a connection per node): every
//! key of a campaign carries the campaign as its hash tag, so each script
//! and pipeline stays within one Redis Cluster hash slot.
//!
//! Where a connection is driven decides how many threads a call crosses:
//! - A caller on a single-threaded runtime (an actix worker thread) gets a
//!   connection of that thread's own, opened on first use and driven there:
//!   the reply is read by the thread that waits for it, with no wake-up of
//!   another thread. A busy worker stalls only its own calls. Measured with
//!   the harness (docs/PERFORMANCE.md): about 9% more issue TPS at 100
//!   vusers and a fifth less api CPU per request than shared connections.
//! - Any other caller (background tasks on the process's multi-threaded
//!   runtime) shares the pool's connections, driven on the runtime the pool
//!   was built on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus::Histogram;
use redis::TlsCertificates;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Value};

/// A connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
pub enum RedisConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConn::Single",
            Self::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl RedisConn {
    /// A Redis Cluster connection: its client sends a call again when the
    /// connection the call went out on broke before the reply came back.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no Redis connection within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
}

/// An open connection, what is known of the server behind it, and how many
/// calls completed on it.
#[derive(Clone)]
struct Pooled {
    conn: RedisConn,
    server: Arc<str>,
    progress: Arc<AtomicU64>,
    /// The pool's generation when it was opened: older than the pool's
    /// now, it is retired (reopened by the next call).
    generation: u64,
}

struct SharedPlace {
    conn: RwLock<Option<Pooled>>,
    /// Serialises (re)connecting, so a burst opens one socket, not hundreds.
    connecting: tokio::sync::Mutex<()>,
}

/// The connection of one pool on the current thread.
#[derive(Default)]
struct LocalPlace {
    conn: Option<Pooled>,
    connecting: Arc<tokio::sync::Mutex<()>>,
}

thread_local! {
    /// Per pool (by id), this thread's own connection.
    static LOCAL: RefCell<HashMap<u64, LocalPlace>> = RefCell::new(HashMap::new());
}

static POOL_IDS: AtomicU64 = AtomicU64::new(0);

/// The certificates of `settings`' TLS files, read now (a file that cannot
/// be read is an error at start-up, not at the first request); `None` when
/// none is set.
pub fn tls_certificates(
    settings: &crate::settings::RedisSettings,
) -> anyhow::Result<Option<TlsCertificates>> {
    use anyhow::Context;
    let read = |name: &str, path: &Option<String>| -> anyhow::Result<Option<Vec<u8>>> {
        path.as_ref()
            .map(|p| std::fs::read(p).with_context(|| format!("{name}: reading {p}")))
            .transpose()
    };
    let root_cert = read("APP_REDIS__TLS_CA_FILE", &settings.tls_ca_file)?;
    let client_tls = match (
        read("APP_REDIS__TLS_CERT_FILE", &settings.tls_cert_file)?,
        read("APP_REDIS__TLS_KEY_FILE", &settings.tls_key_file)?,
    ) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        _ => None,
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// How late a timer may fire before the process counts as starved (its
/// thread busy elsewhere) rather than the other side as silent.
pub const STARVED: Duration = Duration::from_millis(50);

/// Runs `work` within `period`, and then as long as it keeps earning
/// another period, up to `longest` from the start: a period is earned when
/// the timer fired at least [`STARVED`] late (this thread was busy, and the
/// answer may be waiting to be read) or `moved()` changed since the last
/// look (the other side is answering others). `Err(elapsed)` when it ran
/// out.
pub async fn within<F: Future>(
    period: Duration,
    longest: Duration,
    moved: impl Fn() -> u64,
    work: F,
) -> Result<F::Output, Duration> {
    let started = tokio::time::Instant::now();
    let last = started + longest;
    let mut seen = moved();
    let mut deadline = started + period;
    let mut work = std::pin::pin!(work);
    loop {
        match tokio::time::timeout_at(deadline, &mut work).await {
            Ok(output) => return Ok(output),
            Err(_) => {
                let now = tokio::time::Instant::now();
                let late = now.saturating_duration_since(deadline);
                let current = moved();
                if (late >= STARVED || current != seen) && now < last {
                    // A fresh period from now: the answer may be in the
                    // socket already, for this thread to read.
                    seen = current;
                    deadline = (now + period).min(last);
                    continue;
                }
                return Err(started.elapsed());
            }
        }
    }
}

pub struct RedisPool {
    id: u64,
    /// A single server's client; in cluster mode, the first node's (for
    /// pub/sub, which a cluster propagates to every node).
    client: Client,
    cluster: Option<ClusterClient>,
    places: Vec<SharedPlace>,
    next: AtomicUsize,
    /// Bumped when a connection of the current generation breaks.
    generation: Arc<AtomicU64>,
    connect_timeout: Duration,
    connect_wait: Option<Histogram>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPool")
            .field("connections", &self.places.len())
            .finish_non_exhaustive()
    }
}

/// A connection handle taken from the pool, with the place it came from so a
/// broken connection can be reported back.
#[derive(Clone)]
pub struct Checkout {
    pub conn: RedisConn,
    /// The `run_id` of the Redis server behind the connection (a new one at
    /// every start, another on a failover): what the gate's fence compares
    /// (`redis_state::Gate`). Empty in cluster mode, where a connection
    /// reaches several servers and the scripts ask their own.
    pub server: Arc<str>,
    /// Calls completed on this connection so far (any caller's): a call
    /// that outlives its timeout while others complete is queued behind
    /// them, not facing a dead server.
    pub progress: Arc<AtomicU64>,
    place: Place,
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
enum Place {
    Shared(usize),
    /// The calling thread's own connection.
    Local,
}

impl std::fmt::Debug for Checkout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkout")
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

impl RedisPool {
    /// Must be called within a tokio runtime: connections are driven there.
    /// `cluster_nodes` non-empty: Redis Cluster mode (then `url` is unused).
    /// `tls`: the CA and client certificate of `rediss://` URLs, when not
    /// the system's trust store alone.
    pub fn new(
        url: &str,
        cluster_nodes: &[String],
        size: usize,
        connect_timeout: Duration,
        tls: Option<TlsCertificates>,
    ) -> Result<Self, RedisError> {
        let open = |url: &str| match &tls {
            Some(certs) => Client::build_with_tls(url, certs.clone()),
            None => Client::open(url),
        };
        let (client, cluster, size) = match cluster_nodes.first() {
            Some(first) => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(cluster_nodes.to_vec())
                    .connection_timeout(connect_timeout);
                if let Some(certs) = &tls {
                    builder = builder.certs(certs.clone());
                }
                (open(first.as_str())?, Some(builder.build()?), 1)
            }
            None => (open(url)?, None, size),
        };
        Ok(Self {
            id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
            runtime: tokio::runtime::Handle::current(),
            client,
            cluster,
            places: (0..size.max(1))
                .map(|_| SharedPlace {
                    conn: RwLock::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                })
                .collect(),
            next: AtomicUsize::new(0),
            generation: Arc::default(),
            connect_timeout,
            connect_wait: None,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Observe, in seconds, how long callers wait for a connection (near
    /// zero unless one is being opened).
    pub fn with_wait_histogram(mut self, histogram: Histogram) -> Self {
        self.connect_wait = Some(histogram);
        self
    }

    pub async fn get(&self) -> Result<Checkout, ConnectError> {
        let single_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        if single_threaded {
            self.get_local().await
        } else {
            self.get_shared().await
        }
    }

    async fn get_shared(&self) -> Result<Checkout, ConnectError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.places.len();
        let place = &self.places[index];
        if let Some(pooled) = self.current(read(place)) {
            self.observe(Duration::ZERO);
            return Ok(pooled.checkout(Place::Shared(index)));
        }
        let started = Instant::now();
        let checked_out = within(
            self.connect_timeout,
            self.connect_timeout * 4,
            || 0,
            async {
                let _guard = place.connecting.lock().await;
                if let Some(pooled) = self.current(read(place)) {
                    return Ok(pooled);
                }
                let pooled = self
                    .runtime
                    .spawn(self.connect())
                    .await
                    .map_err(|e| RedisError::from(std::io::Error::other(e)))??;
                *place
                    .conn
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pooled.clone());
                Ok::<_, RedisError>(pooled)
            },
        )
        .await;
        self.checked_out(started, checked_out, Place::Shared(index))
    }

    async fn get_local(&self) -> Result<Checkout, ConnectError> {
        let (conn, connecting) = LOCAL.with_borrow_mut(|local| {
            let place = local.entry(self.id).or_default();
            (place.conn.clone(), place.connecting.clone())
        });
        if let Some(pooled) = self.current(conn) {
            self.observe(Duration::ZERO);
            return Ok(pooled.checkout(Place::Local));
        }
        let started = Instant::now();
        let checked_out = within(
            self.connect_timeout,
            self.connect_timeout * 4,
            || 0,
            async {
                let _guard = connecting.lock().await;
                let ready =
                    LOCAL.with_borrow(|local| local.get(&self.id).and_then(|s| s.conn.clone()));
                if let Some(pooled) = self.current(ready) {
                    return Ok(pooled);
                }
                // Opened here, so its driver task runs on this thread's runtime.
                let pooled = self.connect().await?;
                LOCAL.with_borrow_mut(|local| {
                    local.entry(self.id).or_default().conn = Some(pooled.clone())
                });
                Ok::<_, RedisError>(pooled)
            },
        )
        .await;
        self.checked_out(started, checked_out, Place::Local)
    }

    /// Opens a connection and learns which server it reached (`INFO
    /// server`'s `run_id`; single servers only).
    fn connect(&self) -> impl Future<Output = Result<Pooled, RedisError>> + Send + 'static {
        // The bound that counts is `within`'s (it tells a busy thread from a
        // server that does not answer); this one only ends a hung socket.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout * 4))
            .set_response_timeout(None);
        let (client, cluster) = (self.client.clone(), self.cluster.clone());
        // Read before connecting: a break reported meanwhile retires it.
        let generation = self.generation.load(Ordering::Acquire);
        async move {
            let (conn, server) = match cluster {
                Some(c) => (
                    RedisConn::Cluster(c.get_async_connection().await?),
                    Arc::from(""),
                ),
                None => {
                    let mut conn = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    let info: String = redis::cmd("INFO")
                        .arg("server")
                        .query_async(&mut conn)
                        .await?;
                    (RedisConn::Single(conn), Arc::from(run_id(&info)))
                }
            };
            Ok(Pooled {
                conn,
                server,
                progress: Arc::default(),
                generation,
            })
        }
    }

    fn checked_out(
        &self,
        started: Instant,
        checked_out: Result<Result<Pooled, RedisError>, Duration>,
        place: Place,
    ) -> Result<Checkout, ConnectError> {
        self.observe(started.elapsed());
        match checked_out {
            Ok(Ok(pooled)) => Ok(pooled.checkout(place)),
            Ok(Err(e)) => Err(ConnectError::Redis(e)),
            Err(_) => Err(ConnectError::Timeout(self.connect_timeout)),
        }
    }

    /// Opens every shared connection now, so that the first burst of
    /// requests does not queue behind connection set-up (a thread's own
    /// connection opens on its first call). Failures are returned (and the
    /// connections opened later, on demand).
    pub async fn warm_up(&self) -> Result<(), ConnectError> {
        for _ in 0..self.places.len() {
            self.get_shared().await?;
        }
        Ok(())
    }

    /// Reports a failed call: a connection-level failure drops the
    /// connection so that the next call on this place reconnects.
    pub fn report(&self, checkout: &Checkout, error: &RedisError) {
        if !(error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error())
        {
            return;
        }
        // Only a connection of the current generation retires the others: a
        // late failure on one already retired leaves the new ones alone.
        let _ = self.generation.compare_exchange(
            checkout.generation,
            checkout.generation + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        // The place is cleared only if it still holds a connection of the
        // failed one's generation: one opened since (after another break
        // retired the failed one) is left alone.
        let stale = |held: &Option<Pooled>| {
            held.as_ref()
                .is_some_and(|p| p.generation == checkout.generation)
        };
        match checkout.place {
            Place::Shared(index) => {
                let mut held = self.places[index]
                    .conn
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if stale(&held) {
                    *held = None;
                }
            }
            // The reporting thread's own connection; its next call reopens it.
            Place::Local => LOCAL.with_borrow_mut(|local| {
                if let Some(place) = local.get_mut(&self.id)
                    && stale(&place.conn)
                {
                    place.conn = None;
                }
            }),
        }
    }

    /// `pooled` if it is of the current generation.
    fn current(&self, pooled: Option<Pooled>) -> Option<Pooled> {
        pooled.filter(|p| p.generation >= self.generation.load(Ordering::Acquire))
    }

    fn observe(&self, waited: Duration) {
        if let Some(h) = &self.connect_wait {
            h.observe(waited.as_secs_f64());
        }
    }
}

impl Pooled {
    fn checkout(&self, place: Place) -> Checkout {
        Checkout {
            conn: self.conn.clone(),
            server: self.server.clone(),
            progress: self.progress.clone(),
            place,
            generation: self.generation,
        }
    }
}

/// The `run_id` of an `INFO server` reply (empty if absent).
fn run_id(info: &str) -> &str {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map_or("", str::trim)
}

fn read(place: &SharedPlace) -> Option<Pooled> {
    place
        .conn
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}
