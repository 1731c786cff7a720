//! The async-queue strategy's `queued` marks: a status record saying the
//! user's request waits in an instance's queue (set, kept alive, taken back).

use chrono::Utc;
use redis::AsyncCommands;

use super::{RecordedState, RedisCallError, RedisClient, StatusRecord};
use crate::ids::{CampaignId, UserId};
use crate::keys::CampaignKeys;
use crate::scripts;

/// What marking a user queued found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMark {
    Queued,
    /// The user has a slot, or has a request queued or pending.
    Duplicate,
    /// No meta: unknown campaign or lost state.
    Missing,
    /// The campaign's state is fenced (`lua/fence.lua`).
    Stale,
    /// Closed by an admin: refused now rather than queued.
    Closed,
}

/// The `queued` marks, each kept `ttl_secs` unless renewed.
#[derive(Debug, Clone)]
pub struct QueuedMarks {
    client: RedisClient,
    ttl_secs: u64,
}

impl QueuedMarks {
    pub fn new(client: RedisClient, ttl_secs: u64) -> Self {
        Self { client, ttl_secs }
    }

    /// Marks the user queued unless it has or awaits a slot.
    pub async fn mark(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<QueueMark, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let record = serde_json::to_string(&StatusRecord {
            state: RecordedState::Queued,
            coupon_id: None,
            outcome: None,
            at: Utc::now(),
        })
        .unwrap_or_default();
        let ttl = self.ttl_secs;
        let reply: String = self
            .client
            .run_on(|mut conn, server| {
                let server = server.to_owned();
                async move {
                    scripts::MARK_QUEUED
                        .key(keys.meta())
                        .key(keys.users())
                        .key(keys.status(user))
                        .arg(user.as_str())
                        .arg(record)
                        .arg(ttl)
                        .arg(server)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        match reply.as_str() {
            "queued" => Ok(QueueMark::Queued),
            "duplicate" => Ok(QueueMark::Duplicate),
            "missing" => Ok(QueueMark::Missing),
            "stale" => Ok(QueueMark::Stale),
            "closed" => Ok(QueueMark::Closed),
            other => Err(RedisCallError::Protocol(other.to_owned())),
        }
    }

    /// Gives the marks of requests still waiting in this process's queue
    /// another TTL (one pipeline of `EXPIRE`s; a mark already replaced or
    /// gone is left as it is).
    pub async fn keep(&self, marks: &[(CampaignId, UserId)]) -> Result<(), RedisCallError> {
        if marks.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (campaign, user) in marks {
            pipe.cmd("EXPIRE")
                .arg(CampaignKeys::new(campaign).status(user))
                .arg(self.ttl_secs)
                .ignore();
        }
        self.client
            .run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    /// Takes a mark back (its request was refused before it entered the
    /// queue), so the user may retry.
    pub async fn unmark(&self, campaign: &CampaignId, user: &UserId) -> Result<(), RedisCallError> {
        let key = CampaignKeys::new(campaign).status(user);
        self.client
            .run(|mut conn| async move { conn.del::<_, ()>(key).await })
            .await
    }
}
