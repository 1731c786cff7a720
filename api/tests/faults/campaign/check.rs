//! The checker: a pure function from a recorded [`History`] to the
//! promises it breaks ([`judge`]), and the smallest window of history that
//! shows each ([`window`]). The rules are docs/CONTRACT.md's, as the
//! campaign can observe them from outside:
//!
//! | rule | what must hold |
//! |---|---|
//! | 1 | rows ≤ stock; no two rows for one (campaign, user) |
//! | 2 | every `accepted` reply's user has a row with exactly that coupon id |
//! | 3 | every deferred reply ends definite after heal, settle and `reconcile --repair`: `issued` (with the id a `pending` reply named, unless a later request took another slot), `rejected`, or `none` with an outcome; a final state read never turns out false later (a `rejected`/`none` read after a reply named X, and X became a row) |
//! | 4 | every row's user sent an issue request, and its id was named to that user, or the user got `queued` or no reply |
//! | 5 | after heal, drain and `reconcile --repair`: the gate's count == rows == `persisted` |
//! | 6 | a top-up to `sold_out` ends with rows == stock (campaigns not closed) |
//! | 7 | no issue request started after a close reply is answered `accepted`/`pending`/`queued` (replays aside) |
//! | 8 | a replay (`Idempotent-Replayed: true`) equals the first kept reply of its key; at most one request per key ran |
//! | 9 | the room admits in order (once position p was seen admitted, no lower position is seen waiting later), and its audit (`ngrinder_equivalent::audit::judge_room`) |
//! | 10 | after the heal every process is ready, and a fresh user gets a definite answer within 10 s on every campaign |
//! | 11 | no consumer pause outlasts the fault that caused it by more than [`PAUSE_BOUND_MS`]; the group's lag returns to 0; the fair lock's line is empty once traffic stops |
//! | 12 | an api sent SIGTERM (in a fault or between rounds) drains and exits 0 |
//! | 13 | every request is answered within [`LONGEST_MS`] (the longest a request can run, by docs/CONTRACT.md's Idempotency-Key section), plus the time its instance was frozen |
//!
//! Times are compared so that a violation is certain whatever the clocks:
//! "after" means that one request started after the other one's reply was
//! received.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use super::history::{
    CampaignEvidence, FaultRecord, History, Kind, Req, RoundEvidence, Snapshot, by,
};
use super::schedule::{FaultKind, Which};

/// How much longer than its cause a consumer pause may last: a batch stuck
/// on a dependency fails after `worker.batch_timeout_ms` (10 s) and is
/// retried within `worker.retry_max_ms` (5 s); 5 s more for the samples'
/// spacing and the restart of what the fault stopped.
pub const PAUSE_BOUND_MS: u64 = 20_000;

/// How long a fresh user may wait for a definite answer after the heal.
pub const LIVENESS_MS: u64 = 10_000;

/// How long after a Redis restart a campaign may answer 503 while the
/// gate keeper rebuilds it (issuer-worker keeper.rs): the keeper's tick
/// (1 s), a rebuild under way that gives up on the new server (1 s), the
/// retry (2 s), the rebuild's wait for the takes to settle
/// (`takes_settle_within` + 1 s: 14 s) and its reads (2 s), and 5 s for
/// the machine.
pub const REBUILD_MS: u64 = 25_000;

/// The admin lock's lease (issuer-worker admin_lock.rs `LEASE`): a worker
/// killed or frozen while its keeper rebuilt leaves the lock to run out
/// before the next keeper's rebuild can start; 2 s for the samples and the
/// machine.
pub const ADMIN_LEASE_MS: u64 = 12_000;

/// The longest a request may take: the longest an api request can run at
/// the defaults (`Settings::longest_request` without its 30 s margin: a
/// lock wait of 2 s, the gate call and its withdrawal, 0.5 + 3 s, the
/// produce bound, 2 s, the delivery timeout, 5 s: 12.5 s; the contract
/// keeps an `Idempotency-Key` running that long plus 30 s), and 2.5 s for
/// this client's own connection and the machine's load.
pub const LONGEST_MS: u64 = 15_000;

/// How much of the history around a violation its window shows.
const MARGIN_MS: u64 = 5_000;

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub rule: u8,
    pub round: Option<usize>,
    /// The campaign's id.
    pub campaign: Option<String>,
    /// The users whose requests show it.
    pub users: Vec<String>,
    pub text: String,
    /// The time range it concerns, when no user's requests show it.
    pub span: Option<(u64, u64)>,
}

/// The rules' names, for the report.
pub fn rule_name(rule: u8) -> &'static str {
    match rule {
        1 => "rows within stock, one per user",
        2 => "every accepted reply has its row, with its coupon id",
        3 => "every deferred reply ends definite, and stays so",
        4 => "every row was promised to its user",
        5 => "gate count == rows == persisted after repair",
        6 => "topped up to sold out: rows == stock",
        7 => "nothing taken after a close",
        8 => "idempotency keys: one run, exact replays",
        9 => "the waiting room's order and audit",
        10 => "liveness after the heal",
        11 => "the worker recovers; no line is left behind",
        12 => "a SIGTERMed api drains and exits 0",
        13 => "every request answered within the longest a request can run",
        _ => "?",
    }
}

/// What the checker knows of each campaign.
struct CampaignFacts<'a> {
    round: &'a RoundEvidence,
    c: &'a CampaignEvidence,
}

impl CampaignFacts<'_> {
    /// The last state read: after the top-up when there was one.
    fn last(&self) -> &Snapshot {
        self.c.after_topup.as_ref().unwrap_or(&self.c.after_repair)
    }
}

/// The requests of one (campaign, user), in order of start.
type ByUser<'a> = HashMap<(&'a str, &'a str), Vec<&'a Req>>;

/// Every promise `h` breaks.
pub fn judge(h: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    let campaigns: BTreeMap<&str, CampaignFacts<'_>> = h
        .rounds
        .iter()
        .flat_map(|round| {
            round
                .campaigns
                .iter()
                .map(move |c| (c.id.as_str(), CampaignFacts { round, c }))
        })
        .collect();
    let mut by_user: ByUser<'_> = HashMap::new();
    for r in &h.requests {
        if let Some(u) = &r.user {
            by_user
                .entry((r.campaign.as_str(), u.as_str()))
                .or_default()
                .push(r);
        }
    }
    for reqs in by_user.values_mut() {
        reqs.sort_by_key(|r| (r.start_ms, r.id));
    }
    for (id, f) in &campaigns {
        let v = |rule, users: Vec<String>, text: String| Violation {
            rule,
            round: Some(f.round.round),
            campaign: Some((*id).to_owned()),
            users,
            text,
            span: None,
        };
        stock_and_duplicates(f, &v, &mut out);
        accepted_rows(id, f, h, &v, &mut out);
        deferred_ends(id, f, &by_user, &h.faults, &v, &mut out);
        rows_promised(id, f, &by_user, &v, &mut out);
        counts(f, &v, &mut out);
        topped_up(id, f, h, &v, &mut out);
        closed(id, h, &v, &mut out);
        if f.c.which == Which::Room {
            room(id, f, h, &v, &mut out);
        }
        liveness(id, f, h, &mut out);
        line_left(f, &v, &mut out);
    }
    idempotency(h, &mut out);
    worker(h, &mut out);
    drains(h, &mut out);
    bounded(h, &mut out);
    out.sort_by_key(|v| (v.rule, v.round));
    out
}

type Make<'a> = dyn Fn(u8, Vec<String>, String) -> Violation + 'a;

fn examples<T: std::fmt::Debug>(items: &[T]) -> String {
    let shown: Vec<&T> = items.iter().take(5).collect();
    format!("{shown:?}{}", if items.len() > 5 { " …" } else { "" })
}

/// Rule 1.
fn stock_and_duplicates(f: &CampaignFacts<'_>, v: &Make<'_>, out: &mut Vec<Violation>) {
    for (when, s) in [
        ("after the repair", Some(&f.c.after_repair)),
        ("after the top-up", f.c.after_topup.as_ref()),
    ] {
        let Some(s) = s else { continue };
        if s.rows.len() as u64 > f.c.stock {
            out.push(v(
                1,
                Vec::new(),
                format!("{} rows for a stock of {} {when}", s.rows.len(), f.c.stock),
            ));
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (u, _) in &s.rows {
            *seen.entry(u.as_str()).or_default() += 1;
        }
        let twice: Vec<String> = seen
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(u, _)| u.to_owned())
            .collect();
        if !twice.is_empty() {
            out.push(v(
                1,
                twice.iter().take(3).cloned().collect(),
                format!(
                    "{} users with two rows {when}: {}",
                    twice.len(),
                    examples(&twice)
                ),
            ));
        }
    }
}

/// Rule 2.
fn accepted_rows(
    id: &str,
    f: &CampaignFacts<'_>,
    h: &History,
    v: &Make<'_>,
    out: &mut Vec<Violation>,
) {
    let rows = f.last().row_map();
    let mut reported = BTreeSet::new();
    let (mut lost, mut wrong) = (Vec::new(), Vec::new());
    for r in h.requests.iter().filter(|r| r.campaign == id) {
        if !(r.took() && r.outcome.as_deref() == Some("accepted")) {
            continue;
        }
        let (Some(user), Some(coupon)) = (r.user.as_deref(), r.coupon_id.as_deref()) else {
            continue;
        };
        if !reported.insert(user) {
            continue;
        }
        match rows.get(user) {
            None => lost.push(format!(
                "#{} was answered accepted {coupon}, and {user} has no row",
                r.id
            )),
            Some(row) if *row != coupon => wrong.push(format!(
                "#{} was answered accepted {coupon}, and {user}'s row is {row}",
                r.id
            )),
            Some(_) => {}
        }
    }
    // A few one by one; many (a worker that stopped writing) as one.
    for (found, what) in [(lost, "have no row"), (wrong, "have another row")] {
        let user_of = |t: &String| {
            t.split(", and ")
                .nth(1)
                .and_then(|rest| rest.split([' ', '\'']).next())
                .unwrap_or_default()
                .to_owned()
        };
        if found.len() <= 3 {
            for t in &found {
                out.push(v(2, vec![user_of(t)], t.clone()));
            }
        } else {
            out.push(v(
                2,
                found.iter().take(2).map(user_of).collect(),
                format!(
                    "{} users who were answered accepted {what}: {}",
                    found.len(),
                    examples(&found)
                ),
            ));
        }
    }
}

/// Whether an api kill -9 of `instance` started after `after_ms` in
/// `round`: the queue of an async-queue instance dies with it.
fn killed_after(faults: &[FaultRecord], round: usize, instance: usize, after_ms: u64) -> bool {
    faults.iter().any(|f| {
        f.round == round
            && f.kind == Some(FaultKind::ApiKill)
            && f.target == format!("api{instance}")
            && f.start_ms >= after_ms
    })
}

/// Rule 3.
fn deferred_ends(
    id: &str,
    f: &CampaignFacts<'_>,
    by_user: &ByUser<'_>,
    faults: &[FaultRecord],
    v: &Make<'_>,
    out: &mut Vec<Violation>,
) {
    let rows = f.last().row_map();
    for ((campaign, user), reqs) in by_user {
        if *campaign != id {
            continue;
        }
        let user = *user;
        let row = rows.get(user).copied();
        let one = |text: String| v(3, vec![user.to_owned()], text);
        // A final state read never turns out false: a `rejected` or `none`
        // read after the reply that named X ended, when X is the row.
        if let Some(x) = row {
            let named_at = reqs
                .iter()
                .filter(|r| r.named() == Some(x))
                .map(|r| r.end_ms)
                .min();
            if let Some(named_at) = named_at
                && let Some(read) = reqs.iter().find(|r| {
                    r.kind() == Kind::CouponsMe
                        && r.status == Some(200)
                        && matches!(r.state.as_deref(), Some("rejected" | "none"))
                        && r.start_ms > named_at
                })
            {
                out.push(one(format!(
                        "#{} read {} ({}) after the reply naming {x} was received, yet {x} is {user}'s row",
                        read.id,
                        read.state.as_deref().unwrap_or("?"),
                        read.outcome.as_deref().unwrap_or("no outcome"),
                    )));
                continue;
            }
        }
        // An `issued` read names the row for good.
        if let Some(read) = reqs.iter().find(|r| {
            r.kind() == Kind::CouponsMe
                && r.state.as_deref() == Some("issued")
                && r.coupon_id.as_deref() != row
        }) {
            out.push(one(format!(
                "#{} read issued {}, and {user}'s row is {}",
                read.id,
                read.coupon_id.as_deref().unwrap_or("?"),
                row.unwrap_or("missing"),
            )));
            continue;
        }
        // The top-up's own deferred replies are not followed: the rows
        // after it answer for them (rule 6).
        let deferred: Vec<&&Req> = reqs
            .iter()
            .filter(|r| r.deferred() && r.client != by::TOPUP)
            .collect();
        let Some(last_deferred) = deferred.last() else {
            continue;
        };
        // A `pending` reply's coupon id is the row's, unless another
        // request of the user could have taken the slot the row is.
        if let Some(x) = row {
            for p in deferred
                .iter()
                .filter(|r| r.outcome.as_deref() == Some("pending"))
            {
                let Some(c) = p.coupon_id.as_deref() else {
                    continue;
                };
                if c == x {
                    continue;
                }
                let other = reqs.iter().any(|q| {
                    q.id != p.id
                        && q.kind() == Kind::Issue
                        && (q.named() == Some(x)
                            || q.outcome.as_deref() == Some("queued")
                            || (!q.answered() && q.client != by::PROBE))
                });
                if !other {
                    out.push(one(format!(
                        "#{} was answered pending {c}, and {user}'s row is {x}, which no other request of the user can have taken",
                        p.id
                    )));
                }
            }
        }
        let finals: Vec<&&Req> = reqs
            .iter()
            .filter(|r| {
                r.client == by::FINAL && r.kind() == Kind::CouponsMe && r.status == Some(200)
            })
            .collect();
        let Some(last) = finals.last() else {
            out.push(one(format!(
                "{user} was answered {} (#{}) and its final state could not be read",
                last_deferred.outcome.as_deref().unwrap_or("?"),
                last_deferred.id
            )));
            continue;
        };
        match last.state.as_deref() {
            Some("issued" | "rejected") => {}
            Some("none") if last.outcome.is_some() => {}
            Some("none") => {
                // A queue that died with its instance leaves its requests'
                // marks to expire: `none` without a word, as documented.
                let excused = deferred.iter().all(|d| {
                    d.outcome.as_deref() == Some("queued")
                        && killed_after(faults, d.round, d.instance, d.start_ms)
                });
                if !excused {
                    out.push(one(format!(
                        "{user} was answered {} (#{}) and ended none without an outcome (#{}); {}",
                        last_deferred.outcome.as_deref().unwrap_or("?"),
                        last_deferred.id,
                        last.id,
                        gate_view(&f.c.after_repair, user),
                    )));
                }
            }
            state => out.push(one(format!(
                "{user} was answered {} (#{}) and still reads {} after heal, settle and reconcile --repair (#{}); {}",
                last_deferred.outcome.as_deref().unwrap_or("?"),
                last_deferred.id,
                state.unwrap_or("?"),
                last.id,
                gate_view(&f.c.after_repair, user),
            ))),
        }
    }
}

/// What the gate held for `user` after the repair, in words.
fn gate_view(s: &Snapshot, user: &str) -> String {
    if s.redis.error.is_some() {
        return "the gate could not be read".into();
    }
    format!(
        "after the repair the user {} the gate's set, its slot names {}, its status record is {}, it has {}",
        if s.redis.users.iter().any(|u| u == user) {
            "is in"
        } else {
            "is not in"
        },
        s.redis.slots.get(user).map_or("nothing", String::as_str),
        s.redis
            .unsettled
            .get(user)
            .map_or("not pending or queued", String::as_str),
        s.row_map()
            .get(user)
            .map_or("no row".to_owned(), |c| format!("row {c}")),
    )
}

/// Rule 4.
fn rows_promised(
    id: &str,
    f: &CampaignFacts<'_>,
    by_user: &ByUser<'_>,
    v: &Make<'_>,
    out: &mut Vec<Violation>,
) {
    for (user, coupon) in &f.last().rows {
        let reqs: Vec<&Req> = by_user
            .get(&(id, user.as_str()))
            .map(|r| {
                r.iter()
                    .copied()
                    .filter(|r| r.kind() == Kind::Issue)
                    .collect()
            })
            .unwrap_or_default();
        if reqs.is_empty() {
            out.push(v(
                4,
                vec![user.clone()],
                format!("{user} has a row ({coupon}) and never sent an issue request"),
            ));
            continue;
        }
        let promised = reqs.iter().any(|r| {
            r.named() == Some(coupon.as_str())
                || r.outcome.as_deref() == Some("queued")
                || !r.answered()
        });
        if !promised {
            out.push(v(
                4,
                vec![user.clone()],
                format!("{user}'s row {coupon} was named in no reply to {user}, who got no queued reply and always a reply"),
            ));
        }
    }
}

/// Rule 5.
fn counts(f: &CampaignFacts<'_>, v: &Make<'_>, out: &mut Vec<Violation>) {
    let s = &f.c.after_repair;
    let rows = s.rows.len() as i64;
    let reconcile = if f.c.reconcile.get("error").is_some() || f.c.reconcile.get("stderr").is_some()
    {
        format!(" (reconcile --repair failed: {})", f.c.reconcile)
    } else {
        String::new()
    };
    if s.api_taken != Some(rows) || s.api_persisted != Some(rows) {
        out.push(v(
            5,
            Vec::new(),
            format!(
                "after the repair the gate counts {}, the rows are {rows}, persisted says {}{reconcile}",
                s.api_taken.map_or("nothing (gate state missing)".to_owned(), |t| t.to_string()),
                s.api_persisted.map_or("?".to_owned(), |p| p.to_string()),
            ),
        ));
    }
    if s.redis.error.is_none() && s.redis.taken.unwrap_or(0) != s.redis.users.len() as i64 {
        out.push(v(
            5,
            Vec::new(),
            format!(
                "after the repair coupon:{{c}}:taken is {:?} and the set holds {} users",
                s.redis.taken,
                s.redis.users.len()
            ),
        ));
    }
}

/// Rule 6.
fn topped_up(id: &str, f: &CampaignFacts<'_>, h: &History, v: &Make<'_>, out: &mut Vec<Violation>) {
    let Some(s) = &f.c.after_topup else { return };
    let rows = s.rows.len() as u64;
    if rows == f.c.stock {
        return;
    }
    let taken = s.api_taken;
    let leak = taken != Some(rows as i64) || taken.is_some_and(|t| t as u64 >= f.c.stock);
    // A gate that still has slots, none held without a row: the top-up's
    // own slots were given back after failed deliveries (rule 10 says so),
    // or it ran out of time.
    if !leak && !topup_failures(id, f, h).is_empty() {
        return;
    }
    out.push(v(
        6,
        Vec::new(),
        format!(
            "after topping up ({} fresh users{}) the campaign has {rows} rows for a stock of {} (the gate counts {}){}",
            f.c.topup_users,
            if f.c.topup_sold_out { ", sold out seen" } else { ", sold out never seen" },
            f.c.stock,
            taken.map_or("?".to_owned(), |t| t.to_string()),
            if leak { "" } else { ": no slot is held without a row, the top-up could not fill the rest" },
        ),
    ));
}

/// The top-up's replies that took a slot (`accepted`, `pending`) whose
/// user has no row after the drain.
fn topup_failures<'h>(id: &str, f: &CampaignFacts<'_>, h: &'h History) -> Vec<&'h Req> {
    let Some(s) = &f.c.after_topup else {
        return Vec::new();
    };
    let rows = s.row_map();
    h.requests
        .iter()
        .filter(|r| {
            r.campaign == id
                && r.client == by::TOPUP
                && r.named().is_some()
                && r.user.as_deref().is_some_and(|u| !rows.contains_key(u))
        })
        .collect()
}

/// Rule 7.
fn closed(id: &str, h: &History, v: &Make<'_>, out: &mut Vec<Violation>) {
    let Some(closed_at) = h
        .requests
        .iter()
        .filter(|r| r.campaign == id && r.kind() == Kind::Close && r.status == Some(200))
        .map(|r| r.end_ms)
        .min()
    else {
        return;
    };
    let late: Vec<&Req> = h
        .requests
        .iter()
        .filter(|r| r.campaign == id && r.took() && !r.replayed && r.start_ms > closed_at)
        .collect();
    if late.is_empty() {
        return;
    }
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &late {
        *outcomes
            .entry(r.outcome.as_deref().unwrap_or("?"))
            .or_default() += 1;
    }
    let users: Vec<String> = late.iter().filter_map(|r| r.user.clone()).collect();
    out.push(v(
        7,
        users.iter().take(2).cloned().collect(),
        format!(
            "the close was answered at {:.3} s; {} issue requests started after it were answered {outcomes:?} (e.g. {})",
            closed_at as f64 / 1000.0,
            late.len(),
            examples(&late.iter().map(|r| r.id).collect::<Vec<_>>()),
        ),
    ));
}

/// Rule 8, over every keyed request.
fn idempotency(h: &History, out: &mut Vec<Violation>) {
    let mut by_key: BTreeMap<(&str, &str, &str, Kind), Vec<&Req>> = BTreeMap::new();
    for r in &h.requests {
        if let (Some(u), Some(k)) = (&r.user, &r.key) {
            by_key
                .entry((r.campaign.as_str(), u.as_str(), k.as_str(), r.kind()))
                .or_default()
                .push(r);
        }
    }
    for ((campaign, user, key, _), reqs) in by_key {
        let v = |text: String| Violation {
            rule: 8,
            round: reqs.first().map(|r| r.round),
            campaign: Some(campaign.to_owned()),
            users: vec![user.to_owned()],
            text,
            span: None,
        };
        // A request ran, and its reply was kept, when it changed something:
        // a 2xx that is not a replay (docs/CONTRACT.md, Idempotency-Key).
        // Any other first reply (a refusal such as 409 `duplicate` or 410,
        // a 409 `request_in_progress`, a 429, a 5xx) frees the key, and a
        // retry runs afresh; what is answered before the claim (400, 401)
        // or by the HTTP server itself (408) never held it.
        let ran: Vec<&&Req> = reqs
            .iter()
            .filter(|r| r.status.is_some_and(|s| (200..300).contains(&s)) && !r.replayed)
            .collect();
        // Once a reply was kept, a request sent after it is replayed: one
        // the handler answered afresh (a refusal included) means the key's
        // record was not kept.
        let afresh: Vec<&&Req> = ran.first().map_or_else(Vec::new, |kept| {
            reqs.iter()
                .filter(|r| {
                    let handled = r.status.is_some_and(|s| {
                        matches!(s, 403 | 404 | 410)
                            || (s == 409 && r.outcome.as_deref() != Some("request_in_progress"))
                    });
                    handled && !r.replayed && r.start_ms > kept.end_ms
                })
                .collect()
        });
        if let (Some(kept), Some(again)) = (ran.first(), afresh.first()) {
            out.push(v(format!(
                "key {key} of {user}: #{} {} {} was kept, yet #{} sent after it was answered afresh: {} {}",
                kept.id,
                kept.status.unwrap_or(0),
                kept.outcome.as_deref().unwrap_or(""),
                again.id,
                again.status.unwrap_or(0),
                again.outcome.as_deref().unwrap_or("")
            )));
            continue;
        }
        if ran.len() > 1 {
            out.push(v(format!(
                "key {key} of {user} ran {} times: {}",
                ran.len(),
                ran.iter()
                    .map(|r| format!(
                        "#{} {} {}",
                        r.id,
                        r.status.unwrap_or(0),
                        r.outcome.as_deref().unwrap_or("")
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
            continue;
        }
        let replays: Vec<&&Req> = reqs.iter().filter(|r| r.replayed).collect();
        let first = ran
            .first()
            .copied()
            .or_else(|| replays.iter().min_by_key(|r| r.end_ms).copied());
        let Some(first) = first else { continue };
        for r in replays {
            if (r.status, &r.body) != (first.status, &first.body) {
                out.push(v(format!(
                    "#{} replayed {} {} for key {key}, but the first reply (#{}) was {} {}",
                    r.id,
                    r.status.unwrap_or(0),
                    r.body.as_deref().unwrap_or(""),
                    first.id,
                    first.status.unwrap_or(0),
                    first.body.as_deref().unwrap_or(""),
                )));
                break;
            }
        }
    }
}

/// Rule 9.
fn room(id: &str, f: &CampaignFacts<'_>, h: &History, v: &Make<'_>, out: &mut Vec<Violation>) {
    let seen: Vec<&Req> = h
        .requests
        .iter()
        .filter(|r| {
            r.campaign == id
                && matches!(r.kind(), Kind::RoomJoin | Kind::RoomMe)
                && !r.replayed
                && r.position.is_some()
        })
        .collect();
    let mut admitted: Vec<&Req> = seen
        .iter()
        .copied()
        .filter(|r| r.state.as_deref() == Some("admitted"))
        .collect();
    admitted.sort_by_key(|r| r.end_ms);
    let mut waiting: Vec<&Req> = seen
        .iter()
        .copied()
        .filter(|r| r.state.as_deref() == Some("waiting"))
        .collect();
    waiting.sort_by_key(|r| r.start_ms);
    // For each waiting observation, the highest position seen admitted
    // before it started.
    let mut best: Option<&Req> = None;
    let mut a = 0;
    for w in &waiting {
        while a < admitted.len() && admitted[a].end_ms < w.start_ms {
            if best.is_none_or(|b| admitted[a].position > b.position) {
                best = Some(admitted[a]);
            }
            a += 1;
        }
        if let Some(b) = best
            && w.position < b.position
        {
            out.push(v(
                    9,
                    vec![b.user.clone().unwrap_or_default(), w.user.clone().unwrap_or_default()],
                    format!(
                        "position {} was seen admitted (#{}, {}), then position {} was seen waiting (#{}, {})",
                        b.position.unwrap_or(0),
                        b.id,
                        b.user.as_deref().unwrap_or("?"),
                        w.position.unwrap_or(0),
                        w.id,
                        w.user.as_deref().unwrap_or("?"),
                    ),
                ));
            break;
        }
    }
    for (when, s) in [
        ("after the repair", Some(&f.c.after_repair)),
        ("after the top-up", f.c.after_topup.as_ref()),
    ] {
        let Some(s) = s else { continue };
        if s.redis.error.is_some() {
            continue;
        }
        let num = |k: &str| {
            s.redis
                .room
                .get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let audit = ngrinder_equivalent::audit::judge_room(
            &s.redis.users,
            &s.redis.room_order,
            num("block"),
            num("front"),
        );
        for failure in audit.failures {
            out.push(v(9, Vec::new(), format!("room audit {when}: {failure}")));
        }
    }
}

/// Rule 10, for one campaign (and the round's readiness once).
fn liveness(id: &str, f: &CampaignFacts<'_>, h: &History, out: &mut Vec<Violation>) {
    let kind = match f.c.which {
        Which::Plain => Kind::Issue,
        Which::Room => Kind::RoomJoin,
    };
    let v = |text: String| Violation {
        rule: 10,
        round: Some(f.round.round),
        campaign: Some(id.to_owned()),
        users: Vec::new(),
        text,
        span: Some((
            f.round.phases.healed.saturating_sub(1_000),
            f.round.phases.settled.max(f.round.phases.healed + 12_000),
        )),
    };
    if f.c.which == Which::Plain && !f.round.not_ready.is_empty() {
        out.push(v(format!(
            "not ready after the heal: {}",
            f.round.not_ready.join("; ")
        )));
    }
    let probes: Vec<&Req> = h
        .requests
        .iter()
        .filter(|r| r.campaign == id && r.client == by::PROBE && r.kind() == kind)
        .collect();
    let failed = topup_failures(id, f, h);
    if !failed.is_empty() {
        let healed = f.round.phases.healed;
        let took = h
            .requests
            .iter()
            .filter(|r| r.campaign == id && r.client == by::TOPUP && r.named().is_some())
            .count();
        out.push(Violation {
            users: failed.iter().filter_map(|r| r.user.clone()).take(2).collect(),
            ..v(format!(
                "{} of the top-up's {took} replies that took a slot, sent {:.0}–{:.0} s after the heal, never became rows (their deliveries failed and the slots were given back, or the worker never wrote them): e.g. {}",
                failed.len(),
                failed.iter().map(|r| r.start_ms).min().unwrap_or(healed).saturating_sub(healed) as f64 / 1000.0,
                failed.iter().map(|r| r.start_ms).max().unwrap_or(healed).saturating_sub(healed) as f64 / 1000.0,
                examples(&failed.iter().map(|r| r.id).collect::<Vec<_>>()),
            ))
        });
    }
    let Some(first) = probes.first() else {
        out.push(v("no liveness probe was sent".into()));
        return;
    };
    // A Redis restart fences every campaign until the keeper rebuilds it:
    // the probe may wait for that after the round's last restart.
    let in_round = |kind| {
        h.faults
            .iter()
            .filter(move |x| x.round == f.round.round && x.kind == Some(kind))
    };
    let mut rebuilt_by = in_round(FaultKind::RedisKill)
        .map(|x| x.end_ms + REBUILD_MS)
        .max()
        .unwrap_or(0);
    // A forced rebuild of this campaign that failed left it fenced: the
    // keeper's hint brings its rebuild within the same bound.
    let this_campaign = format!("campaign:{}", f.c.which.as_str());
    if let Some(failed) = in_round(FaultKind::Rebuild)
        .filter(|x| !x.ok && x.target == this_campaign)
        .map(|x| x.end_ms + REBUILD_MS)
        .max()
    {
        rebuilt_by = rebuilt_by.max(failed);
    }
    // A fault that begins while the rebuild is still allowed delays it:
    // the worker (its keeper) killed or frozen (its admin lock runs out its
    // lease, then the rebuild starts over), or a dependency the rebuild
    // reads (the broker's offsets, the rows, Redis) down; each such fault
    // gives the rebuild its bound again from its end.
    if rebuilt_by > 0 {
        loop {
            let next = h
                .faults
                .iter()
                .filter(|x| x.round == f.round.round && x.start_ms < rebuilt_by)
                .filter_map(|x| {
                    let extra = match x.kind? {
                        FaultKind::WorkerKill | FaultKind::WorkerPause => {
                            ADMIN_LEASE_MS + REBUILD_MS
                        }
                        FaultKind::BrokerStop
                        | FaultKind::BrokerKill
                        | FaultKind::BrokerPause
                        | FaultKind::PostgresStop
                        | FaultKind::PostgresPause
                        | FaultKind::RedisPause => REBUILD_MS,
                        _ => return None,
                    };
                    Some(x.end_ms + extra)
                })
                .fold(rebuilt_by, u64::max);
            if next == rebuilt_by {
                break;
            }
            rebuilt_by = next;
        }
    }
    let deadline = (first.start_ms + LIVENESS_MS).max(rebuilt_by);
    let answered = probes
        .iter()
        .find(|r| super::traffic::definite(kind, r) && r.end_ms <= deadline);
    if answered.is_none() {
        let replies: Vec<String> = probes
            .iter()
            .map(|r| {
                r.status.map_or_else(
                    || r.error.clone().unwrap_or_default(),
                    |s| format!("{s} {}", r.outcome.as_deref().unwrap_or("")),
                )
            })
            .collect();
        out.push(Violation {
            users: probes
                .iter()
                .filter_map(|r| r.user.clone())
                .take(1)
                .collect(),
            ..v(format!(
                "a fresh user got no definite answer within {} s of the heal: {}",
                LIVENESS_MS / 1000,
                examples(&replies)
            ))
        });
    }
}

/// Rule 11, the parts that belong to a campaign: the fair lock's line.
fn line_left(f: &CampaignFacts<'_>, v: &Make<'_>, out: &mut Vec<Violation>) {
    let s = &f.c.after_repair;
    if !s.redis.fairlock_waiting.is_empty() {
        let now = s.redis.redis_now_ms.unwrap_or(0);
        let expired = s
            .redis
            .fairlock_waiting
            .values()
            .filter(|e| {
                e.split(':')
                    .next()
                    .and_then(|d| d.parse::<u64>().ok())
                    .is_some_and(|d| d < now)
            })
            .count();
        out.push(v(
            11,
            Vec::new(),
            format!(
                "the fair lock's line still holds {} tickets after the traffic stopped ({expired} past their deadline; serving {:?}, last ticket {:?}): {}",
                s.redis.fairlock_waiting.len(),
                s.redis.fairlock_serving,
                s.redis.fairlock_tickets,
                examples(&s.redis.fairlock_waiting.iter().collect::<Vec<_>>()),
            ),
        ));
    }
}

/// Rule 11: pauses and the lag.
fn worker(h: &History, out: &mut Vec<Violation>) {
    for round in &h.rounds {
        if !round.settle.lag_zero {
            out.push(Violation {
                rule: 11,
                round: Some(round.round),
                campaign: None,
                users: Vec::new(),
                text: format!(
                    "the worker group's lag did not return to 0 within {:.0} s of the heal (last {:?}, worker_paused {:?}, worker_assigned_partitions {:?}{})",
                    round.settle.waited_ms as f64 / 1000.0,
                    round.settle.group_lag,
                    round.settle.paused,
                    round.settle.assigned,
                    round.settle.error.as_ref().map(|e| format!(", {e}")).unwrap_or_default()
                ),
                span: Some((round.phases.traffic_start, round.phases.settled)),
            });
        }
    }
    // Not consuming: paused (a dependency down), in the group without
    // partitions (after a rebalance), or holding partitions it never
    // started fetching (seed 84950045: a committed-offset read refused).
    type Stall = (&'static str, fn(f64) -> bool, &'static str);
    let stalls: [Stall; 3] = [
        ("worker_paused", |v| v >= 1.0, "paused"),
        (
            "worker_assigned_partitions",
            |v| v < 1.0,
            "without partitions",
        ),
        (
            "worker_unstarted_partitions",
            |v| v >= 1.0,
            "holding partitions it did not fetch",
        ),
    ];
    for (metric, stalled, what) in stalls {
        let samples: Vec<(u64, Option<f64>)> = h
            .samples
            .iter()
            .filter(|s| s.source == "worker")
            .map(|s| (s.t_ms, s.values.get(metric).copied()))
            .collect();
        for (a, b, unended) in episodes(&samples, stalled) {
            // The faults under way as it began, and then every fault that
            // began while it was still allowed: a broker killed while the
            // worker waits for its partitions keeps it waiting.
            let mut allowed = a + PAUSE_BOUND_MS;
            let causes: Vec<&FaultRecord> = loop {
                let causes: Vec<&FaultRecord> = h
                    .faults
                    .iter()
                    .filter(|f| {
                        f.start_ms <= (a + 1_000).max(allowed.min(b))
                            && f.end_ms + PAUSE_BOUND_MS >= a
                    })
                    .collect();
                let next =
                    causes.iter().map(|f| f.end_ms).max().unwrap_or(a).max(a) + PAUSE_BOUND_MS;
                if next <= allowed {
                    break causes;
                }
                allowed = next;
            };
            if b <= allowed && !unended {
                continue;
            }
            let round = h
                .rounds
                .iter()
                .find(|r| r.phases.apis_ready.saturating_sub(5_000) <= a && a <= r.phases.round_end)
                .map(|r| r.round);
            out.push(Violation {
                rule: 11,
                round,
                campaign: None,
                users: Vec::new(),
                text: format!(
                    "the worker was {what} from {:.1} s to {:.1} s{} ({:.0} s); the faults that could cause it ({}) allow it until {:.1} s",
                    a as f64 / 1000.0,
                    b as f64 / 1000.0,
                    if unended { ", still at the last sample" } else { "" },
                    (b - a) as f64 / 1000.0,
                    if causes.is_empty() {
                        "none".to_owned()
                    } else {
                        causes.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
                    },
                    allowed as f64 / 1000.0,
                ),
                span: Some((a, b)),
            });
        }
    }
}

/// The spans (first, last sample, whether it lasted to the last sample)
/// over which `stalled` held; a sample that could not be read neither
/// starts nor ends one.
fn episodes(samples: &[(u64, Option<f64>)], stalled: fn(f64) -> bool) -> Vec<(u64, u64, bool)> {
    let mut episodes = Vec::new();
    let mut open: Option<(u64, u64)> = None;
    for (t, value) in samples {
        match (value.map(stalled), open) {
            (Some(true), None) => open = Some((*t, *t)),
            (Some(true), Some((a, _))) => open = Some((a, *t)),
            (Some(false), Some((a, b))) => {
                episodes.push((a, b, false));
                open = None;
            }
            _ => {}
        }
    }
    if let Some((a, b)) = open {
        episodes.push((a, b, true));
    }
    episodes
}

/// Rule 12.
fn drains(h: &History, out: &mut Vec<Violation>) {
    for f in &h.faults {
        // (An instance that was not running had nothing to drain.)
        let ran = f.detail.get("ran").and_then(|r| r.as_bool()) != Some(false);
        if f.kind == Some(FaultKind::ApiTerm)
            && ran
            && f.detail.get("exit_code").and_then(|c| c.as_i64()) != Some(0)
        {
            out.push(Violation {
                rule: 12,
                round: Some(f.round),
                campaign: None,
                users: Vec::new(),
                text: format!("{} did not exit 0 after SIGTERM: {}", f.target, f.detail),
                span: Some((f.start_ms, f.end_ms)),
            });
        }
    }
    for r in &h.rounds {
        for (i, code) in &r.rolled {
            if *code != Some(0) {
                out.push(Violation {
                    rule: 12,
                    round: Some(r.round),
                    campaign: None,
                    users: Vec::new(),
                    text: format!(
                        "api{i}, sent SIGTERM to roll it to {}, exited {code:?}",
                        r.form
                    ),
                    span: Some((
                        r.phases.apis_ready.saturating_sub(30_000),
                        r.phases.apis_ready,
                    )),
                });
            }
        }
    }
}

/// Rule 13.
fn bounded(h: &History, out: &mut Vec<Violation>) {
    let mut late: BTreeMap<(usize, &str), Vec<&Req>> = BTreeMap::new();
    for r in &h.requests {
        if r.kind() == Kind::Close || r.user.is_none() {
            continue;
        }
        let took = r.end_ms.saturating_sub(r.start_ms);
        // A hang-up's own short timeout says nothing.
        if !r.answered() && r.timeout_ms < LONGEST_MS {
            continue;
        }
        let frozen: u64 = h
            .faults
            .iter()
            .filter(|f| {
                f.kind == Some(FaultKind::ApiPause) && f.target == format!("api{}", r.instance)
            })
            .map(|f| {
                f.end_ms
                    .min(r.end_ms)
                    .saturating_sub(f.start_ms.max(r.start_ms))
            })
            .sum();
        if took > LONGEST_MS + frozen {
            late.entry((r.round, r.campaign.as_str()))
                .or_default()
                .push(r);
        }
    }
    for ((round, campaign), reqs) in late {
        let slowest = reqs.iter().max_by_key(|r| r.end_ms - r.start_ms).copied();
        out.push(Violation {
            rule: 13,
            round: Some(round),
            campaign: Some(campaign.to_owned()),
            users: slowest.and_then(|r| r.user.clone()).into_iter().collect(),
            text: format!(
                "{} requests took longer than {:.1} s (plus any time their instance was frozen); the slowest #{} {:.1} s{} (e.g. {})",
                reqs.len(),
                LONGEST_MS as f64 / 1000.0,
                slowest.map_or(0, |r| r.id),
                slowest.map_or(0.0, |r| (r.end_ms - r.start_ms) as f64 / 1000.0),
                if slowest.is_some_and(|r| !r.answered()) { " without a reply" } else { "" },
                examples(&reqs.iter().map(|r| r.id).collect::<Vec<_>>())
            ),
            span: None,
        });
    }
}

/// The smallest window of history that shows `v`: the involved users'
/// requests in its campaign, and the faults active within [`MARGIN_MS`]
/// of them; without users, the faults around its span (or its round).
pub fn window(h: &History, v: &Violation) -> String {
    let mut out = String::new();
    let reqs: Vec<&Req> = h
        .requests
        .iter()
        .filter(|r| {
            r.user.as_ref().is_some_and(|u| v.users.contains(u))
                && v.campaign.as_ref().is_none_or(|c| *c == r.campaign)
        })
        .collect();
    let span = if reqs.is_empty() {
        v.span.or_else(|| {
            let round = h.rounds.iter().find(|r| Some(r.round) == v.round)?;
            Some((round.phases.traffic_start, round.phases.round_end))
        })
    } else {
        Some((
            reqs.iter().map(|r| r.start_ms).min().unwrap_or(0),
            reqs.iter().map(|r| r.end_ms).max().unwrap_or(0),
        ))
    };
    let Some((from, to)) = span else {
        return out;
    };
    let (from, to) = (from.saturating_sub(MARGIN_MS), to + MARGIN_MS);
    let mut lines: Vec<(u64, String)> = Vec::new();
    // Reads that say the same as the one before (a follow-up polling) are
    // counted, not shown.
    let mut shown: Vec<(&Req, usize)> = Vec::new();
    for r in &reqs {
        if let Some((last, same)) = shown.last_mut() {
            let repeat = r.kind() == Kind::CouponsMe
                && last.kind() == Kind::CouponsMe
                && r.user == last.user
                && r.client == last.client
                && (r.status, &r.state, &r.coupon_id, &r.outcome)
                    == (last.status, &last.state, &last.coupon_id, &last.outcome);
            if repeat {
                *same += 1;
                continue;
            }
        }
        shown.push((r, 0));
    }
    let cut = shown.len() > 40;
    let kept: Vec<&(&Req, usize)> = if cut {
        shown[..10]
            .iter()
            .chain(&shown[shown.len() - 30..])
            .collect()
    } else {
        shown.iter().collect()
    };
    for (r, same) in kept {
        let mut l = r.line();
        if *same > 0 {
            l.push_str(&format!(" (and {same} more reads alike)"));
        }
        lines.push((r.start_ms, l));
    }
    if cut {
        lines.push((
            shown[10].0.start_ms,
            format!("  … {} lines left out …", shown.len() - 40),
        ));
    }
    for f in &h.faults {
        if f.start_ms < to && from < f.end_ms.max(f.start_ms + 1) {
            lines.push((f.start_ms, f.line()));
        }
    }
    for r in &h.requests {
        if r.kind() == Kind::Close
            && v.campaign.as_ref() == Some(&r.campaign)
            && r.start_ms < to
            && from < r.end_ms
        {
            lines.push((r.start_ms, r.line()));
        }
    }
    lines.sort_by_key(|(t, _)| *t);
    lines.dedup();
    for (_, l) in lines {
        let _ = writeln!(out, "    {l}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::history::{Phases, RedisSnapshot, Settle};
    use super::*;
    use serde_json::json;

    /// A fault of round 0 that did what it meant to.
    fn fault(kind: FaultKind, target: &str, start_ms: u64, end_ms: u64) -> FaultRecord {
        FaultRecord {
            round: 0,
            index: Some(0),
            kind: Some(kind),
            action: None,
            target: target.into(),
            start_ms,
            end_ms,
            ok: true,
            detail: json!(null),
        }
    }

    const C: &str = "c1";

    /// A history builder: one round, one plain campaign of `stock`.
    struct H {
        h: History,
        next: u64,
    }

    impl H {
        fn new(stock: u64) -> Self {
            let snap = Snapshot {
                api_taken: Some(0),
                api_persisted: Some(0),
                redis: RedisSnapshot {
                    taken: Some(0),
                    ..RedisSnapshot::default()
                },
                ..Snapshot::default()
            };
            let round = RoundEvidence {
                round: 0,
                form: "sync".into(),
                phases: Phases {
                    healed: 50_000,
                    settled: 52_000,
                    round_end: 90_000,
                    ..Phases::default()
                },
                campaigns: vec![CampaignEvidence {
                    which: Which::Plain,
                    id: C.into(),
                    stock,
                    room: None,
                    after_repair: snap,
                    reconcile: json!({}),
                    after_topup: None,
                    topup_sold_out: false,
                    topup_users: 0,
                }],
                settle: Settle {
                    lag_zero: true,
                    group_lag: Some(0),
                    ..Settle::default()
                },
                not_ready: Vec::new(),
                rolled: Vec::new(),
            };
            let mut h = H {
                h: History {
                    rounds: vec![round],
                    ..History::default()
                },
                next: 0,
            };
            h.req(Req {
                client: by::PROBE.into(),
                user: Some("probe".into()),
                start_ms: 50_100,
                end_ms: 50_200,
                status: Some(410),
                outcome: Some("sold_out".into()),
                ..Req::default()
            });
            h
        }

        fn campaign(&mut self) -> &mut CampaignEvidence {
            &mut self.h.rounds[0].campaigns[0]
        }

        fn req(&mut self, mut r: Req) -> u64 {
            r.id = self.next;
            self.next += 1;
            r.campaign = C.into();
            if r.client.is_empty() {
                r.client = "c00".into();
            }
            if r.kind.is_none() {
                r.kind = Some(Kind::Issue);
            }
            if r.timeout_ms == 0 {
                r.timeout_ms = 45_000;
            }
            self.h.requests.push(r);
            self.next - 1
        }

        fn issue(
            &mut self,
            user: &str,
            at: u64,
            status: u16,
            outcome: &str,
            coupon: Option<&str>,
        ) -> u64 {
            self.req(Req {
                user: Some(user.into()),
                start_ms: at,
                end_ms: at + 10,
                status: Some(status),
                outcome: Some(outcome.into()),
                coupon_id: coupon.map(str::to_owned),
                body: Some(format!("{{\"outcome\":\"{outcome}\"}}")),
                ..Req::default()
            })
        }

        fn read(
            &mut self,
            user: &str,
            at: u64,
            state: &str,
            coupon: Option<&str>,
            client: &str,
        ) -> u64 {
            self.req(Req {
                client: client.into(),
                kind: Some(Kind::CouponsMe),
                user: Some(user.into()),
                start_ms: at,
                end_ms: at + 5,
                status: Some(200),
                state: Some(state.into()),
                coupon_id: coupon.map(str::to_owned),
                ..Req::default()
            })
        }

        /// Rows (user, coupon) in both snapshots, the counts consistent.
        fn rows(&mut self, rows: &[(&str, &str)]) {
            let c = self.campaign();
            let s = &mut c.after_repair;
            s.rows = rows
                .iter()
                .map(|(u, c)| ((*u).to_owned(), (*c).to_owned()))
                .collect();
            let n = rows.len() as i64;
            s.api_taken = Some(n);
            s.api_persisted = Some(n);
            s.redis.taken = Some(n);
            s.redis.users = rows.iter().map(|(u, _)| (*u).to_owned()).collect();
        }

        fn rules(&self) -> Vec<u8> {
            judge(&self.h).into_iter().map(|v| v.rule).collect()
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let mut h = H::new(3);
        h.issue("a", 100, 202, "accepted", Some("A"));
        h.issue("a", 200, 409, "duplicate", None);
        let p = h.issue("b", 300, 202, "pending", Some("B"));
        h.read("b", 400, "pending", Some("B"), "c00");
        h.read("b", 40_000, "issued", Some("B"), by::FINAL);
        let _ = p;
        h.issue("c", 500, 503, "unavailable", None);
        h.issue("d", 600, 202, "queued", None);
        h.read("d", 40_000, "rejected", None, by::FINAL);
        h.rows(&[("a", "A"), ("b", "B")]);
        assert_eq!(judge(&h.h), Vec::new());
    }

    #[test]
    fn rows_over_stock_or_twice_for_a_user_fail_rule_1() {
        let mut h = H::new(1);
        h.issue("a", 100, 202, "accepted", Some("A"));
        h.issue("b", 100, 202, "accepted", Some("B"));
        h.rows(&[("a", "A"), ("b", "B")]);
        assert!(h.rules().contains(&1));
        let mut h = H::new(5);
        h.issue("a", 100, 202, "accepted", Some("A"));
        h.issue("a", 200, 202, "accepted", Some("A2"));
        h.rows(&[("a", "A"), ("a", "A2")]);
        assert!(h.rules().contains(&1));
    }

    #[test]
    fn an_accepted_reply_without_its_row_fails_rule_2() {
        let mut h = H::new(5);
        h.issue("a", 100, 202, "accepted", Some("A"));
        h.rows(&[]);
        assert_eq!(h.rules(), vec![2]);
        let mut h = H::new(5);
        h.issue("a", 100, 202, "accepted", Some("A"));
        h.rows(&[("a", "OTHER")]);
        assert!(h.rules().contains(&2));
    }

    #[test]
    fn a_deferred_reply_that_stays_pending_fails_rule_3() {
        let mut h = H::new(5);
        h.issue("a", 100, 202, "pending", Some("A"));
        h.read("a", 40_000, "pending", Some("A"), by::FINAL);
        h.rows(&[]);
        assert_eq!(h.rules(), vec![3]);
        // Never read at the end: also rule 3.
        let mut h = H::new(5);
        h.issue("a", 100, 202, "queued", None);
        assert_eq!(h.rules(), vec![3]);
    }

    #[test]
    fn a_stale_rejected_after_a_new_slot_fails_rule_3() {
        let mut h = H::new(5);
        h.issue("a", 100, 202, "pending", Some("A1"));
        h.issue("a", 1_000, 202, "pending", Some("A2"));
        // Read after the second reply: rejected (the first slot's failure,
        // recorded after the second take); yet A2 becomes the row.
        h.read("a", 1_200, "rejected", None, "c00");
        h.read("a", 40_000, "issued", Some("A2"), by::FINAL);
        h.rows(&[("a", "A2")]);
        assert_eq!(h.rules(), vec![3]);
    }

    #[test]
    fn none_without_an_outcome_is_excused_only_for_a_queue_killed_with_its_instance() {
        let mut h = H::new(5);
        h.issue("a", 100, 202, "pending", Some("A"));
        h.read("a", 40_000, "none", None, by::FINAL);
        assert_eq!(h.rules(), vec![3]);
        let mut h = H::new(5);
        h.issue("a", 100, 202, "queued", None);
        h.read("a", 40_000, "none", None, by::FINAL);
        assert_eq!(h.rules(), vec![3]);
        h.h.faults.push(FaultRecord {
            round: 0,
            index: Some(0),
            kind: Some(FaultKind::ApiKill),
            action: None,
            target: "api0".into(),
            start_ms: 500,
            end_ms: 2_000,
            ok: true,
            detail: json!(null),
        });
        assert_eq!(h.rules(), Vec::<u8>::new());
    }

    #[test]
    fn a_pending_id_other_than_the_row_fails_rule_3_unless_a_later_take_explains_it() {
        let mut h = H::new(5);
        h.issue("a", 100, 202, "pending", Some("A1"));
        h.read("a", 40_000, "issued", Some("A2"), by::FINAL);
        h.rows(&[("a", "A2")]);
        assert!(h.rules().contains(&3));
        let mut h = H::new(5);
        h.issue("a", 100, 202, "pending", Some("A1"));
        h.issue("a", 900, 202, "pending", Some("A2"));
        h.read("a", 40_000, "issued", Some("A2"), by::FINAL);
        h.rows(&[("a", "A2")]);
        assert_eq!(h.rules(), Vec::<u8>::new());
    }

    #[test]
    fn a_row_nobody_was_promised_fails_rule_4() {
        let mut h = H::new(5);
        h.issue("a", 100, 503, "unavailable", None);
        h.rows(&[("a", "A")]);
        assert_eq!(h.rules(), vec![4]);
        h.rows(&[("ghost", "G")]);
        assert_eq!(h.rules(), vec![4]);
        // A hang-up: the request may have run.
        let mut h = H::new(5);
        h.req(Req {
            user: Some("a".into()),
            start_ms: 100,
            end_ms: 110,
            timeout_ms: 10,
            error: Some("timeout".into()),
            ..Req::default()
        });
        h.rows(&[("a", "A")]);
        assert_eq!(h.rules(), Vec::<u8>::new());
    }

    #[test]
    fn counts_that_disagree_after_the_repair_fail_rule_5() {
        let mut h = H::new(5);
        h.issue("a", 100, 202, "accepted", Some("A"));
        h.rows(&[("a", "A")]);
        h.campaign().after_repair.api_taken = Some(2);
        assert_eq!(h.rules(), vec![5]);
        h.campaign().after_repair.api_taken = None;
        assert_eq!(h.rules(), vec![5]);
    }

    #[test]
    fn a_top_up_that_leaves_stock_fails_rule_6() {
        let mut h = H::new(2);
        h.issue("a", 100, 202, "accepted", Some("A"));
        h.rows(&[("a", "A")]);
        let mut after = h.campaign().after_repair.clone();
        h.campaign().after_topup = Some(after.clone());
        assert_eq!(h.rules(), vec![6]);
        // The top-up took a slot that never became a row (a delivery that
        // failed after the heal): rule 10, not a leak.
        let t = h.issue("f", 60_000, 202, "pending", Some("F"));
        h.h.requests.iter_mut().find(|r| r.id == t).unwrap().client = by::TOPUP.into();
        h.read("f", 40_000, "pending", Some("F"), by::FINAL);
        assert_eq!(h.rules(), vec![10]);
        h.h.requests.retain(|r| r.user.as_deref() != Some("f"));
        // The gate full and a row missing: a leak.
        h.campaign().after_topup.as_mut().unwrap().api_taken = Some(2);
        assert_eq!(h.rules(), vec![6]);
        h.campaign().after_topup.as_mut().unwrap().api_taken = Some(1);
        h.issue("t", 60_000, 202, "accepted", Some("T"));
        after.rows.push(("t".into(), "T".into()));
        h.campaign().after_topup = Some(after);
        assert_eq!(h.rules(), Vec::<u8>::new());
    }

    #[test]
    fn a_take_after_the_close_reply_fails_rule_7_but_a_replay_does_not() {
        let mut h = H::new(5);
        h.req(Req {
            client: by::ADMIN.into(),
            kind: Some(Kind::Close),
            start_ms: 1_000,
            end_ms: 1_100,
            status: Some(200),
            ..Req::default()
        });
        // Started before the close was answered: whatever it got is fine.
        let first = h.issue("a", 1_050, 202, "accepted", Some("A"));
        h.rows(&[("a", "A")]);
        assert_eq!(h.rules(), Vec::<u8>::new());
        // Its replay after the close is the first reply again.
        let mut replay =
            h.h.requests
                .iter()
                .find(|r| r.id == first)
                .cloned()
                .unwrap();
        replay.start_ms = 2_000;
        replay.end_ms = 2_010;
        replay.replayed = true;
        replay.key = Some("k".into());
        h.req(replay);
        h.h.requests.iter_mut().find(|r| r.id == first).unwrap().key = Some("k".into());
        assert_eq!(h.rules(), Vec::<u8>::new());
        h.issue("b", 1_200, 202, "queued", None);
        h.read("b", 40_000, "rejected", None, by::FINAL);
        assert_eq!(h.rules(), vec![7]);
    }

    #[test]
    fn a_key_that_runs_twice_or_replays_another_reply_fails_rule_8() {
        let keyed = |h: &mut H, at, status, outcome: &str, coupon: Option<&str>, replayed| {
            let id = h.issue("a", at, status, outcome, coupon);
            let r = h.h.requests.iter_mut().find(|r| r.id == id).unwrap();
            r.key = Some("k1".into());
            r.replayed = replayed;
        };
        // 503 (not kept), then a run, then exact replays: fine.
        let mut h = H::new(5);
        keyed(&mut h, 100, 503, "unavailable", None, false);
        keyed(&mut h, 200, 409, "request_in_progress", None, false);
        keyed(&mut h, 300, 202, "accepted", Some("A"), false);
        keyed(&mut h, 400, 202, "accepted", Some("A"), true);
        // The HTTP server's own 408 (the request arrived too late, its
        // instance frozen): the handler never ran.
        keyed(&mut h, 450, 408, "", None, false);
        h.rows(&[("a", "A")]);
        assert_eq!(h.rules(), Vec::<u8>::new());
        // Answered afresh after its reply was kept (a duplicate, not a
        // replay).
        keyed(&mut h, 500, 409, "duplicate", None, false);
        assert_eq!(h.rules(), vec![8]);
        // Refusals free the key: two of them, then a run, are fine.
        let mut h = H::new(5);
        keyed(&mut h, 100, 410, "sold_out", None, false);
        keyed(&mut h, 200, 410, "sold_out", None, false);
        assert_eq!(h.rules(), Vec::<u8>::new());
        // Two runs.
        let mut h = H::new(5);
        keyed(&mut h, 300, 202, "accepted", Some("A"), false);
        keyed(&mut h, 400, 202, "accepted", Some("A"), false);
        h.rows(&[("a", "A")]);
        assert_eq!(h.rules(), vec![8]);
        // A replay that differs.
        let mut h = H::new(5);
        keyed(&mut h, 300, 202, "accepted", Some("A"), false);
        keyed(&mut h, 400, 409, "duplicate", None, true);
        h.rows(&[("a", "A")]);
        assert_eq!(h.rules(), vec![8]);
    }

    #[test]
    fn a_lower_position_waiting_after_a_higher_one_was_admitted_fails_rule_9() {
        let mut h = H::new(5);
        h.campaign().which = Which::Room;
        h.h.requests[0].kind = Some(Kind::RoomJoin);
        h.h.requests[0].status = Some(202);
        let seen = |h: &mut H, user: &str, at, state: &str, position| {
            h.req(Req {
                kind: Some(Kind::RoomMe),
                user: Some(user.into()),
                start_ms: at,
                end_ms: at + 5,
                status: Some(200),
                state: Some(state.into()),
                position: Some(position),
                ..Req::default()
            });
        };
        seen(&mut h, "a", 100, "waiting", 1);
        seen(&mut h, "b", 200, "admitted", 2);
        seen(&mut h, "a", 203, "waiting", 1); // overlaps: not after
        h.rows(&[]);
        assert_eq!(h.rules(), Vec::<u8>::new());
        seen(&mut h, "a", 300, "waiting", 1);
        assert_eq!(h.rules(), vec![9]);
        // The audit: a user with a slot who never joined.
        let mut h2 = H::new(5);
        h2.campaign().which = Which::Room;
        h2.h.requests[0].kind = Some(Kind::RoomJoin);
        h2.h.requests[0].status = Some(202);
        h2.issue("x", 100, 202, "accepted", Some("X"));
        h2.rows(&[("x", "X")]);
        h2.campaign().after_repair.redis.room = BTreeMap::from([("front".into(), "3".into())]);
        assert_eq!(h2.rules(), vec![9]);
    }

    #[test]
    fn no_definite_answer_within_ten_seconds_of_the_heal_fails_rule_10() {
        let mut h = H::new(5);
        h.h.requests[0].status = Some(503);
        h.h.requests[0].outcome = Some("unavailable".into());
        h.req(Req {
            client: by::PROBE.into(),
            user: Some("probe".into()),
            start_ms: 61_000,
            end_ms: 61_010,
            status: Some(202),
            outcome: Some("accepted".into()),
            coupon_id: Some("P".into()),
            ..Req::default()
        });
        h.rows(&[("probe", "P")]);
        assert_eq!(h.rules(), vec![10]);
        h.h.requests.last_mut().unwrap().start_ms = 55_000;
        h.h.requests.last_mut().unwrap().end_ms = 55_010;
        assert_eq!(h.rules(), Vec::<u8>::new());
        h.h.rounds[0].not_ready = vec!["api1: not ready".into()];
        assert_eq!(h.rules(), vec![10]);
    }

    #[test]
    fn after_a_redis_restart_the_probe_may_wait_for_the_keepers_rebuild() {
        let probe = |h: &mut H, at, status, outcome: &str| {
            h.req(Req {
                client: by::PROBE.into(),
                user: Some("probe".into()),
                start_ms: at,
                end_ms: at + 10,
                status: Some(status),
                outcome: Some(outcome.into()),
                coupon_id: (status == 202).then(|| "P".into()),
                ..Req::default()
            });
        };
        let mut h = H::new(5);
        h.h.requests[0].status = Some(503);
        h.h.requests[0].outcome = Some("unavailable".into());
        probe(&mut h, 50_000, 503, "unavailable");
        probe(&mut h, 62_000, 202, "accepted");
        h.rows(&[("probe", "P")]);
        assert_eq!(h.rules(), vec![10]);
        // Redis restarted at 40 s: fenced until 65 s at most.
        h.h.faults
            .push(fault(FaultKind::RedisKill, "x", 39_000, 40_000));
        assert_eq!(h.rules(), Vec::<u8>::new());
        h.h.requests.last_mut().unwrap().start_ms = 66_000;
        h.h.requests.last_mut().unwrap().end_ms = 66_010;
        assert_eq!(h.rules(), vec![10]);
        // The worker killed while its keeper rebuilt: its admin lock's lease
        // runs out first.
        h.h.faults
            .push(fault(FaultKind::WorkerKill, "x", 45_000, 47_000));
        assert_eq!(h.rules(), Vec::<u8>::new());
        // Later still: only a fault that began while the rebuild was
        // allowed (until 84 s) delays it further.
        h.h.requests.last_mut().unwrap().start_ms = 100_000;
        h.h.requests.last_mut().unwrap().end_ms = 100_010;
        assert_eq!(h.rules(), vec![10]);
        h.h.faults
            .push(fault(FaultKind::BrokerKill, "x", 90_000, 95_000));
        assert_eq!(h.rules(), vec![10]);
        h.h.faults
            .push(fault(FaultKind::BrokerKill, "x", 80_000, 88_000));
        assert_eq!(h.rules(), Vec::<u8>::new());
    }

    #[test]
    fn after_a_failed_forced_rebuild_the_probe_may_wait_for_the_keepers_rebuild() {
        let rebuild = |target: &str, ok| FaultRecord {
            ok,
            ..fault(FaultKind::Rebuild, target, 30_000, 40_000)
        };
        let mut h = H::new(5);
        h.h.requests[0].status = Some(503);
        h.h.requests[0].outcome = Some("unavailable".into());
        for (at, status, outcome) in [(50_000, 503, "unavailable"), (62_000, 202, "accepted")] {
            h.req(Req {
                client: by::PROBE.into(),
                user: Some("probe".into()),
                start_ms: at,
                end_ms: at + 10,
                status: Some(status),
                outcome: Some(outcome.into()),
                coupon_id: (status == 202).then(|| "P".into()),
                ..Req::default()
            });
        }
        h.rows(&[("probe", "P")]);
        assert_eq!(h.rules(), vec![10]);
        // Another campaign's, or one that did its work: no allowance.
        h.h.faults.push(rebuild("campaign:room", false));
        assert_eq!(h.rules(), vec![10]);
        h.h.faults.push(rebuild("campaign:plain", true));
        assert_eq!(h.rules(), vec![10]);
        // This campaign's, failed: fenced until 65 s at most.
        h.h.faults.push(rebuild("campaign:plain", false));
        assert_eq!(h.rules(), Vec::<u8>::new());
    }

    #[test]
    fn a_pause_longer_than_its_cause_a_lag_left_or_a_line_left_fails_rule_11() {
        let sample = |t, paused: f64| super::super::history::Sample {
            t_ms: t,
            source: "worker".into(),
            values: BTreeMap::from([("worker_paused".to_owned(), paused)]),
            error: None,
        };
        let mut h = H::new(5);
        h.rows(&[]);
        h.h.faults
            .push(fault(FaultKind::PostgresPause, "postgres", 1_000, 5_000));
        h.h.samples = vec![
            sample(500, 0.0),
            sample(1_500, 1.0),
            sample(20_000, 1.0),
            sample(20_500, 0.0),
        ];
        assert_eq!(h.rules(), Vec::<u8>::new());
        h.h.samples = vec![
            sample(500, 0.0),
            sample(1_500, 1.0),
            sample(30_000, 1.0),
            sample(30_500, 0.0),
        ];
        assert_eq!(h.rules(), vec![11]);
        // In the group without partitions for as long: the same.
        let parts = |t, n: f64| super::super::history::Sample {
            t_ms: t,
            source: "worker".into(),
            values: BTreeMap::from([("worker_assigned_partitions".to_owned(), n)]),
            error: None,
        };
        h.h.samples = vec![
            parts(500, 6.0),
            parts(1_500, 0.0),
            parts(20_000, 0.0),
            parts(20_500, 6.0),
        ];
        assert_eq!(h.rules(), Vec::<u8>::new());
        h.h.samples = vec![
            parts(500, 6.0),
            parts(1_500, 0.0),
            parts(30_000, 0.0),
            parts(30_500, 6.0),
        ];
        assert_eq!(h.rules(), vec![11]);
        // A broker killed while the stall was still allowed (until 25 s)
        // keeps the worker waiting: allowed until 20 s after it.
        let broker = |start_ms, end_ms| fault(FaultKind::BrokerKill, "broker", start_ms, end_ms);
        h.h.faults.push(broker(27_000, 29_000));
        assert_eq!(h.rules(), vec![11]);
        h.h.faults.pop();
        h.h.faults.push(broker(20_000, 24_000));
        assert_eq!(h.rules(), Vec::<u8>::new());
        h.h.faults.pop();
        h.h.samples.clear();
        h.h.rounds[0].settle.lag_zero = false;
        assert_eq!(h.rules(), vec![11]);
        h.h.rounds[0].settle.lag_zero = true;
        h.campaign().after_repair.redis.fairlock_waiting =
            BTreeMap::from([("7".into(), "1:tok".into())]);
        assert_eq!(h.rules(), vec![11]);
    }

    #[test]
    fn an_api_that_does_not_exit_0_on_sigterm_fails_rule_12() {
        let mut h = H::new(5);
        h.rows(&[]);
        h.h.faults.push(FaultRecord {
            round: 0,
            index: Some(0),
            kind: Some(FaultKind::ApiTerm),
            action: None,
            target: "api1".into(),
            start_ms: 1_000,
            end_ms: 5_000,
            ok: true,
            detail: json!({"exit_code": 0}),
        });
        assert_eq!(h.rules(), Vec::<u8>::new());
        h.h.faults[0].detail = json!({"exit_code": 1});
        assert_eq!(h.rules(), vec![12]);
        h.h.faults.clear();
        h.h.rounds[0].rolled = vec![(0, None)];
        assert_eq!(h.rules(), vec![12]);
    }

    #[test]
    fn a_reply_later_than_the_longest_request_fails_rule_13_unless_the_instance_was_frozen() {
        let mut h = H::new(5);
        let slow = |h: &mut H, end_ms, status: Option<u16>| {
            h.req(Req {
                client: "c01".into(),
                kind: Some(Kind::CouponsMe),
                user: Some("a".into()),
                instance: 1,
                start_ms: 1_000,
                end_ms,
                status,
                state: status.map(|_| "none".to_owned()),
                error: status.is_none().then(|| "timeout".to_owned()),
                ..Req::default()
            });
        };
        slow(&mut h, 46_000, None);
        h.rows(&[]);
        assert_eq!(h.rules(), vec![13]);
        let mut h = H::new(5);
        slow(&mut h, 1_000 + LONGEST_MS + 3_000, Some(200));
        h.rows(&[]);
        assert_eq!(h.rules(), vec![13]);
        // Its instance was frozen for 4 s meanwhile: within the bound.
        h.h.faults.push(FaultRecord {
            round: 0,
            index: Some(0),
            kind: Some(FaultKind::ApiPause),
            action: None,
            target: "api1".into(),
            start_ms: 2_000,
            end_ms: 6_000,
            ok: true,
            detail: json!(null),
        });
        assert_eq!(h.rules(), Vec::<u8>::new());
        // A hang-up after 300 ms says nothing.
        let mut h = H::new(5);
        h.req(Req {
            user: Some("b".into()),
            start_ms: 1_000,
            end_ms: 1_300,
            timeout_ms: 300,
            error: Some("timeout".into()),
            ..Req::default()
        });
        h.rows(&[]);
        assert_eq!(h.rules(), Vec::<u8>::new());
    }

    #[test]
    fn a_window_shows_the_users_requests_and_the_faults_around_them() {
        let mut h = H::new(5);
        h.issue("a", 10_000, 202, "accepted", Some("A"));
        h.issue("b", 10_000, 202, "accepted", Some("B"));
        h.rows(&[("b", "B")]);
        h.h.faults.push(FaultRecord {
            round: 0,
            index: Some(3),
            kind: Some(FaultKind::BrokerKill),
            action: None,
            target: "broker".into(),
            start_ms: 12_000,
            end_ms: 14_000,
            ok: true,
            detail: json!(null),
        });
        h.h.faults.push(FaultRecord {
            round: 0,
            index: Some(4),
            kind: Some(FaultKind::RedisKill),
            action: None,
            target: "redis".into(),
            start_ms: 30_000,
            end_ms: 31_000,
            ok: true,
            detail: json!(null),
        });
        let v = judge(&h.h);
        assert_eq!(v.len(), 1, "{v:?}");
        let w = window(&h.h, &v[0]);
        assert!(w.contains("broker-kill@broker"), "{w}");
        assert!(!w.contains("redis-kill"), "{w}");
        assert!(w.contains(" a ") || w.contains(" a →"), "{w}");
        assert!(!w.contains(" b "), "{w}");
    }
}
