//! `combining` (`lock.mode`): one hold of the campaign's lock serves every
//! request of this instance waiting for it at that moment (up to
//! [`MOST_PER_HOLD`], each user once) — flat combining, as a database's
//! group commit. The first request to find nobody serving the campaign's
//! line starts a task that serves it ([`serve`]) until it is empty: it takes
//! what waits into a batch, holds the lock once for all of it, sends the
//! users' fenced takes together in arrival order (`locked_take.lua` stops
//! them at the stock), answers each as its take returns, and releases.
//!
//! The bounds a request keeps, as in `naive` mode:
//! - the line: at most `lock.max_waiters` requests of one campaign are in
//!   this instance's line at once, waiting or in the batch in hand; past it
//!   a request is answered 503 at once;
//! - the wait: a request not taken into a batch by `lock.wait_ms` after it
//!   joined leaves the line with a 503, taking nothing (a state shared with
//!   the server decides who comes first: it leaves, or it is in the batch).
//!   One in a batch waits for the batch's hold, which is bounded (the lock
//!   wait, the section's calls at their longest, a withdrawal; see
//!   `Combiner::hold_bound`): past that bound it withdraws its take and
//!   answers 503. So a request waits at most about twice `lock.wait_ms`
//!   plus the section;
//! - the take: each waiter brings the coupon id its take will name, so that
//!   a take whose reply is lost is withdrawn by that id (`Gate::withdraw`,
//!   never another request's slot): by the server when the request is gone
//!   (in the background, so the batch's other replies do not wait for it),
//!   by the request when the server is gone or past its bound. A request
//!   that dies after its reply arrived and before it enqueues its message
//!   leaves its slot to `reconcile`, as a crash between the gate and the
//!   produce does in every strategy.
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
use common::settings::WITHDRAW_WITHIN;

/// The most requests one hold serves: it bounds the hold (each user is one
/// script call in the pipeline).
pub const MOST_PER_HOLD: usize = 512;

/// What a hold may take besides the lock wait and the section's Redis calls:
/// the database lookup of a campaign whose meta is missing.
const HOLD_MARGIN: Duration = Duration::from_secs(2);

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
    /// The longest a hold takes once it has a batch: the lock wait, the
    /// meta read and the takes (each one Redis call at its longest), a take
    /// withdrawn after it failed, the database lookup of a missing meta.
    /// A request in a batch waits this long at most, then withdraws.
    hold_bound: Duration,
}

#[derive(Debug, Default)]
struct Line {
    waiting: VecDeque<Waiter>,
    /// Requests in the line: waiting or in the batch in hand (each holds a
    /// [`Seat`]). The line's bound.
    seats: usize,
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
    /// The request's span, which the hold that serves it links to.
    span: tracing::Span,
}

/// A request's place in the count of its line, given up when the request
/// ends (answered, gone, or cancelled).
struct Seat {
    combiner: Arc<Combiner>,
    campaign: CampaignId,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut lines = self.combiner.lines();
        if let Some(line) = lines.get_mut(&self.campaign) {
            line.seats = line.seats.saturating_sub(1);
            if line.seats == 0 && !line.serving {
                lines.remove(&self.campaign);
            }
        }
    }
}

impl Combiner {
    /// `longest_call`: the longest one Redis call can take
    /// (`RedisSettings::longest_call`).
    pub fn new(settings: &LockSettings, longest_call: Duration) -> Self {
        let wait = Duration::from_millis(settings.wait_ms);
        Self {
            lines: std::sync::Mutex::default(),
            max_line: usize::try_from(settings.max_waiters)
                .unwrap_or(usize::MAX)
                .max(1),
            wait,
            hold_bound: wait + longest_call * 2 + WITHDRAW_WITHIN + HOLD_MARGIN,
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
            if line.seats >= self.max_line {
                return Err(IssueError::Unavailable(format!(
                    "the campaign is busy ({} requests already waiting for its lock here); retry later",
                    line.seats
                )));
            }
            line.seats += 1;
            let start = !std::mem::replace(&mut line.serving, true);
            if start {
                // First in an idle line: the server it starts takes it into
                // its first batch, whatever the wait (as a free lock is
                // taken in `naive` mode even with no wait at all).
                place.store(IN_BATCH, Ordering::Release);
            }
            line.waiting.push_back(Waiter {
                user: user.clone(),
                coupon,
                reply,
                place: place.clone(),
                span: tracing::Span::current(),
            });
            start
        };
        let _seat = Seat {
            combiner: self.clone(),
            campaign,
        };
        if start {
            // Its own root span: the task outlives the request that started
            // it, and must not keep that request's span open. At `warn`, as
            // the request span, so that the lines it logs under the default
            // filter carry it.
            let span = tracing::warn_span!(parent: None, "lock_line", campaign.id = %campaign);
            let serving = Serving {
                combiner: self.clone(),
                campaign,
                done: false,
            };
            let work = serve(section.clone(), lock.clone(), serving);
            span.in_scope(|| section.issuance.spawn(work));
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
                // In a batch already: its hold is bounded.
                match tokio::time::timeout(self.hold_bound, &mut answer).await {
                    Ok(answered) => answered,
                    Err(_) => {
                        tracing::error!(campaign.id = %campaign, bound = ?self.hold_bound, "a combining hold outlived its bound; withdrawing this request's take");
                        return Err(section
                            .issuance
                            .withdraw_lost(
                                &campaign,
                                &user,
                                &coupon,
                                "the campaign's lock holder did not answer in time",
                            )
                            .await);
                    }
                }
            }
        };
        match answered {
            Ok(result) => result,
            // The server is gone with the reply: the take may have happened.
            Err(_) => Err(section
                .issuance
                .withdraw_lost(
                    &campaign,
                    &user,
                    &coupon,
                    "the campaign's lock line stopped",
                )
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
    /// The server ended on an empty line.
    done: bool,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let left: Vec<Waiter> = {
            let mut lines = self.combiner.lines();
            match lines.get_mut(&self.campaign) {
                Some(line) => {
                    line.serving = false;
                    let left = std::mem::take(&mut line.waiting).into();
                    if line.seats == 0 {
                        lines.remove(&self.campaign);
                    }
                    left
                }
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
/// [`MOST_PER_HOLD`], each user once), holds the lock once for all of it,
/// answers each; withdraws, in the background, the takes whose request is
/// gone.
async fn serve(section: Arc<Section>, lock: Arc<CampaignLock>, mut serving: Serving) {
    let campaign = serving.campaign;
    loop {
        let batch = {
            let mut lines = serving.combiner.lines();
            let Some(line) = lines.get_mut(&campaign) else {
                serving.done = true;
                return;
            };
            let batch = next_batch(line);
            if batch.is_empty() && line.waiting.is_empty() {
                line.serving = false;
                if line.seats == 0 {
                    lines.remove(&campaign);
                }
                serving.done = true;
                return;
            }
            batch
        };
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
        let lost = hold_once(&section, &lock, &campaign, batch)
            .instrument(hold)
            .await;
        if !lost.is_empty() {
            // Their requests are gone and will never produce: the slots go
            // back (by coupon id: never another request's), while the line
            // goes on.
            let issuance = section.issuance.clone();
            section.issuance.spawn(async move {
                let withdrawals = lost.iter().map(|(user, coupon)| {
                    issuance.withdraw_lost(&campaign, user, coupon, "the request was gone")
                });
                futures::future::join_all(withdrawals).await;
            });
        }
    }
}

/// The next batch of a line: the waiters in arrival order, each user once
/// (a repeat stays, first in line, for the next batch), up to
/// [`MOST_PER_HOLD`]. A waiter is taken whatever its deadline, as long as it
/// has not left (its deadline bounds the request, not the server); waiters
/// that left are dropped.
fn next_batch(line: &mut Line) -> Vec<Waiter> {
    let mut batch = Vec::new();
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
        match waiter
            .place
            .compare_exchange(WAITING, IN_BATCH, Ordering::AcqRel, Ordering::Acquire)
        {
            // Waiting, or in this batch from the start (it started the server).
            Ok(_) | Err(IN_BATCH) => {}
            Err(_) => continue, // it left just now
        }
        users.insert(waiter.user.clone());
        batch.push(waiter);
    }
    while let Some(waiter) = repeats.pop_back() {
        line.waiting.push_front(waiter);
    }
    batch
}

/// One hold for a batch: the lock, the section (which answers each
/// waiter), the release. Returns the takes whose request was gone.
async fn hold_once(
    section: &Section,
    lock: &CampaignLock,
    campaign: &CampaignId,
    batch: Vec<Waiter>,
) -> Vec<(UserId, CouponId)> {
    let guard = match lock.acquire(campaign).await {
        Ok(guard) => guard,
        Err(e) => {
            let e = lock_unavailable(e);
            for waiter in batch {
                let _ = waiter.reply.send(Err(e.clone()));
            }
            return Vec::new();
        }
    };
    let started = took(section, &guard);
    let lost = combined_section(section, &guard, campaign, batch).await;
    release(section, guard, campaign, started).await;
    lost
}

/// The section for a batch under one hold: the meta and window once, then
/// every user's fenced take (`locked_take.lua`: no slot yet, the count below
/// the stock, the lock still ours, the campaign open and its state current),
/// sent together in arrival order on the shared connection. Each waiter is
/// answered as soon as its own take returns (a committed take needs no lock
/// to be produced), so one slow take does not age the others' slots.
/// Returns the takes whose request was gone.
async fn combined_section(
    section: &Section,
    guard: &common::lock::LockGuard,
    campaign: &CampaignId,
    batch: Vec<Waiter>,
) -> Vec<(UserId, CouponId)> {
    if let Err(e) = open_now(section, campaign).await {
        for waiter in batch {
            let _ = waiter.reply.send(Err(e.clone()));
        }
        return Vec::new();
    }
    for waiter in &batch {
        crate::faults::pause_lock_holder(&section.issuance.faults, guard, &waiter.user).await;
    }
    let keys = &CampaignKeys::new(campaign);
    let takes = batch.into_iter().map(|waiter| async move {
        let result = fenced_take(section, guard, keys, campaign, &waiter.user, waiter.coupon).await;
        match waiter.reply.send(result) {
            Err(Ok(slot)) => Some((waiter.user, slot.coupon_id)),
            _ => None,
        }
    });
    futures::future::join_all(takes)
        .await
        .into_iter()
        .flatten()
        .collect()
}
