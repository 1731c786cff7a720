//! Reconciliation and rebuild (issuer-worker), under the campaign's admin
//! lock: the gate's users read, corrected and replaced.

use redis::AsyncCommands;

use super::{RedisCallError, RedisClient};
use crate::ids::CampaignId;
use crate::keys::CampaignKeys;
use crate::scripts;

/// The repairs of a campaign's gate.
#[derive(Debug, Clone)]
pub struct Repair {
    client: RedisClient,
}

impl Repair {
    pub fn new(client: RedisClient) -> Self {
        Self { client }
    }

    /// The count of slots taken minus the set's size, read in one
    /// transaction (so that takes going on meanwhile do not show as drift).
    pub async fn count_drift(&self, campaign: &CampaignId) -> Result<i64, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let (taken, members): (Option<i64>, i64) = self
            .client
            .run(|mut conn| async move {
                redis::pipe()
                    .atomic()
                    .get(keys.taken())
                    .scard(keys.users())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(taken.unwrap_or(0) - members)
    }

    /// Every user with a slot and the coupon id its slot names (`None` for
    /// a rebuilt slot), for a repair that must later give back only these
    /// very slots ([`Repair::give_back_if`]).
    pub async fn slots(
        &self,
        campaign: &CampaignId,
    ) -> Result<Vec<(String, Option<String>)>, RedisCallError> {
        let users = self.users(campaign).await?;
        let key = CampaignKeys::new(campaign).slots();
        let mut named = std::collections::HashMap::new();
        let mut cursor: u64 = 0;
        loop {
            let key = key.clone();
            let (next, batch): (u64, Vec<(String, String)>) = self
                .client
                .run(|mut conn| async move {
                    redis::cmd("HSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            named.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(users
            .into_iter()
            .map(|u| {
                let coupon = named.remove(&u);
                (u, coupon)
            })
            .collect())
    }

    /// Gives back the slot `user` had when [`Repair::slots`] saw it, named
    /// `coupon`, if it is still that slot; `Ok(false)` when the user has no
    /// slot or another one (given back and taken again since).
    pub async fn give_back_if(
        &self,
        campaign: &CampaignId,
        user: &str,
        coupon: Option<&str>,
    ) -> Result<bool, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let given: i64 = self
            .client
            .run(|mut conn| async move {
                scripts::GIVE_BACK_IF
                    .key(keys.users())
                    .key(keys.taken())
                    .key(keys.slots())
                    .arg(user)
                    .arg(coupon.unwrap_or(""))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(given == 1)
    }

    /// Every user with a slot (`SSCAN`, so a large set does not block
    /// Redis).
    pub async fn users(&self, campaign: &CampaignId) -> Result<Vec<String>, RedisCallError> {
        let key = CampaignKeys::new(campaign).users();
        let mut users = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let key = key.clone();
            let (next, batch): (u64, Vec<String>) = self
                .client
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
    pub async fn fix_count(&self, campaign: &CampaignId) -> Result<i64, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        self.client
            .run(|mut conn| async move {
                scripts::FIX_COUNT
                    .key(keys.users())
                    .key(keys.taken())
                    .invoke_async(&mut conn)
                    .await
            })
            .await
    }

    /// Reconcile's repair of phantoms: users with a row but no slot get
    /// their slot back (`SADD`; the counter is fixed afterwards with
    /// [`Repair::fix_count`]). Returns how many were added.
    pub async fn restore(
        &self,
        campaign: &CampaignId,
        users: &[&String],
    ) -> Result<u64, RedisCallError> {
        let set = CampaignKeys::new(campaign).users();
        let mut added = 0;
        for chunk in users.chunks(1000) {
            let set = set.clone();
            added += self
                .client
                .run(|mut conn| async move { conn.sadd::<_, _, u64>(set, chunk).await })
                .await?;
        }
        Ok(added)
    }

    /// Rebuild, step one: replaces the set and the counter with `users`,
    /// and drops the slots' coupon ids (a rebuilt slot has no take a
    /// withdrawal could name). The meta must be absent meanwhile (the api
    /// takes no slot without it); `CampaignMetas::load` comes last.
    pub async fn replace(
        &self,
        campaign: &CampaignId,
        users: &[String],
    ) -> Result<(), RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let (set, counter, slots) = (keys.users(), keys.taken(), keys.slots());
        self.client
            .run(|mut conn| {
                let (set, counter) = (set.clone(), counter.clone());
                async move {
                    redis::pipe()
                        .del(&set)
                        .del(&counter)
                        .del(&slots)
                        .query_async::<()>(&mut conn)
                        .await
                }
            })
            .await?;
        for chunk in users.chunks(1000) {
            let set = set.clone();
            self.client
                .run(|mut conn| async move { conn.sadd::<_, _, ()>(set, chunk).await })
                .await?;
        }
        let count = users.len() as i64;
        self.client
            .run(|mut conn| async move { conn.set::<_, _, ()>(counter, count).await })
            .await
    }
}
