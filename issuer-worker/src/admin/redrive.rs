//! `issuer-worker dlq redrive`: letters' messages back on the issue topic,
//! once the cause that set them aside is fixed, without ever persisting a
//! message twice or issuing beyond the stock. A re-driven message is the
//! letter's (its key, coupon id, campaign, user, strategy) with
//! `requested_at` set to the re-drive's time: its slot is counted then, and
//! a cutoff that `reconcile --repair` or a rebuild recorded before it
//! (`crate::cutoff`) settled older takes and would refuse it as `late`.
//!
//! What keeps it safe, letter by letter:
//! - Bytes that are not a message (`unparseable`, or any letter that does
//!   not decode) and truncated copies (`dlq.truncated`) never go: the worker
//!   would only set them aside again. Nor do `late` letters: their take was
//!   settled without them, and their users read `none`.
//! - The campaign must exist, and its user must have no row (one row per
//!   (campaign, user): a row with this coupon id means the letter was
//!   re-driven before or redelivered; one with another id, that the user
//!   has another coupon). A coupon id that is another row's stays
//!   `coupon_id_taken`.
//! - The rows must be under the stock, and the gate must count the slot:
//!   `Gate::redrive_take` (`lua/redrive_take.lua`) finds the user still
//!   holding the slot its message names (nothing given back since: the
//!   count already includes it), or takes one now under the stock. A
//!   message whose slot was given back (`reconcile --repair`) and whose
//!   stock has since gone to others is not re-driven; without this the row
//!   would be one the gate never counted, and an accepted user would be
//!   turned away `over_stock` in its place.
//! - The worker's own guard (`stock − persisted`) and the tables' keys and
//!   `persisted <= stock` stay the last fence: a message produced twice
//!   (a re-drive run twice before the worker caught up) is one row.
//! - Per campaign, the re-drive holds the admin lock that `reconcile` and
//!   `rebuild` hold, so a reconcile never gives back a slot between its
//!   check here and its message reaching the topic. The take is fenced on
//!   that lock, and the message stamped before it: a re-drive paused past
//!   the lock's lease takes nothing, or its message is `late` for the tool
//!   that overtook it (`Redrive::check`).
//!
//! After the produce, the user's status record says `pending` with the
//! coupon id (it said `none` with the letter's reason), until the row
//! shows `issued`. A produce that fails keeps the slot: the message may
//! have reached the topic, and a slot without a row is what `reconcile
//! --repair` gives back, while a row without a slot could over-issue.
//!
//! `--dry-run` decides the same way and writes nothing: no lock, no slot,
//! no message, no status record.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use common::ids::{CampaignId, CouponId, UserId};
use common::message::{CouponIssued, DlqReason};
use common::redis_state::{
    AdminHold, Gate, RecordedState, RedisClient, RedriveSlot, StatusRecord, StatusRecords,
};
use common::settings::Settings;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::Serialize;

use super::letters::{self, Letter, LetterId, Place};
use super::{
    AdminError, EXIT_NOT_ALL_REDRIVEN, EXIT_OK, Output, print_json_line, print_text, require_secure,
};
use crate::admin_lock;

#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// Every letter with this reason.
    #[arg(
        long,
        value_parser = letters::reasons(),
        value_name = "REASON",
        required_unless_present = "letters",
        conflicts_with = "letters"
    )]
    all_of_reason: Option<String>,
    /// These letters (where each sits in the dead-letter topic).
    #[arg(long = "letter", value_name = "PARTITION:OFFSET", num_args = 1..)]
    letters: Vec<LetterId>,
    /// Decide and print what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// What became of one letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its bytes are on the issue topic again.
    Redriven,
    /// (Dry run) it would be.
    WouldRedrive,
    /// Its row exists, with its coupon id: nothing to do.
    AlreadyIssued,
    /// The same message as an earlier letter of this run.
    Repeated,
    Truncated,
    /// Its take was settled without it (a cutoff): never re-driven.
    Late,
    NotAMessage,
    /// Read from another topic than this issue topic.
    OtherTopic,
    UnknownCampaign,
    /// Its user has a row with another coupon id.
    UserHasAnotherCoupon,
    /// Its coupon id is another user's row.
    CouponIdTaken,
    /// The rows reached the stock, or the gate has no slot left.
    SoldOut,
    /// Its user holds a slot another request took.
    UserHasAnotherSlot,
    /// Its user holds its slot, but the gate took more than the stock.
    OverTaken,
    /// The campaign's gate state is missing or fenced.
    GateNotLoaded,
    /// The campaign is archived: its users set is not in Redis, so the
    /// gate cannot tell whether the letter's slot is counted.
    Archived,
    /// A dependency failed; see the message.
    Failed,
}

impl Outcome {
    /// Whether the letter needs nothing more.
    fn done(&self) -> bool {
        matches!(
            self,
            Self::Redriven | Self::WouldRedrive | Self::AlreadyIssued | Self::Repeated
        )
    }
}

/// One audit line: what, where from, where to, what became of it.
#[derive(Debug, Serialize)]
pub struct AuditLine {
    pub letter: String,
    pub reason: Option<String>,
    pub campaign_id: Option<CampaignId>,
    pub user_id: Option<UserId>,
    pub coupon_id: Option<CouponId>,
    /// The letter in the dead-letter topic.
    pub from: Place,
    /// Where the worker had read the message.
    pub source: Option<Place>,
    /// Where it was produced again.
    pub to: Option<Place>,
    pub outcome: Outcome,
    /// The gate's slot: `held` (still its own), `taken` (now), `would_take`.
    pub slot: Option<&'static str>,
    pub message: String,
    pub dry_run: bool,
}

impl AuditLine {
    fn text(&self) -> String {
        let who = match (&self.campaign_id, &self.user_id, &self.coupon_id) {
            (Some(c), Some(u), Some(id)) => format!(" campaign={c} user={u} coupon={id}"),
            _ => String::new(),
        };
        let source = self
            .source
            .as_ref()
            .map_or_else(|| "-".into(), ToString::to_string);
        let to = self
            .to
            .as_ref()
            .map_or_else(|| "-".into(), ToString::to_string);
        format!(
            "{:<24} letter {} ({}){who} from {source} to {to}: {}",
            serde_json::to_value(self.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            self.letter,
            self.reason.as_deref().unwrap_or("-"),
            self.message
        )
    }
}

/// Why `letter` may never be re-driven, whatever the state: with the
/// outcome that says so.
pub fn refusal(letter: &Letter, issue_topic: &str) -> Option<(Outcome, String)> {
    if letter.truncated() {
        let original = letter
            .source()
            .map_or_else(|| "unknown".into(), |s| s.to_string());
        return Some((
            Outcome::Truncated,
            format!(
                "a truncated copy, not the message: it is never re-driven; the original was read at {original}"
            ),
        ));
    }
    if letter.reason().as_deref() == Some(DlqReason::Late.as_str()) {
        return Some((
            Outcome::Late,
            "late: its take was settled without it (its slot went back to the stock or to someone else) and its user reads none; it is never re-driven".into(),
        ));
    }
    if letter.reason().as_deref() == Some(DlqReason::Unparseable.as_str()) {
        return Some((
            Outcome::NotAMessage,
            "unparseable: its bytes would be set aside again; find what wrote them".into(),
        ));
    }
    if let Err(e) = letter.message() {
        return Some((
            Outcome::NotAMessage,
            format!("its bytes are not a message: {e}"),
        ));
    }
    match letter.source() {
        Some(source) if source.topic != issue_topic => Some((
            Outcome::OtherTopic,
            format!("read from {}, not {issue_topic}", source.topic),
        )),
        _ => None,
    }
}

pub async fn run(
    settings: &Settings,
    args: RedriveArgs,
    output: Output,
) -> Result<i32, AdminError> {
    require_secure(settings, true, true)?;
    let letters = select(settings, &args).await?;
    let redriver = Redriver::new(settings, args.dry_run).await?;
    let (mut done, mut not) = (0u64, 0u64);
    let mut emit = |line: AuditLine| -> Result<(), AdminError> {
        if line.outcome.done() {
            done += 1;
        } else {
            not += 1;
        }
        match output {
            Output::Json => print_json_line(&line),
            Output::Text => {
                print_text(&line.text());
                Ok(())
            }
        }
    };
    redriver.redrive(letters, &mut emit).await?;
    eprintln!(
        "{done} of {} letters {}; {not} not",
        done + not,
        if args.dry_run {
            "would be re-driven or need nothing"
        } else {
            "re-driven or needed nothing"
        }
    );
    Ok(if not == 0 {
        EXIT_OK
    } else {
        EXIT_NOT_ALL_REDRIVEN
    })
}

/// The letters asked for: every one of a reason, or each one named (all of
/// them must exist).
async fn select(settings: &Settings, args: &RedriveArgs) -> Result<Vec<Letter>, AdminError> {
    if let Some(reason) = &args.all_of_reason {
        let reason = reason.clone();
        let scan = letters::scan(&settings.kafka, move |l| {
            l.reason().as_deref() == Some(reason.as_str())
        })
        .await?;
        return Ok(scan.letters);
    }
    let found = letters::read(&settings.kafka, &args.letters).await?;
    let missing: Vec<String> = args
        .letters
        .iter()
        .zip(&found)
        .filter(|(_, l)| l.is_none())
        .map(|(id, _)| id.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(AdminError::NotFound(format!(
            "no letter at {} of {}; nothing was re-driven",
            missing.join(", "),
            settings.kafka.dlq_topic
        )));
    }
    Ok(found.into_iter().flatten().collect())
}

struct Redriver<'a> {
    settings: &'a Settings,
    dry: bool,
    redis: RedisClient,
    gate: Gate,
    status: StatusRecords,
    db: DatabaseConnection,
    producer: Option<FutureProducer>,
}

/// The bound on each of the re-drive's statements.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

impl<'a> Redriver<'a> {
    async fn new(settings: &'a Settings, dry: bool) -> anyhow::Result<Self> {
        let redis = RedisClient::new(&settings.redis, None)?;
        let producer = if dry {
            None
        } else {
            Some(
                common::kafka::producer_config(&settings.kafka)
                    .create()
                    .context("creating the producer")?,
            )
        };
        Ok(Self {
            settings,
            dry,
            gate: Gate::new(redis.clone()),
            status: StatusRecords::new(redis.clone(), settings.redis.status_ttl_secs),
            redis,
            db: common::db::connect(&settings.database, STATEMENT_TIMEOUT).await?,
            producer,
        })
    }

    fn line(&self, letter: &Letter, message: Option<&CouponIssued>) -> AuditLine {
        AuditLine {
            letter: letter.id.to_string(),
            reason: letter.reason(),
            campaign_id: message.map(|m| m.campaign_id),
            user_id: message.map(|m| m.user_id.clone()),
            coupon_id: message.map(|m| m.coupon_id),
            from: Place {
                topic: self.settings.kafka.dlq_topic.clone(),
                partition: letter.id.partition,
                offset: letter.id.offset,
            },
            source: letter.source(),
            to: None,
            outcome: Outcome::Failed,
            slot: None,
            message: String::new(),
            dry_run: self.dry,
        }
    }

    /// Decides every letter, and re-drives those that may go, one campaign
    /// at a time under its admin lock; `emit` gets each audit line.
    async fn redrive(
        &self,
        letters: Vec<Letter>,
        emit: &mut impl FnMut(AuditLine) -> Result<(), AdminError>,
    ) -> Result<(), AdminError> {
        let mut by_campaign: BTreeMap<CampaignId, Vec<(Letter, CouponIssued)>> = BTreeMap::new();
        for letter in letters {
            if let Some((outcome, why)) = refusal(&letter, &self.settings.kafka.topic) {
                let mut line = self.line(&letter, letter.message().ok().as_ref());
                (line.outcome, line.message) = (outcome, why);
                emit(line)?;
                continue;
            }
            if let Ok(message) = letter.message() {
                by_campaign
                    .entry(message.campaign_id)
                    .or_default()
                    .push((letter, message));
            }
        }
        let mut first: HashMap<(CampaignId, UserId, CouponId), LetterId> = HashMap::new();
        for (campaign, letters) in by_campaign {
            let lock = if self.dry {
                None
            } else {
                match admin_lock::acquire(&self.redis, &campaign).await {
                    Ok(lock) => Some(lock),
                    Err(e) => {
                        for (letter, message) in &letters {
                            let mut line = self.line(letter, Some(message));
                            line.message = format!("{e:#}; nothing done");
                            emit(line)?;
                        }
                        continue;
                    }
                }
            };
            for (letter, message) in &letters {
                let mut line = self.line(letter, Some(message));
                let key = (campaign, message.user_id.clone(), message.coupon_id);
                if let Some(earlier) = first.get(&key) {
                    line.outcome = Outcome::Repeated;
                    line.message = format!("the same message as letter {earlier}, above");
                } else {
                    first.insert(key, letter.id);
                    let hold = lock.as_ref().map(AdminHold::from);
                    self.decide(letter, message, hold.as_ref(), &mut line).await;
                }
                emit(line)?;
            }
            if let Some(lock) = lock
                && let Err(e) = lock.release_within(admin_lock::LEASE).await
            {
                tracing::warn!(campaign.id = %campaign, error = %e, "admin lock not released; its lease runs out");
            }
        }
        Ok(())
    }

    /// Decides one letter whose bytes are a message, and re-drives it if it
    /// may go: the outcome, slot, destination and message into `line`.
    async fn decide(
        &self,
        letter: &Letter,
        m: &CouponIssued,
        hold: Option<&AdminHold>,
        line: &mut AuditLine,
    ) {
        let (outcome, message) = match self.check(letter, m, hold, line).await {
            Ok(decided) => decided,
            Err(e) => (Outcome::Failed, format!("{e:#}")),
        };
        line.outcome = outcome;
        line.message = message;
    }

    /// What if this re-drive pauses past its admin lock's lease? Its take
    /// is fenced on the lock (`hold`): taken over before it, it takes
    /// nothing and fails. Taken over after it (a reconcile or rebuild that
    /// then reads the slots and the topic without this message), the
    /// message is stamped before the take, so it is older than that
    /// tool's cutoff: landing beyond the cutoff's offsets it is refused
    /// `late`, never a row the gate does not count; landing before, the
    /// tool reads it (or its row).
    async fn check(
        &self,
        letter: &Letter,
        m: &CouponIssued,
        hold: Option<&AdminHold>,
        line: &mut AuditLine,
    ) -> anyhow::Result<(Outcome, String)> {
        let Some((stock, persisted, archived)) = self.campaign(&m.campaign_id).await? else {
            return Ok((
                Outcome::UnknownCampaign,
                "no such campaign in PostgreSQL".into(),
            ));
        };
        let rows = self.rows(m).await?;
        let users_row = rows.iter().find(|(_, campaign, user)| {
            *campaign == m.campaign_id.as_uuid() && user == m.user_id.as_str()
        });
        if let Some((id, _, _)) = users_row {
            return Ok(if *id == m.coupon_id.as_uuid() {
                (
                    Outcome::AlreadyIssued,
                    "its row exists with this coupon id".into(),
                )
            } else {
                (
                    Outcome::UserHasAnotherCoupon,
                    format!("the user's row has coupon id {id}"),
                )
            });
        }
        if let Some((_, campaign, user)) = rows.first() {
            return Ok((
                Outcome::CouponIdTaken,
                format!("its coupon id is the row of user {user} of campaign {campaign}"),
            ));
        }
        // Read under the admin lock, which an archive holds too: the users
        // set the take below reads is there for every campaign not archived.
        // An archived one's is not: a user whose slot is counted would be
        // refused sold out, or counted twice.
        if archived {
            return Ok((
                Outcome::Archived,
                "the campaign is archived: load its users back first (issuer-worker rebuild --campaign <id> --force --unarchive)".into(),
            ));
        }
        if persisted >= stock {
            return Ok((
                Outcome::SoldOut,
                format!("the rows reached the stock ({persisted} of {stock})"),
            ));
        }
        // Stamped now, before the take, with the admin lock held: a cutoff
        // recorded before (reconcile --repair, a rebuild) settled takes made
        // before it, and would refuse the original `late`; one recorded
        // after the take (by a tool that overtook this re-drive) refuses
        // this message if it lands beyond its offsets.
        let mut again = m.clone();
        again.requested_at = Utc::now();
        let slot = self
            .gate
            .redrive_take(&m.campaign_id, &m.user_id, &m.coupon_id, hold)
            .await
            .context(
                "the gate did not answer (a slot may have been taken: reconcile --repair gives back one without a row)",
            )?;
        line.slot = match slot {
            RedriveSlot::Held => Some("held"),
            RedriveSlot::Taken => Some("taken"),
            RedriveSlot::WouldTake => Some("would_take"),
            RedriveSlot::OtherSlot => {
                return Ok((
                    Outcome::UserHasAnotherSlot,
                    "the user holds a slot another request took".into(),
                ));
            }
            RedriveSlot::SoldOut => {
                return Ok((
                    Outcome::SoldOut,
                    format!("the gate has no slot left (stock {stock})"),
                ));
            }
            RedriveSlot::OverTaken => {
                return Ok((
                    Outcome::OverTaken,
                    "the gate took more slots than the stock: run reconcile first".into(),
                ));
            }
            RedriveSlot::Archived => {
                return Ok((
                    Outcome::Archived,
                    "the gate counts slots but has no users set (the campaign was archived): load its users back first (issuer-worker rebuild --campaign <id> --force --unarchive)".into(),
                ));
            }
            RedriveSlot::Missing | RedriveSlot::Stale => {
                return Ok((
                    Outcome::GateNotLoaded,
                    "the campaign's gate state is not loaded: the gate keeper (or issuer-worker rebuild) loads it first".into(),
                ));
            }
        };
        let Some(producer) = &self.producer else {
            return Ok((
                Outcome::WouldRedrive,
                format!("would go to {}", self.settings.kafka.topic),
            ));
        };
        let payload = again.encode();
        let key = letter.key.clone().unwrap_or_else(|| m.key().into_bytes());
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.settings.kafka.topic)
            .key(key.as_slice())
            .payload(payload.as_slice());
        let delivered = match producer
            .send(record, self.settings.kafka.delivery_timeout())
            .await
        {
            Ok(delivered) => delivered,
            Err((e, _)) => {
                return Ok((
                    Outcome::Failed,
                    format!(
                        "{} did not take it ({e}); the slot stays taken (reconcile --repair gives it back if no row comes)",
                        self.settings.kafka.topic
                    ),
                ));
            }
        };
        line.to = Some(Place {
            topic: self.settings.kafka.topic.clone(),
            partition: delivered.partition,
            offset: delivered.offset,
        });
        let pending = StatusRecord {
            state: RecordedState::Pending,
            coupon_id: Some(m.coupon_id),
            outcome: None,
            at: Utc::now(),
        };
        if let Err(e) = self
            .status
            .record(&m.campaign_id, &m.user_id, &pending)
            .await
        {
            tracing::warn!(campaign.id = %m.campaign_id, user.id = %m.user_id, error = %e, "re-driven user's status not recorded; /coupons/me shows the letter's until the row lands");
        }
        Ok((
            Outcome::Redriven,
            format!(
                "requested at {} (first at {}); the worker persists it",
                again.requested_at.to_rfc3339(),
                m.requested_at.to_rfc3339()
            ),
        ))
    }

    /// The campaign's stock and rows persisted, if it exists.
    /// The campaign's stock, rows, and whether it is archived.
    async fn campaign(&self, campaign: &CampaignId) -> anyhow::Result<Option<(i64, i64, bool)>> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT stock, persisted, archived_at IS NOT NULL AS archived FROM campaigns WHERE id = $1",
                [campaign.as_uuid().into()],
            ))
            .await
            .context("reading the campaign")?;
        row.map(|r| {
            Ok((
                r.try_get("", "stock")?,
                r.try_get("", "persisted")?,
                r.try_get("", "archived")?,
            ))
        })
        .transpose()
    }

    /// The rows of the message's (campaign, user), and the row of its
    /// coupon id.
    async fn rows(
        &self,
        m: &CouponIssued,
    ) -> anyhow::Result<Vec<(uuid::Uuid, uuid::Uuid, String)>> {
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id, campaign_id, user_id FROM coupons \
                 WHERE (campaign_id = $1 AND user_id = $2) OR id = $3",
                [
                    m.campaign_id.as_uuid().into(),
                    m.user_id.as_str().into(),
                    m.coupon_id.as_uuid().into(),
                ],
            ))
            .await
            .context("reading the rows")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("", "id")?,
                    r.try_get("", "campaign_id")?,
                    r.try_get("", "user_id")?,
                ))
            })
            .collect()
    }
}
