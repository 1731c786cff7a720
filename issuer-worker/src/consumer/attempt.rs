//! One attempt at a batch, in the steps a reader can name: [`Worker::attempt`]
//! writes the decodable messages ([`Worker::write`]), sorts what each
//! message became ([`Worker::account`]: a row, a duplicate, or a letter),
//! then sets the letters aside ([`Worker::set_aside`]: to the dead-letter
//! topic, or parked in PostgreSQL while the topic refuses them), recording
//! for `/coupons/me` each user with a slot turned away.

use std::time::{Duration, Instant};

use chrono::Utc;
use common::message::{CouponIssued, DlqReason};
use common::redis_state::{RecordedState, StatusRecord};

use super::{AttemptError, Received, Worker};
use crate::dlq::{DeadLetter, Sent, park};
use crate::persist::{Consumed, Decision, is_rejection, persist};

impl Worker {
    /// One try: write the decodable messages, then set the rest aside.
    /// Any error means the batch is tried again (what was written is then
    /// a duplicate; a letter sent is sent again, which is harmless).
    pub(super) async fn attempt(&self, batch: &[Received]) -> Result<(), AttemptError> {
        let decisions = self.write(batch).await?;
        let letters = self.account(batch, decisions);
        self.set_aside(&letters).await
    }

    /// Writes the batch's decodable messages in one transaction (one by one
    /// if PostgreSQL refuses the batch for its values), within
    /// `worker.batch_timeout_ms`: a decision per decodable message, in order.
    async fn write(&self, batch: &[Received]) -> Result<Vec<Decision>, AttemptError> {
        let decoded: Vec<Consumed<'_>> = batch
            .iter()
            .filter_map(|r| {
                r.decoded.as_ref().ok().map(|message| Consumed {
                    message,
                    partition: r.partition,
                    offset: r.offset,
                })
            })
            .collect();
        // One `persist` span per traced message, a child of the api's
        // context, open until the batch is written (none with tracing off).
        let _spans: Vec<tracing::Span> = batch
            .iter()
            .filter_map(|r| r.trace.clone())
            .map(|parent| {
                use tracing_opentelemetry::OpenTelemetrySpanExt;
                let span = tracing::debug_span!("persist", batch.size = batch.len());
                let _ = span.set_parent(parent);
                span
            })
            .collect();
        let started = Instant::now();
        let timeout = Duration::from_millis(self.settings.batch_timeout_ms);
        let written = tokio::time::timeout(timeout, async {
            match persist(&self.db, &decoded).await {
                Err(e) if is_rejection(&e) => {
                    tracing::warn!(error = %e, size = decoded.len(), "batch refused for its values; writing its messages one by one");
                    self.persist_one_by_one(&decoded).await
                }
                other => other,
            }
        })
        .await;
        let decisions = written.map_err(|_| AttemptError::DatabaseTimeout(timeout))??;
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(batch.len() as f64);
        Ok(decisions)
    }

    /// What each message became: rows and duplicates are counted; the
    /// undecodable and the dead are letters, each with the user with a slot
    /// it turns away, if any.
    fn account<'a>(
        &self,
        batch: &'a [Received],
        decisions: Vec<Decision>,
    ) -> Vec<(DeadLetter<'a>, Option<&'a CouponIssued>)> {
        let now = Utc::now();
        let mut decisions = decisions.into_iter();
        let mut letters = Vec::new();
        for r in batch {
            match &r.decoded {
                Err(e) => letters.push((self.letter(r, DlqReason::Unparseable, e.clone()), None)),
                Ok(m) => match decisions.next() {
                    Some(Decision::Insert) => {
                        self.metrics.persisted.inc();
                        let lag = (now - m.requested_at)
                            .num_microseconds()
                            .unwrap_or(0)
                            .max(0);
                        self.metrics
                            .end_to_end_lag_seconds
                            .observe(lag as f64 / 1e6);
                    }
                    Some(Decision::Duplicate) => self.metrics.duplicates.inc(),
                    Some(Decision::Dead(reason)) => {
                        if reason == DlqReason::OverStock {
                            tracing::error!(
                                campaign.id = %m.campaign_id,
                                user.id = %m.user_id,
                                "message over the campaign's stock: the gate took too many slots"
                            );
                        }
                        let turned_away = reason.turns_away_a_promised_user().then_some(m);
                        letters.push((
                            self.letter(r, reason, format!("campaign {}", m.campaign_id)),
                            turned_away,
                        ));
                    }
                    None => {}
                },
            }
        }
        letters
    }

    /// Sends each letter to the dead-letter topic (or parks it in
    /// PostgreSQL while the topic refuses letters), then records the user
    /// it turns away.
    async fn set_aside(
        &self,
        letters: &[(DeadLetter<'_>, Option<&CouponIssued>)],
    ) -> Result<(), AttemptError> {
        for (letter, turned_away) in letters {
            match self.parked_because() {
                Some(refusal) => {
                    park(&self.db, &self.topic, letter, &refusal)
                        .await
                        .map_err(AttemptError::Database)?;
                    self.metrics
                        .parked
                        .with_label_values(&[letter.reason.as_str()])
                        .inc();
                    tracing::error!(
                        reason = letter.reason.as_str(),
                        partition = letter.partition,
                        offset = letter.offset,
                        "message parked in PostgreSQL (parked_letters): the dead-letter topic refuses it"
                    );
                }
                None => {
                    let sent = self
                        .dead_letters
                        .send(letter)
                        .await
                        .map_err(AttemptError::DeadLetter)?;
                    if sent == Sent::Truncated {
                        self.metrics.truncated_letters.inc();
                    }
                    self.metrics
                        .dead_lettered
                        .with_label_values(&[letter.reason.as_str()])
                        .inc();
                    tracing::warn!(
                        reason = letter.reason.as_str(),
                        partition = letter.partition,
                        offset = letter.offset,
                        "message dead-lettered"
                    );
                }
            }
            if let Some(m) = turned_away {
                self.record_turned_away(m, letter.reason).await;
            }
        }
        Ok(())
    }

    /// Why letters are parked right now, if they are (see [`Self::parking`]).
    fn parked_because(&self) -> Option<String> {
        let mut parking = self.parking.lock().unwrap_or_else(|p| p.into_inner());
        match &*parking {
            Some((until, why)) if Instant::now() < *until => Some(why.clone()),
            Some(_) => {
                *parking = None;
                None
            }
            None => None,
        }
    }

    /// The batch's messages in transactions of one, after PostgreSQL refused
    /// the batch for its values: a message refused alone is dead-lettered
    /// (`rejected_by_database`), the others are decided as usual. An outage
    /// meanwhile fails the attempt; what was written is then a duplicate.
    async fn persist_one_by_one(
        &self,
        messages: &[Consumed<'_>],
    ) -> Result<Vec<Decision>, sea_orm::DbErr> {
        let mut decisions = Vec::with_capacity(messages.len());
        for c in messages {
            let m = c.message;
            match persist(&self.db, &[*c]).await {
                Ok(mut one) => decisions.push(one.pop().unwrap_or(Decision::Duplicate)),
                Err(e) if is_rejection(&e) => {
                    tracing::warn!(
                        campaign.id = %m.campaign_id,
                        user.id = %m.user_id,
                        error = %e,
                        "message refused by PostgreSQL"
                    );
                    decisions.push(Decision::Dead(DlqReason::RejectedByDatabase));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(decisions)
    }

    /// A user with a slot turned away (the stock guard, a taken coupon id, a
    /// value PostgreSQL refused): its request was answered, and it ends with
    /// no coupon. Recorded for `/coupons/me` (best effort: a Redis failure
    /// must not stall the partition; the user then shows pending until
    /// reconciliation).
    async fn record_turned_away(&self, m: &CouponIssued, reason: DlqReason) {
        let record = StatusRecord {
            state: RecordedState::None,
            coupon_id: Some(m.coupon_id),
            outcome: Some(reason.as_str().to_owned()),
            at: Utc::now(),
        };
        if let Err(e) = self
            .status
            .record(&m.campaign_id, &m.user_id, &record)
            .await
        {
            tracing::warn!(campaign.id = %m.campaign_id, error = %e, "turned-away user not recorded");
        }
    }

    fn letter<'a>(&self, r: &'a Received, reason: DlqReason, detail: String) -> DeadLetter<'a> {
        DeadLetter {
            reason,
            detail,
            partition: r.partition,
            offset: r.offset,
            key: r.key.as_deref(),
            payload: r.payload.as_deref(),
        }
    }
}
