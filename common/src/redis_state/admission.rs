//! The gate (`lua/gate.lua`: the one admission script), its withdrawal, the
//! compensation that gives a slot back, and the reads of the gate's count and
//! set.

use std::time::Duration;

use redis::AsyncCommands;

use super::{RedisState, RedisStateError};
use crate::ids::{CampaignId, CouponId, UserId};
use crate::keys::CampaignKeys;
use crate::scripts;

/// A refusal that is a normal business answer, not a failure: the one type
/// for it, from the gate script's reply to the HTTP status
/// (`api::error::ApiError::Refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user already holds a slot (issued, pending or queued).
    Duplicate,
    /// No stock left; the user was not marked.
    SoldOut,
    /// Before `starts_at`.
    NotOpen,
    /// After `ends_at`, or closed by an admin.
    Closed,
    /// The campaign has a waiting room that has not let the user in (never
    /// joined, still waiting, or its admission expired).
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
pub enum Admission {
    /// A new slot; behind a waiting room, `waited` is how long the user
    /// waited between joining and being let in.
    Admitted {
        waited: Option<Duration>,
    },
    Refused(Refusal),
    /// No meta: the campaign is unknown to Redis (unknown, or its state lost).
    Missing,
    /// The request was withdrawn ([`RedisState::withdraw`]) before Redis ran
    /// it; nothing was written.
    Withdrawn,
}

impl Admission {
    fn from_script(reply: &str) -> Result<Self, RedisStateError> {
        if let Some(ms) = reply.strip_prefix("admitted:") {
            let ms = ms
                .parse()
                .map_err(|_| RedisStateError::Protocol(reply.to_owned()))?;
            return Ok(Self::Admitted {
                waited: Some(Duration::from_millis(ms)),
            });
        }
        Ok(match reply {
            "admitted" => Self::Admitted { waited: None },
            "missing" => Self::Missing,
            "withdrawn" => Self::Withdrawn,
            other => match Refusal::from_word(other) {
                Some(refusal) => Self::Refused(refusal),
                None => return Err(RedisStateError::Protocol(other.to_owned())),
            },
        })
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

impl RedisState {
    /// The gate; an admission claims `coupon` for the user. On
    /// `Err(RedisStateError::Timeout)` the user may have been admitted (or may
    /// still be): [`RedisState::withdraw`] settles which.
    pub async fn admit(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        coupon: &CouponId,
    ) -> Result<Admission, RedisStateError> {
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
    ) -> Result<Withdrawal, RedisStateError> {
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
            other => Err(RedisStateError::Protocol(other.to_owned())),
        }
    }

    /// Compensation: gives the user's slot back. `Ok(false)` if it held none.
    pub async fn release(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<bool, RedisStateError> {
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

    /// The gate's count, or `None` when the campaign's meta is missing.
    pub async fn issued(&self, campaign: &CampaignId) -> Result<Option<i64>, RedisStateError> {
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

    /// The coupon id the user's admission claimed, while the user holds the
    /// slot (a released slot's claim goes with it; `release.lua`).
    pub async fn claim_of(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<Option<CouponId>, RedisStateError> {
        let keys = CampaignKeys::new(campaign);
        let raw: Option<String> = self
            .run(|mut conn| async move { conn.hget(keys.claims(), user.as_str()).await })
            .await?;
        // A claim that does not parse is no claim: the set still answers.
        Ok(raw.and_then(|s| CouponId::parse(&s).ok()))
    }

    /// Whether the user holds a slot in the gate's set.
    pub async fn holds_slot(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<bool, RedisStateError> {
        let keys = CampaignKeys::new(campaign);
        self.run(|mut conn| async move { conn.sismember(keys.users(), user.as_str()).await })
            .await
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
    fn refusal_words_round_trip() {
        for refusal in Refusal::ALL {
            assert_eq!(Refusal::from_word(refusal.as_str()), Some(refusal));
        }
        assert_eq!(
            Admission::from_script("sold_out").unwrap(),
            Admission::Refused(Refusal::SoldOut)
        );
    }
}
