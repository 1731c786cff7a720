//! The async-queue strategy's calls: its `queued` marks (set, kept alive,
//! cleared).

use chrono::Utc;
use redis::AsyncCommands;

use super::{RecordedState, RedisState, RedisStateError, StatusRecord};
use crate::ids::{CampaignId, UserId};
use crate::keys::CampaignKeys;
use crate::scripts;

/// What marking a user queued found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMark {
    Queued,
    /// The user holds a slot, or has a request queued or pending.
    Duplicate,
    /// No meta: unknown campaign or lost state.
    Missing,
}

impl RedisState {
    /// async-queue: gives the `queued` marks of requests still waiting in
    /// this process's queue another `ttl_secs` (one pipeline of `EXPIRE`s;
    /// a mark already replaced or gone is left as it is).
    pub async fn keep_marks(
        &self,
        marks: &[(CampaignId, UserId)],
        ttl_secs: u64,
    ) -> Result<(), RedisStateError> {
        if marks.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (campaign, user) in marks {
            pipe.cmd("EXPIRE")
                .arg(CampaignKeys::new(campaign).status(user))
                .arg(ttl_secs)
                .ignore();
        }
        self.run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    /// async-queue: marks the user queued unless it holds or awaits a slot.
    pub async fn mark_queued(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        ttl_secs: u64,
    ) -> Result<QueueMark, RedisStateError> {
        let keys = CampaignKeys::new(campaign);
        let record = serde_json::to_string(&StatusRecord {
            state: RecordedState::Queued,
            coupon_id: None,
            outcome: None,
            at: Utc::now(),
        })
        .unwrap_or_default();
        let reply: String = self
            .run(|mut conn| async move {
                scripts::MARK_QUEUED
                    .key(keys.meta())
                    .key(keys.users())
                    .key(keys.status(user))
                    .arg(user.as_str())
                    .arg(record)
                    .arg(ttl_secs)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match reply.as_str() {
            "queued" => Ok(QueueMark::Queued),
            "duplicate" => Ok(QueueMark::Duplicate),
            "missing" => Ok(QueueMark::Missing),
            other => Err(RedisStateError::Protocol(other.to_owned())),
        }
    }

    /// Deletes the user's status record (a queued mark whose request was
    /// refused before it entered the queue).
    pub async fn clear_status(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<(), RedisStateError> {
        let key = CampaignKeys::new(campaign).status(user);
        self.run(|mut conn| async move { conn.del::<_, ()>(key).await })
            .await
    }
}
