//! Campaigns: PostgreSQL is the system of record, the gate's meta in Redis
//! follows it. Creating writes the row and loads the meta in one step that
//! either does both or neither; closing closes the gate first, then the row.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use common::entities::{campaigns, coupons};
use common::ids::{CampaignId, UserId};
use common::redis_state::{
    AdminHold, CampaignMeta, CampaignMetas, Gate, RedisCallError, RedisClient, RoomLine, RoomRules,
    Rooms,
};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /api/v1/campaigns`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    /// 1–200 characters.
    pub name: String,
    /// 0 to 1,000,000,000.
    pub stock: i64,
    /// Default: now.
    pub starts_at: Option<DateTime<Utc>>,
    /// After `starts_at`; default: no end.
    pub ends_at: Option<DateTime<Utc>>,
    /// A waiting room in front of the sale; default: none.
    pub waiting_room: Option<WaitingRoomRequest>,
}

/// The waiting room asked for at creation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitingRoomRequest {
    /// Positions admitted per second: 1 to 1,000,000.
    pub admit_per_second: i64,
    /// Seconds an admitted user has to issue before the place goes to the
    /// next: 1 to 86,400 (default 120).
    pub admission_ttl_secs: Option<i64>,
}

pub const MAX_ADMIT_PER_SECOND: i64 = 1_000_000;
pub const MAX_ADMISSION_TTL_SECS: i64 = 86_400;
pub const DEFAULT_ADMISSION_TTL_SECS: i64 = 120;

/// A campaign's waiting room, as the admin endpoints show it: its rules,
/// and its line as the room's counters stand after its last move (a join,
/// a status read or an issue moves it; `null` while the gate state is not
/// loaded).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct WaitingRoomView {
    pub admit_per_second: u32,
    pub admission_ttl_secs: u32,
    /// The key of the shuffle of the users who joined before `starts_at`:
    /// with it, anyone can recompute their positions.
    pub shuffle_seed: i64,
    /// Users who joined.
    pub joined: Option<u64>,
    /// Positions admitted so far (those who then issued or expired too).
    pub admitted: Option<u64>,
    /// Users still in line: joined, not admitted yet.
    pub waiting: Option<u64>,
}

impl WaitingRoomView {
    fn new(r: RoomRules, line: Option<RoomLine>) -> Self {
        Self {
            admit_per_second: r.admit_per_second,
            admission_ttl_secs: r.admission_ttl_secs,
            shuffle_seed: r.shuffle_seed,
            joined: line.map(|l| l.joined),
            admitted: line.map(|l| l.admitted),
            waiting: line.map(|l| l.waiting()),
        }
    }
}

pub const MAX_STOCK: i64 = 1_000_000_000;
pub const MAX_NAME_CHARS: usize = 200;

/// A campaign request that passed validation.
#[derive(Debug, Clone)]
pub struct NewCampaign {
    pub name: String,
    pub stock: i64,
    pub starts_at: DateTime<Utc>,
    /// The request named `starts_at` (else it is the time of validation).
    pub starts_at_given: bool,
    pub ends_at: Option<DateTime<Utc>>,
    pub room: Option<RoomRules>,
}

impl NewCampaign {
    /// Whether `row` is what this request makes (the same name, stock,
    /// window and room rules; a defaulted start and the shuffle's random
    /// seed are not compared).
    fn made(&self, row: &campaigns::Model) -> bool {
        let room = row.room();
        row.name == self.name
            && row.stock == self.stock
            && (!self.starts_at_given || row.starts_at == self.starts_at)
            && row.ends_at == self.ends_at
            && room.map(|r| (r.admit_per_second, r.admission_ttl_secs))
                == self
                    .room
                    .map(|r| (r.admit_per_second, r.admission_ttl_secs))
    }
}

impl CampaignRequest {
    /// Checks the request; `starts_at` defaults to `now`.
    pub fn validate(self, now: DateTime<Utc>) -> Result<NewCampaign, String> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err("name must not be empty".into());
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(format!("name must be at most {MAX_NAME_CHARS} characters"));
        }
        // PostgreSQL's text refuses NUL; no control character belongs in a
        // name shown to operators.
        if name.chars().any(char::is_control) {
            return Err("name must not contain control characters".into());
        }
        if !(0..=MAX_STOCK).contains(&self.stock) {
            return Err(format!("stock must be between 0 and {MAX_STOCK}"));
        }
        let starts_at = self.starts_at.unwrap_or(now);
        for (field, at) in [("starts_at", Some(starts_at)), ("ends_at", self.ends_at)] {
            if at.is_some_and(|at| !(1..=9999).contains(&at.year())) {
                return Err(format!("{field} must be in the years 1 to 9999"));
            }
        }
        if self.ends_at.is_some_and(|ends_at| ends_at <= starts_at) {
            return Err("ends_at must be after starts_at".into());
        }
        let room = self
            .waiting_room
            .map(|r| {
                let ttl = r.admission_ttl_secs.unwrap_or(DEFAULT_ADMISSION_TTL_SECS);
                if !(1..=MAX_ADMIT_PER_SECOND).contains(&r.admit_per_second) {
                    return Err(format!(
                        "waiting_room.admit_per_second must be between 1 and {MAX_ADMIT_PER_SECOND}"
                    ));
                }
                if !(1..=MAX_ADMISSION_TTL_SECS).contains(&ttl) {
                    return Err(format!(
                        "waiting_room.admission_ttl_secs must be between 1 and {MAX_ADMISSION_TTL_SECS}"
                    ));
                }
                Ok(RoomRules {
                    admit_per_second: r.admit_per_second as u32,
                    admission_ttl_secs: ttl as u32,
                    // 63 random bits: the seed is stored as a signed bigint.
                    shuffle_seed: (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64,
                })
            })
            .transpose()?;
        Ok(NewCampaign {
            name: name.to_owned(),
            stock: self.stock,
            starts_at,
            starts_at_given: self.starts_at.is_some(),
            ends_at: self.ends_at,
            room,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    Scheduled,
    Open,
    Closed,
    SoldOut,
}

/// What the admin endpoints answer about a campaign.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CampaignView {
    #[schema(value_type = uuid::Uuid)]
    pub id: CampaignId,
    pub name: String,
    pub stock: i64,
    /// Slots taken (the gate's count); `null` when the gate state is not
    /// loaded.
    pub taken: Option<i64>,
    /// Rows in PostgreSQL.
    pub persisted: i64,
    pub state: CampaignState,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// `loaded`, or `missing` when the campaign's Redis state was lost
    /// (issue requests answer 503 until it is rebuilt).
    #[schema(value_type = String)]
    pub gate: &'static str,
    /// When its users and slots were archived from Redis
    /// (`POST .../archive`); `null` while they are kept.
    pub archived_at: Option<DateTime<Utc>>,
    /// Its waiting room; absent when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_room: Option<WaitingRoomView>,
}

impl CampaignView {
    fn new(
        row: campaigns::Model,
        taken: Option<i64>,
        line: Option<RoomLine>,
        now: DateTime<Utc>,
    ) -> Self {
        let state = if row.state == "closed" || row.ends_at.is_some_and(|e| now >= e) {
            CampaignState::Closed
        } else if now < row.starts_at {
            CampaignState::Scheduled
        } else if taken.unwrap_or(row.persisted).max(row.persisted) >= row.stock {
            CampaignState::SoldOut
        } else {
            CampaignState::Open
        };
        let waiting_room = row.room().map(|rules| WaitingRoomView::new(rules, line));
        Self {
            id: row.id.into(),
            name: row.name,
            stock: row.stock,
            taken,
            persisted: row.persisted,
            state,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            created_at: row.created_at,
            gate: if taken.is_some() { "loaded" } else { "missing" },
            archived_at: row.archived_at,
            waiting_room,
        }
    }
}

/// One persisted coupon, in listings.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CouponView {
    pub id: uuid::Uuid,
    pub user_id: String,
    pub issued_at: DateTime<Utc>,
}

impl From<coupons::Model> for CouponView {
    fn from(row: coupons::Model) -> Self {
        Self {
            id: row.id,
            user_id: row.user_id,
            issued_at: row.issued_at,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unknown campaign")]
    UnknownCampaign,
    /// A create's id (from its `Idempotency-Key`) names a campaign another
    /// request made.
    #[error("the Idempotency-Key was used for another campaign")]
    IdReused,
    /// An archive of a campaign whose row is not closed.
    #[error("campaign not closed")]
    NotClosed,
    /// An archive found the campaign's admin lock held (a reconcile,
    /// rebuild or re-drive) for [`ARCHIVE_WAITS`].
    #[error("admin lock held")]
    AdminLockHeld,
    #[error("database: {0}")]
    Database(#[from] DbErr),
    #[error("redis: {0}")]
    Redis(#[from] RedisCallError),
    #[error("{0} timed out")]
    Timeout(&'static str),
}

/// How long an archive waits for the campaign's admin lock.
pub const ARCHIVE_WAITS: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct CampaignStore {
    db: DatabaseConnection,
    /// For the admin lock an archive holds (`common::lock`).
    redis: RedisClient,
    metas: CampaignMetas,
    gate: Gate,
    rooms: Rooms,
    statement_timeout: Duration,
    /// Ids known to exist in PostgreSQL. Campaigns are never deleted, so a
    /// hit never goes stale; it keeps the database off the issue path.
    known: RwLock<HashSet<CampaignId>>,
    /// Rooms' rate and start, fixed at creation: read once per instance.
    room_facts: RwLock<HashMap<CampaignId, RoomFacts>>,
}

/// What a waiting page needs besides the user's place: the room's rate
/// and the campaign's start. Neither changes after creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomFacts {
    pub admit_per_second: u32,
    pub starts_at: DateTime<Utc>,
}

impl CampaignStore {
    pub fn new(
        db: DatabaseConnection,
        redis: RedisClient,
        metas: CampaignMetas,
        gate: Gate,
        rooms: Rooms,
        statement_timeout: Duration,
    ) -> Self {
        Self {
            db,
            redis,
            metas,
            gate,
            rooms,
            statement_timeout,
            known: RwLock::new(HashSet::new()),
            room_facts: RwLock::new(HashMap::new()),
        }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    async fn bounded<T, E>(
        &self,
        what: &'static str,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, StoreError>
    where
        StoreError: From<E>,
    {
        match tokio::time::timeout(self.statement_timeout, f).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(what)),
        }
    }

    fn remember(&self, id: CampaignId) {
        self.known
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
    }

    /// Writes the row, then loads the gate meta. With `id` (derived from an
    /// `Idempotency-Key`), a row already there under that id is what an
    /// earlier try of the same request made (its reply lost): it is
    /// answered as created, unless it is another request's
    /// ([`StoreError::IdReused`]).
    ///
    /// The row comes first: a campaign is its row. If the meta cannot be
    /// loaded after it (Redis down, the process dying in between), the
    /// campaign reads `gate: missing` and the worker's gate keeper loads it
    /// once Redis answers (`issuer-worker`'s `keeper`); issue requests are
    /// 503 until then. There is never a meta without a row. If the insert's
    /// commit times out, the caller is told 503 and does not know whether
    /// the row exists: a retry with the same `Idempotency-Key` finds it.
    pub async fn create(
        &self,
        new: NewCampaign,
        id: Option<CampaignId>,
    ) -> Result<CampaignView, StoreError> {
        let id = id.unwrap_or_default();
        let now = Utc::now();
        let row = campaigns::ActiveModel {
            id: Set(id.as_uuid()),
            name: Set(new.name.clone()),
            stock: Set(new.stock),
            persisted: Set(0),
            starts_at: Set(new.starts_at),
            ends_at: Set(new.ends_at),
            state: Set("open".into()),
            created_at: Set(now),
            room_admit_per_second: Set(new.room.map(|r| r.admit_per_second as i32)),
            room_admission_ttl_secs: Set(new.room.map(|r| r.admission_ttl_secs as i32)),
            room_shuffle_seed: Set(new.room.map(|r| r.shuffle_seed)),
            archived_at: Set(None),
        };
        let inserted = self
            .bounded(
                "insert campaign",
                campaigns::Entity::insert(row)
                    .on_conflict(
                        sea_orm::sea_query::OnConflict::column(campaigns::Column::Id)
                            .do_nothing()
                            .to_owned(),
                    )
                    .exec_without_returning(&self.db),
            )
            .await?;
        let row = self.row(&id).await?;
        if inserted == 0 && !new.made(&row) {
            return Err(StoreError::IdReused);
        }
        let meta = CampaignMeta {
            stock: row.stock,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            closed: row.state == "closed",
            room: row.room(),
        };
        // Only the create that inserted the row loads the gate: a retry
        // whose first try did (its record lost, with Redis perhaps
        // restarted empty since) must not load a meta over a state that
        // only a rebuild can restore. A first try whose load failed leaves
        // the meta missing, and the gate keeper rebuilds it.
        let loaded = if inserted == 1 {
            self.metas.load(&id, &meta).await.map(|_| ())
        } else {
            Ok(())
        };
        let taken = match loaded {
            Ok(()) => self.gate.taken(&id).await.ok().flatten(),
            Err(e) => {
                tracing::warn!(campaign.id = %id, error = %e, "campaign created without its gate meta; the gate keeper loads it");
                None
            }
        };
        if inserted == 1 {
            tracing::info!(campaign.id = %id, stock = row.stock, "campaign created");
        }
        let line = self.line(&row, taken).await.ok().flatten();
        Ok(CampaignView::new(row, taken, line, now))
    }

    async fn row(&self, id: &CampaignId) -> Result<campaigns::Model, StoreError> {
        let row = self
            .bounded(
                "read campaign",
                campaigns::Entity::find_by_id(id.as_uuid()).one(&self.db),
            )
            .await?
            .ok_or(StoreError::UnknownCampaign)?;
        self.remember(*id);
        Ok(row)
    }

    pub async fn get(&self, id: &CampaignId) -> Result<CampaignView, StoreError> {
        let row = self.row(id).await?;
        let taken = self.gate.taken(id).await?;
        let line = self.line(&row, taken).await?;
        Ok(CampaignView::new(row, taken, line, Utc::now()))
    }

    /// The line of a campaign with a waiting room whose gate state is
    /// loaded (`taken` read).
    async fn line(
        &self,
        row: &campaigns::Model,
        taken: Option<i64>,
    ) -> Result<Option<RoomLine>, RedisCallError> {
        if row.room().is_none() || taken.is_none() {
            return Ok(None);
        }
        self.rooms.line(&row.id.into()).await.map(Some)
    }

    /// Newest first.
    pub async fn list(&self, limit: u64) -> Result<Vec<CampaignView>, StoreError> {
        let rows = self
            .bounded(
                "list campaigns",
                campaigns::Entity::find()
                    .order_by_desc(campaigns::Column::CreatedAt)
                    .limit(limit)
                    .all(&self.db),
            )
            .await?;
        let now = Utc::now();
        let mut views = Vec::with_capacity(rows.len());
        for row in rows {
            let taken = self.gate.taken(&row.id.into()).await?;
            let line = self.line(&row, taken).await?;
            views.push(CampaignView::new(row, taken, line, now));
        }
        Ok(views)
    }

    /// Closes the gate (if loaded), then the row, then the gate again.
    /// Idempotent.
    ///
    /// The gate first, so that no slot is taken once the row says closed.
    /// The gate again after the row, before the reply: a Redis that lost the
    /// first close (restarted, failed over) while this request stalled may
    /// have a rebuild under way that read the row before it was closed; the
    /// second close reaches that server, and its mark (or the meta it
    /// closes) is kept by the rebuild's install. A rebuild that starts after
    /// it reads the closed row. Each step that fails answers 503, the close
    /// not confirmed; a retry does it again.
    pub async fn close(&self, id: &CampaignId) -> Result<CampaignView, StoreError> {
        self.row(id).await?;
        self.metas.close(id).await?;
        self.bounded(
            "close campaign",
            campaigns::Entity::update_many()
                .col_expr(campaigns::Column::State, "closed".into())
                .filter(campaigns::Column::Id.eq(id.as_uuid()))
                .exec(&self.db),
        )
        .await?;
        self.metas.close(id).await?;
        tracing::info!(campaign.id = %id, "campaign closed");
        self.get(id).await
    }

    /// Archives a closed campaign's users and slots from Redis, for good:
    /// the row is marked (`archived_at`, the first archive's time kept),
    /// then the users set and slots hash are deleted with the close marked
    /// again in the same step (`Gate::archive`). A rebuild (the gate
    /// keeper's after a Redis restart among them) reads the mark and loads
    /// the campaign's meta and count without its users, so the memory stays
    /// free. Idempotent.
    ///
    /// A campaign whose row is not closed is refused (`NotClosed`) and
    /// nothing changes: an open gate without its users set would let a user
    /// take a second slot.
    ///
    /// Both steps hold the campaign's admin lock, as reconcile, rebuild and
    /// a re-drive do: none of them reads the users set while it goes (a
    /// reconcile would count every row a phantom and load it back, a
    /// re-drive take a second slot for a user who holds one), and each reads
    /// the mark once it holds the lock. One held elsewhere for
    /// [`ARCHIVE_WAITS`] answers 503, nothing changed.
    ///
    /// Where it can stop: with the mark written and the keys not deleted
    /// (the process died, Redis did not answer, the lock lost to a pause
    /// past its lease: the delete is fenced on it), a 503, and a retry
    /// deletes them, as does the next rebuild; a lost reply is answered the
    /// same by a retry. A request dropped while it holds the lock leaves it
    /// to its lease.
    pub async fn archive(&self, id: &CampaignId) -> Result<CampaignView, StoreError> {
        if self.row(id).await?.state != "closed" {
            return Err(StoreError::NotClosed);
        }
        let lock = common::lock::acquire_admin(&self.redis, id, ARCHIVE_WAITS)
            .await
            .map_err(|e| match e {
                common::lock::LockError::Redis(e) => StoreError::Redis(e),
                _ => StoreError::AdminLockHeld,
            })?;
        let hold = AdminHold::from(&lock);
        let archived = self.archive_held(id, &hold).await;
        // Released off the reply's path, tried again until its lease would
        // end it (a Redis restarting), as the worker's tools release it: the
        // gate keeper's rebuild after a restart need not wait out the lease.
        let id_released = *id;
        tokio::spawn(async move {
            if let Err(e) = lock.release_within(common::lock::ADMIN_LEASE).await {
                tracing::warn!(campaign.id = %id_released, error = %e, "admin lock not released; its lease ends it");
            }
        });
        archived?;
        self.get(id).await
    }

    /// [`CampaignStore::archive`]'s two steps, under the admin lock `hold`.
    async fn archive_held(&self, id: &CampaignId, hold: &AdminHold) -> Result<(), StoreError> {
        let marked = self
            .bounded(
                "archive campaign",
                campaigns::Entity::update_many()
                    .col_expr(
                        campaigns::Column::ArchivedAt,
                        sea_orm::sea_query::Expr::cust("COALESCE(archived_at, now())"),
                    )
                    .filter(campaigns::Column::Id.eq(id.as_uuid()))
                    .filter(campaigns::Column::State.eq("closed"))
                    .exec(&self.db),
            )
            .await?;
        // Campaigns are never reopened, so the row read closed is closed
        // still; should that change, the users set is kept.
        if marked.rows_affected == 0 {
            return Err(StoreError::NotClosed);
        }
        let deleted = self.gate.archive(id, hold).await?;
        tracing::info!(campaign.id = %id, keys_deleted = deleted, "campaign archived");
        Ok(())
    }

    /// Persisted coupons ordered by user id, after `after`.
    pub async fn coupons(
        &self,
        id: &CampaignId,
        after: Option<&UserId>,
        limit: u64,
    ) -> Result<Vec<CouponView>, StoreError> {
        self.exists(id)
            .await?
            .then_some(())
            .ok_or(StoreError::UnknownCampaign)?;
        let mut query = coupons::Entity::find()
            .filter(coupons::Column::CampaignId.eq(id.as_uuid()))
            .order_by_asc(coupons::Column::UserId)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(coupons::Column::UserId.gt(after.as_str()));
        }
        let rows = self.bounded("list coupons", query.all(&self.db)).await?;
        Ok(rows.into_iter().map(CouponView::from).collect())
    }

    /// Whether the campaign exists in PostgreSQL (cached once seen).
    pub async fn exists(&self, id: &CampaignId) -> Result<bool, StoreError> {
        if self
            .known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(id)
        {
            return Ok(true);
        }
        match self.row(id).await {
            Ok(_) => Ok(true),
            Err(StoreError::UnknownCampaign) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The user's coupon row, if the worker has written it.
    pub async fn coupon_of(
        &self,
        id: &CampaignId,
        user: &UserId,
    ) -> Result<Option<coupons::Model>, StoreError> {
        self.bounded(
            "read coupon",
            coupons::Entity::find()
                .filter(coupons::Column::CampaignId.eq(id.as_uuid()))
                .filter(coupons::Column::UserId.eq(user.as_str()))
                .one(&self.db),
        )
        .await
    }

    /// The campaign's room rate and start; `None` without a room (or
    /// without its gate meta). From the meta in Redis, where the room's
    /// script reads them too, not from the row: a room's calls never touch
    /// PostgreSQL. Kept once read, as neither changes after creation.
    pub async fn room_facts(&self, id: &CampaignId) -> Result<Option<RoomFacts>, StoreError> {
        if let Some(facts) = self
            .room_facts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
        {
            return Ok(Some(*facts));
        }
        let (meta, _) = self.metas.read(id).await?;
        let Some(facts) = meta.and_then(|meta| {
            meta.room.map(|room| RoomFacts {
                admit_per_second: room.admit_per_second,
                starts_at: meta.starts_at,
            })
        }) else {
            return Ok(None);
        };
        self.room_facts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(*id, facts);
        Ok(Some(facts))
    }

    /// `SELECT 1`, for readiness bodies.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded("ping", self.db.ping()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration as ChronoDuration;

    fn request(name: &str, stock: i64) -> CampaignRequest {
        CampaignRequest {
            name: name.into(),
            stock,
            starts_at: None,
            ends_at: None,
            waiting_room: None,
        }
    }

    #[test]
    fn a_waiting_room_needs_a_positive_rate_and_window() {
        let now = Utc::now();
        let with = |rate, ttl| {
            let mut r = request("sale", 10);
            r.waiting_room = Some(WaitingRoomRequest {
                admit_per_second: rate,
                admission_ttl_secs: ttl,
            });
            r.validate(now)
        };
        let room = with(50, None).unwrap().room.unwrap();
        assert_eq!(
            (room.admit_per_second, room.admission_ttl_secs),
            (50, DEFAULT_ADMISSION_TTL_SECS as u32)
        );
        assert!(room.shuffle_seed >= 0);
        for (rate, ttl) in [
            (0, None),
            (-1, None),
            (MAX_ADMIT_PER_SECOND + 1, None),
            (5, Some(0)),
            (5, Some(MAX_ADMISSION_TTL_SECS + 1)),
        ] {
            assert!(with(rate, ttl).is_err(), "{rate} {ttl:?}");
        }
    }

    #[test]
    fn validation_refuses_empty_names_negative_stock_and_inverted_windows() {
        let now = Utc::now();
        assert!(request("  ", 1).validate(now).is_err());
        assert!(request(&"x".repeat(201), 1).validate(now).is_err());
        assert!(request("sale", -1).validate(now).is_err());
        assert!(request("sale", MAX_STOCK + 1).validate(now).is_err());
        let mut inverted = request("sale", 1);
        inverted.starts_at = Some(now);
        inverted.ends_at = Some(now - ChronoDuration::seconds(1));
        assert!(inverted.validate(now).is_err());
        let ok = request(" sale ", 0).validate(now).unwrap();
        assert_eq!(ok.name, "sale");
        assert_eq!(ok.starts_at, now);
    }

    fn row(
        stock: i64,
        persisted: i64,
        state: &str,
        starts: i64,
        ends: Option<i64>,
    ) -> campaigns::Model {
        let now = Utc::now();
        campaigns::Model {
            id: uuid::Uuid::now_v7(),
            name: "n".into(),
            stock,
            persisted,
            starts_at: now + ChronoDuration::seconds(starts),
            ends_at: ends.map(|e| now + ChronoDuration::seconds(e)),
            state: state.into(),
            created_at: now,
            room_admit_per_second: None,
            room_admission_ttl_secs: None,
            room_shuffle_seed: None,
            archived_at: None,
        }
    }

    #[test]
    fn state_is_derived_from_window_closure_and_counts() {
        let now = Utc::now();
        let state = |r, issued| CampaignView::new(r, issued, None, now).state;
        assert_eq!(
            state(row(10, 0, "open", -5, None), Some(3)),
            CampaignState::Open
        );
        assert_eq!(
            state(row(10, 0, "open", 60, None), Some(0)),
            CampaignState::Scheduled
        );
        assert_eq!(
            state(row(10, 0, "closed", -5, None), Some(0)),
            CampaignState::Closed
        );
        assert_eq!(
            state(row(10, 0, "open", -5, Some(-1)), Some(0)),
            CampaignState::Closed
        );
        assert_eq!(
            state(row(10, 2, "open", -5, None), Some(10)),
            CampaignState::SoldOut
        );
        assert_eq!(
            state(row(10, 10, "open", -5, None), None),
            CampaignState::SoldOut
        );
    }
}
