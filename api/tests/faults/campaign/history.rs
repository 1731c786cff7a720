//! What a campaign records, and where: every request ([`Req`], one line of
//! `history.jsonl`), every fault as it really ran ([`FaultRecord`],
//! `faults.jsonl`), the metric samples ([`Sample`], `samples.jsonl`) and
//! the state at the end of each round ([`RoundEvidence`], `final.json`).
//! Times are milliseconds since the run started ([`Clock`]).
//!
//! The checker (`check.rs`) reads nothing else: a recorded run can be judged
//! again, or a synthetic one built, from these types alone.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::schedule::{FaultKind, Which};

/// Milliseconds since the run started.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn now(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// What a request asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `POST /api/v1/campaigns/{id}/issue`
    Issue,
    /// `GET /api/v1/campaigns/{id}/coupons/me`
    CouponsMe,
    /// `POST /api/v1/campaigns/{id}/room`
    RoomJoin,
    /// `GET /api/v1/campaigns/{id}/room/me`
    RoomMe,
    /// `POST /api/v1/campaigns/{id}/close` (admin)
    Close,
}

/// Who sent a request: the traffic's client tasks, and the driver's phases.
pub mod by {
    /// The liveness probe after the heal.
    pub const PROBE: &str = "probe";
    /// The reads of every deferred user after reconcile.
    pub const FINAL: &str = "final";
    /// The fresh users who issue until sold out.
    pub const TOPUP: &str = "topup";
    /// The admin close.
    pub const ADMIN: &str = "admin";
}

/// One HTTP request and what came of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Req {
    pub id: u64,
    /// `c03` (a traffic client), or one of [`by`].
    pub client: String,
    pub round: usize,
    pub campaign: String,
    pub kind: Option<Kind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Which api instance it went to.
    pub instance: usize,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The client's timeout for it.
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// No reply: `timeout` (incl. a hang-up), `connect` (not sent),
    /// `io: …` (the connection broke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_id: Option<String>,
    /// `/coupons/me`'s and the room's `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// `Idempotent-Replayed: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// The body as received (issue and room replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The deferred reply (its request's id) a `/coupons/me` read follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<u64>,
}

impl Req {
    pub fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::Issue)
    }

    /// Whether a reply came back.
    pub fn answered(&self) -> bool {
        self.status.is_some()
    }

    /// A 202 issue reply: `accepted`, `pending` or `queued`.
    pub fn took(&self) -> bool {
        self.kind() == Kind::Issue
            && self.status == Some(202)
            && matches!(
                self.outcome.as_deref(),
                Some("accepted" | "pending" | "queued")
            )
    }

    /// A deferred issue reply: `pending` or `queued`.
    pub fn deferred(&self) -> bool {
        self.took() && matches!(self.outcome.as_deref(), Some("pending" | "queued"))
    }

    /// The coupon id an `accepted` or `pending` issue reply named.
    pub fn named(&self) -> Option<&str> {
        (self.took() && self.outcome.as_deref() != Some("queued"))
            .then_some(self.coupon_id.as_deref())
            .flatten()
    }

    /// One line for a window of history.
    pub fn line(&self) -> String {
        let what = match self.kind() {
            Kind::Issue => "issue",
            Kind::CouponsMe => "coupons/me",
            Kind::RoomJoin => "room join",
            Kind::RoomMe => "room/me",
            Kind::Close => "close",
        };
        let mut s = format!(
            "{:>8.3}–{:<8.3} #{:<6} {:<6} api{} {:<10} {}",
            self.start_ms as f64 / 1000.0,
            self.end_ms as f64 / 1000.0,
            self.id,
            self.client,
            self.instance,
            what,
            self.user.as_deref().unwrap_or("-"),
        );
        if let Some(k) = &self.key {
            s.push_str(&format!(" key={k}"));
        }
        match (self.status, &self.error) {
            (Some(st), _) => s.push_str(&format!(" → {st}")),
            (None, Some(e)) => s.push_str(&format!(" → no reply ({e}, {} ms)", self.timeout_ms)),
            (None, None) => s.push_str(" → ?"),
        }
        for (name, v) in [
            ("outcome", &self.outcome),
            ("state", &self.state),
            ("coupon", &self.coupon_id),
        ] {
            if let Some(v) = v {
                s.push_str(&format!(" {name}={v}"));
            }
        }
        if let Some(p) = self.position {
            s.push_str(&format!(" position={p}"));
        }
        if self.replayed {
            s.push_str(" (replayed)");
        }
        if let Some(f) = self.follows {
            s.push_str(&format!(" (follows #{f})"));
        }
        s
    }
}

/// A fault as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    pub round: usize,
    /// Its number in the round's plan; `None` for the driver's own acts
    /// (the heal's restarts and rebuilds).
    pub index: Option<usize>,
    pub kind: Option<FaultKind>,
    /// A heal action's name (`heal:restart-broker`, `heal:rebuild`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    pub target: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Whether it did what it meant to (a tool's exit, a restart).
    pub ok: bool,
    /// Exit statuses, a tool's report or error, sizes.
    #[serde(default)]
    pub detail: serde_json::Value,
}

impl FaultRecord {
    pub fn name(&self) -> String {
        match (&self.kind, &self.action) {
            (Some(k), _) => format!("{}@{}", k.name(), self.target),
            (None, Some(a)) => format!("{a}@{}", self.target),
            (None, None) => format!("?@{}", self.target),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{:>8.3}–{:<8.3} FAULT {}{} {}{}",
            self.start_ms as f64 / 1000.0,
            self.end_ms as f64 / 1000.0,
            self.index.map(|i| format!("#{i} ")).unwrap_or_default(),
            self.name(),
            if self.ok { "" } else { "(did not succeed) " },
            if self.detail.is_null() {
                String::new()
            } else {
                let d = self.detail.to_string();
                if d.len() > 300 {
                    format!("{}…", &d[..d.floor_char_boundary(300)])
                } else {
                    d
                }
            }
        )
    }
}

/// One metric sample of one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t_ms: u64,
    /// `worker`, `api0`, `api1`, or `group` (the group's lag read from the
    /// broker).
    pub source: String,
    #[serde(default)]
    pub values: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The state of a campaign read at one point (after the repair, after the
/// top-up).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub at_ms: u64,
    /// The admin api's `taken` (the gate's count) and `persisted`, `state`,
    /// `gate`; `None` when it could not be read.
    pub api_taken: Option<i64>,
    pub api_persisted: Option<i64>,
    pub api_state: Option<String>,
    pub api_gate: Option<String>,
    /// Every row: (user, coupon id), as PostgreSQL returned them.
    pub rows: Vec<(String, String)>,
    /// The campaign row's `persisted` column.
    pub persisted_column: Option<i64>,
    pub redis: RedisSnapshot,
}

impl Snapshot {
    pub fn row_map(&self) -> BTreeMap<&str, &str> {
        self.rows
            .iter()
            .map(|(u, c)| (u.as_str(), c.as_str()))
            .collect()
    }
}

/// A campaign's keys in Redis.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisSnapshot {
    /// `coupon:{c}:meta`
    pub meta: BTreeMap<String, String>,
    /// `coupon:{c}:users`
    pub users: Vec<String>,
    /// `coupon:{c}:taken`
    pub taken: Option<i64>,
    /// `coupon:{c}:slots`
    pub slots: BTreeMap<String, String>,
    /// `coupon:{c}:room` (the counters)
    pub room: BTreeMap<String, String>,
    /// `coupon:{c}:room:order` (user → join number)
    pub room_order: BTreeMap<String, u64>,
    /// `coupon:{c}:room:windows`
    pub room_windows: Vec<String>,
    /// `coupon:{c}:room:used`
    pub room_used: BTreeMap<String, String>,
    /// `coupon:{c}:fairlock:waiting` (ticket → deadline:token)
    pub fairlock_waiting: BTreeMap<String, String>,
    /// `coupon:{c}:fairlock:tickets`, `…:serving`
    pub fairlock_tickets: Option<String>,
    pub fairlock_serving: Option<String>,
    /// The lease lock and the admin lock, if held.
    pub lock: Option<String>,
    pub admin_lock: Option<String>,
    /// Redis's own clock when read (ms), for the fair lock's deadlines.
    pub redis_now_ms: Option<u64>,
    /// The status records (`coupon:{c}:status:<user>`) that say `pending`
    /// or `queued`: user → the record.
    #[serde(default)]
    pub unsettled: BTreeMap<String, String>,
    /// Set when the keys could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One campaign of a round, at the end of the round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignEvidence {
    pub which: Which,
    pub id: String,
    pub stock: u64,
    pub room: Option<(u32, u32)>,
    /// After heal, drain and `reconcile --repair`.
    pub after_repair: Snapshot,
    /// The final `reconcile --repair`'s report (or error).
    pub reconcile: serde_json::Value,
    /// After the top-up and a drain (`None`: skipped, the campaign was
    /// closed).
    pub after_topup: Option<Snapshot>,
    /// Whether the top-up saw `sold_out` (or `closed`).
    pub topup_sold_out: bool,
    /// The top-up users sent.
    pub topup_users: u64,
}

/// One round's phases (ms since the run started) and what the driver saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    pub apis_ready: u64,
    pub traffic_start: u64,
    pub traffic_end: u64,
    /// Every fault of the plan over.
    pub faults_end: u64,
    /// Everything healed and ready.
    pub healed: u64,
    pub probe_start: u64,
    pub settled: u64,
    pub reconciled: u64,
    pub final_read: u64,
    pub topup_end: u64,
    pub round_end: u64,
}

/// How the drain after the heal went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settle {
    /// The worker's group lag (end offsets − committed), last read.
    pub group_lag: Option<i64>,
    /// Whether it reached 0.
    pub lag_zero: bool,
    pub waited_ms: u64,
    /// `worker_paused` at the end of the wait.
    pub paused: Option<f64>,
    /// `worker_assigned_partitions` at the end of the wait.
    #[serde(default)]
    pub assigned: Option<f64>,
    /// Why a read failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What is known of a round at its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundEvidence {
    pub round: usize,
    pub form: String,
    pub phases: Phases,
    pub campaigns: Vec<CampaignEvidence>,
    pub settle: Settle,
    /// Processes not ready after the heal (`api1: …`).
    pub not_ready: Vec<String>,
    /// The exit statuses of the api instances stopped between rounds
    /// (SIGTERM: they must drain and exit 0).
    pub rolled: Vec<(usize, Option<i32>)>,
}

/// A dead letter, as read from the DLQ topic at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Letter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload_bytes: usize,
    pub headers: BTreeMap<String, String>,
}

/// Everything recorded: what the checker judges.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub seed: u64,
    /// When the run's clock started (UTC, RFC 3339): the processes' logs
    /// are stamped with the wall clock.
    #[serde(default)]
    pub started_at: String,
    pub requests: Vec<Req>,
    pub faults: Vec<FaultRecord>,
    pub samples: Vec<Sample>,
    pub rounds: Vec<RoundEvidence>,
    pub letters: Vec<Letter>,
}

/// Collects records from every task of a run.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub clock: Clock,
    inner: Arc<Mutex<History>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl Recorder {
    pub fn new(seed: u64) -> Self {
        Self {
            clock: Clock::start(),
            inner: Arc::new(Mutex::new(History {
                seed,
                started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                ..History::default()
            })),
            next_id: Arc::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub fn next_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn request(&self, r: Req) {
        self.with(|h| h.requests.push(r));
    }

    pub fn fault(&self, f: FaultRecord) {
        self.with(|h| h.faults.push(f));
    }

    pub fn sample(&self, s: Sample) {
        self.with(|h| h.samples.push(s));
    }

    pub fn round(&self, r: RoundEvidence) {
        self.with(|h| h.rounds.push(r));
    }

    pub fn letters(&self, letters: Vec<Letter>) {
        self.with(|h| h.letters = letters);
    }

    /// A copy of everything so far, sorted by time.
    pub fn snapshot(&self) -> History {
        let mut h = self.with(|h| h.clone());
        h.requests.sort_by_key(|r| (r.start_ms, r.id));
        h.faults.sort_by_key(|f| f.start_ms);
        h.samples.sort_by_key(|s| s.t_ms);
        h
    }

    /// The requests of one round so far.
    pub fn requests_of_round(&self, round: usize) -> Vec<Req> {
        self.with(|h| {
            h.requests
                .iter()
                .filter(|r| r.round == round)
                .cloned()
                .collect()
        })
    }
}

/// Writes the history's files into `dir`.
pub fn write(dir: &Path, h: &History) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let lines = |name: &str, items: &mut dyn Iterator<Item = String>| -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(name))?);
        for line in items {
            writeln!(f, "{line}")?;
        }
        f.flush()
    };
    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_default()
    }
    lines("history.jsonl", &mut h.requests.iter().map(json))?;
    lines("faults.jsonl", &mut h.faults.iter().map(json))?;
    lines("samples.jsonl", &mut h.samples.iter().map(json))?;
    let final_json = serde_json::json!({
        "seed": h.seed,
        "started_at": h.started_at,
        "rounds": h.rounds,
        "dead_letters": h.letters,
    });
    std::fs::write(
        dir.join("final.json"),
        serde_json::to_vec_pretty(&final_json).unwrap_or_default(),
    )
}

/// Reads a history back from the files [`write`] wrote.
pub fn read(dir: &Path) -> std::io::Result<History> {
    fn lines<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Vec<T>> {
        std::fs::read_to_string(path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
            .collect()
    }
    #[derive(Deserialize)]
    struct Final {
        seed: u64,
        #[serde(default)]
        started_at: String,
        rounds: Vec<RoundEvidence>,
        dead_letters: Vec<Letter>,
    }
    let f: Final = serde_json::from_slice(&std::fs::read(dir.join("final.json"))?)
        .map_err(std::io::Error::other)?;
    Ok(History {
        seed: f.seed,
        started_at: f.started_at,
        requests: lines(&dir.join("history.jsonl"))?,
        faults: lines(&dir.join("faults.jsonl"))?,
        samples: lines(&dir.join("samples.jsonl"))?,
        rounds: f.rounds,
        letters: f.dead_letters,
    })
}
