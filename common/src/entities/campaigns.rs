//! `campaigns`: one row per sale; `persisted` counts its coupon rows and is
//! advanced by the worker in the same transaction as the inserts.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "campaigns")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    pub stock: i64,
    pub persisted: i64,
    pub starts_at: DateTimeUtc,
    pub ends_at: Option<DateTimeUtc>,
    /// `open` or `closed` (by an admin). Scheduled and sold-out are derived.
    pub state: String,
    pub created_at: DateTimeUtc,
    /// The waiting room, if any: all three set, or none.
    pub room_admit_per_second: Option<i32>,
    pub room_admission_ttl_secs: Option<i32>,
    pub room_shuffle_seed: Option<i64>,
    /// When an operator archived the campaign's users and slots from Redis
    /// (closed campaigns only); a rebuild loads it without them.
    pub archived_at: Option<DateTimeUtc>,
}

impl Model {
    /// The campaign's waiting room, if it has one.
    pub fn room(&self) -> Option<crate::redis_state::RoomRules> {
        match (
            self.room_admit_per_second,
            self.room_admission_ttl_secs,
            self.room_shuffle_seed,
        ) {
            (Some(rate), Some(ttl), Some(seed)) => Some(crate::redis_state::RoomRules {
                admit_per_second: u32::try_from(rate).ok()?,
                admission_ttl_secs: u32::try_from(ttl).ok()?,
                shuffle_seed: seed,
            }),
            _ => None,
        }
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::coupons::Entity")]
    Coupons,
}

impl Related<super::coupons::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Coupons.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
