//! The steps every strategy is made of ([`Issuance`]): take a slot at the
//! gate, produce the message and settle its delivery report by these
//! producing rules (docs/CONTRACT.md):
//! - delivered: `accepted`;
//! - failed and not persisted (the broker never had it): give the slot back,
//!   503;
//! - failed and possibly persisted: `pending`, never compensated, since the
//!   message may still land and its slot must stay taken;
//! - not even enqueued (the producer's buffer full, refused): give the slot
//!   back, 503.
//!
//! If Redis is down when a slot should be given back, the reply is 503 and
//! the slot is left to reconciliation; `/coupons/me` shows it as pending.
//!
//! Work that outlives a request (delivery reports the reply did not wait
//! for, queued requests) runs on the process's main runtime and is tracked,
//! so shutdown can wait for it.

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::ids::{CampaignId, CouponId, UserId};
use common::message::CouponIssued;
use common::redis_state::{
    Gate, GateReply, RecordedState, RedisCallError, StatusRecord, StatusRecords, Withdrawal,
};
use common::settings::{FaultSettings, PRODUCE_WITHIN, StrategyKind, WITHDRAW_WITHIN};
use common::telemetry::traced;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::gate_batch::GateBatches;
use super::{Acceptance, IssueError};
use crate::campaigns::CampaignStore;
use crate::metrics::ApiMetrics;
use crate::producer::{Delivery, DeliveryReceipt, IssueProducer, ReportWait};

/// A slot the gate has just taken: the coupon id it names, and when. Its
/// message must enter the producer's buffer within [`PRODUCE_WITHIN`] of it,
/// or the slot is given back: that bound lets `reconcile` and `rebuild` know
/// when a take has settled.
#[derive(Debug, Clone, Copy)]
pub struct TakenSlot {
    pub coupon_id: CouponId,
    at: Instant,
}

impl TakenSlot {
    pub fn now(coupon_id: CouponId) -> Self {
        Self {
            coupon_id,
            at: Instant::now(),
        }
    }
}

/// The issuance steps of one api instance, shared by its strategy: the
/// gate, the status records, the producer, the campaign store, and the
/// tracked background work.
#[derive(Debug)]
pub struct Issuance {
    pub gate: Gate,
    /// The gate's takes, in batches while calls are out (`gate.batch_size`,
    /// `gate.calls_out`).
    pub gate_batches: std::sync::Arc<GateBatches>,
    pub status: StatusRecords,
    pub producer: std::sync::Arc<IssueProducer>,
    pub campaigns: std::sync::Arc<CampaignStore>,
    pub metrics: ApiMetrics,
    pub strategy: StrategyKind,
    pub faults: FaultSettings,
    runtime: tokio::runtime::Handle,
    tasks: TaskTracker,
}

impl Issuance {
    /// Must be called on the runtime that background work should run on.
    pub fn new(
        gate_batches: std::sync::Arc<GateBatches>,
        status: StatusRecords,
        producer: std::sync::Arc<IssueProducer>,
        campaigns: std::sync::Arc<CampaignStore>,
        metrics: ApiMetrics,
        strategy: StrategyKind,
        faults: FaultSettings,
    ) -> Self {
        Self {
            gate: gate_batches.gate().clone(),
            gate_batches,
            status,
            producer,
            campaigns,
            metrics,
            strategy,
            faults,
            runtime: tokio::runtime::Handle::current(),
            tasks: TaskTracker::new(),
        }
    }

    /// Runs `work` in the background, tracked for shutdown.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn_on(work.in_current_span(), &self.runtime);
    }

    /// Runs `work` to its end on a tracked task and returns its result. The
    /// caller's future may be dropped (a client that hangs up, a server that
    /// cancels its handler) without stopping `work` half-way. The task runs
    /// on the caller's runtime, not the main one: on an actix worker thread
    /// it keeps that thread's own Redis connection (`common::redis_pool`)
    /// and costs no hop to another thread. Shutdown waits for it while the
    /// worker threads run; a task orphaned by its client when the server
    /// stops ends with its thread, and a slot it took without producing is
    /// left to `reconcile`. `None` if the task panicked or was dropped.
    ///
    /// The task is spawned when this is called, not when the returned
    /// future is first polled: that future holds only the task's handle, so
    /// the request handler's future (which actix boxes, and which each
    /// layer moves) stays small instead of carrying `work`, an issue's
    /// whole state machine: `work` is copied into its box rather than
    /// carried through every layer. A caller that drops the returned future
    /// unpolled has started `work` all the same, as one dropped after its
    /// first poll always had; the one caller (the issue route) awaits it at
    /// once, so the task starts when it always did.
    pub fn run_to_end<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> impl Future<Output = Option<T>> {
        let task = self.tasks.spawn(Box::pin(work).in_current_span());
        async move { task.await.ok() }
    }

    /// Shutdown: waits (until `deadline`) for background work to finish.
    pub async fn wait_for_background(&self, deadline: Instant) -> bool {
        self.tasks.close();
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, self.tasks.wait()).await.is_ok()
    }

    /// The `sync` path, in one place: take a slot, produce, and wait for the
    /// delivery report (`accepted` only once the broker has the message).
    /// async-queue's consumers run it for each queued request; `decided`
    /// runs as soon as the gate has answered. `wait`: whether a client's
    /// reply waits for this (the producer's lane).
    pub async fn issue_now(
        &self,
        campaign: CampaignId,
        user: UserId,
        decided: impl FnOnce(),
        wait: ReportWait,
    ) -> Result<Acceptance, IssueError> {
        let take = self.take_slot(&campaign, &user).await;
        decided();
        let slot = take?;
        crate::faults::after_gate(&self.faults, &user).await;
        self.produce_and_settle(slot, campaign, user, wait).await
    }

    /// Runs the gate script. Only `Ok` means the user has a new slot.
    pub async fn take_slot(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<TakenSlot, IssueError> {
        let coupon = CouponId::new();
        let started = Instant::now();
        let take = traced(
            self.gate_batches.take(campaign, user, &coupon),
            || tracing::debug_span!("gate", campaign.id = %campaign),
        );
        let mut take = std::pin::pin!(take);
        // The first poll sends the call; the fault keeps this thread busy
        // while Redis answers.
        let reply = match futures::poll!(take.as_mut()) {
            std::task::Poll::Ready(reply) => reply,
            std::task::Poll::Pending => {
                crate::faults::busy_thread(&self.faults, user);
                take.await
            }
        };
        self.metrics
            .gate_seconds
            .observe(started.elapsed().as_secs_f64());
        match reply {
            Ok(GateReply::Taken { waited }) => {
                if let Some(waited) = waited {
                    self.metrics.room_wait_seconds.observe(waited.as_secs_f64());
                }
                Ok(TakenSlot::now(coupon))
            }
            Ok(GateReply::Refused(refusal)) => Err(IssueError::Refused(refusal)),
            Ok(GateReply::Missing) => Err(self.classify_missing(campaign).await),
            Ok(GateReply::Stale) => Err(IssueError::Fenced),
            Ok(GateReply::Withdrawn) => Err(withdrawn()),
            Err(e) => Err(self.take_failed(e, campaign, user, &coupon).await),
        }
    }

    /// The error of a take (the gate, or a lock section's fenced take) that
    /// failed. One that may have reached Redis (it timed out, or its
    /// connection broke after the command was written) may have taken the
    /// slot, or may still: it is withdrawn, so that the user's retry is not
    /// answered `duplicate` for a slot no message will ever fill. Only a
    /// connection that was never made took nothing for sure.
    pub async fn take_failed(
        &self,
        e: RedisCallError,
        campaign: &CampaignId,
        user: &UserId,
        coupon: &CouponId,
    ) -> IssueError {
        if !e.may_have_run() {
            return redis_unavailable(e);
        }
        tracing::warn!(campaign.id = %campaign, error = %e, "take failed after it may have run; withdrawing it");
        let why = if e.is_timeout() {
            "redis did not answer in time"
        } else {
            "redis failed mid-call"
        };
        self.withdraw_lost(campaign, user, coupon, why).await
    }

    /// Withdraws a take whose outcome this request cannot know or use (its
    /// reply timed out, or was lost with the task that waited for it): the
    /// slot is given back if the take ran, or the take is voided so that it
    /// takes nothing when it runs; by its coupon id, so a slot the user has
    /// from another request is never touched. Keeps trying for
    /// [`WITHDRAW_WITHIN`], then leaves the slot to reconciliation. The
    /// error to answer, which starts with `why`.
    pub async fn withdraw_lost(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        coupon: &CouponId,
        why: &str,
    ) -> IssueError {
        let deadline = Instant::now() + WITHDRAW_WITHIN;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.gate.withdraw(campaign, user, coupon).await {
                Ok(done) => {
                    let label = match done {
                        Withdrawal::GivenBack => "withdrawn",
                        Withdrawal::Voided => "voided",
                    };
                    self.metrics.compensations.with_label_values(&[label]).inc();
                    return IssueError::Unavailable(format!(
                        "{why}; nothing was issued, retry later"
                    ));
                }
                Err(e) if Instant::now() + pause < deadline => {
                    tracing::debug!(campaign.id = %campaign, error = %e, "withdrawal failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    self.metrics
                        .compensations
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::error!(campaign.id = %campaign, user.id = %user, error = %e, "take could not be withdrawn; left to reconciliation");
                    return IssueError::Unavailable(format!(
                        "{why}; if a slot was taken, it is pending until reconciliation releases it"
                    ));
                }
            }
        }
    }

    /// No meta in Redis: an unknown campaign (404), or one whose gate state
    /// was lost (503 until `issuer-worker rebuild`; never recreated here).
    pub async fn classify_missing(&self, campaign: &CampaignId) -> IssueError {
        match self.campaigns.exists(campaign).await {
            Ok(false) => IssueError::UnknownCampaign,
            Ok(true) => {
                tracing::warn!(campaign.id = %campaign, "campaign has no gate state in Redis");
                IssueError::StateMissing
            }
            Err(e) => {
                tracing::warn!(campaign.id = %campaign, error = %e, "campaign lookup failed");
                IssueError::Unavailable(
                    "could not look the campaign up; nothing was issued, retry later".into(),
                )
            }
        }
    }

    fn message(&self, slot: TakenSlot, campaign: CampaignId, user: UserId) -> CouponIssued {
        CouponIssued::new(
            slot.coupon_id,
            campaign,
            user,
            Utc::now(),
            self.strategy.as_str(),
        )
    }

    /// Enqueues the message of a slot just taken, unless the take is older
    /// than [`PRODUCE_WITHIN`]: then, as when the producer's buffer refuses,
    /// the slot is given back and the reply is 503.
    async fn enqueue(
        &self,
        slot: TakenSlot,
        message: &CouponIssued,
        wait: ReportWait,
    ) -> Result<DeliveryReceipt, IssueError> {
        let late = slot.at.elapsed();
        if late > PRODUCE_WITHIN {
            tracing::warn!(campaign.id = %message.campaign_id, ?late, "slot taken too long ago to produce; given back");
            return Err(self
                .give_back(message, "the request stalled between the gate and produce")
                .await);
        }
        match self.producer.send(message, wait).await {
            // Checked again once enqueued: a process paused between the
            // check above and the enqueue (or in a full buffer's wait) put
            // the message on its way later than PRODUCE_WITHIN allows.
            Ok(receipt) if slot.at.elapsed() > PRODUCE_WITHIN => {
                tracing::warn!(campaign.id = %message.campaign_id, late = ?slot.at.elapsed(), "message enqueued past its deadline; its delivery counts as unconfirmed");
                Ok(receipt.unconfirmed())
            }
            Ok(receipt) => Ok(receipt),
            Err(e) => {
                tracing::warn!(campaign.id = %message.campaign_id, error = %e, "message not enqueued");
                Err(self
                    .give_back(message, "the producer's buffer is full")
                    .await)
            }
        }
    }

    /// Produces the message of a slot just taken and waits for its report.
    pub async fn produce_and_settle(
        &self,
        slot: TakenSlot,
        campaign: CampaignId,
        user: UserId,
        wait: ReportWait,
    ) -> Result<Acceptance, IssueError> {
        let message = self.message(slot, campaign, user);
        let started = Instant::now();
        let produce = async {
            let receipt = self.enqueue(slot, &message, wait).await?;
            Ok::<_, IssueError>(receipt.wait().await)
        };
        let delivery = traced(
            produce,
            || tracing::debug_span!("produce", coupon.id = %message.coupon_id),
        )
        .await?;
        self.metrics
            .produce_seconds
            .observe(started.elapsed().as_secs_f64());
        self.settle(message, delivery).await
    }

    /// Produces the message of a slot just taken without waiting for its
    /// report: the report is settled in the background. A failure is
    /// recorded for `/coupons/me` (rejected, or pending); success is not:
    /// until the worker writes the row (or turns the user away as `none`),
    /// the held slot shows as pending. Fails only if the message could not
    /// even be enqueued (the slot is then given back).
    pub async fn produce_in_background(
        self: &std::sync::Arc<Self>,
        slot: TakenSlot,
        campaign: CampaignId,
        user: UserId,
    ) -> Result<CouponId, IssueError> {
        let message = self.message(slot, campaign, user);
        let coupon_id = message.coupon_id;
        let started = Instant::now();
        let receipt = traced(
            self.enqueue(slot, &message, ReportWait::Background),
            || tracing::debug_span!("produce", coupon.id = %coupon_id),
        )
        .await?;
        let issuance = self.clone();
        self.spawn(async move {
            let delivery = receipt.wait().await;
            issuance
                .metrics
                .produce_seconds
                .observe(started.elapsed().as_secs_f64());
            let (campaign, user) = (message.campaign_id, message.user_id.clone());
            if let Err(e) = issuance.settle(message, delivery).await {
                // Recorded with its coupon id: if the user took another slot
                // meanwhile, that slot is what /coupons/me keeps showing.
                issuance
                    .record(
                        &campaign,
                        &user,
                        RecordedState::Rejected,
                        Some(coupon_id),
                        Some(e.outcome()),
                    )
                    .await;
            }
        });
        Ok(coupon_id)
    }

    /// Applies the producing rules to a delivery report.
    pub async fn settle(
        &self,
        message: CouponIssued,
        delivery: Delivery,
    ) -> Result<Acceptance, IssueError> {
        match delivery {
            Delivery::Persisted => Ok(Acceptance::Accepted(message.coupon_id)),
            Delivery::NotPersisted(e) => {
                tracing::warn!(campaign.id = %message.campaign_id, error = %e, "message not delivered");
                Err(self
                    .give_back(&message, "the broker did not take the message")
                    .await)
            }
            Delivery::PossiblyPersisted(e) => {
                tracing::warn!(
                    campaign.id = %message.campaign_id,
                    error = %e,
                    "delivery unconfirmed; answering pending"
                );
                self.record(
                    &message.campaign_id,
                    &message.user_id,
                    RecordedState::Pending,
                    Some(message.coupon_id),
                    None,
                )
                .await;
                Ok(Acceptance::Pending(message.coupon_id))
            }
        }
    }

    /// Records, for `/coupons/me`, how a request answered before it was
    /// decided ended, when the gate does not say it already: a refusal, with
    /// its outcome. A user whose slot was taken needs no record (one Redis
    /// write less per queued request): the gate removed the `queued` mark
    /// and stored the slot's coupon id, so `/coupons/me` answers `pending`
    /// with that id until the row says `issued` (a `pending` delivery was
    /// recorded by [`Issuance::settle`]).
    pub async fn record_final(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        outcome: &Result<Acceptance, IssueError>,
    ) {
        if let Err(e) = outcome {
            self.record(
                campaign,
                user,
                RecordedState::Rejected,
                None,
                Some(e.outcome()),
            )
            .await;
        }
    }

    /// Compensation for a message that never reached the broker.
    pub async fn give_back(&self, message: &CouponIssued, why: &str) -> IssueError {
        match self
            .gate
            .give_back(&message.campaign_id, &message.user_id, &message.coupon_id)
            .await
        {
            Ok(_) => {
                self.metrics
                    .compensations
                    .with_label_values(&["given_back"])
                    .inc();
                IssueError::Unavailable(format!("{why}; nothing was issued, retry later"))
            }
            Err(e) => {
                self.metrics
                    .compensations
                    .with_label_values(&["failed"])
                    .inc();
                tracing::error!(
                    campaign.id = %message.campaign_id,
                    user.id = %message.user_id,
                    error = %e,
                    "slot could not be given back; left to reconciliation"
                );
                IssueError::Unavailable(format!(
                    "{why}; your slot is pending until reconciliation settles it"
                ))
            }
        }
    }

    /// Records a state for `/coupons/me`. Best effort: if Redis refuses,
    /// `/coupons/me` still reports a held slot as pending.
    pub async fn record(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        state: RecordedState,
        coupon_id: Option<CouponId>,
        outcome: Option<&str>,
    ) {
        let record = StatusRecord {
            state,
            coupon_id,
            outcome: outcome.map(str::to_owned),
            at: Utc::now(),
        };
        match self.status.record(campaign, user, &record).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(campaign.id = %campaign, "status left out: the user took another slot since")
            }
            Err(e) => tracing::warn!(campaign.id = %campaign, error = %e, "status not recorded"),
        }
    }
}

/// The reply to a request whose take was withdrawn before Redis ran it:
/// only a request already answered sees it.
pub fn withdrawn() -> IssueError {
    IssueError::Unavailable("the request was withdrawn; nothing was issued, retry later".into())
}

pub fn redis_unavailable(e: RedisCallError) -> IssueError {
    // The reply says what failed, not how: the detail is logged, with the
    // request's id.
    tracing::warn!(error = %e, "redis call failed");
    IssueError::Unavailable("redis unavailable; nothing was issued, retry later".into())
}
