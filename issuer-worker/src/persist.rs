//! Writing a batch of admitted issuances in one transaction.
//!
//! The transaction locks the campaigns of the batch (`FOR UPDATE`, in id
//! order so that two workers never deadlock), reads which (campaign, user)
//! pairs already have a row, and then decides every message:
//! - a pair that has a row, or appears earlier in the batch: a duplicate
//!   (a redelivery), acknowledged and not written again;
//! - a new pair while the campaign has room (`stock − persisted`): inserted;
//! - a new pair once the campaign is full: `over_stock`, dead-lettered,
//!   because it means the gate admitted more than the stock;
//! - a campaign that does not exist: `unknown_campaign`, dead-lettered.
//!
//! The inserts (`ON CONFLICT DO NOTHING`) and the advance of `persisted` commit
//! together, and the table's own constraints (`UNIQUE(campaign_id, user_id)`,
//! `persisted <= stock`) stay the last fence.

use std::collections::{BTreeMap, HashMap, HashSet};

use common::entities::{campaigns, coupons};
use common::ids::CampaignId;
use common::message::{CouponIssued, DlqReason};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};
use uuid::Uuid;

/// What happened to one message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Insert,
    Duplicate,
    Dead(DlqReason),
}

/// Decides every message of a batch, given the room left in each known
/// campaign and the (campaign, user) pairs that already have a row.
/// Pure, so that the rules can be tested without a database.
pub fn plan(
    messages: &[&CouponIssued],
    room: &HashMap<CampaignId, i64>,
    existing: &HashSet<(Uuid, String)>,
) -> Vec<Decision> {
    let mut room = room.clone();
    let mut seen: HashSet<(Uuid, &str)> = HashSet::with_capacity(messages.len());
    messages
        .iter()
        .map(|m| {
            let campaign = m.campaign_id.as_uuid();
            let user = m.user_id.as_str();
            let Some(left) = room.get_mut(&m.campaign_id) else {
                return Decision::Dead(DlqReason::UnknownCampaign);
            };
            if existing.contains(&(campaign, user.to_owned())) || !seen.insert((campaign, user)) {
                return Decision::Duplicate;
            }
            if *left <= 0 {
                return Decision::Dead(DlqReason::OverStock);
            }
            *left -= 1;
            Decision::Insert
        })
        .collect()
}

/// Persists a batch; returns one decision per message, in order. Any error
/// means nothing of the batch was written (the transaction rolled back).
pub async fn persist(
    db: &DatabaseConnection,
    messages: &[&CouponIssued],
) -> Result<Vec<Decision>, DbErr> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let mut users_by_campaign: BTreeMap<Uuid, Vec<&str>> = BTreeMap::new();
    for m in messages {
        users_by_campaign
            .entry(m.campaign_id.as_uuid())
            .or_default()
            .push(m.user_id.as_str());
    }

    let txn = db.begin().await?;

    let locked = campaigns::Entity::find()
        .filter(campaigns::Column::Id.is_in(users_by_campaign.keys().copied()))
        .order_by_asc(campaigns::Column::Id)
        .lock_exclusive()
        .all(&txn)
        .await?;
    let room: HashMap<CampaignId, i64> = locked
        .iter()
        .map(|c| (CampaignId::from(c.id), c.stock - c.persisted))
        .collect();

    let mut any_known = Condition::any();
    for (campaign, users) in &users_by_campaign {
        if room.contains_key(&CampaignId::from(*campaign)) {
            any_known = any_known.add(
                coupons::Column::CampaignId
                    .eq(*campaign)
                    .and(coupons::Column::UserId.is_in(users.iter().copied())),
            );
        }
    }
    let existing: HashSet<(Uuid, String)> = if room.is_empty() {
        HashSet::new()
    } else {
        coupons::Entity::find()
            .select_only()
            .column(coupons::Column::CampaignId)
            .column(coupons::Column::UserId)
            .filter(any_known)
            .into_tuple::<(Uuid, String)>()
            .all(&txn)
            .await?
            .into_iter()
            .collect()
    };

    let decisions = plan(messages, &room, &existing);

    let mut added: BTreeMap<Uuid, i64> = BTreeMap::new();
    let rows: Vec<coupons::ActiveModel> = messages
        .iter()
        .zip(&decisions)
        .filter(|(_, d)| **d == Decision::Insert)
        .map(|(m, _)| {
            *added.entry(m.campaign_id.as_uuid()).or_default() += 1;
            coupons::ActiveModel {
                id: Set(m.coupon_id.as_uuid()),
                campaign_id: Set(m.campaign_id.as_uuid()),
                user_id: Set(m.user_id.as_str().to_owned()),
                issued_at: Set(m.requested_at),
            }
        })
        .collect();

    if !rows.is_empty() {
        let expected = rows.len() as u64;
        let inserted = coupons::Entity::insert_many(rows)
            .on_conflict(OnConflict::new().do_nothing().to_owned())
            .exec_without_returning(&txn)
            .await?;
        if inserted != expected {
            // Under the campaign locks nobody else inserts these pairs, so a
            // shortfall means an id collision; roll back and let the batch
            // be retried rather than count rows that do not exist.
            return Err(DbErr::Custom(format!(
                "inserted {inserted} of {expected} coupon rows"
            )));
        }
        for (campaign, n) in added {
            campaigns::Entity::update_many()
                .col_expr(
                    campaigns::Column::Persisted,
                    Expr::col(campaigns::Column::Persisted).add(n),
                )
                .filter(campaigns::Column::Id.eq(campaign))
                .exec(&txn)
                .await?;
        }
    }

    txn.commit().await?;
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use common::ids::{CouponId, UserId};

    fn msg(campaign: CampaignId, user: &str) -> CouponIssued {
        CouponIssued::new(
            CouponId::new(),
            campaign,
            UserId::parse(user).unwrap(),
            Utc::now(),
            "sync",
        )
    }

    #[test]
    fn inserts_up_to_the_room_and_dead_letters_the_rest() {
        let c = CampaignId::new();
        let batch = [msg(c, "a"), msg(c, "b"), msg(c, "c")];
        let refs: Vec<_> = batch.iter().collect();
        let decisions = plan(&refs, &HashMap::from([(c, 2)]), &HashSet::new());
        assert_eq!(
            decisions,
            [
                Decision::Insert,
                Decision::Insert,
                Decision::Dead(DlqReason::OverStock)
            ]
        );
    }

    #[test]
    fn existing_rows_and_repeats_in_the_batch_are_duplicates_that_spend_no_room() {
        let c = CampaignId::new();
        let batch = [msg(c, "a"), msg(c, "b"), msg(c, "b"), msg(c, "d")];
        let refs: Vec<_> = batch.iter().collect();
        let existing = HashSet::from([(c.as_uuid(), "a".to_owned())]);
        let decisions = plan(&refs, &HashMap::from([(c, 2)]), &existing);
        assert_eq!(
            decisions,
            [
                Decision::Duplicate,
                Decision::Insert,
                Decision::Duplicate,
                Decision::Insert
            ]
        );
    }

    #[test]
    fn a_duplicate_of_a_full_campaign_is_still_a_duplicate_not_over_stock() {
        let c = CampaignId::new();
        let batch = [msg(c, "a")];
        let refs: Vec<_> = batch.iter().collect();
        let existing = HashSet::from([(c.as_uuid(), "a".to_owned())]);
        assert_eq!(
            plan(&refs, &HashMap::from([(c, 0)]), &existing),
            [Decision::Duplicate]
        );
    }

    #[test]
    fn unknown_campaigns_are_dead_lettered_and_campaigns_do_not_share_room() {
        let (c1, c2, unknown) = (CampaignId::new(), CampaignId::new(), CampaignId::new());
        let batch = [msg(c1, "a"), msg(unknown, "a"), msg(c2, "a"), msg(c1, "b")];
        let refs: Vec<_> = batch.iter().collect();
        let decisions = plan(&refs, &HashMap::from([(c1, 1), (c2, 1)]), &HashSet::new());
        assert_eq!(
            decisions,
            [
                Decision::Insert,
                Decision::Dead(DlqReason::UnknownCampaign),
                Decision::Insert,
                Decision::Dead(DlqReason::OverStock)
            ]
        );
    }
}
