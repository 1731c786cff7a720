//! Reconciliation and rebuild (issuer-worker), under the campaign's admin
//! lock: the gate's users read, corrected and replaced.

use redis::AsyncCommands;

use std::time::Duration;

use super::meta::meta_args;
use super::{CampaignMeta, RedisCallError, RedisClient};
use crate::ids::{CampaignId, UserId};
use crate::keys::CampaignKeys;
use crate::scripts;

/// The admin lock a repair holds (`coupon:{c}:admin` and its token): the
/// repair's writes to the slots are fenced on it (`lua/admin_fence.lua`).
#[derive(Debug, Clone)]
pub struct AdminHold {
    pub key: String,
    pub token: String,
}

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
    /// slot or another one (given back and taken again since). Fenced on
    /// the repair's admin lock (`hold`).
    pub async fn give_back_if(
        &self,
        campaign: &CampaignId,
        user: &str,
        coupon: Option<&str>,
        hold: &AdminHold,
    ) -> Result<bool, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let given: i64 = self
            .client
            .run(|mut conn| async move {
                scripts::GIVE_BACK_IF
                    .key(keys.users())
                    .key(keys.taken())
                    .key(keys.slots())
                    .key(&hold.key)
                    .arg(user)
                    .arg(coupon.unwrap_or(""))
                    .arg(&hold.token)
                    .invoke_async(&mut conn)
                    .await
            })
            .await
            .map_err(RedisCallError::or_admin_lock_lost)?;
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
    /// Fenced on the repair's admin lock (`hold`).
    pub async fn fix_count(
        &self,
        campaign: &CampaignId,
        hold: &AdminHold,
    ) -> Result<i64, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        self.client
            .run(|mut conn| async move {
                scripts::FIX_COUNT
                    .key(keys.users())
                    .key(keys.taken())
                    .key(&hold.key)
                    .arg(&hold.token)
                    .invoke_async(&mut conn)
                    .await
            })
            .await
            .map_err(RedisCallError::or_admin_lock_lost)
    }

    /// Reconcile's repair of phantoms: users with a row but no slot get
    /// their slot back (the counter is fixed afterwards with
    /// [`Repair::fix_count`]). Returns how many were added. Fenced on the
    /// repair's admin lock (`hold`).
    pub async fn restore(
        &self,
        campaign: &CampaignId,
        users: &[&String],
        hold: &AdminHold,
    ) -> Result<u64, RedisCallError> {
        let set = CampaignKeys::new(campaign).users();
        let mut added = 0;
        for chunk in users.chunks(1000) {
            let set = set.clone();
            added += self
                .client
                .run(|mut conn| async move {
                    scripts::RESTORE
                        .key(set)
                        .key(&hold.key)
                        .arg(&hold.token)
                        .arg(chunk)
                        .invoke_async::<u64>(&mut conn)
                        .await
                })
                .await
                .map_err(RedisCallError::or_admin_lock_lost)?;
        }
        Ok(added)
    }

    /// Rebuild, first step: makes `token` the campaign's rebuild under
    /// way, replacing any other's (one that lost its admin lock to a Redis
    /// restart or a pause past the lease can then no longer install
    /// anything). Kept `REBUILD_TTL` at most: a rebuild that dies leaves
    /// nothing for ever.
    pub async fn begin_rebuild(
        &self,
        campaign: &CampaignId,
        token: &str,
    ) -> Result<(), RedisCallError> {
        let key = CampaignKeys::new(campaign).rebuild();
        self.client
            .run(|mut conn| async move {
                conn.set_ex::<_, _, ()>(key, token, REBUILD_TTL.as_secs())
                    .await
            })
            .await
    }

    /// Whether `token` is still the campaign's rebuild under way.
    pub async fn is_rebuilding(
        &self,
        campaign: &CampaignId,
        token: &str,
    ) -> Result<bool, RedisCallError> {
        let key = CampaignKeys::new(campaign).rebuild();
        let current: Option<String> = self
            .client
            .run(|mut conn| async move { conn.get(key).await })
            .await?;
        Ok(current.as_deref() == Some(token))
    }

    /// Deletes what a rebuild that failed staged (best effort: its TTL
    /// ends it otherwise).
    pub async fn unstage(&self, campaign: &CampaignId, token: &str) {
        let key = CampaignKeys::new(campaign).rebuild_users(token);
        if let Err(e) = self
            .client
            .run(|mut conn| async move { conn.del::<_, ()>(key).await })
            .await
        {
            tracing::debug!(campaign.id = %campaign, error = %e, "staged users not deleted; their TTL ends them");
        }
    }

    /// Rebuild, second step: stages the users it keeps under its token,
    /// beside the campaign's set (which the api may still read).
    pub async fn stage(
        &self,
        campaign: &CampaignId,
        token: &str,
        users: &[String],
    ) -> Result<(), RedisCallError> {
        let staged = CampaignKeys::new(campaign).rebuild_users(token);
        for chunk in users.chunks(1000) {
            let staged = staged.clone();
            self.client
                .run(|mut conn| async move {
                    redis::pipe()
                        .sadd(&staged, chunk)
                        .ignore()
                        .expire(&staged, REBUILD_TTL.as_secs() as i64)
                        .ignore()
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await?;
        }
        Ok(())
    }

    /// Rebuild, last step (`lua/rebuild_install.lua`), at once: the staged
    /// users become the set, the count their number, the slots' coupon ids
    /// are dropped (a rebuilt slot has no take a withdrawal could name),
    /// each of `dropped` whose slot is still the one the rebuild saw gets
    /// its record, and `meta` is loaded with this server's epoch, which
    /// unfences the campaign. Refused, with nothing written, unless the
    /// server is still `server` (the one the rebuild started on), the
    /// campaign's rebuild token is still `token`, and its meta is still
    /// fenced or missing.
    ///
    /// `archived`: for a campaign an operator archived
    /// (`campaigns.archived_at`), the count to keep; its staged users are
    /// deleted instead of loaded, so its set and slots stay archived.
    pub async fn install(
        &self,
        campaign: &CampaignId,
        rebuild: &RebuildId<'_>,
        meta: &CampaignMeta,
        dropped: &[DroppedSlot],
        status_ttl_secs: u64,
        archived: Option<u64>,
    ) -> Result<Installed, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let args = meta_args(meta);
        let reply: (String, redis::Value) = self
            .client
            .run_on(|mut conn, known| {
                let known = known.to_owned();
                let mut call = scripts::REBUILD_INSTALL.key(keys.meta());
                call.key(keys.users())
                    .key(keys.taken())
                    .key(keys.slots())
                    .key(keys.rebuild())
                    .key(keys.rebuild_users(rebuild.token))
                    .key(keys.closed());
                for slot in dropped {
                    call.key(keys.status(&slot.user));
                }
                call.arg(&args[..])
                    .arg(known)
                    .arg(rebuild.server)
                    .arg(rebuild.token)
                    .arg(status_ttl_secs)
                    .arg(archived.map(|n| n.to_string()).unwrap_or_default());
                for slot in dropped {
                    call.arg(slot.user.as_str())
                        .arg(slot.coupon.as_deref().unwrap_or(""))
                        .arg(&slot.record);
                }
                async move { call.invoke_async(&mut conn).await }
            })
            .await?;
        match reply {
            (done, redis::Value::Int(recorded)) if done == "installed" => Ok(Installed::Done {
                recorded: recorded.max(0) as u64,
            }),
            (refused, redis::Value::BulkString(why)) if refused == "refused" => {
                Ok(Installed::Refused(match why.as_slice() {
                    b"server" => NotInstalled::Server,
                    b"superseded" => NotInstalled::Superseded,
                    _ => NotInstalled::Current,
                }))
            }
            other => Err(RedisCallError::Protocol(format!(
                "rebuild install replied {other:?}"
            ))),
        }
    }
}

/// How long a rebuild's token and staged users are kept at most: far past
/// any rebuild (the settle wait, a topic read of up to 5 minutes, a slow
/// database), short enough that one that died leaves nothing for long. A
/// rebuild that outlives it is refused as `Superseded` and the next
/// attempt starts over.
pub const REBUILD_TTL: Duration = Duration::from_secs(3600);

/// Which rebuild this is: its token and the server it started on.
#[derive(Debug, Clone, Copy)]
pub struct RebuildId<'a> {
    pub token: &'a str,
    pub server: &'a str,
}

/// A slot a rebuild drops, as it saw it, and the record its user gets.
#[derive(Debug, Clone)]
pub struct DroppedSlot {
    pub user: UserId,
    /// The coupon id the slot named; `None` for a rebuilt slot.
    pub coupon: Option<String>,
    /// The record (JSON) for `/coupons/me`.
    pub record: String,
}

/// What became of a rebuild's install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The state is in place; `recorded` users got their record.
    Done { recorded: u64 },
    /// Nothing was written.
    Refused(NotInstalled),
}

/// Why a rebuild's install wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotInstalled {
    /// Redis answers from another server than the one the rebuild started
    /// on: its state would be built on that server's predecessor.
    Server,
    /// A rebuild that started after this one took over the campaign (or
    /// this one outlived `REBUILD_TTL`).
    Superseded,
    /// The campaign is unfenced already (a rebuild that started later
    /// finished first is `Superseded`; this is a state loaded some other
    /// way), and takes counted on its state since.
    Current,
}

impl std::fmt::Display for NotInstalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Server => "Redis changed servers while the rebuild ran",
            Self::Superseded => "a rebuild that started later took the campaign over",
            Self::Current => "the campaign was unfenced meanwhile",
        })
    }
}
