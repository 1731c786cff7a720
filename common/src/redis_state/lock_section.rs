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
    /// No meta (a rebuild deleted it): nothing was written.
    Missing,
    /// The campaign's state is fenced (`lua/fence.lua`): nothing was written.
    Stale,
}

/// What the look before a lock found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precheck {
    /// Worth queueing for the lock.
    Go,
    Refused(Refusal),
    /// The campaign's state is fenced (`lua/fence.lua`).
    Stale,
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

    /// The look before a lock (one pipeline): a refusal if the user has a
    /// slot or the count reached the stock, `Stale` if the campaign's state
    /// is fenced (`lua/fence.lua`), else `Go` (meta missing included: the
    /// section decides).
    pub async fn precheck(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<Precheck, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let (member, stock, epoch, taken, server): (
            bool,
            Option<i64>,
            Option<String>,
            Option<i64>,
            String,
        ) = self
            .client
            .run_on(|mut conn, server| {
                let server = server.to_owned();
                async move {
                    let (member, meta, taken): (bool, (Option<i64>, Option<String>), Option<i64>) =
                        redis::pipe()
                            .sismember(keys.users(), user.as_str())
                            .cmd("HMGET")
                            .arg(keys.meta())
                            .arg("stock")
                            .arg("epoch")
                            .get(keys.taken())
                            .query_async(&mut conn)
                            .await?;
                    Ok((member, meta.0, meta.1, taken, server))
                }
            })
            .await?;
        // In Redis Cluster (no server known here) the fenced take decides.
        if stock.is_some() && !server.is_empty() && epoch.as_deref() != Some(server.as_str()) {
            return Ok(Precheck::Stale);
        }
        Ok(if member {
            Precheck::Refused(Refusal::Duplicate)
        } else if stock.is_some_and(|s| taken.unwrap_or(0) >= s) {
            Precheck::Refused(Refusal::SoldOut)
        } else {
            Precheck::Go
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
            .run_on(|mut conn, server| {
                let mut invocation = scripts::LOCKED_TAKE.prepare_invoke();
                for key in [
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
                ] {
                    invocation.key(key);
                }
                invocation
                    .arg(token)
                    .arg(user.as_str())
                    .arg(coupon.to_string())
                    .arg(server);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        match reply.as_str() {
            "taken" => Ok(FencedTake::Taken),
            "withdrawn" => Ok(FencedTake::Withdrawn),
            "lost" => Ok(FencedTake::Lost),
            "missing" => Ok(FencedTake::Missing),
            "stale" => Ok(FencedTake::Stale),
            other => match Refusal::from_word(other) {
                Some(refusal) => Ok(FencedTake::Refused(refusal)),
                None => Err(RedisCallError::Protocol(format!(
                    "locked take replied {other:?}"
                ))),
            },
        }
    }
}
