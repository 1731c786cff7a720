//! The gate: a campaign's slots. `lua/gate.lua` takes a slot (every check
//! before the first write), `lua/withdraw.lua` settles a take whose reply
//! was lost, `lua/give_back.lua` gives a slot back; the reads count the
//! slots taken and say whose they are.

use std::time::Duration;

use redis::AsyncCommands;

use super::{AdminHold, RedisCallError, RedisClient};
use crate::ids::{CampaignId, CouponId, UserId};
use crate::keys::CampaignKeys;
use crate::scripts;

/// A refusal that is a normal business answer, not a failure: the one type
/// for it, from the scripts' words to the HTTP status
/// (`api::error::ApiError::Refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user already has a slot (issued, pending or queued).
    Duplicate,
    /// No stock left; nothing was written.
    SoldOut,
    /// Before `starts_at`.
    NotOpen,
    /// After `ends_at`, or closed by an admin.
    Closed,
    /// The campaign has a waiting room that has not admitted the user
    /// (never joined, still waiting, or its admission expired).
    NotAdmitted,
}

impl Refusal {
    pub const ALL: [Self; 5] = [
        Self::Duplicate,
        Self::SoldOut,
        Self::NotOpen,
        Self::Closed,
        Self::NotAdmitted,
    ];

    /// The snake_case word of replies, metrics and scripts.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::SoldOut => "sold_out",
            Self::NotOpen => "not_open",
            Self::Closed => "closed",
            Self::NotAdmitted => "not_admitted",
        }
    }

    /// The refusal a script reply names, if any.
    pub fn from_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == word)
    }
}

/// What the gate script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateReply {
    /// A slot was taken for the user; behind a waiting room, `waited` is how
    /// long the user waited between joining and being admitted.
    Taken {
        waited: Option<Duration>,
    },
    Refused(Refusal),
    /// No meta: the campaign is unknown to Redis (unknown, or its state lost).
    Missing,
    /// The campaign's state was loaded on another Redis server (this one
    /// restarted, or took over from another): fenced until the gate keeper
    /// rebuilds it (`lua/fence.lua`). Nothing was written.
    Stale,
    /// The request was withdrawn ([`Gate::withdraw`]) before Redis ran it;
    /// nothing was written.
    Withdrawn,
}

impl GateReply {
    fn from_script(reply: &str) -> Result<Self, RedisCallError> {
        if let Some(ms) = reply.strip_prefix("taken:") {
            let ms = ms
                .parse()
                .map_err(|_| RedisCallError::Protocol(reply.to_owned()))?;
            return Ok(Self::Taken {
                waited: Some(Duration::from_millis(ms)),
            });
        }
        Ok(match reply {
            "taken" => Self::Taken { waited: None },
            "missing" => Self::Missing,
            "stale" => Self::Stale,
            "withdrawn" => Self::Withdrawn,
            other => match Refusal::from_word(other) {
                Some(refusal) => Self::Refused(refusal),
                None => return Err(RedisCallError::Protocol(other.to_owned())),
            },
        })
    }
}

/// What withdrawing a take did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// It had taken a slot: the slot was given back.
    GivenBack,
    /// It had not run: it never will take one.
    Voided,
}

/// What a re-drive's slot check found (`lua/redrive_take.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedriveSlot {
    /// The user still holds the slot naming the message's coupon id.
    Held,
    /// A slot was taken for it now.
    Taken,
    /// (Dry run) a slot would be taken.
    WouldTake,
    /// The user holds a slot another request took.
    OtherSlot,
    /// No slot left to take.
    SoldOut,
    /// The user holds the slot, but the gate has taken more than the stock.
    OverTaken,
    /// No meta: the gate state is not loaded.
    Missing,
    /// The gate state is fenced until rebuilt.
    Stale,
    /// Slots are counted but the users set is gone (an archive): the gate
    /// cannot tell whether the user's slot is counted.
    Archived,
}

impl RedriveSlot {
    fn from_script(reply: &str) -> Result<Self, RedisCallError> {
        Ok(match reply {
            "held" => Self::Held,
            "taken" => Self::Taken,
            "would_take" => Self::WouldTake,
            "other_slot" => Self::OtherSlot,
            "sold_out" => Self::SoldOut,
            "over_taken" => Self::OverTaken,
            "missing" => Self::Missing,
            "stale" => Self::Stale,
            "archived" => Self::Archived,
            other => return Err(RedisCallError::Protocol(other.to_owned())),
        })
    }
}

/// How long a void mark outlives the request it voids: far beyond any wait
/// of a command in Redis's input buffer.
const VOID_TTL_SECS: u64 = 600;

/// A campaign's slots (see the module's doc).
#[derive(Debug, Clone)]
pub struct Gate {
    client: RedisClient,
}

impl Gate {
    pub fn new(client: RedisClient) -> Self {
        Self { client }
    }

    /// Runs the gate script for one take: a slot taken names `coupon`. On
    /// `Err(RedisCallError::Timeout)` the slot may have been taken (or may
    /// still be): [`Gate::withdraw`] settles which.
    pub async fn take(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        coupon: &CouponId,
    ) -> Result<GateReply, RedisCallError> {
        let mut replies = self.take_batch(campaign, &[(user, coupon)]).await?;
        replies
            .pop()
            .ok_or_else(|| RedisCallError::Protocol("the gate answered no take".into()))
    }

    /// Runs the gate script for a batch of takes of one campaign, in order,
    /// in one call: one reply per take, in the same order (a later take sees
    /// what the earlier ones wrote). On an error every take of the batch is
    /// as one take's call that failed so: on `Err(RedisCallError::Timeout)`
    /// each may have taken its slot, and is withdrawn by its own coupon id.
    pub async fn take_batch(
        &self,
        campaign: &CampaignId,
        takes: &[(&UserId, &CouponId)],
    ) -> Result<Vec<GateReply>, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let room = keys.room();
        let mut invocation = scripts::GATE.prepare_invoke();
        invocation
            .key(keys.meta())
            .key(keys.users())
            .key(keys.taken())
            .key(keys.slots())
            .key(&room.all()[..]);
        for (user, coupon) in takes {
            invocation.key(keys.status(user)).key(keys.void(coupon));
        }
        let replies: Vec<String> = self
            .client
            .run_on(|mut conn, server| {
                invocation.arg(server);
                for (user, coupon) in takes {
                    invocation.arg(user.as_str()).arg(coupon.to_string());
                }
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        if replies.len() != takes.len() {
            return Err(RedisCallError::Protocol(format!(
                "the gate answered {} takes of {}",
                replies.len(),
                takes.len()
            )));
        }
        replies.iter().map(|r| GateReply::from_script(r)).collect()
    }

    /// A re-drive's slot: the user must hold the slot naming `coupon`, or
    /// one is taken for it now (`hold: None`, a dry run: only said), within
    /// the stock and whatever the window, a close or a waiting room
    /// (`lua/redrive_take.lua`), fenced on the re-drive's admin lock
    /// (`hold`). A timed-out call may have taken the slot: the caller
    /// leaves it to reconciliation.
    pub async fn redrive_take(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        coupon: &CouponId,
        hold: Option<&AdminHold>,
    ) -> Result<RedriveSlot, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let dry = hold.is_none();
        let (admin, token) = match hold {
            Some(hold) => (hold.key.clone(), hold.token.clone()),
            None => (keys.admin_lock(), String::new()),
        };
        let reply: String = self
            .client
            .run_on(|mut conn, server| {
                let server = server.to_owned();
                async move {
                    scripts::REDRIVE_TAKE
                        .key(keys.meta())
                        .key(keys.users())
                        .key(keys.taken())
                        .key(keys.status(user))
                        .key(keys.slots())
                        .key(admin)
                        .arg(user.as_str())
                        .arg(coupon.to_string())
                        .arg(server)
                        .arg(if dry { "dry" } else { "" })
                        .arg(token)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await
            .map_err(RedisCallError::or_admin_lock_lost)?;
        RedriveSlot::from_script(&reply)
    }

    /// Withdraws the take that named `coupon` and got no reply: gives its
    /// slot back if it was taken, or voids it if Redis has not run it yet.
    /// Either way it ends holding nothing, and a slot the user has from
    /// another request is untouched.
    pub async fn withdraw(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        coupon: &CouponId,
    ) -> Result<Withdrawal, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let reply: String = self
            .client
            .run(|mut conn| async move {
                scripts::WITHDRAW
                    .key(keys.users())
                    .key(keys.taken())
                    .key(keys.slots())
                    .key(keys.void(coupon))
                    .arg(user.as_str())
                    .arg(coupon.to_string())
                    .arg(VOID_TTL_SECS)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match reply.as_str() {
            "given_back" => Ok(Withdrawal::GivenBack),
            "voided" => Ok(Withdrawal::Voided),
            other => Err(RedisCallError::Protocol(other.to_owned())),
        }
    }

    /// Compensation: gives back the user's slot that names `coupon` (the
    /// request's own). `Ok(false)` if the user has none, or another
    /// request's.
    pub async fn give_back(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        coupon: &CouponId,
    ) -> Result<bool, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let given: i64 = self
            .client
            .run(|mut conn| async move {
                scripts::GIVE_BACK
                    .key(keys.users())
                    .key(keys.taken())
                    .key(keys.slots())
                    .arg(user.as_str())
                    .arg(coupon.to_string())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(given == 1)
    }

    /// Archives a closed campaign's users set and slots hash
    /// (`lua/archive.lua`), its close marked in the same step; its meta,
    /// count and mark stay. Returns how many of the two keys it deleted.
    /// Only for a campaign whose row is closed and marked archived
    /// (`campaigns.archived_at`), so that a rebuild keeps it archived; and
    /// only while `hold` still holds the campaign's admin lock
    /// (`RedisCallError::AdminLockLost` otherwise, nothing deleted).
    pub async fn archive(
        &self,
        campaign: &CampaignId,
        hold: &AdminHold,
    ) -> Result<u64, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        self.client
            .run(|mut conn| async move {
                scripts::ARCHIVE
                    .key(keys.meta())
                    .key(keys.closed())
                    .key(keys.users())
                    .key(keys.slots())
                    .key(&hold.key)
                    .arg(&hold.token)
                    .invoke_async(&mut conn)
                    .await
            })
            .await
            .map_err(RedisCallError::or_admin_lock_lost)
    }

    /// The count of slots taken, or `None` when the campaign's meta is
    /// missing.
    pub async fn taken(&self, campaign: &CampaignId) -> Result<Option<i64>, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let (exists, taken): (bool, Option<i64>) = self
            .client
            .run(|mut conn| async move {
                redis::pipe()
                    .exists(keys.meta())
                    .get(keys.taken())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(exists.then(|| taken.unwrap_or(0)))
    }

    /// The coupon id the user's slot names, while the user has the slot (a
    /// slot given back takes its coupon id with it; `give_back.lua`).
    pub async fn slot_coupon(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<Option<CouponId>, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let raw: Option<String> = self
            .client
            .run(|mut conn| async move { conn.hget(keys.slots(), user.as_str()).await })
            .await?;
        // A coupon id that does not parse is none: the set still answers.
        Ok(raw.and_then(|s| CouponId::parse(&s).ok()))
    }

    /// Whether the user has a slot.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replies_map_to_gate_replies() {
        assert_eq!(
            GateReply::from_script("taken").unwrap(),
            GateReply::Taken { waited: None }
        );
        assert_eq!(
            GateReply::from_script("taken:1500").unwrap(),
            GateReply::Taken {
                waited: Some(Duration::from_millis(1500))
            }
        );
        assert!(GateReply::from_script("taken:soon").is_err());
        assert_eq!(
            GateReply::from_script("missing").unwrap(),
            GateReply::Missing
        );
        assert!(GateReply::from_script("maybe").is_err());
    }

    #[test]
    fn refusal_words_round_trip() {
        for refusal in Refusal::ALL {
            assert_eq!(Refusal::from_word(refusal.as_str()), Some(refusal));
        }
        assert_eq!(
            GateReply::from_script("sold_out").unwrap(),
            GateReply::Refused(Refusal::SoldOut)
        );
    }
}
