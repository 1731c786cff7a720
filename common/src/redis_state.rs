//! Typed calls on campaigns' Redis state, one file per job:
//!
//! | file | job |
//! |---|---|
//! | this one | the client: the pool, the timeouts, errors, `PING` |
//! | [`admission`] | the gate (the admission script), its withdrawal and compensation, the count |
//! | [`meta`] | a campaign's meta: load, close, unload, presence |
//! | [`status`] | the per-user status records read by `/coupons/me` |
//! | [`queue`] | the async-queue's marks |
//! | [`locked`] | the lock strategies' separate commands and scripts |
//! | [`repair`] | reconciliation's reads and repairs |
//!
//! The waiting room's calls are `crate::room`; the locks are `crate::lock`.
//!
//! Every call is bounded twice: by the wait for a connection (only long when
//! one has to be opened) and by the time Redis takes to answer. A call that timed out after it was sent
//! may still have run; callers of [`RedisState::admit`] must treat
//! [`RedisStateError::Timeout`] as "maybe admitted".

use std::future::Future;
use std::time::Duration;

use prometheus::Histogram;

use crate::redis_pool::{ConnectError, RedisConn, RedisPool};
use crate::settings::RedisSettings;

mod admission;
mod locked;
mod meta;
mod queue;
mod repair;
mod status;

pub use admission::{Admission, Refusal, Withdrawal};
pub use meta::{CampaignMeta, RoomRules};
pub use queue::QueueMark;
pub use status::{RecordedState, StatusRecord};

#[derive(Debug, thiserror::Error)]
pub enum RedisStateError {
    #[error("no Redis connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from a gate script: {0:?}")]
    Protocol(String),
}

impl From<ConnectError> for RedisStateError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Timeout(d) => Self::ConnectTimeout(d),
            ConnectError::Redis(e) => Self::Redis(e),
        }
    }
}

/// Typed access to campaigns' Redis state (see the module's files).
#[derive(Debug, Clone)]
pub struct RedisState {
    pool: std::sync::Arc<RedisPool>,
    command_timeout: Duration,
    status_ttl_secs: u64,
}

impl RedisState {
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
            pool: std::sync::Arc::new(pool),
            command_timeout: settings.command_timeout(),
            status_ttl_secs: settings.status_ttl_secs,
        })
    }

    /// Opens the pool's connections ahead of the first request.
    pub async fn warm_up(&self) -> Result<(), RedisStateError> {
        Ok(self.pool.warm_up().await?)
    }

    /// The Redis client, for connections of their own (pub/sub).
    pub fn client(&self) -> &redis::Client {
        self.pool.client()
    }

    /// Runs one call on a pooled connection within the command timeout.
    pub(crate) async fn run<T, F, Fut>(&self, call: F) -> Result<T, RedisStateError>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let lease = self.pool.get().await?;
        match tokio::time::timeout(self.command_timeout, call(lease.conn.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                self.pool.report(&lease, &e);
                Err(RedisStateError::Redis(e))
            }
            Err(_) => Err(RedisStateError::Timeout(self.command_timeout)),
        }
    }

    /// `PING`, for readiness bodies.
    pub async fn ping(&self) -> Result<(), RedisStateError> {
        self.run(
            |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
        )
        .await
        .map(|_| ())
    }
}
