//! A campaign's meta hash: what the gate checks (stock, window, closed, the
//! waiting room's rules).

use chrono::{DateTime, Utc};
use redis::AsyncCommands;

use super::{RedisState, RedisStateError};
use crate::ids::CampaignId;
use crate::keys::CampaignKeys;
use crate::scripts;

/// `ends_ms` of a campaign without an end. Spelled out rather than a number,
/// so that every number (a pre-1970 end included) is an end.
/// A campaign's waiting room, as configured at its creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomRules {
    /// Positions let in per second.
    pub admit_per_second: u32,
    /// How long a let-in user may take to issue before its place expires
    /// and is given to the next.
    pub admission_ttl_secs: u32,
    /// The key of the shuffle of the users who joined before the start.
    pub shuffle_seed: i64,
}

pub(super) const NO_END: &str = "none";

/// A campaign's gate parameters, as stored in its meta hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CampaignMeta {
    pub stock: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub closed: bool,
    /// Its waiting room, if it has one.
    pub room: Option<RoomRules>,
}

impl RedisState {
    /// Writes a new campaign's meta (and a zero counter if none exists).
    pub async fn load_meta(
        &self,
        campaign: &CampaignId,
        meta: &CampaignMeta,
    ) -> Result<(), RedisStateError> {
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
    pub async fn close(&self, campaign: &CampaignId) -> Result<bool, RedisStateError> {
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

    /// Deletes the campaign's meta, undoing [`RedisState::load_meta`] when the
    /// database write that should follow it failed.
    pub async fn unload_meta(&self, campaign: &CampaignId) -> Result<(), RedisStateError> {
        let keys = CampaignKeys::new(campaign);
        self.run(|mut conn| async move { conn.del::<_, ()>(keys.meta()).await })
            .await
    }

    /// Whether the campaign's meta is present (its gate state is loaded).
    pub async fn is_loaded(&self, campaign: &CampaignId) -> Result<bool, RedisStateError> {
        let key = CampaignKeys::new(campaign).meta();
        self.run(|mut conn| async move { conn.exists(key).await })
            .await
    }
}
