//! A campaign's meta hash: what the gate checks (stock, window, closed, the
//! waiting room's rules). Its presence means the campaign's gate state is
//! loaded.

use chrono::{DateTime, Utc};
use redis::AsyncCommands;

use super::{RedisCallError, RedisClient};
use crate::ids::CampaignId;
use crate::keys::{CampaignKeys, FENCED_CAMPAIGNS};
use crate::scripts;

/// A campaign's waiting room, as configured at its creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomRules {
    /// Positions admitted per second.
    pub admit_per_second: u32,
    /// How long an admitted user may take to issue before its admission
    /// expires and its place is given to the next.
    pub admission_ttl_secs: u32,
    /// The key of the shuffle of the users who joined before the start.
    pub shuffle_seed: i64,
}

/// `ends_ms` of a campaign without an end. Spelled out rather than a number,
/// so that every number (a pre-1970 end included) is an end.
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

/// A meta as the arguments of `lua/meta.lua`'s `write_meta`: stock,
/// start, end, state, and the waiting room's rate, admission TTL (ms) and
/// seed (three empty strings without a room).
pub(super) fn meta_args(meta: &CampaignMeta) -> [String; 7] {
    let ends_ms = meta
        .ends_at
        .map_or_else(|| NO_END.to_owned(), |t| t.timestamp_millis().to_string());
    let state = if meta.closed { "closed" } else { "open" };
    let [rate, ttl_ms, seed] = meta.room.map_or_else(
        || [String::new(), String::new(), String::new()],
        |r| {
            [
                r.admit_per_second.to_string(),
                (u64::from(r.admission_ttl_secs) * 1000).to_string(),
                r.shuffle_seed.to_string(),
            ]
        },
    );
    [
        meta.stock.to_string(),
        meta.starts_at.timestamp_millis().to_string(),
        ends_ms,
        state.to_owned(),
        rate,
        ttl_ms,
        seed,
    ]
}

/// Where a campaign's gate state stands against the fence
/// (`lua/fence.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochState {
    /// Loaded on this server: it counts.
    Current,
    /// Loaded on another server (a restart, a failover) or fenced for a
    /// rebuild: the scripts refuse it until it is rebuilt.
    Stale,
    /// No meta at all.
    Missing,
}

/// The campaigns' meta hashes.
#[derive(Debug, Clone)]
pub struct CampaignMetas {
    client: RedisClient,
}

impl CampaignMetas {
    pub fn new(client: RedisClient) -> Self {
        Self { client }
    }

    /// Writes a new campaign's meta (and a zero counter if none exists),
    /// with the epoch of the server it is written on: its gate state counts
    /// there (`lua/fence.lua`). `Ok(false)`, with nothing written, when the
    /// campaign has a meta already (`lua/load_meta.lua`): only a rebuild
    /// replaces a campaign's state (`Repair::install`).
    pub async fn load(
        &self,
        campaign: &CampaignId,
        meta: &CampaignMeta,
    ) -> Result<bool, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let args = meta_args(meta);
        let loaded: i64 = self
            .client
            .run_on(|mut conn, server| {
                let server = server.to_owned();
                async move {
                    scripts::LOAD_META
                        .key(keys.meta())
                        .key(keys.taken())
                        .key(keys.closed())
                        .arg(&args[..])
                        .arg(server)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(loaded == 1)
    }

    /// Where a campaign's gate state stands on the server the connection
    /// reaches, and that server's run_id.
    pub async fn epoch_state(
        &self,
        campaign: &CampaignId,
    ) -> Result<(EpochState, String), RedisCallError> {
        let key = CampaignKeys::new(campaign).meta();
        let (state, server): (String, String) = self
            .client
            .run_on(|mut conn, server| {
                let server = server.to_owned();
                async move {
                    scripts::CAMPAIGN_EPOCH
                        .key(key)
                        .arg(server)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        let state = match state.as_str() {
            "current" => EpochState::Current,
            "stale" => EpochState::Stale,
            "missing" => EpochState::Missing,
            other => return Err(RedisCallError::Protocol(format!("epoch state {other:?}"))),
        };
        Ok((state, server))
    }

    /// Fences the campaign for a rebuild (`lua/fence_campaign.lua`): its
    /// scripts answer `stale` until the rebuild's `Repair::install` runs.
    ///
    /// The campaign is added to the gate keeper's hint
    /// ([`FENCED_CAMPAIGNS`]) before the fence, so a rebuild that dies
    /// after the fence leaves it there, and again after it, so that a
    /// keeper that read the epoch just before the fence and clears the
    /// first add keeps the second (`lua/fenced_hints_clear.lua`). (A rebuild
    /// that dies between its fence and the second add, while a keeper
    /// clears the first, leaves the campaign to the keeper's full scan.)
    pub async fn fence(&self, campaign: &CampaignId) -> Result<bool, RedisCallError> {
        self.hint_fenced(campaign).await?;
        let keys = CampaignKeys::new(campaign);
        let fenced: i64 = self
            .client
            .run(|mut conn| async move {
                scripts::FENCE_CAMPAIGN
                    .key(keys.meta())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        self.hint_fenced(campaign).await?;
        Ok(fenced == 1)
    }

    async fn hint_fenced(&self, campaign: &CampaignId) -> Result<(), RedisCallError> {
        let id = campaign.to_string();
        self.client
            .run(|mut conn| async move {
                scripts::FENCED_HINT
                    .key(FENCED_CAMPAIGNS)
                    .arg(id)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// The campaigns in the gate keeper's hint ([`FENCED_CAMPAIGNS`]), and
    /// Redis's time (ms) as it read them.
    pub async fn fenced_hints(&self) -> Result<(i64, Vec<CampaignId>), RedisCallError> {
        let mut reply: Vec<String> = self
            .client
            .run(|mut conn| async move {
                scripts::FENCED_HINTS
                    .key(FENCED_CAMPAIGNS)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if reply.is_empty() {
            return Err(RedisCallError::Protocol("fenced_hints: no time".into()));
        }
        let ids = reply.split_off(1);
        let now = reply[0]
            .parse()
            .map_err(|_| RedisCallError::Protocol(format!("fenced_hints: time {:?}", reply[0])))?;
        Ok((now, ids.iter().filter_map(|id| id.parse().ok()).collect()))
    }

    /// Takes campaigns out of the hint (the keeper found them current),
    /// unless a fence added them again at or after `read_at` (Redis's time
    /// of the keeper's [`CampaignMetas::fenced_hints`], before it read the
    /// epochs).
    pub async fn clear_hints(
        &self,
        campaigns: &[CampaignId],
        read_at: i64,
    ) -> Result<(), RedisCallError> {
        if campaigns.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = campaigns.iter().map(ToString::to_string).collect();
        self.client
            .run(|mut conn| async move {
                scripts::FENCED_HINTS_CLEAR
                    .key(FENCED_CAMPAIGNS)
                    .arg(read_at)
                    .arg(ids)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Closes the gate, and marks the close so that a later load (a
    /// rebuild's) keeps it. `Ok(false)` when the meta is missing.
    pub async fn close(&self, campaign: &CampaignId) -> Result<bool, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let closed: i64 = self
            .client
            .run(|mut conn| async move {
                scripts::CLOSE
                    .key(keys.meta())
                    .key(keys.closed())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(closed == 1)
    }

    /// Deletes the campaign's meta, undoing [`CampaignMetas::load`] when the
    /// database write that should follow it failed.
    pub async fn unload(&self, campaign: &CampaignId) -> Result<(), RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        self.client
            .run(|mut conn| async move { conn.del::<_, ()>(keys.meta()).await })
            .await
    }

    /// Whether the campaign's meta is present (its gate state is loaded).
    pub async fn is_loaded(&self, campaign: &CampaignId) -> Result<bool, RedisCallError> {
        let key = CampaignKeys::new(campaign).meta();
        self.client
            .run(|mut conn| async move { conn.exists(key).await })
            .await
    }

    /// `HMGET meta` and `TIME` (one round trip, two commands): the meta, or
    /// `None` when it is missing, and the server's time in ms.
    pub async fn read(
        &self,
        campaign: &CampaignId,
    ) -> Result<(Option<CampaignMeta>, i64), RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let (fields, time): (Vec<Option<String>>, (i64, i64)) = self
            .client
            .run(|mut conn| async move {
                redis::pipe()
                    .cmd("HMGET")
                    .arg(keys.meta())
                    .arg(&[
                        "stock",
                        "starts_ms",
                        "ends_ms",
                        "state",
                        "wr_rate",
                        "wr_ttl_ms",
                        "wr_seed",
                    ])
                    .cmd("TIME")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let [
            Some(stock),
            Some(starts),
            Some(ends),
            Some(state),
            rate,
            ttl,
            seed,
        ] = <[Option<String>; 7]>::try_from(fields)
            .map_err(|_| RedisCallError::Protocol("HMGET arity".into()))?
        else {
            return Ok((None, now_ms));
        };
        let parse = |v: &str| {
            v.parse::<i64>()
                .map_err(|_| RedisCallError::Protocol(format!("meta field {v:?}")))
        };
        let ends_at = match ends.as_str() {
            NO_END => None,
            ms => Some(DateTime::from_timestamp_millis(parse(ms)?).unwrap_or_default()),
        };
        let room = match (rate, ttl, seed) {
            (Some(rate), Some(ttl), Some(seed)) => Some(RoomRules {
                admit_per_second: parse(&rate)? as u32,
                admission_ttl_secs: (parse(&ttl)? / 1000) as u32,
                shuffle_seed: parse(&seed)?,
            }),
            _ => None,
        };
        let meta = CampaignMeta {
            stock: parse(&stock)?,
            starts_at: DateTime::from_timestamp_millis(parse(&starts)?).unwrap_or_default(),
            ends_at,
            closed: state == "closed",
            room,
        };
        Ok((Some(meta), now_ms))
    }
}
