//! Typed calls on a campaign's Redis state: the gate, its compensation, meta,
//! and the per-user status records read by `/coupons/me`; by job, the
//! async-queue's marks (`gate/queue.rs`), the lock strategies' separate commands
//! (`gate/locked.rs`) and reconciliation's reads and repairs (`gate/repair.rs`). The
//! waiting room's calls are `crate::room`.
//!
//! Every call is bounded twice: by the wait for a connection (only long when
//! one has to be opened) and by the time Redis takes to answer. A call that timed out after it was sent
//! may still have run; callers of [`RedisGate::admit`] must treat
//! [`GateError::Timeout`] as "maybe admitted".

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::Histogram;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::ids::{CampaignId, CouponId, UserId};
use crate::keys::CampaignKeys;
use crate::redis_pool::{ConnectError, RedisConn, RedisPool};
use crate::room::RoomRules;
use crate::scripts;
use crate::settings::RedisSettings;

mod locked;
mod queue;
mod repair;

/// `ends_ms` of a campaign without an end. Spelled out rather than a number,
/// so that every number (a pre-1970 end included) is an end.
const NO_END: &str = "none";

/// What the gate script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new slot; behind a waiting room, `waited` is how long the user
    /// waited between joining and being let in.
    Admitted {
        waited: Option<Duration>,
    },
    Duplicate,
    SoldOut,
    NotOpen,
    Closed,
    /// No meta: the campaign is unknown to Redis (unknown, or its state lost).
    Missing,
    /// The request was withdrawn ([`RedisGate::withdraw`]) before Redis ran
    /// it; nothing was written.
    Withdrawn,
    /// The campaign has a waiting room and the user is not let in just now
    /// (never joined, still waiting, or its admission expired).
    NotAdmitted,
}

impl Admission {
    fn from_script(reply: &str) -> Result<Self, GateError> {
        if let Some(ms) = reply.strip_prefix("admitted:") {
            let ms = ms
                .parse()
                .map_err(|_| GateError::Protocol(reply.to_owned()))?;
            return Ok(Self::Admitted {
                waited: Some(Duration::from_millis(ms)),
            });
        }
        Ok(match reply {
            "admitted" => Self::Admitted { waited: None },
            "duplicate" => Self::Duplicate,
            "sold_out" => Self::SoldOut,
            "not_open" => Self::NotOpen,
            "closed" => Self::Closed,
            "missing" => Self::Missing,
            "withdrawn" => Self::Withdrawn,
            "not_admitted" => Self::NotAdmitted,
            other => return Err(GateError::Protocol(other.to_owned())),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("no Redis connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from a gate script: {0:?}")]
    Protocol(String),
}

impl From<ConnectError> for GateError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Timeout(d) => Self::ConnectTimeout(d),
            ConnectError::Redis(e) => Self::Redis(e),
        }
    }
}

/// What withdrawing an admission request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// It had been admitted: its slot was given back.
    Released,
    /// It had not run: it never will admit anyone.
    Voided,
}

/// How long a void mark outlives the request it voids: far beyond any wait
/// of a command in Redis's input buffer.
const VOID_TTL_SECS: u64 = 600;

/// What marking a user queued found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMark {
    Queued,
    /// The user holds a slot, or has a request queued or pending.
    Duplicate,
    /// No meta: unknown campaign or lost state.
    Missing,
}

/// A campaign's gate parameters, as stored in its meta hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateMeta {
    pub stock: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub closed: bool,
    /// Its waiting room, if it has one.
    pub room: Option<RoomRules>,
}

/// The state of one user's request that is not yet (or never will be) a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedState {
    Queued,
    Pending,
    /// In the broker, the row not yet written (async strategies).
    Issued,
    /// A final refusal of a request that was answered `queued` or `pending`;
    /// `outcome` says why.
    Rejected,
    /// A `pending` request that the system of record turned away: the user
    /// holds no coupon.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub state: RecordedState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_id: Option<CouponId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    pub at: DateTime<Utc>,
}

/// Typed access to campaigns' Redis state.
#[derive(Debug, Clone)]
pub struct RedisGate {
    pool: std::sync::Arc<RedisPool>,
    command_timeout: Duration,
    status_ttl_secs: u64,
}

impl RedisGate {
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
    pub async fn warm_up(&self) -> Result<(), GateError> {
        Ok(self.pool.warm_up().await?)
    }

    /// The Redis client, for connections of their own (pub/sub).
    pub fn client(&self) -> &redis::Client {
        self.pool.client()
    }

    /// Runs one call on a pooled connection within the command timeout.
    pub(crate) async fn run<T, F, Fut>(&self, call: F) -> Result<T, GateError>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let lease = self.pool.get().await?;
        match tokio::time::timeout(self.command_timeout, call(lease.conn.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                self.pool.report(&lease, &e);
                Err(GateError::Redis(e))
            }
            Err(_) => Err(GateError::Timeout(self.command_timeout)),
        }
    }

    /// The gate; an admission claims `coupon` for the user. On
    /// `Err(GateError::Timeout)` the user may have been admitted (or may
    /// still be): [`RedisGate::withdraw`] settles which.
    pub async fn admit(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        coupon: &CouponId,
    ) -> Result<Admission, GateError> {
        let keys = CampaignKeys::new(campaign);
        let room = keys.room();
        let reply: String = self
            .run(|mut conn| async move {
                scripts::GATE
                    .key(keys.meta())
                    .key(keys.users())
                    .key(keys.issued())
                    .key(keys.status(user))
                    .key(keys.claims())
                    .key(keys.void(coupon))
                    .key(&room.all()[..])
                    .arg(user.as_str())
                    .arg(coupon.to_string())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Admission::from_script(&reply)
    }

    /// Withdraws the admission request that claimed `coupon` and got no
    /// reply: gives its slot back if it was admitted, or voids it if Redis
    /// has not run it yet. Either way it ends holding nothing, and a slot
    /// the user holds from another request is untouched.
    pub async fn withdraw(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        coupon: &CouponId,
    ) -> Result<Withdrawal, GateError> {
        let keys = CampaignKeys::new(campaign);
        let reply: String = self
            .run(|mut conn| async move {
                scripts::WITHDRAW
                    .key(keys.users())
                    .key(keys.issued())
                    .key(keys.claims())
                    .key(keys.void(coupon))
                    .arg(user.as_str())
                    .arg(coupon.to_string())
                    .arg(VOID_TTL_SECS)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match reply.as_str() {
            "released" => Ok(Withdrawal::Released),
            "voided" => Ok(Withdrawal::Voided),
            other => Err(GateError::Protocol(other.to_owned())),
        }
    }

    /// Compensation: gives the user's slot back. `Ok(false)` if it held none.
    pub async fn release(&self, campaign: &CampaignId, user: &UserId) -> Result<bool, GateError> {
        let keys = CampaignKeys::new(campaign);
        let released: i64 = self
            .run(|mut conn| async move {
                scripts::RELEASE
                    .key(keys.users())
                    .key(keys.issued())
                    .key(keys.claims())
                    .arg(user.as_str())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(released == 1)
    }

    /// Writes a new campaign's meta (and a zero counter if none exists).
    pub async fn load_meta(&self, campaign: &CampaignId, meta: &GateMeta) -> Result<(), GateError> {
        let keys = CampaignKeys::new(campaign);
        let ends_ms = meta
            .ends_at
            .map_or_else(|| NO_END.to_owned(), |t| t.timestamp_millis().to_string());
        let state = if meta.closed { "closed" } else { "open" };
        let room = meta.room.map_or_else(
            || [String::new(), String::new(), String::new()],
            |r| {
                [
                    r.admit_per_second.to_string(),
                    (u64::from(r.admission_ttl_secs) * 1000).to_string(),
                    r.shuffle_seed.to_string(),
                ]
            },
        );
        let _: i64 = self
            .run(|mut conn| async move {
                scripts::LOAD_META
                    .key(keys.meta())
                    .key(keys.issued())
                    .arg(meta.stock)
                    .arg(meta.starts_at.timestamp_millis())
                    .arg(ends_ms)
                    .arg(state)
                    .arg(&room[..])
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Closes the gate. `Ok(false)` when the meta is missing.
    pub async fn close(&self, campaign: &CampaignId) -> Result<bool, GateError> {
        let keys = CampaignKeys::new(campaign);
        let closed: i64 = self
            .run(|mut conn| async move {
                scripts::CLOSE
                    .key(keys.meta())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(closed == 1)
    }

    /// Deletes the campaign's meta, undoing [`RedisGate::load_meta`] when the
    /// database write that should follow it failed.
    pub async fn unload_meta(&self, campaign: &CampaignId) -> Result<(), GateError> {
        let keys = CampaignKeys::new(campaign);
        self.run(|mut conn| async move { conn.del::<_, ()>(keys.meta()).await })
            .await
    }

    /// The gate's count, or `None` when the campaign's meta is missing.
    pub async fn issued(&self, campaign: &CampaignId) -> Result<Option<i64>, GateError> {
        let keys = CampaignKeys::new(campaign);
        let (exists, issued): (bool, Option<i64>) = self
            .run(|mut conn| async move {
                redis::pipe()
                    .exists(keys.meta())
                    .get(keys.issued())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(exists.then(|| issued.unwrap_or(0)))
    }

    /// Whether the user holds a slot in the gate's set.
    pub async fn holds_slot(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<bool, GateError> {
        let keys = CampaignKeys::new(campaign);
        self.run(|mut conn| async move { conn.sismember(keys.users(), user.as_str()).await })
            .await
    }

    /// Records the asynchronous state of a user's request, with the TTL.
    pub async fn record_status(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        record: &StatusRecord,
    ) -> Result<(), GateError> {
        let key = CampaignKeys::new(campaign).status(user);
        let value = serde_json::to_string(record).unwrap_or_default();
        let ttl = self.status_ttl_secs;
        self.run(|mut conn| async move { conn.set_ex::<_, _, ()>(key, value, ttl).await })
            .await
    }

    pub async fn status(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<Option<StatusRecord>, GateError> {
        let key = CampaignKeys::new(campaign).status(user);
        let raw: Option<String> = self
            .run(|mut conn| async move { conn.get(key).await })
            .await?;
        // A record that does not parse is treated as absent: the row in
        // PostgreSQL and the gate's set still answer the question.
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Whether the campaign's meta is present (its gate state is loaded).
    pub async fn is_loaded(&self, campaign: &CampaignId) -> Result<bool, GateError> {
        let key = CampaignKeys::new(campaign).meta();
        self.run(|mut conn| async move { conn.exists(key).await })
            .await
    }

    /// `PING`, for readiness bodies.
    pub async fn ping(&self) -> Result<(), GateError> {
        self.run(
            |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replies_map_to_admissions() {
        assert_eq!(
            Admission::from_script("admitted").unwrap(),
            Admission::Admitted { waited: None }
        );
        assert_eq!(
            Admission::from_script("admitted:1500").unwrap(),
            Admission::Admitted {
                waited: Some(Duration::from_millis(1500))
            }
        );
        assert!(Admission::from_script("admitted:soon").is_err());
        assert_eq!(
            Admission::from_script("missing").unwrap(),
            Admission::Missing
        );
        assert!(Admission::from_script("maybe").is_err());
    }

    #[test]
    fn status_records_round_trip_as_json() {
        let r = StatusRecord {
            state: RecordedState::Pending,
            coupon_id: Some(CouponId::new()),
            outcome: None,
            at: Utc::now(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"state\":\"pending\""), "{json}");
        assert_eq!(serde_json::from_str::<StatusRecord>(&json).unwrap(), r);
    }
}
