//! The per-user status records read by `/coupons/me`: the state of a
//! request that is not (yet) a row.

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::{RedisCallError, RedisClient};
use crate::ids::{CampaignId, CouponId, UserId};
use crate::keys::CampaignKeys;
use crate::scripts;

/// The state of one user's request that is not yet (or never will be) a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedState {
    Queued,
    Pending,
    /// A final refusal of a request that was answered `queued` or `pending`;
    /// `outcome` says why.
    Rejected,
    /// A `pending` request that the system of record turned away: the user
    /// has no coupon.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub state: RecordedState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_id: Option<CouponId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    pub at: DateTime<Utc>,
}

/// The status records, kept `ttl_secs`.
#[derive(Debug, Clone)]
pub struct StatusRecords {
    client: RedisClient,
    ttl_secs: u64,
}

impl StatusRecords {
    pub fn new(client: RedisClient, ttl_secs: u64) -> Self {
        Self { client, ttl_secs }
    }

    /// Records the asynchronous state of a user's request, with the TTL,
    /// unless the user has a slot another request took (one naming another
    /// coupon id than `record.coupon_id`): news of an older request never
    /// hides a newer slot (`lua/record_status.lua`). `Ok(false)`: left out.
    pub async fn record(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        record: &StatusRecord,
    ) -> Result<bool, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let value = serde_json::to_string(record).unwrap_or_default();
        let coupon = record.coupon_id.map(|c| c.to_string()).unwrap_or_default();
        let ttl = self.ttl_secs;
        let recorded: i64 = self
            .client
            .run(|mut conn| async move {
                scripts::RECORD_STATUS
                    .key(keys.status(user))
                    .key(keys.users())
                    .key(keys.slots())
                    .arg(user.as_str())
                    .arg(coupon)
                    .arg(value)
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(recorded == 1)
    }

    pub async fn read(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<Option<StatusRecord>, RedisCallError> {
        let key = CampaignKeys::new(campaign).status(user);
        let raw: Option<String> = self
            .client
            .run(|mut conn| async move { conn.get(key).await })
            .await?;
        // A record that does not parse is treated as absent: the row in
        // PostgreSQL and the gate's set still answer the question.
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_records_round_trip_as_json() {
        let r = StatusRecord {
            state: RecordedState::Pending,
            coupon_id: Some(CouponId::new()),
            outcome: None,
            at: Utc::now(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"state\":\"pending\""), "{json}");
        assert_eq!(serde_json::from_str::<StatusRecord>(&json).unwrap(), r);
    }
}
