//! Writing a batch of issuances (slots the gate took) in one transaction.
//!
//! The transaction locks the campaigns of the batch (`FOR UPDATE`, in id
//! order so that two workers never deadlock), reads which (campaign, user)
//! pairs already have a row, and then decides every message:
//! - a pair that has a row, or appears earlier in the batch: a duplicate
//!   (a redelivery), acknowledged and not written again;
//! - a new pair while the campaign has stock left (`stock − persisted`): inserted;
//! - a new pair that reached the topic after its campaign's takes were
//!   settled without it (a cutoff of `campaign_cutoffs`, see [`Cutoffs`]):
//!   `late`, dead-lettered;
//! - a new pair whose coupon id is already another row's (or an earlier
//!   message's of the batch): `coupon_id_taken`, dead-lettered;
//! - a new pair once the campaign is full: `over_stock`, dead-lettered,
//!   because it means the gate took more slots than the stock;
//! - a campaign that does not exist: `unknown_campaign`, dead-lettered.
//!
//! A batch PostgreSQL refuses for its values (SQLSTATE class 22 or 23, see
//! [`is_rejection`]) is not an outage: the consumer writes its messages one
//! by one and dead-letters the ones refused alone (`rejected_by_database`),
//! so one bad message never stalls its partition.
//!
//! The inserts (`ON CONFLICT DO NOTHING`) and the advance of `persisted` commit
//! together, and the table's own constraints (`UNIQUE(campaign_id, user_id)`,
//! `persisted <= stock`) stay the last fence. This is the only writer of
//! `coupons`, and `coupons.campaign_id` has no foreign key: the campaign
//! locked above is the check (migration `m20261206_000001`). The entities in
//! `common::entities` describe these tables; the statements here are written
//! out because they take whole columns as arrays (see [`persist`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use common::ids::CampaignId;
use common::message::{CouponIssued, DlqReason};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, RuntimeErr,
    Statement, TransactionTrait, Value,
};
use uuid::Uuid;

/// What happened to one message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Insert,
    Duplicate,
    Dead(DlqReason),
}

/// A message as consumed: where it sits on the issue topic.
#[derive(Debug, Clone, Copy)]
pub struct Consumed<'a> {
    pub message: &'a CouponIssued,
    pub partition: i32,
    pub offset: i64,
}

/// One cutoff of a campaign, recorded by `reconcile --repair` or a rebuild
/// once the takes made before it had settled (`crate::cutoff`): a message
/// at or beyond `end_offsets[partition]` (the topic's end then) whose
/// `requested_at` is before `requested_before` is `late`. It reached the
/// topic after the settle wait, so its delivery was never confirmed (its
/// user was told `pending`), and the slot it names was given back or left
/// out of the rebuilt gate: persisting it could take a slot twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cutoff {
    pub requested_before: DateTime<Utc>,
    /// Indexed by partition; a partition beyond it did not exist then (0).
    pub end_offsets: Vec<i64>,
}

/// The cutoffs of the campaigns of a batch.
#[derive(Debug, Clone, Default)]
pub struct Cutoffs(HashMap<CampaignId, Vec<Cutoff>>);

impl Cutoffs {
    pub fn add(&mut self, campaign: CampaignId, cutoff: Cutoff) {
        self.0.entry(campaign).or_default().push(cutoff);
    }

    pub fn is_late(&self, c: &Consumed<'_>) -> bool {
        self.0.get(&c.message.campaign_id).is_some_and(|cutoffs| {
            cutoffs.iter().any(|cutoff| {
                let end = usize::try_from(c.partition)
                    .ok()
                    .and_then(|p| cutoff.end_offsets.get(p))
                    .copied()
                    .unwrap_or(0);
                c.message.requested_at < cutoff.requested_before && c.offset >= end
            })
        })
    }
}

/// Decides every message of a batch, given the room left in each known
/// campaign, the (campaign, user) pairs that already have a row, the
/// coupon ids that already have one and the campaigns' cutoffs. Pure, so
/// that the rules can be tested without a database.
pub fn plan(
    messages: &[Consumed<'_>],
    room: &HashMap<CampaignId, i64>,
    existing: &HashSet<(Uuid, String)>,
    taken_ids: &HashSet<Uuid>,
    cutoffs: &Cutoffs,
) -> Vec<Decision> {
    let mut room = room.clone();
    let mut seen: HashSet<(Uuid, &str)> = HashSet::with_capacity(messages.len());
    let mut ids: HashSet<Uuid> = HashSet::with_capacity(messages.len());
    messages
        .iter()
        .map(|c| {
            let m = c.message;
            let campaign = m.campaign_id.as_uuid();
            let user = m.user_id.as_str();
            let Some(left) = room.get_mut(&m.campaign_id) else {
                return Decision::Dead(DlqReason::UnknownCampaign);
            };
            if existing.contains(&(campaign, user.to_owned())) || !seen.insert((campaign, user)) {
                return Decision::Duplicate;
            }
            if cutoffs.is_late(c) {
                return Decision::Dead(DlqReason::Late);
            }
            let id = m.coupon_id.as_uuid();
            if taken_ids.contains(&id) || !ids.insert(id) {
                return Decision::Dead(DlqReason::CouponIdTaken);
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
///
/// Every statement takes whole columns as arrays (`UNNEST`), so its text is
/// the same whatever the batch size and PostgreSQL plans it once per
/// connection. The first version built a multi-row `VALUES` list through the
/// query builder: a new statement, with thousands of parameters, for every
/// batch size, and PostgreSQL spent most of its time planning them (about
/// 1,900 rows/s from 500-row batches on the development machine).
pub async fn persist(
    db: &DatabaseConnection,
    consumed: &[Consumed<'_>],
) -> Result<Vec<Decision>, DbErr> {
    if consumed.is_empty() {
        return Ok(Vec::new());
    }
    let messages: Vec<&CouponIssued> = consumed.iter().map(|c| c.message).collect();
    let mut campaign_ids: Vec<Uuid> = messages.iter().map(|m| m.campaign_id.as_uuid()).collect();
    campaign_ids.sort_unstable();
    campaign_ids.dedup();

    let txn = db.begin().await?;
    let room = lock_campaigns(&txn, &campaign_ids).await?;
    let known: Vec<&CouponIssued> = messages
        .iter()
        .copied()
        .filter(|m| room.contains_key(&m.campaign_id))
        .collect();
    let (existing, taken_ids) = existing_rows(&txn, &known).await?;
    let cutoffs = read_cutoffs(&txn, &campaign_ids).await?;

    let decisions = plan(consumed, &room, &existing, &taken_ids, &cutoffs);
    let inserts: Vec<&CouponIssued> = messages
        .iter()
        .zip(&decisions)
        .filter(|(_, d)| **d == Decision::Insert)
        .map(|(m, _)| *m)
        .collect();
    insert_rows(&txn, &inserts).await?;
    txn.commit().await?;
    Ok(decisions)
}

/// Locks the batch's campaigns (`FOR UPDATE`, in id order, so that two
/// workers never deadlock) and returns the room each has left
/// (`stock − persisted`); a campaign missing here does not exist.
async fn lock_campaigns(
    txn: &DatabaseTransaction,
    campaign_ids: &[Uuid],
) -> Result<HashMap<CampaignId, i64>, DbErr> {
    let locked = txn
        .query_all_raw(statement(
            "SELECT id, stock, persisted FROM campaigns WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            vec![Value::from(campaign_ids.to_vec())],
        ))
        .await?;
    let mut room: HashMap<CampaignId, i64> = HashMap::with_capacity(locked.len());
    for row in &locked {
        let id: Uuid = row.try_get("", "id")?;
        let stock: i64 = row.try_get("", "stock")?;
        let persisted: i64 = row.try_get("", "persisted")?;
        room.insert(id.into(), stock - persisted);
    }
    Ok(room)
}

/// The (campaign, user) pairs of `known` that already have a row, and the
/// coupon ids of `known` that are already some row's.
async fn existing_rows(
    txn: &DatabaseTransaction,
    known: &[&CouponIssued],
) -> Result<(HashSet<(Uuid, String)>, HashSet<Uuid>), DbErr> {
    if known.is_empty() {
        return Ok((HashSet::new(), HashSet::new()));
    }
    let rows = txn
        .query_all_raw(statement(
            "SELECT c.campaign_id, c.user_id FROM coupons c \
             JOIN UNNEST($1::uuid[], $2::text[]) AS b(campaign_id, user_id) \
             ON c.campaign_id = b.campaign_id AND c.user_id = b.user_id",
            vec![
                Value::from(
                    known
                        .iter()
                        .map(|m| m.campaign_id.as_uuid())
                        .collect::<Vec<_>>(),
                ),
                Value::from(
                    known
                        .iter()
                        .map(|m| m.user_id.as_str().to_owned())
                        .collect::<Vec<_>>(),
                ),
            ],
        ))
        .await?;
    let existing = rows
        .iter()
        .map(|r| Ok((r.try_get("", "campaign_id")?, r.try_get("", "user_id")?)))
        .collect::<Result<_, DbErr>>()?;
    let taken = txn
        .query_all_raw(statement(
            "SELECT id FROM coupons WHERE id = ANY($1)",
            vec![Value::from(
                known
                    .iter()
                    .map(|m| m.coupon_id.as_uuid())
                    .collect::<Vec<_>>(),
            )],
        ))
        .await?;
    let taken_ids = taken
        .iter()
        .map(|r| r.try_get("", "id"))
        .collect::<Result<_, DbErr>>()?;
    Ok((existing, taken_ids))
}

/// The campaigns' cutoffs, read under their locks: a cutoff is recorded
/// under the same lock, so a batch either committed before it (and its rows
/// are read by whoever recorded it) or sees it.
pub(crate) async fn read_cutoffs(
    db: &impl ConnectionTrait,
    campaign_ids: &[Uuid],
) -> Result<Cutoffs, DbErr> {
    let mut cutoffs = Cutoffs::default();
    for row in db
        .query_all_raw(statement(
            "SELECT campaign_id, requested_before, end_offsets FROM campaign_cutoffs \
             WHERE campaign_id = ANY($1)",
            vec![Value::from(campaign_ids.to_vec())],
        ))
        .await?
    {
        let campaign: Uuid = row.try_get("", "campaign_id")?;
        cutoffs.add(
            campaign.into(),
            Cutoff {
                requested_before: row.try_get("", "requested_before")?,
                end_offsets: row.try_get("", "end_offsets")?,
            },
        );
    }
    Ok(cutoffs)
}

/// Inserts the rows decided `Insert` and advances their campaigns'
/// `persisted`, in the caller's transaction.
async fn insert_rows(txn: &DatabaseTransaction, inserts: &[&CouponIssued]) -> Result<(), DbErr> {
    if inserts.is_empty() {
        return Ok(());
    }
    let expected = inserts.len() as u64;
    let inserted = txn
        .execute_raw(statement(
            "INSERT INTO coupons (id, campaign_id, user_id, issued_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[]) \
             ON CONFLICT DO NOTHING",
            vec![
                Value::from(
                    inserts
                        .iter()
                        .map(|m| m.coupon_id.as_uuid())
                        .collect::<Vec<_>>(),
                ),
                Value::from(
                    inserts
                        .iter()
                        .map(|m| m.campaign_id.as_uuid())
                        .collect::<Vec<_>>(),
                ),
                Value::from(
                    inserts
                        .iter()
                        .map(|m| m.user_id.as_str().to_owned())
                        .collect::<Vec<_>>(),
                ),
                Value::from(inserts.iter().map(|m| m.requested_at).collect::<Vec<_>>()),
            ],
        ))
        .await?
        .rows_affected();
    if inserted != expected {
        // Under the campaign locks nobody else inserts these pairs, and
        // taken ids were decided above, so a shortfall means a row came in
        // through another door; roll back and retry rather than count rows
        // that do not exist.
        return Err(DbErr::Custom(format!(
            "inserted {inserted} of {expected} coupon rows"
        )));
    }
    let mut added: BTreeMap<Uuid, i64> = BTreeMap::new();
    for m in inserts {
        *added.entry(m.campaign_id.as_uuid()).or_default() += 1;
    }
    txn.execute_raw(statement(
        "UPDATE campaigns c SET persisted = c.persisted + v.n \
         FROM UNNEST($1::uuid[], $2::bigint[]) AS v(id, n) WHERE c.id = v.id",
        vec![
            Value::from(added.keys().copied().collect::<Vec<_>>()),
            Value::from(added.values().copied().collect::<Vec<_>>()),
        ],
    ))
    .await?;
    Ok(())
}

/// Whether PostgreSQL refused the statement for the values it was given
/// (SQLSTATE class 22, data exception, or 23, integrity constraint
/// violation), which no retry changes; anything else (connection lost,
/// timeout, the server shutting down) is an outage worth waiting out.
pub fn is_rejection(error: &DbErr) -> bool {
    let source = match error {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        _ => return false,
    };
    source
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
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

    /// The batch as consumed from partition 0, offsets 0, 1, ...
    fn consumed(batch: &[CouponIssued]) -> Vec<Consumed<'_>> {
        batch
            .iter()
            .zip(0..)
            .map(|(message, offset)| Consumed {
                message,
                partition: 0,
                offset,
            })
            .collect()
    }

    #[test]
    fn a_message_beyond_a_cutoff_requested_before_it_is_late() {
        let c = CampaignId::new();
        let long_ago = |user| {
            let mut m = msg(c, user);
            m.requested_at = Utc::now() - chrono::Duration::seconds(60);
            m
        };
        let mut cutoffs = Cutoffs::default();
        cutoffs.add(
            c,
            Cutoff {
                requested_before: Utc::now() - chrono::Duration::seconds(30),
                end_offsets: vec![1],
            },
        );
        // Offset 0 is below the end the cutoff read: it counts. Offset 1 is
        // beyond it and was requested before the cutoff: late. Offset 2 is
        // beyond it too, but requested since: a take made after the cutoff.
        let batch = [long_ago("read"), long_ago("late"), msg(c, "new")];
        let refs = consumed(&batch);
        assert_eq!(
            plan(
                &refs,
                &HashMap::from([(c, 10)]),
                &HashSet::new(),
                &HashSet::new(),
                &cutoffs
            ),
            [
                Decision::Insert,
                Decision::Dead(DlqReason::Late),
                Decision::Insert
            ]
        );
        // A partition the cutoff did not know (added since) is beyond its end.
        let elsewhere = Consumed {
            partition: 3,
            ..refs[0]
        };
        assert!(cutoffs.is_late(&elsewhere));
    }

    #[test]
    fn inserts_up_to_the_room_and_dead_letters_the_rest() {
        let c = CampaignId::new();
        let batch = [msg(c, "a"), msg(c, "b"), msg(c, "c")];
        let refs = consumed(&batch);
        let decisions = plan(
            &refs,
            &HashMap::from([(c, 2)]),
            &HashSet::new(),
            &HashSet::new(),
            &Cutoffs::default(),
        );
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
        let refs = consumed(&batch);
        let existing = HashSet::from([(c.as_uuid(), "a".to_owned())]);
        let decisions = plan(
            &refs,
            &HashMap::from([(c, 2)]),
            &existing,
            &HashSet::new(),
            &Cutoffs::default(),
        );
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
        let refs = consumed(&batch);
        let existing = HashSet::from([(c.as_uuid(), "a".to_owned())]);
        assert_eq!(
            plan(
                &refs,
                &HashMap::from([(c, 0)]),
                &existing,
                &HashSet::new(),
                &Cutoffs::default()
            ),
            [Decision::Duplicate]
        );
    }

    #[test]
    fn unknown_campaigns_are_dead_lettered_and_campaigns_do_not_share_room() {
        let (c1, c2, unknown) = (CampaignId::new(), CampaignId::new(), CampaignId::new());
        let batch = [msg(c1, "a"), msg(unknown, "a"), msg(c2, "a"), msg(c1, "b")];
        let refs = consumed(&batch);
        let decisions = plan(
            &refs,
            &HashMap::from([(c1, 1), (c2, 1)]),
            &HashSet::new(),
            &HashSet::new(),
            &Cutoffs::default(),
        );
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

    #[test]
    fn a_coupon_id_held_by_another_row_or_message_is_dead_lettered_not_retried() {
        let c = CampaignId::new();
        let first = msg(c, "a");
        let mut reused = msg(c, "b");
        reused.coupon_id = first.coupon_id;
        let elsewhere = msg(c, "c");
        let redelivered = first.clone();
        let batch = [first, reused, elsewhere.clone(), redelivered];
        let refs = consumed(&batch);
        let taken = HashSet::from([elsewhere.coupon_id.as_uuid()]);
        assert_eq!(
            plan(
                &refs,
                &HashMap::from([(c, 10)]),
                &HashSet::new(),
                &taken,
                &Cutoffs::default()
            ),
            [
                Decision::Insert,
                Decision::Dead(DlqReason::CouponIdTaken),
                Decision::Dead(DlqReason::CouponIdTaken),
                Decision::Duplicate
            ]
        );
    }
}
