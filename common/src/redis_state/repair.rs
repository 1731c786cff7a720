//! Reconciliation and rebuild (issuer-worker), under the campaign's admin
//! lock: the gate's holders read, corrected and replaced.

use redis::AsyncCommands;

use super::{RedisState, RedisStateError};
use crate::ids::CampaignId;
use crate::keys::CampaignKeys;
use crate::scripts;

impl RedisState {
    /// The counter minus the set's size, read in one transaction (so that
    /// admissions going on meanwhile do not show as drift).
    pub async fn count_drift(&self, campaign: &CampaignId) -> Result<i64, RedisStateError> {
        let keys = CampaignKeys::new(campaign);
        let (issued, members): (Option<i64>, i64) = self
            .run(|mut conn| async move {
                redis::pipe()
                    .atomic()
                    .get(keys.issued())
                    .scard(keys.users())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(issued.unwrap_or(0) - members)
    }

    /// Every user in the gate's set (`SSCAN`, so a large set does not block
    /// Redis).
    pub async fn holders(&self, campaign: &CampaignId) -> Result<Vec<String>, RedisStateError> {
        let key = CampaignKeys::new(campaign).users();
        let mut users = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let key = key.clone();
            let (next, batch): (u64, Vec<String>) = self
                .run(|mut conn| async move {
                    redis::cmd("SSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            users.extend(batch);
            if next == 0 {
                return Ok(users);
            }
            cursor = next;
        }
    }

    /// Sets the counter to the set's size; returns the drift corrected.
    pub async fn fix_count(&self, campaign: &CampaignId) -> Result<i64, RedisStateError> {
        let keys = CampaignKeys::new(campaign);
        self.run(|mut conn| async move {
            scripts::FIX_COUNT
                .key(keys.users())
                .key(keys.issued())
                .invoke_async(&mut conn)
                .await
        })
        .await
    }

    /// Reconcile's repair of phantoms: users with a row but no slot get
    /// their slot back (`SADD`; the counter is fixed afterwards with
    /// [`RedisState::fix_count`]). Returns how many were added.
    pub async fn restore_holders(
        &self,
        campaign: &CampaignId,
        users: &[&String],
    ) -> Result<u64, RedisStateError> {
        let set = CampaignKeys::new(campaign).users();
        let mut added = 0;
        for chunk in users.chunks(1000) {
            let set = set.clone();
            added += self
                .run(|mut conn| async move { conn.sadd::<_, _, u64>(set, chunk).await })
                .await?;
        }
        Ok(added)
    }

    /// Rebuild, step one: replaces the set and the counter with `users`,
    /// and drops the claims (a rebuilt slot has no admission request a
    /// withdrawal could name).
    /// The meta must be absent meanwhile (the api admits nobody without it);
    /// [`RedisState::load_meta`] comes last.
    pub async fn replace_holders(
        &self,
        campaign: &CampaignId,
        users: &[String],
    ) -> Result<(), RedisStateError> {
        let keys = CampaignKeys::new(campaign);
        let (set, counter, claims) = (keys.users(), keys.issued(), keys.claims());
        self.run(|mut conn| {
            let (set, counter) = (set.clone(), counter.clone());
            async move {
                redis::pipe()
                    .del(&set)
                    .del(&counter)
                    .del(&claims)
                    .query_async::<()>(&mut conn)
                    .await
            }
        })
        .await?;
        for chunk in users.chunks(1000) {
            let set = set.clone();
            self.run(|mut conn| async move { conn.sadd::<_, _, ()>(set, chunk).await })
                .await?;
        }
        let count = users.len() as i64;
        self.run(|mut conn| async move { conn.set::<_, _, ()>(counter, count).await })
            .await
    }
}
