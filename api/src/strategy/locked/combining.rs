//! `combining` (`lock.mode`): one hold of the campaign's lock serves every
//! request of this instance waiting for it at that moment — flat combining,
//! as a database's group commit. The first request to find nobody serving
//! the campaign's line starts a task that serves it ([`serve`]) until it is
//! empty: it takes what waits (up to [`MOST_PER_HOLD`]), holds the lock once
//! for all of it, sends the users' fenced takes together in arrival order
//! (`locked_take.lua` stops them at the stock), releases, and answers each.
//!
//! The bounds a request keeps, as in `naive` mode:
//! - the line: at most `lock.max_waiters` requests of one campaign wait in
//!   this instance; past it a request is answered 503 at once;
//! - the wait: a request not yet taken into a batch by `lock.wait_ms` after
//!   it joined leaves the line with a 503, taking nothing (a state shared
//!   with the server decides who comes first: it leaves, or it is in the
//!   batch and waits for the batch, whose hold is itself bounded by the lock
//!   wait and the section);
//! - the take: each waiter brings the coupon id its take will name, so that
//!   whatever becomes of the reply (its request gone, the serving task dead
//!   mid-batch) the slot it may have taken is given back by that id
//!   (`Gate::withdraw`): nothing is taken for a request that cannot produce.
//!
//! What if the serving task dies (a panic)? Its guard marks the line served
//! by nobody and answers every request still waiting 503 (nothing taken for
//! them); the requests of the batch in hand find their reply gone and
//! withdraw their takes; the next request starts a new server.
//!
//! A user twice in one batch waits for the next: its first request's take
//! decides what the second is (a duplicate if it took a slot, another try if
//! it was refused for a while).
//!
//! A batch's work belongs to no single request: it runs in a `lock_hold`
//! span of its own (the campaign, the batch's size), linked to the span of
//! every request it serves (follows-from, a link in a trace), so a log line
//! of the hold never carries the request id of whichever request started the
//! task.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use common::ids::{CampaignId, CouponId, UserId};
use common::keys::CampaignKeys;
use common::settings::LockSettings;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;

use super::{CampaignLock, Section, fenced_take, lock_unavailable, open_now, release, took};
use crate::strategy::IssueError;
use crate::strategy::issuance::TakenSlot;

/// The most requests one hold serves: it bounds the hold (each user is one
/// script call in the pipeline).
pub const MOST_PER_HOLD: usize = 512;

/// A waiter's place: still waiting, taken into a batch, or gone.
const WAITING: u8 = 0;
const IN_BATCH: u8 = 1;
const GONE: u8 = 2;

/// The requests of this instance waiting for each campaign's lock.
#[derive(Debug)]
pub struct Combiner {
    lines: std::sync::Mutex<HashMap<CampaignId, Line>>,
    max_line: usize,
    wait: Duration,
}

#[derive(Debug, Default)]
struct Line {
    waiting: VecDeque<Waiter>,
    /// A task is serving this line (taking the lock for its batches).
    serving: bool,
}

#[derive(Debug)]
struct Waiter {
    user: UserId,
    /// The coupon id its take names (made by the request, so that it can
    /// withdraw the take whatever becomes of the reply).
    coupon: CouponId,
    reply: oneshot::Sender<Result<TakenSlot, IssueError>>,
    place: Arc<AtomicU8>,
    /// When it gives up waiting for a batch.
    deadline: Instant,
    /// The request's span, which the hold that serves it links to.
    span: tracing::Span,
}

impl Combiner {
    pub fn new(settings: &LockSettings) -> Self {
        Self {
            lines: std::sync::Mutex::default(),
            max_line: usize::try_from(settings.max_waiters)
                .unwrap_or(usize::MAX)
                .max(1),
            wait: Duration::from_millis(settings.wait_ms),
        }
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, HashMap<CampaignId, Line>> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Joins the campaign's line (starting its server if nobody serves it)
    /// and waits for a slot, a refusal, or the wait's end.
    pub async fn take(
        self: &Arc<Self>,
        section: &Arc<Section>,
        lock: &Arc<CampaignLock>,
        campaign: CampaignId,
        user: UserId,
    ) -> Result<TakenSlot, IssueError> {
        let (reply, mut answer) = oneshot::channel();
        let coupon = CouponId::new();
        let place = Arc::new(AtomicU8::new(WAITING));
        let deadline = Instant::now() + self.wait;
        let start = {
            let mut lines = self.lines();
            let line = lines.entry(campaign).or_default();
            if line.waiting.len() >= self.max_line {
                return Err(IssueError::Unavailable(format!(
                    "the campaign is busy ({} requests already waiting for its lock here); retry later",
                    line.waiting.len()
                )));
            }
            line.waiting.push_back(Waiter {
                user: user.clone(),
                coupon,
                reply,
                place: place.clone(),
                deadline,
                span: tracing::Span::current(),
            });
            !std::mem::replace(&mut line.serving, true)
        };
        if start {
            // Its own root span: the task outlives the request that started
            // it. At `warn`, as the request span, so that the lines it logs
            // under the default filter carry it.
            let span = tracing::warn_span!(parent: None, "lock_line", campaign.id = %campaign);
            let serving = Serving {
                combiner: self.clone(),
                campaign,
                done: false,
            };
            section
                .issuance
                .spawn(serve(section.clone(), lock.clone(), serving).instrument(span));
        }
        if crate::faults::drops_its_reply(&section.issuance.faults, &user) {
            drop(answer);
            return Err(IssueError::Unavailable(
                "fault: the reply was dropped".into(),
            ));
        }
        let answered = match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(answered) => answered,
            Err(_) => {
                if place
                    .compare_exchange(WAITING, GONE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Err(busy(self.wait));
                }
                // In a batch already: its hold decides, within its own bounds.
                answer.await
            }
        };
        match answered {
            Ok(result) => result,
            // The server is gone with the reply: the take may have happened.
            Err(_) => Err(section
                .issuance
                .withdraw_lost(&campaign, &user, &coupon)
                .await),
        }
    }
}

fn busy(wait: Duration) -> IssueError {
    IssueError::Unavailable(format!(
        "the campaign is busy (no lock within {} ms); nothing was issued, retry later",
        wait.as_millis()
    ))
}

/// Marks a campaign's line as served by nobody when its server ends, for
/// whatever reason (a panic included), answering the requests still waiting
/// (nothing was taken for them).
struct Serving {
    combiner: Arc<Combiner>,
    campaign: CampaignId,
    /// The server ended on an empty line (which it removed).
    done: bool,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let left: Vec<Waiter> = {
            let mut lines = self.combiner.lines();
            match lines.remove(&self.campaign) {
                Some(line) => line.waiting.into(),
                None => Vec::new(),
            }
        };
        for waiter in left {
            if waiter
                .place
                .compare_exchange(WAITING, GONE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let _ = waiter.reply.send(Err(IssueError::Unavailable(
                    "the campaign's lock line stopped; nothing was issued, retry".into(),
                )));
            }
        }
        tracing::error!(campaign.id = %self.campaign, "the campaign's lock line ended unexpectedly");
    }
}

/// Serves a campaign's line until it is empty: takes what waits (up to
/// [`MOST_PER_HOLD`], each user once, none past its deadline), holds the
/// lock once for all of it, answers each.
async fn serve(section: Arc<Section>, lock: Arc<CampaignLock>, mut serving: Serving) {
    let campaign = serving.campaign;
    loop {
        let (batch, late) = {
            let mut lines = serving.combiner.lines();
            let Some(line) = lines.get_mut(&campaign) else {
                serving.done = true;
                return;
            };
            if line.waiting.is_empty() {
                lines.remove(&campaign);
                serving.done = true;
                return;
            }
            next_batch(line, Instant::now())
        };
        for waiter in late {
            let _ = waiter.reply.send(Err(busy(serving.combiner.wait)));
        }
        if batch.is_empty() {
            continue;
        }
        for waiter in &batch {
            crate::faults::panic_in_lock_line(&section.issuance.faults, &waiter.user);
        }
        let hold = tracing::warn_span!("lock_hold", batch = batch.len());
        for waiter in &batch {
            hold.follows_from(&waiter.span);
        }
        let results = hold_once(&section, &lock, &campaign, &batch)
            .instrument(hold)
            .await;
        for (waiter, result) in batch.into_iter().zip(results) {
            if let Err(Ok(slot)) = waiter.reply.send(result) {
                // Its request is gone and will never produce: the slot goes
                // back (by its coupon id: never another request's).
                section
                    .issuance
                    .withdraw_lost(&campaign, &waiter.user, &slot.coupon_id)
                    .await;
            }
        }
    }
}

/// The next batch of a line: the waiters in arrival order, each user once
/// (a repeat stays, first in line, for the next batch), up to
/// [`MOST_PER_HOLD`]; and the waiters whose deadline passed (to be answered
/// busy). Waiters that left are dropped.
fn next_batch(line: &mut Line, now: Instant) -> (Vec<Waiter>, Vec<Waiter>) {
    let mut batch = Vec::new();
    let mut late = Vec::new();
    let mut repeats = VecDeque::new();
    let mut users = HashSet::new();
    while batch.len() < MOST_PER_HOLD {
        let Some(waiter) = line.waiting.pop_front() else {
            break;
        };
        if waiter.place.load(Ordering::Acquire) == GONE {
            continue;
        }
        if users.contains(&waiter.user) {
            repeats.push_back(waiter);
            continue;
        }
        let next = if waiter.deadline <= now {
            GONE
        } else {
            IN_BATCH
        };
        if waiter
            .place
            .compare_exchange(WAITING, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue; // it left just now
        }
        if next == GONE {
            late.push(waiter);
        } else {
            users.insert(waiter.user.clone());
            batch.push(waiter);
        }
    }
    while let Some(waiter) = repeats.pop_back() {
        line.waiting.push_front(waiter);
    }
    (batch, late)
}

/// One hold for a batch: the lock, the section, the release.
async fn hold_once(
    section: &Section,
    lock: &CampaignLock,
    campaign: &CampaignId,
    batch: &[Waiter],
) -> Vec<Result<TakenSlot, IssueError>> {
    let guard = match lock.acquire(campaign).await {
        Ok(guard) => guard,
        Err(e) => {
            let e = lock_unavailable(e);
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
    };
    let started = took(section, &guard);
    let results = combined_section(section, &guard, campaign, batch).await;
    release(section, guard, campaign, started).await;
    results
}

/// The section for a batch under one hold: the meta and window once, then
/// every user's fenced take (`locked_take.lua`: no slot yet, the count below
/// the stock, the lock still ours, the campaign open and its state current),
/// sent together in arrival order on the shared connection.
async fn combined_section(
    section: &Section,
    guard: &common::lock::LockGuard,
    campaign: &CampaignId,
    batch: &[Waiter],
) -> Vec<Result<TakenSlot, IssueError>> {
    if let Err(e) = open_now(section, campaign).await {
        return batch.iter().map(|_| Err(e.clone())).collect();
    }
    for waiter in batch {
        crate::faults::pause_lock_holder(&section.issuance.faults, guard, &waiter.user).await;
    }
    let keys = CampaignKeys::new(campaign);
    let takes = batch
        .iter()
        .map(|waiter| fenced_take(section, guard, &keys, campaign, &waiter.user, waiter.coupon));
    futures::future::join_all(takes).await
}
