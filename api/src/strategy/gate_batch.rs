//! The gate's batch (`gate.batch_size`): the takes of one campaign that
//! arrive at this instance while a gate call of that campaign is out
//! (`gate.calls_out` of them) wait for one, then go together in one call
//! (`lua/gate.lua` runs them in order, as if each were a call of its own) —
//! group commit, as a database's log does. A take alone goes at once, in a
//! call of its own, from the request's own task; so does every take with a
//! `gate.batch_size` of 1. Redis then pays its per-call cost (the script's
//! start, the meta, the fence, the clock, the reply) once per batch: with
//! 64 takes at once, a take cost Redis 29 µs of CPU in calls of one, 18 µs
//! in batches of 4 and 13 µs in batches of 64 (`cargo bench -p common
//! --bench gate -- gate_take_batch`; docs/PERFORMANCE.md, "The gate's
//! batch").
//!
//! A campaign has a *line* here while one of its calls is out. A take that
//! finds fewer than `gate.calls_out` (1) of its campaign's calls out sends
//! its own call; nothing waits in the line then, so it passes no one there
//! (with more than one, it may reach Redis before a batch just handed to
//! its task: the gate promises no order across calls). The takes that find
//! that many out wait in the line; when a call returns, the next batch of
//! the line (up to `gate.batch_size`, in arrival order) goes in its place,
//! from a task of its own on the main runtime ([`send`]); a line that fills
//! a whole batch sends it at once, beside the call out. The line closes
//! when no call is out and nothing waits. A line is as long as this
//! instance's requests in flight (`http.max_in_flight`, async-queue's
//! consumers' batches).
//!
//! What if, at each await:
//! - the call of a batch fails: every take of the batch gets the error a
//!   call of its own would have got ([`RedisCallError::for_each_take`]),
//!   so each request withdraws its own take by its coupon id if the call
//!   may have run (`Issuance::take_failed`), as it does alone;
//! - the call hangs: it is given up after the command timeout, as every
//!   call (`RedisClient::run_on`), and its takes are withdrawn as above. A
//!   take still waiting in line after [`GateBatches::wait`] leaves it: it
//!   was never sent, so it answers 503 at once with nothing to withdraw
//!   ([`RedisCallError::NotSent`]); one already in a batch waits for that
//!   call, bounded as every call;
//! - the task that sends a batch dies (a panic), or is dropped before it
//!   ran (the main runtime shutting down): its takes find their reply
//!   gone, which counts as a call that may have run, so each is withdrawn;
//!   its guard ([`CallOut`]) hands its place to the next batch all the
//!   same (which, dropped unrun too, hands it on, until the line is empty);
//! - the worker thread whose call returned is busy or stopping: batches go
//!   from the process's main runtime, not from that thread;
//! - the request that sent its own call is dropped mid-call (its task
//!   ended: a shutdown): its guard hands its place over all the same;
//! - the process dies: a slot taken and not produced is left to
//!   `reconcile`, as a crash between the gate and the produce is in every
//!   strategy;
//! - the reply is lost (a broken connection): an error as above; on a
//!   Redis Cluster the client sends the call again, and every take of the
//!   batch that ran answers `taken` again (the slot is its own,
//!   `slot_is_own`) or `withdrawn`, and writes nothing more.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::ids::{CampaignId, CouponId, UserId};
use common::redis_state::{Gate, GateReply, RedisCallError};
use prometheus::Histogram;
use tokio::sync::oneshot;

type Reply = Result<GateReply, RedisCallError>;

/// The most takes one call carries, whatever `gate.batch_size` says: the
/// script holds Redis while it runs (about 10 µs a take), and names two
/// keys a take.
pub const MOST_PER_CALL: usize = 512;

/// The lines of one instance's campaigns (see the module's doc).
#[derive(Debug)]
pub struct GateBatches {
    gate: Gate,
    /// Where batches are sent from: the process's main runtime, which
    /// outlives the server's worker threads and which any of its threads
    /// runs, so that a batch of takes from several workers does not depend
    /// on the one whose call happened to return (busy, or stopping).
    runtime: tokio::runtime::Handle,
    /// Takes per call (`gate_batch_takes`).
    takes: Histogram,
    most: usize,
    /// `gate.calls_out`: a campaign's calls out before its takes line up.
    calls_out: usize,
    wait: Duration,
    lines: Mutex<HashMap<CampaignId, Line>>,
}

/// A campaign's takes waiting, and its calls out.
#[derive(Debug, Default)]
struct Line {
    waiting: VecDeque<Waiting>,
    out: usize,
}

#[derive(Debug)]
struct Waiting {
    user: UserId,
    coupon: CouponId,
    reply: oneshot::Sender<Reply>,
}

impl GateBatches {
    /// `most`: `gate.batch_size`; `calls_out`: `gate.calls_out`;
    /// `longest_call`: the longest one Redis call takes before it is given
    /// up (`redis.command_timeout_ms`, extended). Must be called on the
    /// runtime batches are to be sent from (the process's main one).
    pub fn new(
        gate: Gate,
        takes: Histogram,
        most: usize,
        calls_out: usize,
        longest_call: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            gate,
            runtime: tokio::runtime::Handle::current(),
            takes,
            most: most.clamp(1, MOST_PER_CALL),
            calls_out: calls_out.max(1),
            wait: Self::wait(longest_call),
            lines: Mutex::new(HashMap::new()),
        })
    }

    /// The gate its calls go to.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The longest a take waits in line before it leaves it unsent: the
    /// call out and one more, each at its longest.
    fn wait(longest_call: Duration) -> Duration {
        longest_call * 2
    }

    /// The gate's take, in a batch if `calls_out` calls of the campaign
    /// are out ([`Gate::take`] otherwise).
    pub async fn take(
        self: &Arc<Self>,
        campaign: &CampaignId,
        user: &UserId,
        coupon: &CouponId,
    ) -> Reply {
        if self.most == 1 {
            self.takes.observe(1.0);
            return self.gate.take(campaign, user, coupon).await;
        }
        let (answer, full) = {
            let mut lines = self.lines();
            let line = lines.entry(*campaign).or_default();
            // Below `calls_out` nothing waits in the line (its takes wait
            // only while that many calls are out): going at once passes no
            // one there.
            if line.out < self.calls_out {
                line.out += 1;
                (None, None)
            } else {
                let (reply, answer) = oneshot::channel();
                line.waiting.push_back(Waiting {
                    user: user.clone(),
                    coupon: *coupon,
                    reply,
                });
                let full = if line.waiting.len() >= self.most {
                    let batch = self.next_batch(line);
                    line.out += 1;
                    Some(batch)
                } else {
                    None
                };
                (Some(answer), full)
            }
        };
        let Some(mut answer) = answer else {
            let _out = CallOut {
                batches: self.clone(),
                campaign: *campaign,
            };
            self.takes.observe(1.0);
            return self.gate.take(campaign, user, coupon).await;
        };
        if let Some(batch) = full {
            self.spawn_batch(*campaign, batch);
        }
        match tokio::time::timeout(self.wait, &mut answer).await {
            Ok(reply) => reply.unwrap_or_else(|_| Err(reply_gone())),
            Err(_) if self.leave(campaign, coupon) => Err(RedisCallError::NotSent(self.wait)),
            // In a batch whose call is out: bounded as every call.
            Err(_) => answer.await.unwrap_or_else(|_| Err(reply_gone())),
        }
    }

    fn lines(&self) -> MutexGuard<'_, HashMap<CampaignId, Line>> {
        // Each change to the map is made whole under the lock, so a
        // poisoned lock is used as it is.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Up to `most` takes off the front of `line`, leaving out those whose
    /// request is gone.
    fn next_batch(&self, line: &mut Line) -> Vec<Waiting> {
        let mut batch = Vec::new();
        while batch.len() < self.most {
            match line.waiting.pop_front() {
                Some(w) if w.reply.is_closed() => {}
                Some(w) => batch.push(w),
                None => break,
            }
        }
        batch
    }

    /// Takes the take of `coupon` out of `campaign`'s line: whether it was
    /// still there (then it was never sent).
    fn leave(&self, campaign: &CampaignId, coupon: &CouponId) -> bool {
        let mut lines = self.lines();
        let Some(line) = lines.get_mut(campaign) else {
            return false;
        };
        match line.waiting.iter().position(|w| w.coupon == *coupon) {
            Some(at) => {
                line.waiting.remove(at);
                true
            }
            None => false,
        }
    }

    /// A call of `campaign`'s line is back (or its task is gone): the next
    /// batch takes its place, or the line has one call out fewer.
    fn returned(self: &Arc<Self>, campaign: &CampaignId) {
        let mut lines = self.lines();
        let Some(line) = lines.get_mut(campaign) else {
            return;
        };
        let batch = self.next_batch(line);
        if batch.is_empty() {
            line.out = line.out.saturating_sub(1);
            if line.out == 0 && line.waiting.is_empty() {
                lines.remove(campaign);
            }
            return;
        }
        drop(lines);
        self.spawn_batch(*campaign, batch);
    }

    /// Sends `batch` from a task of its own on the main runtime; its place
    /// among the calls out is already counted, and is held by the task's
    /// guard, made before the spawn: a task dropped unrun (the runtime
    /// shutting down) hands its place over all the same, its takes finding
    /// their reply gone.
    fn spawn_batch(self: &Arc<Self>, campaign: CampaignId, batch: Vec<Waiting>) {
        let out = CallOut {
            batches: self.clone(),
            campaign,
        };
        self.runtime.spawn(send(batch, out));
    }
}

fn reply_gone() -> RedisCallError {
    RedisCallError::Protocol("the gate's batch ended without this take's reply".into())
}

/// One call out of a campaign's line: when it ends (or its task is
/// dropped, run or not), its place goes to the next batch.
struct CallOut {
    batches: Arc<GateBatches>,
    campaign: CampaignId,
}

impl Drop for CallOut {
    fn drop(&mut self) {
        self.batches.returned(&self.campaign);
    }
}

/// Sends one batch and answers each of its takes.
async fn send(mut batch: Vec<Waiting>, out: CallOut) {
    // A take whose request is gone (its wait ran out and it left, or its
    // task ended) is not sent.
    batch.retain(|w| !w.reply.is_closed());
    if batch.is_empty() {
        return;
    }
    let takes: Vec<(&UserId, &CouponId)> = batch.iter().map(|w| (&w.user, &w.coupon)).collect();
    out.batches.takes.observe(takes.len() as f64);
    let replies = out.batches.gate.take_batch(&out.campaign, &takes).await;
    match replies {
        Ok(replies) => {
            for (w, reply) in batch.into_iter().zip(replies) {
                // A request gone since (its task ended with its worker
                // thread, at shutdown) leaves a slot it took to
                // `reconcile`, as a crash between the gate and the produce
                // does.
                let _ = w.reply.send(Ok(reply));
            }
        }
        Err(e) => {
            for w in batch {
                let _ = w.reply.send(Err(e.for_each_take()));
            }
        }
    }
}
