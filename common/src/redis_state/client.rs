//! The one Redis connection of a process: the pool of shared multiplexed
//! connections ([`crate::redis_pool`]), the two bounds on every call, and
//! the error every handle returns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Histogram;

use crate::redis_pool::{ConnectError, RedisConn, RedisPool};
use crate::settings::RedisSettings;

/// Why a Redis call failed. A call that timed out after it was sent may
/// still have run: each caller says what that means for it.
#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    #[error("no Redis connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from Redis: {0:?}")]
    Protocol(String),
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
    /// then the call (bounded by the command timeout).
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, RedisCallError>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let checkout = self.pool.get().await?;
        match tokio::time::timeout(self.command_timeout, call(checkout.conn.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                self.pool.report(&checkout, &e);
                Err(RedisCallError::Redis(e))
            }
            Err(_) => Err(RedisCallError::Timeout(self.command_timeout)),
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

    /// `PING`, for readiness bodies.
    pub async fn ping(&self) -> Result<(), RedisCallError> {
        self.run(
            |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
        )
        .await
        .map(|_| ())
    }
}
