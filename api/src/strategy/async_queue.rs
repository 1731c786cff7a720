//! `async-queue`: the request is marked `queued` in Redis (unless the user
//! already holds or awaits a slot: `duplicate`), put in a bounded in-process
//! queue and answered 202 `queued` at once. Background consumers take the
//! queue in batches (up to `queue.batch_size` requests each), run the `sync`
//! path for every request of a batch together (their gate calls in the gate's batches, on
//! the shared Redis connection, their messages in one producer batch: the
//! batching lane, since no reply waits for them) and
//! record each final state for `/coupons/me`: issued, pending, or rejected
//! with its outcome. A request that finds the queue full
//! waits for space up to `queue.enqueue_wait_ms` (back-pressure: the client
//! waits instead of retrying); past that it is answered 503 and takes no
//! slot.
//!
//! On shutdown the queue stops taking requests and drains until
//! `queue.drain_timeout_ms`: until every request it took is done (queued,
//! or in a consumer's batch). Whatever is still queued then is recorded as
//! rejected (`unavailable`), so nothing is dropped silently; a batch already
//! in a consumer's hands runs to its end (its gate calls are sent, and each
//! ends with its delivery report, within the delivery timeout), and the
//! shutdown waits for it with the rest of the background work.
//!
//! A request's `queued` mark lives as long as the request waits: a task
//! renews the marks of every request still in this process's queue each
//! third of `queue.mark_ttl_secs`, until its gate call is over (a slot taken
//! replaces the mark; a refusal, its record). So however
//! long a broker stall keeps requests queued, their users read `queued` and
//! a second request is a `duplicate`. A process that dies with requests
//! queued stops renewing; their marks expire within `queue.mark_ttl_secs`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::ids::{CampaignId, UserId};
use common::redis_state::{QueueMark, QueuedMarks, RecordedState, RedisClient};
use common::settings::QueueSettings;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::issuance::redis_unavailable;
use super::{Acceptance, Issuance, IssueError, Refusal};
use crate::producer::ReportWait;

#[derive(Debug)]
struct Job {
    campaign: CampaignId,
    user: UserId,
}

#[derive(Debug)]
pub struct AsyncQueueStrategy {
    issuance: Arc<Issuance>,
    /// Dropped (set to `None`) on shutdown, which closes the queue.
    sender: RwLock<Option<mpsc::Sender<Job>>>,
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    /// Set when draining: consumers stop taking jobs once it is set and the
    /// drain deadline passed.
    stopping: Arc<AtomicBool>,
    marks: QueuedMarks,
    /// How long a request waits for space in a full queue.
    enqueue_wait: Duration,
    /// The marks to keep alive: requests queued and not yet past the gate.
    waiting: Waiting,
    /// Requests taken into the queue and not done yet (queued, or in a
    /// consumer's batch): what a drain waits for. Counted before a request
    /// enters the queue, so it never reads lower than the truth (the depth
    /// gauge, decreased when a consumer takes a job, could, and ended a
    /// drain early).
    outstanding: Arc<AtomicUsize>,
    /// Stops the renewals once the queue is drained.
    renewals: CancellationToken,
}

/// Why a request did not enter the queue.
enum NotQueued {
    /// Full (for the whole enqueue wait).
    Full,
    /// Shutting down.
    Closed,
}

type Waiting = Arc<std::sync::Mutex<HashSet<(CampaignId, UserId)>>>;

fn lock(waiting: &Waiting) -> std::sync::MutexGuard<'_, HashSet<(CampaignId, UserId)>> {
    waiting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AsyncQueueStrategy {
    /// Creates the queue and starts its consumers on the current runtime.
    pub fn start(issuance: Arc<Issuance>, redis: &RedisClient, settings: &QueueSettings) -> Self {
        let marks = QueuedMarks::new(redis.clone(), settings.mark_ttl_secs);
        let (sender, receiver) = mpsc::channel(settings.capacity.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let stopping = Arc::new(AtomicBool::new(false));
        let waiting: Waiting = Arc::default();
        let outstanding = Arc::new(AtomicUsize::new(0));
        let batch_size = settings.batch_size.max(1);
        for _ in 0..settings.consumers.max(1) {
            let (issuance2, receiver, stopping, waiting, outstanding) = (
                issuance.clone(),
                receiver.clone(),
                stopping.clone(),
                waiting.clone(),
                outstanding.clone(),
            );
            issuance.spawn(async move {
                let mut batch = Vec::with_capacity(batch_size);
                loop {
                    if stopping.load(Ordering::Acquire) {
                        return;
                    }
                    {
                        let mut receiver = receiver.lock().await;
                        let Some(job) = receiver.recv().await else {
                            return;
                        };
                        batch.push(job);
                        while batch.len() < batch_size {
                            match receiver.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                    }
                    issuance2.metrics.queue_depth.sub(batch.len() as i64);
                    let done = batch.len();
                    futures::future::join_all(
                        batch
                            .drain(..)
                            .map(|job| process(&issuance2, job, &waiting)),
                    )
                    .await;
                    outstanding.fetch_sub(done, Ordering::AcqRel);
                }
            });
        }
        let renewals = CancellationToken::new();
        issuance.spawn(renew_marks(
            marks.clone(),
            waiting.clone(),
            settings.mark_ttl_secs,
            renewals.clone(),
        ));
        Self {
            issuance,
            sender: RwLock::new(Some(sender)),
            receiver,
            stopping,
            marks,
            enqueue_wait: Duration::from_millis(settings.enqueue_wait_ms),
            waiting,
            outstanding,
            renewals,
        }
    }

    pub async fn issue(
        &self,
        campaign: CampaignId,
        user: UserId,
    ) -> Result<Acceptance, IssueError> {
        match self
            .marks
            .mark(&campaign, &user)
            .await
            .map_err(redis_unavailable)?
        {
            QueueMark::Queued => {}
            QueueMark::Duplicate => return Err(IssueError::Refused(Refusal::Duplicate)),
            QueueMark::Missing => return Err(self.issuance.classify_missing(&campaign).await),
            QueueMark::Stale => return Err(IssueError::Fenced),
            QueueMark::Closed => return Err(IssueError::Refused(Refusal::Closed)),
        }
        lock(&self.waiting).insert((campaign, user.clone()));
        let sender = self
            .sender
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let job = Job {
            campaign,
            user: user.clone(),
        };
        // Counted before it can be taken off the queue (see `outstanding`).
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        self.issuance.metrics.queue_depth.inc();
        let sent =
            match sender {
                Some(sender) if self.enqueue_wait.is_zero() => {
                    sender.try_send(job).map_err(|e| match e {
                        mpsc::error::TrySendError::Full(_) => NotQueued::Full,
                        mpsc::error::TrySendError::Closed(_) => NotQueued::Closed,
                    })
                }
                Some(sender) => sender
                    .send_timeout(job, self.enqueue_wait)
                    .await
                    .map_err(|e| match e {
                        mpsc::error::SendTimeoutError::Timeout(_) => NotQueued::Full,
                        mpsc::error::SendTimeoutError::Closed(_) => NotQueued::Closed,
                    }),
                None => Err(NotQueued::Closed),
            };
        match sent {
            Ok(()) => Ok(Acceptance::Queued),
            Err(e) => {
                self.outstanding.fetch_sub(1, Ordering::AcqRel);
                self.issuance.metrics.queue_depth.dec();
                lock(&self.waiting).remove(&(campaign, user.clone()));
                // Not queued: take the mark back so the user may retry.
                if let Err(e) = self.marks.unmark(&campaign, &user).await {
                    tracing::warn!(campaign.id = %campaign, error = %e, "queued mark left behind");
                }
                let why = match e {
                    NotQueued::Full if self.enqueue_wait.is_zero() => {
                        "the issue queue is full".to_owned()
                    }
                    NotQueued::Full => format!(
                        "the issue queue stayed full for {} ms",
                        self.enqueue_wait.as_millis()
                    ),
                    NotQueued::Closed => "the instance is shutting down".to_owned(),
                };
                Err(IssueError::Unavailable(format!(
                    "{why}; nothing was queued, retry later"
                )))
            }
        }
    }

    /// Shutdown: lets the consumers work until every request taken is done
    /// or `deadline`, then records every job still queued as rejected
    /// (`unavailable`); batches in a consumer's hands run to their end.
    pub async fn drain(&self, deadline: Instant) {
        // No request arrives any more; closing the queue lets consumers end
        // once it is empty.
        self.sender
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        while self.outstanding.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stopping.store(true, Ordering::Release);
        self.renewals.cancel();
        let mut receiver = self.receiver.lock().await;
        let mut rejected = 0;
        while let Ok(job) = receiver.try_recv() {
            self.issuance.metrics.queue_depth.dec();
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            self.issuance
                .record(
                    &job.campaign,
                    &job.user,
                    RecordedState::Rejected,
                    None,
                    Some("unavailable"),
                )
                .await;
            rejected += 1;
        }
        if rejected > 0 {
            tracing::warn!(
                rejected,
                "queue not drained in time; the rest recorded as rejected"
            );
        }
        let running = self.outstanding.load(Ordering::Acquire);
        if running > 0 {
            tracing::warn!(
                running,
                "queued requests still in consumers' batches; shutdown waits for them with the background work"
            );
        }
    }
}

/// Renews the marks of the requests in `waiting` every third of their TTL
/// until `stop`. Best effort: a failed renewal is retried at the next tick,
/// and a mark lost meanwhile only shows `none` until the request settles.
async fn renew_marks(marks: QueuedMarks, waiting: Waiting, ttl_secs: u64, stop: CancellationToken) {
    let every = Duration::from_millis(ttl_secs.max(1) * 1000 / 3);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let kept: Vec<(CampaignId, UserId)> = lock(&waiting).iter().cloned().collect();
        if let Err(e) = marks.keep(&kept).await {
            tracing::warn!(marks = kept.len(), error = %e, "queued marks not renewed");
        }
    }
}

/// The `sync` path for one queued request ([`Issuance::issue_now`]), and its
/// final state recorded.
/// Its mark stops being renewed once the gate has decided.
async fn process(issuance: &Issuance, job: Job, waiting: &Waiting) {
    let Job { campaign, user } = job;
    let outcome = issuance
        .issue_now(
            campaign,
            user.clone(),
            || {
                lock(waiting).remove(&(campaign, user.clone()));
            },
            // The client was answered `queued`: its message batches.
            ReportWait::Background,
        )
        .await;
    issuance
        .metrics
        .issue_outcomes
        .with_label_values(&[issuance.strategy.as_str(), final_label(&outcome)])
        .inc();
    issuance.record_final(&campaign, &user, &outcome).await;
}

/// The `issue_outcomes_total` label of a queued request's final outcome.
fn final_label(outcome: &Result<Acceptance, IssueError>) -> &'static str {
    match outcome {
        Ok(Acceptance::Accepted(_)) => "queued_accepted",
        Ok(Acceptance::Pending(_)) => "queued_pending",
        Ok(Acceptance::Queued) => "queued",
        Err(IssueError::Refused(Refusal::Duplicate)) => "queued_duplicate",
        Err(IssueError::Refused(Refusal::SoldOut)) => "queued_sold_out",
        Err(IssueError::Refused(Refusal::NotOpen)) => "queued_not_open",
        Err(IssueError::Refused(Refusal::Closed)) => "queued_closed",
        Err(IssueError::Refused(Refusal::NotAdmitted)) => "queued_not_admitted",
        Err(IssueError::UnknownCampaign) => "queued_unknown_campaign",
        Err(IssueError::StateMissing | IssueError::Fenced | IssueError::Unavailable(_)) => {
            "queued_unavailable"
        }
    }
}
