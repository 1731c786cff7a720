//! Identifiers, parsed once at the edge and passed around only as valid values.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("campaign id must be a UUID")]
    CampaignNotUuid,
    #[error("coupon id must be a UUID")]
    CouponNotUuid,
    #[error("user id must be 1 to {max} characters", max = UserId::MAX_LEN)]
    UserLength,
    #[error("user id may only contain letters, digits and . _ : @ -")]
    UserCharacters,
}

/// A campaign, identified by a server-generated UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CampaignId(Uuid);

impl CampaignId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| IdError::CampaignNotUuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for CampaignId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for CampaignId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl fmt::Display for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for CampaignId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A coupon; the api generates it before the message is produced, and it
/// becomes the primary key of the row the worker writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CouponId(Uuid);

impl CouponId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| IdError::CouponNotUuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for CouponId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for CouponId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl fmt::Display for CouponId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user: 1–64 characters of `[A-Za-z0-9._:@-]`.
///
/// The alphabet keeps user ids safe inside Redis keys, Kafka keys
/// (`<campaign>:<user>`) and log lines without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(IdError::UserLength);
        }
        if !s.bytes().all(is_user_id_byte) {
            return Err(IdError::UserCharacters);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_user_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-')
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        UserId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_accept_the_documented_alphabet() {
        for ok in ["a", "user-1", "A.b_c:d@e-f", &"x".repeat(64)] {
            assert!(UserId::parse(ok).is_ok(), "{ok:?} should parse");
        }
    }

    #[test]
    fn user_ids_refuse_empty_long_and_foreign_characters() {
        assert_eq!(UserId::parse(""), Err(IdError::UserLength));
        assert_eq!(UserId::parse(&"x".repeat(65)), Err(IdError::UserLength));
        for bad in [
            "a b",
            "a/b",
            "a{b}",
            "ü",
            "a\0",
            "'; drop table coupons; --",
            "a*",
        ] {
            assert_eq!(UserId::parse(bad), Err(IdError::UserCharacters), "{bad:?}");
        }
    }

    #[test]
    fn user_ids_are_validated_when_deserialized() {
        assert!(serde_json::from_str::<UserId>("\"ok-user\"").is_ok());
        assert!(serde_json::from_str::<UserId>("\"not ok\"").is_err());
    }

    #[test]
    fn campaign_ids_must_be_uuids() {
        assert!(CampaignId::parse("0192f0c4-7a51-7cc3-9a35-6b1c0d2e8f10").is_ok());
        assert_eq!(CampaignId::parse("42"), Err(IdError::CampaignNotUuid));
    }
}
