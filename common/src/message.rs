//! The Kafka message contract: `coupon.issue.v1` and its dead-letter topic.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{CampaignId, CouponId, UserId};

/// Version written in every message's `v` field.
pub const MESSAGE_VERSION: u32 = 1;

/// Header on a dead-lettered message saying why it was set aside.
pub const DLQ_REASON_HEADER: &str = "dlq.reason";
/// Header with a human-readable detail (parse error text and the like).
pub const DLQ_DETAIL_HEADER: &str = "dlq.detail";
/// Headers saying where the original message came from.
pub const DLQ_SOURCE_TOPIC_HEADER: &str = "dlq.source.topic";
pub const DLQ_SOURCE_PARTITION_HEADER: &str = "dlq.source.partition";
pub const DLQ_SOURCE_OFFSET_HEADER: &str = "dlq.source.offset";
/// Header on a dead letter whose original was too large to set aside whole:
/// the original's size in bytes. The letter's payload is then only the
/// original's first bytes; the whole original stays at its source position
/// (until the topic's retention removes it) and cannot be re-driven.
pub const DLQ_TRUNCATED_HEADER: &str = "dlq.truncated";

/// One issuance: the gate gave `user_id` a slot in `campaign_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponIssued {
    pub v: u32,
    pub coupon_id: CouponId,
    pub campaign_id: CampaignId,
    pub user_id: UserId,
    pub requested_at: DateTime<Utc>,
    pub strategy: String,
}

impl CouponIssued {
    pub fn new(
        coupon_id: CouponId,
        campaign_id: CampaignId,
        user_id: UserId,
        requested_at: DateTime<Utc>,
        strategy: &str,
    ) -> Self {
        Self {
            v: MESSAGE_VERSION,
            coupon_id,
            campaign_id,
            user_id,
            requested_at,
            strategy: strategy.to_owned(),
        }
    }

    /// `<campaign_id>:<user_id>`: every message of one user in one campaign
    /// lands on the same partition, in order.
    pub fn key(&self) -> String {
        message_key(&self.campaign_id, &self.user_id)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain owned fields into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let message: Self = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
        if message.v != MESSAGE_VERSION {
            return Err(DecodeError::UnsupportedVersion(message.v));
        }
        Ok(message)
    }
}

pub fn message_key(campaign_id: &CampaignId, user_id: &UserId) -> String {
    format!("{campaign_id}:{user_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed message: {0}")]
    Malformed(serde_json::Error),
    #[error("unsupported message version {0}")]
    UnsupportedVersion(u32),
}

/// Why the worker dead-lettered a message. The string form is the value of
/// the [`DLQ_REASON_HEADER`] and a metric label (bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DlqReason {
    /// Not JSON, wrong fields or an unknown version.
    Unparseable,
    /// The campaign does not exist in PostgreSQL.
    UnknownCampaign,
    /// Persisting it would exceed the campaign's stock: the gate failed.
    OverStock,
    /// Its coupon id is already the id of another user's row.
    CouponIdTaken,
    /// PostgreSQL refused its values (a data or constraint error that
    /// persists when the message is written alone).
    RejectedByDatabase,
    /// It reached the topic after its campaign's takes were settled without
    /// it (`reconcile --repair` gave its slot back, or a rebuild left it out:
    /// a cutoff in `campaign_cutoffs`). Only a message whose delivery was
    /// never confirmed can be late, so its user was told `pending`.
    Late,
}

impl DlqReason {
    /// A message dead-lettered for this reason had its slot taken and was
    /// answered (`accepted`, `pending` or `queued`) but ends without a
    /// coupon; the worker records that for `/coupons/me`.
    pub fn turns_away_a_promised_user(&self) -> bool {
        matches!(
            self,
            Self::OverStock | Self::CouponIdTaken | Self::RejectedByDatabase | Self::Late
        )
    }

    pub const ALL: [DlqReason; 6] = [
        Self::Unparseable,
        Self::UnknownCampaign,
        Self::OverStock,
        Self::CouponIdTaken,
        Self::RejectedByDatabase,
        Self::Late,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unparseable => "unparseable",
            Self::UnknownCampaign => "unknown_campaign",
            Self::OverStock => "over_stock",
            Self::CouponIdTaken => "coupon_id_taken",
            Self::RejectedByDatabase => "rejected_by_database",
            Self::Late => "late",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CouponIssued {
        CouponIssued::new(
            CouponId::new(),
            CampaignId::new(),
            UserId::parse("alice").unwrap(),
            Utc::now(),
            "sync",
        )
    }

    #[test]
    fn encodes_the_documented_fields_and_round_trips() {
        let m = sample();
        let json: serde_json::Value = serde_json::from_slice(&m.encode()).unwrap();
        let mut fields: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "campaign_id",
                "coupon_id",
                "requested_at",
                "strategy",
                "user_id",
                "v"
            ]
        );
        assert_eq!(CouponIssued::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn key_is_campaign_colon_user() {
        let m = sample();
        assert_eq!(m.key(), format!("{}:alice", m.campaign_id));
    }

    #[test]
    fn refuses_other_versions_and_bad_user_ids() {
        let mut json: serde_json::Value = serde_json::from_slice(&sample().encode()).unwrap();
        json["v"] = 2.into();
        assert!(matches!(
            CouponIssued::decode(json.to_string().as_bytes()),
            Err(DecodeError::UnsupportedVersion(2))
        ));
        json["v"] = 1.into();
        json["user_id"] = "has space".into();
        assert!(CouponIssued::decode(json.to_string().as_bytes()).is_err());
        assert!(CouponIssued::decode(b"not json").is_err());
    }
}
