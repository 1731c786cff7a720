//! The lock strategies' critical section: its separate, non-atomic reads
//! (each one round trip; only a lock makes them a unit, as in the seed), and
//! its one write, fenced by the lock (`lua/locked_take.lua`).

use redis::AsyncCommands;

use super::{RedisCallError, RedisClient, Refusal};
use crate::ids::{CampaignId, CouponId, UserId};
use crate::keys::CampaignKeys;
use crate::scripts;

/// What a fenced take did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FencedTake {
    Taken,
    /// The user already had a slot, the stock is gone, or the waiting room
    /// has not admitted them; nothing was written.
    Refused(Refusal),
    /// The lock is no longer the caller's; nothing was written.
    Lost,
    /// The request was withdrawn before Redis ran it; nothing was written.
    Withdrawn,
}

/// The section's calls.
#[derive(Debug, Clone)]
pub struct LockSections {
    client: RedisClient,
}

impl LockSections {
    pub fn new(client: RedisClient) -> Self {
        Self { client }
    }

    /// The look before a lock (one pipeline): `Some(Duplicate)` if the user
    /// has a slot, `Some(SoldOut)` if the count reached the stock, `None`
    /// otherwise (meta missing included: the section decides).
    pub async fn precheck(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<Option<Refusal>, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let (member, stock, taken): (bool, Option<i64>, Option<i64>) = self
            .client
            .run(|mut conn| async move {
                redis::pipe()
                    .sismember(keys.users(), user.as_str())
                    .hget(keys.meta(), "stock")
                    .get(keys.taken())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(if member {
            Some(Refusal::Duplicate)
        } else if stock.is_some_and(|s| taken.unwrap_or(0) >= s) {
            Some(Refusal::SoldOut)
        } else {
            None
        })
    }

    /// `SISMEMBER`: whether the user has a slot.
    pub async fn has_slot(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<bool, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        self.client
            .run(|mut conn| async move { conn.sismember(keys.users(), user.as_str()).await })
            .await
    }

    /// `GET taken`: the count of slots taken (0 when absent).
    pub async fn count(&self, campaign: &CampaignId) -> Result<i64, RedisCallError> {
        let key = CampaignKeys::new(campaign).taken();
        let n: Option<i64> = self
            .client
            .run(|mut conn| async move { conn.get(key).await })
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// The section's write, fenced by the lock at `lock_key` held with
    /// `token`: takes a slot for `user` naming `coupon`, only if the lock is
    /// still the caller's, the user has no slot yet and the stock allows.
    /// `keys` must be the campaign whose lock this is. On a timeout the
    /// take may have run: withdraw it by `coupon` (`Gate::withdraw`).
    pub async fn take(
        &self,
        lock_key: &str,
        token: &str,
        keys: &CampaignKeys,
        user: &UserId,
        coupon: &CouponId,
    ) -> Result<FencedTake, RedisCallError> {
        let room = keys.room();
        let room = room.all();
        let reply: String = self
            .client
            .run_script(
                &scripts::LOCKED_TAKE,
                &[
                    lock_key,
                    &keys.users(),
                    &keys.taken(),
                    &keys.status(user),
                    &keys.slots(),
                    &keys.void(coupon),
                    &keys.meta(),
                    room[0],
                    room[1],
                    room[2],
                    room[3],
                    room[4],
                ],
                &[token, user.as_str(), &coupon.to_string()],
            )
            .await?;
        match reply.as_str() {
            "taken" => Ok(FencedTake::Taken),
            "withdrawn" => Ok(FencedTake::Withdrawn),
            "lost" => Ok(FencedTake::Lost),
            other => match Refusal::from_word(other) {
                Some(refusal) => Ok(FencedTake::Refused(refusal)),
                None => Err(RedisCallError::Protocol(format!(
                    "locked take replied {other:?}"
                ))),
            },
        }
    }
}
