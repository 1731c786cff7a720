//! The audit after every run (docs/CONTRACT.md, The audit): once the worker has
//! drained,
//! - rows ≤ stock;
//! - no duplicate (campaign, user);
//! - every user answered `accepted` has a row, and a reply that named a
//!   coupon id named that user's row's;
//! - every row belongs to a user answered accepted, pending or queued;
//! - the gate's count equals the rows;
//! - when demand exceeded stock and nothing failed, rows == stock.
//!
//! Behind a waiting room, the room is audited too ([`judge_room`]): every
//! user with a slot joined the room and was admitted, and no more users have a slot
//! than positions were admitted.
//!
//! Users answered `queued` or `pending` are followed to their final state
//! through `/coupons/me`; one that ends `issued` must have a row. Above
//! [`MAX_FOLLOWED`] such users a random sample is followed (the report says
//! so); the row and count rules above still cover every request.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::seq::IteratorRandom;
use serde::{Deserialize, Serialize};

use crate::admin::{AdminClient, Coupon};
use crate::stats::Outcome;
use crate::token::Minter;

pub const MAX_FOLLOWED: usize = 5_000;
/// `/coupons/me` reads in flight at once while following deferred users.
const FOLLOW_CONCURRENCY: usize = 64;
const EXAMPLES: usize = 5;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditReport {
    pub passed: bool,
    pub failures: Vec<String>,
    pub stock: i64,
    pub rows: u64,
    pub distinct_users: u64,
    pub gate_count: Option<i64>,
    pub persisted_column: i64,
    pub accepted: u64,
    /// Answered `queued` or `pending`.
    pub deferred: u64,
    /// Deferred users whose final state was read (all, or a sample).
    pub deferred_followed: u64,
    pub deferred_finals: BTreeMap<String, u64>,
    pub lost: u64,
    pub lost_examples: Vec<String>,
    pub phantoms: u64,
    pub phantom_examples: Vec<String>,
    /// Replies that named another coupon id than their user's row's.
    #[serde(default)]
    pub wrong_ids: u64,
    /// The worker had not caught up when the audit gave up waiting.
    pub drained: bool,
    pub waited_secs: f64,
    /// The waiting room's audit, when the run went through one.
    #[serde(default)]
    pub room: Option<RoomAudit>,
}

/// What the waiting room's state says after a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RoomAudit {
    pub joined: u64,
    /// Joins before the start (their positions are shuffled).
    pub block: u64,
    /// Positions admitted.
    pub admitted: u64,
    pub slot_users: u64,
    pub failures: Vec<String>,
}

/// The room's rules, on what Redis holds after the run: every user with a
/// slot joined; users with a slot ≤ positions admitted; one who joined after the start
/// (position = join number) was within the positions admitted. (Users of the
/// shuffled block are covered by the count; the api's tests check the
/// shuffle itself against the recorded seed.)
pub fn judge_room(
    slot_users: &[String],
    order: &BTreeMap<String, u64>,
    block: u64,
    admitted: u64,
) -> RoomAudit {
    let mut failures = Vec::new();
    let never_joined: Vec<&String> = slot_users
        .iter()
        .filter(|h| !order.contains_key(*h))
        .collect();
    if !never_joined.is_empty() {
        failures.push(format!(
            "{} users with a slot never joined the waiting room (e.g. {:?})",
            never_joined.len(),
            never_joined.iter().take(EXAMPLES).collect::<Vec<_>>()
        ));
    }
    if slot_users.len() as u64 > admitted {
        failures.push(format!(
            "{} users with a slot, but only {admitted} positions were admitted",
            slot_users.len()
        ));
    }
    let early: Vec<(&String, u64)> = slot_users
        .iter()
        .filter_map(|h| order.get(h).map(|j| (h, *j)))
        .filter(|(_, j)| *j > block && *j > admitted)
        .collect();
    if !early.is_empty() {
        failures.push(format!(
            "{} users with a slot issued before their position was admitted (e.g. {:?})",
            early.len(),
            early.iter().take(EXAMPLES).collect::<Vec<_>>()
        ));
    }
    RoomAudit {
        joined: order.len() as u64,
        block,
        admitted,
        slot_users: slot_users.len() as u64,
        failures,
    }
}

/// Reads the room's state from Redis and judges it ([`judge_room`]).
pub async fn room(redis_url: &str, campaign: &str) -> anyhow::Result<RoomAudit> {
    let mut conn = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let prefix = format!("coupon:{{{campaign}}}");
    let scan = |cmd: &'static str, key: String| {
        let mut conn = conn.clone();
        async move {
            let mut cursor: u64 = 0;
            let mut items: Vec<String> = Vec::new();
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd(cmd)
                    .arg(&key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(10_000)
                    .query_async(&mut conn)
                    .await?;
                items.extend(batch);
                if next == 0 {
                    return anyhow::Ok(items);
                }
                cursor = next;
            }
        }
    };
    let slot_users = scan("SSCAN", format!("{prefix}:users")).await?;
    let flat = scan("HSCAN", format!("{prefix}:room:order")).await?;
    let order: BTreeMap<String, u64> = flat
        .chunks(2)
        .filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.parse().ok()?)))
        .collect();
    let (block, front): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
        .arg(format!("{prefix}:room"))
        .arg("block")
        .arg("front")
        .query_async(&mut conn)
        .await?;
    Ok(judge_room(
        &slot_users,
        &order,
        block.unwrap_or(0),
        front.unwrap_or(0),
    ))
}

/// Inputs of the pure part of the audit.
#[derive(Debug)]
pub struct Evidence<'a> {
    pub stock: i64,
    pub gate_count: Option<i64>,
    pub persisted_column: i64,
    /// The persisted rows (duplicates included, if any).
    pub rows: &'a [Coupon],
    /// Every promised user with its answer.
    pub promised: &'a BTreeMap<String, Outcome>,
    /// The coupon id each promised user's reply named, where it was kept
    /// (the tests keep every reply; the load generator keeps outcomes only).
    pub named: &'a BTreeMap<String, String>,
    /// Final states of followed deferred users.
    pub finals: &'a BTreeMap<String, String>,
    /// Some request was refused for lack of stock.
    pub sold_out_seen: bool,
    /// Some request failed (5xx, timeout, connection).
    pub failures_seen: bool,
    pub drained: bool,
}

/// Applies the rules; pure, so that it can be tested on planted faults.
pub fn judge(e: &Evidence<'_>) -> AuditReport {
    let distinct: BTreeSet<&str> = e.rows.iter().map(|r| r.user_id.as_str()).collect();
    let accepted: Vec<&str> = e
        .promised
        .iter()
        .filter(|(_, o)| **o == Outcome::Accepted)
        .map(|(u, _)| u.as_str())
        .collect();
    let mut lost: Vec<&str> = accepted
        .iter()
        .filter(|u| !distinct.contains(*u))
        .copied()
        .collect();
    // A followed deferred user that ended issued must have its row too.
    lost.extend(
        e.finals
            .iter()
            .filter(|(u, s)| *s == "issued" && !distinct.contains(u.as_str()))
            .map(|(u, _)| u.as_str()),
    );
    let phantoms: Vec<&str> = distinct
        .iter()
        .filter(|u| !e.promised.contains_key(**u))
        .copied()
        .collect();
    let wrong_ids: Vec<&str> = e
        .rows
        .iter()
        .filter(|r| e.named.get(&r.user_id).is_some_and(|n| *n != r.coupon_id))
        .map(|r| r.user_id.as_str())
        .collect();
    let rows = e.rows.len() as u64;
    let mut failures = Vec::new();
    if rows as i64 > e.stock {
        failures.push(format!(
            "over-issued: {rows} rows for a stock of {}",
            e.stock
        ));
    }
    if distinct.len() as u64 != rows {
        failures.push(format!("{} duplicate rows", rows - distinct.len() as u64));
    }
    if !lost.is_empty() {
        failures.push(format!("{} promised users without a row", lost.len()));
    }
    if !phantoms.is_empty() {
        failures.push(format!(
            "{} rows of users never promised one",
            phantoms.len()
        ));
    }
    if !wrong_ids.is_empty() {
        failures.push(format!(
            "{} replies named another coupon id than their row's (e.g. {:?})",
            wrong_ids.len(),
            &wrong_ids[..wrong_ids.len().min(EXAMPLES)]
        ));
    }
    if e.gate_count != Some(rows as i64) {
        failures.push(format!("gate count {:?} != {rows} rows", e.gate_count));
    }
    if e.persisted_column != rows as i64 {
        failures.push(format!(
            "persisted column {} != {rows} rows",
            e.persisted_column
        ));
    }
    if e.sold_out_seen && !e.failures_seen && (rows as i64) < e.stock {
        failures.push(format!(
            "demand exceeded stock without failures, yet {} of {} slots are unused (leaked)",
            e.stock - rows as i64,
            e.stock
        ));
    }
    let unsettled = e
        .finals
        .values()
        .filter(|s| *s == "queued" || *s == "pending" || *s == "?")
        .count();
    if unsettled > 0 && !e.failures_seen {
        failures.push(format!("{unsettled} deferred users never settled"));
    }
    if !e.drained {
        failures.push("the worker did not drain in time".into());
    }
    let mut deferred_finals = BTreeMap::new();
    for s in e.finals.values() {
        *deferred_finals.entry(s.clone()).or_insert(0) += 1;
    }
    AuditReport {
        passed: failures.is_empty(),
        failures,
        stock: e.stock,
        rows,
        distinct_users: distinct.len() as u64,
        gate_count: e.gate_count,
        persisted_column: e.persisted_column,
        accepted: accepted.len() as u64,
        deferred: e
            .promised
            .values()
            .filter(|o| **o != Outcome::Accepted)
            .count() as u64,
        deferred_followed: e.finals.len() as u64,
        deferred_finals,
        lost: lost.len() as u64,
        lost_examples: lost
            .iter()
            .take(EXAMPLES)
            .map(|s| (*s).to_owned())
            .collect(),
        phantoms: phantoms.len() as u64,
        phantom_examples: phantoms
            .iter()
            .take(EXAMPLES)
            .map(|s| (*s).to_owned())
            .collect(),
        wrong_ids: wrong_ids.len() as u64,
        drained: e.drained,
        waited_secs: 0.0,
        room: None,
    }
}

/// Waits (at most `patience`) for the worker to drain and deferred users to
/// settle, then gathers the evidence through the API and judges it.
pub async fn run(
    admin: &AdminClient,
    minter: &Minter,
    campaign: &str,
    promised: &BTreeMap<String, Outcome>,
    sold_out_seen: bool,
    failures_seen: bool,
    patience: Duration,
) -> anyhow::Result<AuditReport> {
    let started = Instant::now();
    // Drained: persisted stops moving and matches the gate's count.
    let mut drained = false;
    let mut last = None;
    while started.elapsed() < patience {
        let c = admin.campaign(campaign).await?;
        let now = (c.taken, c.persisted);
        if c.taken == Some(c.persisted) && last == Some(now) {
            drained = true;
            break;
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let deferred: Vec<&String> = promised
        .iter()
        .filter(|(_, o)| **o != Outcome::Accepted)
        .map(|(u, _)| u)
        .collect();
    let followed: Vec<&String> = if deferred.len() > MAX_FOLLOWED {
        deferred
            .iter()
            .copied()
            .choose_multiple(&mut rand::rng(), MAX_FOLLOWED)
    } else {
        deferred
    };
    let mut finals = BTreeMap::new();
    let mut waiting: Vec<&String> = followed;
    loop {
        // A bounded number at a time: thousands at once would meet the
        // instance's in-flight bound (503) and measure that instead.
        let states: Vec<(&String, anyhow::Result<String>)> = futures::stream::iter(waiting)
            .map(|u| async move { (u, admin.my_state(minter, campaign, u).await) })
            .buffer_unordered(FOLLOW_CONCURRENCY)
            .collect()
            .await;
        let mut still = Vec::new();
        for (user, state) in states {
            // A failed read (a 503 while a dependency recovers) is asked again.
            let state = state.unwrap_or_else(|_| "?".to_owned());
            let open = matches!(state.as_str(), "queued" | "pending" | "?");
            if open && started.elapsed() < patience {
                still.push(user);
            }
            finals.insert(user.clone(), state);
        }
        if still.is_empty() {
            break;
        }
        waiting = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let c = admin.campaign(campaign).await?;
    let rows = admin.coupons(campaign).await?;
    let mut report = judge(&Evidence {
        stock: c.stock,
        gate_count: c.taken,
        persisted_column: c.persisted,
        rows: &rows,
        promised,
        named: &BTreeMap::new(),
        finals: &finals,
        sold_out_seen,
        failures_seen,
        drained,
    });
    report.waited_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn promised(pairs: &[(&str, Outcome)]) -> BTreeMap<String, Outcome> {
        pairs.iter().map(|(u, o)| ((*u).to_owned(), *o)).collect()
    }

    fn rows(users: &[&str]) -> Vec<Coupon> {
        users
            .iter()
            .map(|u| Coupon {
                user_id: (*u).to_owned(),
                coupon_id: format!("coupon-of-{u}"),
            })
            .collect()
    }

    const NOTHING_NAMED: &BTreeMap<String, String> = &BTreeMap::new();

    fn evidence<'a>(
        stock: i64,
        rows: &'a [Coupon],
        promised: &'a BTreeMap<String, Outcome>,
        finals: &'a BTreeMap<String, String>,
    ) -> Evidence<'a> {
        Evidence {
            stock,
            gate_count: Some(rows.len() as i64),
            persisted_column: rows.len() as i64,
            rows,
            promised,
            named: NOTHING_NAMED,
            finals,
            sold_out_seen: false,
            failures_seen: false,
            drained: true,
        }
    }

    #[test]
    fn a_clean_run_passes() {
        let p = promised(&[("a", Outcome::Accepted), ("b", Outcome::Queued)]);
        let finals = BTreeMap::from([("b".to_owned(), "issued".to_owned())]);
        let r = rows(&["a", "b"]);
        let report = judge(&evidence(2, &r, &p, &finals));
        assert!(report.passed, "{report:?}");
        assert_eq!(report.deferred_finals["issued"], 1);
    }

    #[test]
    fn a_planted_over_issue_fails() {
        let p = promised(&[
            ("a", Outcome::Accepted),
            ("b", Outcome::Accepted),
            ("c", Outcome::Accepted),
        ]);
        let r = rows(&["a", "b", "c"]);
        let report = judge(&evidence(2, &r, &p, &BTreeMap::new()));
        assert!(!report.passed);
        assert!(
            report.failures.iter().any(|f| f.contains("over-issued")),
            "{report:?}"
        );
    }

    #[test]
    fn a_planted_lost_row_fails() {
        let p = promised(&[("a", Outcome::Accepted), ("b", Outcome::Accepted)]);
        let r = rows(&["a"]);
        let finals = BTreeMap::new();
        let mut e = evidence(5, &r, &p, &finals);
        e.gate_count = Some(2);
        let report = judge(&e);
        assert!(!report.passed);
        assert_eq!(report.lost, 1);
        assert_eq!(report.lost_examples, ["b"]);
    }

    #[test]
    fn a_deferred_user_that_ended_issued_without_a_row_is_lost() {
        let p = promised(&[("q", Outcome::Queued)]);
        let finals = BTreeMap::from([("q".to_owned(), "issued".to_owned())]);
        let r = rows(&[]);
        let report = judge(&evidence(5, &r, &p, &finals));
        assert_eq!(report.lost, 1, "{report:?}");
    }

    #[test]
    fn a_reply_naming_another_coupon_than_the_row_fails() {
        let p = promised(&[("a", Outcome::Accepted), ("b", Outcome::Pending)]);
        let r = rows(&["a", "b"]);
        let named = BTreeMap::from([
            ("a".to_owned(), "coupon-of-a".to_owned()),
            ("b".to_owned(), "coupon-of-someone-else".to_owned()),
        ]);
        let finals = BTreeMap::new();
        let mut e = evidence(5, &r, &p, &finals);
        e.named = &named;
        let report = judge(&e);
        assert_eq!(report.wrong_ids, 1, "{report:?}");
        assert!(!report.passed);
    }

    #[test]
    fn phantoms_duplicates_gate_mismatch_and_leaks_fail() {
        let p = promised(&[("a", Outcome::Accepted)]);
        let r = rows(&["a", "a", "z"]);
        let finals = BTreeMap::new();
        let mut e = evidence(10, &r, &p, &finals);
        e.gate_count = Some(1);
        e.sold_out_seen = true;
        let report = judge(&e);
        let all = report.failures.join("; ");
        assert!(all.contains("duplicate"), "{all}");
        assert!(all.contains("never promised"), "{all}");
        assert!(all.contains("gate count"), "{all}");
        assert!(all.contains("leaked"), "{all}");
    }

    #[test]
    fn the_room_audit_catches_slot_users_who_skipped_the_line() {
        let order: BTreeMap<String, u64> = [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
            .map(|(u, j)| (u.to_owned(), j))
            .into();
        let slot_users = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(
            judge_room(&slot_users(&["a", "b"]), &order, 0, 2)
                .failures
                .is_empty()
        );
        // Never joined; more users with a slot than admitted; issued past the front.
        assert_eq!(
            judge_room(&slot_users(&["a", "z"]), &order, 0, 4)
                .failures
                .len(),
            1
        );
        assert_eq!(
            judge_room(&slot_users(&["a", "b", "c"]), &order, 0, 2)
                .failures
                .len(),
            2
        );
        assert_eq!(
            judge_room(&slot_users(&["d"]), &order, 0, 2).failures.len(),
            1
        );
        // In the shuffled block, a join number is not a position.
        assert!(
            judge_room(&slot_users(&["d"]), &order, 4, 2)
                .failures
                .is_empty()
        );
    }
}
