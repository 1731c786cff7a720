//! The lock strategies' calls: the separate, non-atomic commands of their
//! critical section (each one round trip; only a lock makes them a unit),
//! and the scripts and keys of the locks themselves.

use chrono::DateTime;
use redis::AsyncCommands;

use super::RoomRules;
use super::meta::NO_END;
use super::{CampaignMeta, RedisState, RedisStateError, Refusal};
use crate::ids::{CampaignId, UserId};
use crate::keys::CampaignKeys;

impl RedisState {
    /// `HMGET meta` and `TIME` (one round trip, two commands): the meta, or
    /// `None` when it is missing, and the server's time in ms.
    pub async fn read_meta(
        &self,
        campaign: &CampaignId,
    ) -> Result<(Option<CampaignMeta>, i64), RedisStateError> {
        let keys = CampaignKeys::new(campaign);
        let (fields, time): (Vec<Option<String>>, (i64, i64)) = self
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
            .map_err(|_| RedisStateError::Protocol("HMGET arity".into()))?
        else {
            return Ok((None, now_ms));
        };
        let parse = |v: &str| {
            v.parse::<i64>()
                .map_err(|_| RedisStateError::Protocol(format!("meta field {v:?}")))
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

    /// Read-only look before a lock (one pipeline): `Some(Duplicate)` if the
    /// user holds a slot, `Some(SoldOut)` if the count reached the stock,
    /// `None` otherwise (meta missing included: the locked section decides).
    pub async fn precheck(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<Option<Refusal>, RedisStateError> {
        let keys = CampaignKeys::new(campaign);
        let (member, stock, issued): (bool, Option<i64>, Option<i64>) = self
            .run(|mut conn| async move {
                redis::pipe()
                    .sismember(keys.users(), user.as_str())
                    .hget(keys.meta(), "stock")
                    .get(keys.issued())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(if member {
            Some(Refusal::Duplicate)
        } else if stock.is_some_and(|s| issued.unwrap_or(0) >= s) {
            Some(Refusal::SoldOut)
        } else {
            None
        })
    }

    /// The gate's count (`GET issued`, 0 when absent).
    pub async fn count(&self, campaign: &CampaignId) -> Result<i64, RedisStateError> {
        let key = CampaignKeys::new(campaign).issued();
        let n: Option<i64> = self
            .run(|mut conn| async move { conn.get(key).await })
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Runs any script with the command timeout (locks, tests).
    pub async fn run_script<T: redis::FromRedisValue + Send + 'static>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, RedisStateError> {
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(*k);
        }
        for a in args {
            invocation.arg(*a);
        }
        self.run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// `SET key value NX PX ms`: `true` when set.
    pub async fn set_nx_px(
        &self,
        key: &str,
        value: &str,
        ms: u64,
    ) -> Result<bool, RedisStateError> {
        let reply: Option<String> = self
            .run(|mut conn| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(reply.is_some())
    }
}
