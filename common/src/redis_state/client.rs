//! The one Redis connection of a process: the pool of shared multiplexed
//! connections ([`crate::redis_pool`]), the two bounds on every call, and
//! the error every handle returns.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus::Histogram;

use crate::redis_pool::{ConnectError, RedisConn, RedisPool, within};
pub use crate::settings::LONGEST_CALL_FACTOR;
use crate::settings::RedisSettings;

/// Why a Redis call failed. A call that timed out after it was sent may
/// still have run: each caller says what that means for it.
#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    #[error("no Redis connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A take that waited this long in the gate's line for its turn and
    /// left it: it was never sent.
    #[error("the call waited {0:?} for its turn and was never sent")]
    NotSent(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from Redis: {0:?}")]
    Protocol(String),
    /// A repair's script refused to write: the campaign's admin lock is no
    /// longer the repair's (`lua/admin_fence.lua`). It stops.
    #[error(
        "the campaign's admin lock is no longer this repair's (its lease ran out, or Redis lost it): nothing was written, it stops"
    )]
    AdminLockLost,
}

impl RedisCallError {
    /// Whether the call may have run on the server: anything but a
    /// connection that was never made (the command was then never
    /// written). A broken connection, a reset, a reply that never came, an
    /// error reply: the command may have been written, and a script may
    /// have run, so a take that failed so must be withdrawn.
    pub fn may_have_run(&self) -> bool {
        match self {
            Self::ConnectTimeout(_) | Self::NotSent(_) | Self::AdminLockLost => false,
            Self::Redis(e) => !e.is_connection_refusal(),
            Self::Timeout(_) | Self::Protocol(_) => true,
        }
    }

    /// The error one take of a batch (`Gate::take_batch`) gets when the
    /// batch's call failed with this one: the same error, so that each take
    /// is withdrawn if and only if the call may have run
    /// ([`RedisCallError::may_have_run`]).
    pub fn for_each_take(&self) -> Self {
        match self {
            Self::ConnectTimeout(d) => Self::ConnectTimeout(*d),
            Self::Timeout(d) => Self::Timeout(*d),
            Self::NotSent(d) => Self::NotSent(*d),
            Self::Protocol(s) => Self::Protocol(s.clone()),
            Self::AdminLockLost => Self::AdminLockLost,
            Self::Redis(e) => Self::Redis(e.clone()),
        }
    }

    /// [`RedisCallError::AdminLockLost`] for the fence's error reply.
    pub(crate) fn or_admin_lock_lost(self) -> Self {
        match &self {
            Self::Redis(e) if e.code() == Some("ADMINLOST") => Self::AdminLockLost,
            _ => self,
        }
    }

    /// The call was given up after its time (the server may still run it).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }
}

impl From<ConnectError> for RedisCallError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Timeout(d) => Self::ConnectTimeout(d),
            ConnectError::Redis(e) => Self::Redis(e),
        }
    }
}

/// The pool and its timeouts; cheap to clone (the pool is shared). The
/// handles of `redis_state` each hold one.
#[derive(Debug, Clone)]
pub struct RedisClient {
    pool: Arc<RedisPool>,
    command_timeout: Duration,
}

impl RedisClient {
    /// Opens no connection until the first call.
    pub fn new(settings: &RedisSettings, connect_wait: Option<Histogram>) -> anyhow::Result<Self> {
        let mut pool = RedisPool::new(
            &settings.url,
            &settings.nodes(),
            settings.pool_size,
            settings.connect_timeout(),
            crate::redis_pool::tls_certificates(settings)?,
        )?;
        if let Some(h) = connect_wait {
            pool = pool.with_wait_histogram(h);
        }
        Ok(Self {
            pool: Arc::new(pool),
            command_timeout: settings.command_timeout(),
        })
    }

    /// Opens the pool's connections ahead of the first request.
    pub async fn warm_up(&self) -> Result<(), RedisCallError> {
        Ok(self.pool.warm_up().await?)
    }

    /// The Redis client, for connections of their own (pub/sub).
    pub fn client(&self) -> &redis::Client {
        self.pool.client()
    }

    /// Every call: a pooled connection (bounded by the connect timeout),
    /// then the call (bounded by the command timeout, see
    /// [`RedisClient::run_on`]).
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, RedisCallError>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_on(|conn, _| call(conn)).await
    }

    /// The longest one call can take before it is given up
    /// ([`RedisSettings::longest_call`]).
    pub fn longest_call(&self) -> Duration {
        self.command_timeout * LONGEST_CALL_FACTOR
    }

    /// As [`RedisClient::run`], the call also given the `run_id` of the
    /// server the connection reached (empty in cluster mode): what the
    /// gate's fence compares with the campaign's epoch.
    ///
    /// The command timeout is there to tell a Redis that stopped answering;
    /// it must not fire because this process was too busy to read an answer
    /// that came in time (a burst on two cores: the reply sits in the socket
    /// while the thread that would read it runs other requests). So when the
    /// timeout passes, the call gets another period if the timer itself
    /// fired late (the thread was starved) or other calls
    /// completed on the connection meanwhile (Redis answers; this call is
    /// queued behind them), up to [`LONGEST_CALL_FACTOR`] periods in all
    /// ([`RedisSettings::longest_call`]). A Redis that answers nobody is
    /// still declared gone after one timeout.
    pub async fn run_on<T, F, Fut>(&self, call: F) -> Result<T, RedisCallError>
    where
        F: FnOnce(RedisConn, &str) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let checkout = self.pool.get().await?;
        let progress = checkout.progress.clone();
        let call = call(checkout.conn.clone(), &checkout.server);
        let longest = self.command_timeout * LONGEST_CALL_FACTOR;
        match within(
            self.command_timeout,
            longest,
            || progress.load(Ordering::Relaxed),
            call,
        )
        .await
        {
            Ok(Ok(value)) => {
                checkout.progress.fetch_add(1, Ordering::Relaxed);
                Ok(value)
            }
            Ok(Err(e)) => {
                self.pool.report(&checkout, &e);
                Err(RedisCallError::Redis(e))
            }
            Err(waited) => Err(RedisCallError::Timeout(waited)),
        }
    }

    /// Runs a script with string keys and arguments (the locks, the
    /// idempotency records).
    pub async fn run_script<T: redis::FromRedisValue + Send + 'static>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, RedisCallError> {
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(*k);
        }
        for a in args {
            invocation.arg(*a);
        }
        self.run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// The `run_id` of the server the connection reaches now (`PING` first,
    /// so a dead connection is reopened to the server that answers now);
    /// empty in Redis Cluster.
    pub async fn server(&self) -> Result<String, RedisCallError> {
        self.run_on(|mut conn, server| {
            let server = server.to_owned();
            async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
                Ok(server)
            }
        })
        .await
    }

    /// `PING`, for readiness bodies.
    pub async fn ping(&self) -> Result<(), RedisCallError> {
        self.run(
            |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
        )
        .await
        .map(|_| ())
    }
}
