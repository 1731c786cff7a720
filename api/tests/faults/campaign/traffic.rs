//! What users do, and what the driver does as a user: the traffic's client
//! tasks (one RNG each, seeded from the run's seed and the client's name,
//! so that `--seed` replays the same choices), the admin close, the
//! liveness probe after the heal, the final reads of every deferred user,
//! and the top-up that fills a campaign to its stock.
//!
//! A plain campaign's clients issue for new users and for users they issued
//! for before, with and without an `Idempotency-Key`, retry (the same key on
//! another instance when the connection was refused), hang up after a few
//! milliseconds, fire two requests with one key at once, and follow every
//! deferred reply (`pending`, `queued`) with `/coupons/me` until it is final.
//! A room campaign's clients join, poll `/room/me` as `retry_after_ms` says,
//! issue once admitted (or dawdle past their admission), and some try to
//! issue without joining. A flash crowd ([`burst`]) sends hundreds of new
//! users at the plain campaign at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::client::{Api, Call, PATIENT, not_sent};
use super::history::{Kind, Req, by};
use super::schedule::{Which, rng_for};

/// What every client task of one campaign shares.
#[derive(Debug)]
pub struct Ctx {
    pub api: Api,
    pub seed: u64,
    pub round: usize,
    pub which: Which,
    pub campaign: String,
    /// `(admit_per_second, admission_ttl_secs)` behind a room.
    pub room: Option<(u32, u32)>,
    /// Set when the traffic window ends.
    pub stop: Arc<AtomicBool>,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn letter(&self) -> char {
        match self.which {
            Which::Plain => 'p',
            Which::Room => 'q',
        }
    }
}

/// One client task's state.
struct Client {
    ctx: Arc<Ctx>,
    name: String,
    rng: StdRng,
    /// Users this client issued for (repeated users come from here).
    pool: Vec<String>,
    users: u64,
    keys: u64,
    /// The tasks following this client's deferred replies.
    followers: Vec<tokio::task::JoinHandle<()>>,
    /// A reply said `sold_out` or `closed` since the last pause: the next
    /// pause is longer (users give up for a while).
    gone: AtomicBool,
}

/// Deferred replies one client follows at once.
const FOLLOWS_AT_ONCE: usize = 6;

/// Reads `/coupons/me` after a deferred reply (`deferred`, its request's
/// id) until its state is final, or the window ends (the final reads take
/// over then). A user turned away for a failure (`rejected` or `none` with
/// `unavailable` or `given_back`) asks again at once, as an app would
/// (twice at most), and follows that reply in turn.
async fn follow(ctx: Arc<Ctx>, client: String, mut rng: StdRng, user: String, deferred: u64) {
    let instances = ctx.api.instances();
    let mut instance = rng.random_range(0..instances);
    let mut deferred = deferred;
    let mut retries = 0;
    for _ in 0..100 {
        if ctx.stopped() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..=350))).await;
        let r = ctx
            .api
            .send(&Call {
                client: &client,
                round: ctx.round,
                campaign: &ctx.campaign,
                kind: Kind::CouponsMe,
                user: Some(&user),
                key: None,
                instance,
                timeout: PATIENT,
                follows: Some(deferred),
            })
            .await;
        if r.status.is_none() {
            instance = (instance + 1) % instances;
            continue;
        }
        let failed = matches!(r.outcome.as_deref(), Some("unavailable" | "given_back"));
        match r.state.as_deref() {
            Some("rejected" | "none") if failed && retries < 2 && rng.random_bool(0.7) => {
                retries += 1;
                let again = ctx
                    .api
                    .send(&Call {
                        client: &client,
                        round: ctx.round,
                        campaign: &ctx.campaign,
                        kind: Kind::Issue,
                        user: Some(&user),
                        key: None,
                        instance,
                        timeout: PATIENT,
                        follows: None,
                    })
                    .await;
                if !again.deferred() {
                    return;
                }
                deferred = again.id;
            }
            Some("issued" | "rejected" | "none") => return,
            _ => {}
        }
    }
}

/// How an issue ended for the client.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// A reply (the last one).
    Replied,
    /// No reply after the tries.
    NoReply,
}

impl Client {
    fn new(ctx: Arc<Ctx>, index: usize) -> Self {
        let name = format!("c{index:02}");
        let rng = rng_for(
            ctx.seed,
            &format!("traffic-{}-{}-{name}", ctx.round, ctx.which.as_str()),
        );
        Self {
            ctx,
            name,
            rng,
            pool: Vec::new(),
            users: 0,
            keys: 0,
            followers: Vec::new(),
            gone: AtomicBool::new(false),
        }
    }

    fn new_user(&mut self) -> String {
        self.users += 1;
        let user = format!(
            "r{}{}{}u{:04}",
            self.ctx.round,
            self.ctx.letter(),
            self.name,
            self.users
        );
        self.pool.push(user.clone());
        user
    }

    fn pool_user(&mut self) -> String {
        if self.pool.is_empty() {
            return self.new_user();
        }
        let i = self.rng.random_range(0..self.pool.len());
        self.pool[i].clone()
    }

    fn new_key(&mut self) -> String {
        self.keys += 1;
        format!("k-{}-{}-{}", self.ctx.round, self.name, self.keys)
    }

    fn maybe_key(&mut self, p: f64) -> Option<String> {
        self.rng.random_bool(p).then(|| self.new_key())
    }

    fn instance(&mut self) -> usize {
        self.rng.random_range(0..self.ctx.api.instances())
    }

    async fn pause(&mut self, lo: u64, hi: u64) {
        let (lo, hi) = if self.gone.swap(false, Ordering::Relaxed) {
            (lo.max(200), hi.max(700))
        } else {
            (lo, hi)
        };
        let ms = self.rng.random_range(lo..=hi);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    async fn send(
        &self,
        kind: Kind,
        user: &str,
        key: Option<&str>,
        instance: usize,
        timeout: Duration,
        follows: Option<u64>,
    ) -> Req {
        let r = self
            .ctx
            .api
            .send(&Call {
                client: &self.name,
                round: self.ctx.round,
                campaign: &self.ctx.campaign,
                kind,
                user: Some(user),
                key,
                instance,
                timeout,
                follows,
            })
            .await;
        if r.status == Some(410) {
            self.gone.store(true, Ordering::Relaxed);
        }
        r
    }

    /// Issues for `user` and retries as a client would: the same request on
    /// the other instance when the connection was refused; with a key, the
    /// same key after a hang-up, a 409 in progress, a 429 or a 503; without
    /// one, sometimes a fresh request. A deferred reply is followed.
    /// `first_timeout` is the first try's timeout (a few ms: a hang-up).
    async fn issue(&mut self, user: &str, key: Option<String>, first_timeout: Duration) -> Ended {
        let mut instance = self.instance();
        let mut timeout = first_timeout;
        for _try in 0..5 {
            let r = self
                .send(Kind::Issue, user, key.as_deref(), instance, timeout, None)
                .await;
            let hung_up = timeout < PATIENT;
            timeout = PATIENT;
            if not_sent(&r) {
                instance = (instance + 1) % self.ctx.api.instances();
                self.pause(20, 80).await;
                continue;
            }
            let Some(status) = r.status else {
                // A hang-up or a broken connection: the request may have run.
                if key.is_some() && (!hung_up || self.rng.random_bool(0.6)) {
                    self.pause(100, 600).await;
                    instance = self.instance();
                    continue;
                }
                return Ended::NoReply;
            };
            let wait = r.retry_after_ms.unwrap_or(1_000).clamp(100, 1_000);
            match status {
                409 if r.outcome.as_deref() == Some("request_in_progress") => {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    continue;
                }
                429 | 500..=599 => {
                    let again = if key.is_some() { 0.7 } else { 0.4 };
                    if self.ctx.stopped() || !self.rng.random_bool(again) {
                        return Ended::Replied;
                    }
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    instance = self.instance();
                    continue;
                }
                _ => {}
            }
            if r.deferred() {
                self.follow(user, &r).await;
            } else if r.took() && key.is_some() && self.rng.random_bool(0.2) {
                // The same key again: the first reply, replayed.
                let i = self.instance();
                self.send(Kind::Issue, user, key.as_deref(), i, PATIENT, None)
                    .await;
            }
            return Ended::Replied;
        }
        Ended::NoReply
    }

    /// Follows a deferred reply with `/coupons/me` until its state is
    /// final, on a task of its own (the client goes on with other users);
    /// at most [`FOLLOWS_AT_ONCE`] at once per client, past which the
    /// client waits for the oldest.
    async fn follow(&mut self, user: &str, deferred: &Req) {
        self.followers.retain(|f| !f.is_finished());
        if self.followers.len() >= FOLLOWS_AT_ONCE {
            let oldest = self.followers.remove(0);
            let _ = oldest.await;
        }
        let rng = rng_for(
            self.ctx.seed,
            &format!("follow-{}-{}-{}", self.ctx.round, self.name, deferred.id),
        );
        self.followers.push(tokio::spawn(follow(
            self.ctx.clone(),
            self.name.clone(),
            rng,
            user.to_owned(),
            deferred.id,
        )));
    }

    /// Two requests with one key at once: one runs, the other is answered
    /// 409 `request_in_progress` or replays the first.
    async fn twins(&mut self, user: &str) {
        let key = self.new_key();
        let (a, b) = (self.instance(), self.instance());
        let (ra, rb) = tokio::join!(
            self.send(Kind::Issue, user, Some(&key), a, PATIENT, None),
            self.send(Kind::Issue, user, Some(&key), b, PATIENT, None),
        );
        for r in [ra, rb] {
            if r.deferred() && !r.replayed {
                self.follow(user, &r).await;
                break;
            }
        }
    }

    async fn read_coupon(&mut self, user: &str) {
        let i = self.instance();
        self.send(Kind::CouponsMe, user, None, i, PATIENT, None)
            .await;
    }

    /// The plain campaign's mix.
    async fn plain(mut self) {
        while !self.ctx.stopped() {
            let roll = self.rng.random_range(0..100);
            match roll {
                0..50 => {
                    let user = self.new_user();
                    let key = self.maybe_key(0.5);
                    self.issue(&user, key, PATIENT).await;
                }
                50..62 => {
                    let user = self.pool_user();
                    let key = self.maybe_key(0.5);
                    self.issue(&user, key, PATIENT).await;
                }
                62..77 => {
                    // A client that hangs up after a few ms.
                    let user = if self.rng.random_bool(0.7) {
                        self.new_user()
                    } else {
                        self.pool_user()
                    };
                    let key = self.maybe_key(0.6);
                    let hang_up = Duration::from_millis(self.rng.random_range(3..300));
                    self.issue(&user, key, hang_up).await;
                }
                77..85 => {
                    let user = self.new_user();
                    self.twins(&user).await;
                }
                85..92 => {
                    let user = self.pool_user();
                    self.read_coupon(&user).await;
                }
                _ => {
                    // Impatient: twice without a key, back to back.
                    let user = self.new_user();
                    let i = self.instance();
                    let first = self.send(Kind::Issue, &user, None, i, PATIENT, None).await;
                    let second = self
                        .send(Kind::Issue, &user, None, 1 - i.min(1), PATIENT, None)
                        .await;
                    if let Some(d) = [first, second].into_iter().find(Req::deferred) {
                        self.follow(&user, &d).await;
                    }
                }
            }
            self.pause(5, 120).await;
        }
        self.wind_up().await;
    }

    /// Waits for the follow-ups still running (they end with the window).
    async fn wind_up(&mut self) {
        for f in self.followers.drain(..) {
            let _ = f.await;
        }
    }

    /// Joins the room (the same key on the other instance if the
    /// connection was refused); the last reply.
    async fn join(&mut self, user: &str, key: Option<&str>, timeout: Duration) -> Option<Req> {
        let mut instance = self.instance();
        let mut timeout = timeout;
        for _ in 0..4 {
            let r = self
                .send(Kind::RoomJoin, user, key, instance, timeout, None)
                .await;
            timeout = PATIENT;
            match r.status {
                Some(429 | 500..=599) | None => {
                    if self.ctx.stopped() {
                        return None;
                    }
                    instance = (instance + 1) % self.ctx.api.instances();
                    self.pause(100, 400).await;
                }
                Some(409) if r.outcome.as_deref() == Some("request_in_progress") => {
                    self.pause(300, 1_000).await;
                }
                Some(_) => return Some(r),
            }
        }
        None
    }

    /// Waits in line after `joined` (polling `/room/me` as it says), and
    /// issues once admitted.
    async fn wait_and_issue(&mut self, user: &str, joined: Req) {
        let (_, ttl) = self.ctx.room.unwrap_or((1, 1));
        let mut r = joined;
        let mut waited = 0u64;
        loop {
            match r.state.as_deref() {
                Some("waiting") => {
                    if self.ctx.stopped() || waited > 20_000 {
                        // Gives up: its admission will expire unused.
                        return;
                    }
                    let ms = r.retry_after_ms.unwrap_or(500).clamp(50, 2_000);
                    let ms = ms + self.rng.random_range(0..50);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    waited += ms;
                    let i = self.instance();
                    r = self.send(Kind::RoomMe, user, None, i, PATIENT, None).await;
                    if r.status.is_none() || r.status.is_some_and(|s| s >= 429) {
                        r.state = Some("waiting".into());
                        r.retry_after_ms = Some(300);
                    }
                }
                Some("admitted") => {
                    if self.rng.random_bool(0.08) {
                        // Dawdles past the admission: the place expires.
                        tokio::time::sleep(Duration::from_millis(u64::from(ttl) * 1000 + 700))
                            .await;
                    }
                    let key = self.maybe_key(0.5);
                    self.issue(user, key, PATIENT).await;
                    return;
                }
                _ => return,
            }
        }
    }

    /// The room campaign's mix.
    async fn room(mut self) {
        while !self.ctx.stopped() {
            let roll = self.rng.random_range(0..100);
            match roll {
                0..68 => {
                    let user = self.new_user();
                    let key = self.maybe_key(0.3);
                    if let Some(r) = self.join(&user, key.as_deref(), PATIENT).await {
                        self.wait_and_issue(&user, r).await;
                    }
                }
                68..76 => {
                    // Skips the line: 403 not_admitted.
                    let user = self.new_user();
                    self.issue(&user, None, PATIENT).await;
                }
                76..86 => {
                    // Comes back: joins again (same place) and issues.
                    let user = self.pool_user();
                    if let Some(r) = self.join(&user, None, PATIENT).await {
                        self.wait_and_issue(&user, r).await;
                    }
                }
                _ => {
                    // Hangs up on the join, then joins again (with the same
                    // key, sometimes).
                    let user = self.new_user();
                    let key = self.new_key();
                    let hang_up = Duration::from_millis(self.rng.random_range(3..200));
                    let i = self.instance();
                    self.send(Kind::RoomJoin, &user, Some(&key), i, hang_up, None)
                        .await;
                    let again = self.rng.random_bool(0.5).then_some(key);
                    if let Some(r) = self.join(&user, again.as_deref(), PATIENT).await {
                        self.wait_and_issue(&user, r).await;
                    }
                }
            }
            self.pause(5, 120).await;
        }
        self.wind_up().await;
    }
}

/// Runs client task `index` of `ctx`'s campaign until the window ends.
pub async fn client(ctx: Arc<Ctx>, index: usize) {
    let which = ctx.which;
    let c = Client::new(ctx, index);
    match which {
        Which::Plain => c.plain().await,
        Which::Room => c.room().await,
    }
}

/// A flash crowd (`schedule::Burst`) on `ctx`'s campaign: every user
/// issues once, all at once; three quarters through one instance, some
/// hanging up after 50 ms to 2 s, some with an `Idempotency-Key`. Their
/// deferred replies are not followed (the final reads cover them).
pub async fn burst(ctx: Arc<Ctx>, b: super::schedule::Burst) {
    let tasks: Vec<_> = (0..b.users)
        .map(|n| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut rng = rng_for(ctx.seed, &format!("burst-{}-{n}", ctx.round));
                let user = format!("r{}{}b{n:05}", ctx.round, ctx.letter());
                let key = rng
                    .random_bool(0.3)
                    .then(|| format!("k-{}-burst-{n}", ctx.round));
                let mut instance = if rng.random_bool(0.75) {
                    b.instance
                } else {
                    1 - b.instance.min(1)
                };
                let timeout = if rng.random_bool(f64::from(b.hang_up_percent) / 100.0) {
                    Duration::from_millis(rng.random_range(50..2_000))
                } else {
                    PATIENT
                };
                for _ in 0..2 {
                    let r = ctx
                        .api
                        .send(&Call {
                            client: "burst",
                            round: ctx.round,
                            campaign: &ctx.campaign,
                            kind: Kind::Issue,
                            user: Some(&user),
                            key: key.as_deref(),
                            instance,
                            timeout,
                            follows: None,
                        })
                        .await;
                    if !not_sent(&r) {
                        break;
                    }
                    instance = (instance + 1) % ctx.api.instances();
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Requests of one of the driver's phases (no RNG: the same every run),
/// about one campaign.
struct Driver<'a> {
    api: &'a Api,
    client: &'a str,
    round: usize,
    campaign: &'a str,
}

impl Driver<'_> {
    async fn send(
        &self,
        kind: Kind,
        user: Option<&str>,
        instance: usize,
        timeout: Duration,
        follows: Option<u64>,
    ) -> Req {
        self.api
            .send(&Call {
                client: self.client,
                round: self.round,
                campaign: self.campaign,
                kind,
                user,
                key: None,
                instance,
                timeout,
                follows,
            })
            .await
    }
}

/// The admin close: retried on both instances until it is answered 200 (at
/// most 8 tries).
pub async fn close(api: &Api, round: usize, campaign: &str) -> Option<Req> {
    for attempt in 0..8 {
        let r = Driver {
            api,
            client: by::ADMIN,
            round,
            campaign,
        }
        .send(Kind::Close, None, attempt, Duration::from_secs(10), None)
        .await;
        if r.status == Some(200) {
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}

/// After the heal, a fresh user asks until a definite answer comes (an
/// issue: any 2xx, 403, 404, 409, 410; a join: anything but 429, 5xx or
/// no reply), for at most 60 s (a Redis restart late in the round leaves
/// the campaigns fenced until the gate keeper rebuilds them, longer if the
/// worker was killed meanwhile: `check::REBUILD_MS`, `check::ADMIN_LEASE_MS`).
/// Whether it came in time is the checker's to say.
pub async fn probe(api: &Api, round: usize, which: Which, campaign: &str) {
    let user = format!(
        "r{round}{}probe",
        if which == Which::Plain { 'p' } else { 'q' }
    );
    let kind = match which {
        Which::Plain => Kind::Issue,
        Which::Room => Kind::RoomJoin,
    };
    let started = std::time::Instant::now();
    let mut attempt = 0;
    let within =
        Duration::from_millis(super::check::ADMIN_LEASE_MS + super::check::REBUILD_MS + 5_000);
    while started.elapsed() < within {
        let left = within.saturating_sub(started.elapsed());
        let r = Driver {
            api,
            client: by::PROBE,
            round,
            campaign,
        }
        .send(
            kind,
            Some(&user),
            attempt,
            left.max(Duration::from_millis(100)),
            None,
        )
        .await;
        attempt += 1;
        if definite(kind, &r) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether a probe's reply is a definite answer.
pub fn definite(kind: Kind, r: &Req) -> bool {
    match (kind, r.status) {
        (Kind::Issue, Some(s)) => (200..300).contains(&s) || matches!(s, 403 | 404 | 409 | 410),
        (_, Some(s)) => s != 429 && s < 500,
        (_, None) => false,
    }
}

/// The final read of a user's `/coupons/me` (retried until answered 200,
/// at most 6 tries over both instances), following the user's last
/// deferred reply.
pub async fn final_read(api: &Api, round: usize, campaign: &str, user: &str, follows: u64) {
    for attempt in 0..6 {
        let r = Driver {
            api,
            client: by::FINAL,
            round,
            campaign,
        }
        .send(
            Kind::CouponsMe,
            Some(user),
            attempt,
            Duration::from_secs(10),
            Some(follows),
        )
        .await;
        if r.status == Some(200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What a top-up pass did.
#[derive(Debug, Default)]
pub struct TopUp {
    pub users: u64,
    /// A reply said `sold_out` (or `closed`): nothing more to take.
    pub sold_out: bool,
}

/// Fresh users issue, 16 at a time, `wanted` of them (behind a room: each
/// joins, waits to be admitted, then issues), until a reply says `sold_out`
/// or `within` passes. Deferred replies are not followed: the rows after
/// the drain answer for them.
pub async fn top_up(
    api: &Api,
    round: usize,
    which: Which,
    campaign: &str,
    pass: usize,
    wanted: u64,
    within: Duration,
) -> TopUp {
    let done = Arc::new(AtomicBool::new(false));
    let users = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + within;
    let letter = if which == Which::Plain { 'p' } else { 'q' };
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let (api, done, users, campaign) = (
                api.clone(),
                done.clone(),
                users.clone(),
                campaign.to_owned(),
            );
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                    let n = users.fetch_add(1, Ordering::Relaxed);
                    if n >= wanted {
                        users.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    let user = format!("r{round}{letter}t{pass}x{n:05}");
                    if which == Which::Room
                        && !admitted(&api, round, &campaign, &user, &done, deadline).await
                    {
                        continue;
                    }
                    for attempt in 0..4 {
                        let r = Driver {
                            api: &api,
                            client: by::TOPUP,
                            round,
                            campaign: &campaign,
                        }
                        .send(Kind::Issue, Some(&user), task + attempt, PATIENT, None)
                        .await;
                        match r.status {
                            Some(410) => done.store(true, Ordering::Relaxed),
                            Some(429 | 500..=599) | None => {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                            _ => {}
                        }
                        break;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    TopUp {
        users: users.load(Ordering::Relaxed),
        sold_out: done.load(Ordering::Relaxed),
    }
}

/// A top-up user behind a room: joins and waits until admitted; false if
/// the room said sold out or closed (then `done` is set), or time ran out.
async fn admitted(
    api: &Api,
    round: usize,
    campaign: &str,
    user: &str,
    done: &AtomicBool,
    deadline: tokio::time::Instant,
) -> bool {
    let mut kind = Kind::RoomJoin;
    let mut attempt = 0;
    while tokio::time::Instant::now() < deadline && !done.load(Ordering::Relaxed) {
        let r = Driver {
            api,
            client: by::TOPUP,
            round,
            campaign,
        }
        .send(kind, Some(user), attempt, PATIENT, None)
        .await;
        attempt += 1;
        match r.state.as_deref() {
            Some("admitted") => return true,
            Some("sold_out" | "closed") => {
                done.store(true, Ordering::Relaxed);
                return false;
            }
            Some("taken" | "expired") => return false,
            Some("waiting") => {
                kind = Kind::RoomMe;
                let ms = r.retry_after_ms.unwrap_or(300).clamp(50, 1_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            // Not joined yet (`none`), or no reply: join (again).
            _ => {
                kind = Kind::RoomJoin;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    false
}
