//! Redis locks: a plain lease lock and a fair ticket lock.
//!
//! Both hand out a [`LockGuard`] with a unique token. A watchdog task extends
//! the lease every third of it while the guard is held, so a slow holder
//! keeps the lock; a holder that stops running (a process pause, a lost
//! network) loses it when the lease runs out, and the next waiter gets in.
//! Locks here are efficiency devices: whatever they protect must stay
//! correct when a paused holder wakes up after losing its lock.
//!
//! - [`LeaseLock`]: `SET key token NX PX lease`; release is
//!   compare-and-delete and publishes on the lock's channel, which wakes one
//!   waiter per process; waiters also retry on a timeout (a lease that runs
//!   out publishes nothing).
//! - [`FairLock`]: a ticket lock in Lua (each waiter takes a ticket, the
//!   lock goes to the ticket being served, gone waiters are stepped past),
//!   O(1) amortised per operation, with time from Redis `TIME`. Release
//!   publishes the next ticket, which wakes exactly that waiter; waiters
//!   also poll, the nearer the head the sooner. A waiter that gives up
//!   leaves the line; a full line turns newcomers away.
//!
//! Without a [`LockWaker`] both locks simply poll.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::Script;

use crate::keys::FairLockKeys;
use crate::lock_waker::{LockWaker, Registration};
use crate::redis_state::{RedisCallError, RedisClient};
use crate::scripts;

/// The lease of a campaign's admin lock (`coupon:{c}:admin`), which
/// reconcile, rebuild (the gate keeper's too), a re-drive and an archive
/// hold so that no two of them interleave on one campaign. Its holder's
/// watchdog renews it every third; a holder killed or frozen keeps the next
/// one out for at most this long, and its fenced writes
/// (`lua/admin_fence.lua`) fail once it is lost.
pub const ADMIN_LEASE: Duration = Duration::from_secs(10);

/// The hold an admin lock's fenced writes name (`lua/admin_fence.lua`).
impl From<&LockGuard> for crate::redis_state::AdminHold {
    fn from(lock: &LockGuard) -> Self {
        Self {
            key: lock.key().to_owned(),
            token: lock.token().to_owned(),
        }
    }
}

/// Takes `campaign`'s admin lock, waiting at most `wait`.
pub async fn acquire_admin(
    redis: &RedisClient,
    campaign: &crate::ids::CampaignId,
    wait: Duration,
) -> Result<LockGuard, LockError> {
    LeaseLock::new(
        redis.clone(),
        LockTiming {
            lease: ADMIN_LEASE,
            wait,
        },
        None,
    )
    .acquire(&crate::keys::CampaignKeys::new(campaign).admin_lock())
    .await
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock not acquired within {0:?}")]
    WaitTimeout(Duration),
    /// The fair lock's line is full (this many tickets not yet served).
    #[error("{0} already waiting for the lock")]
    LineFull(u64),
    #[error(transparent)]
    Redis(#[from] RedisCallError),
}

/// Lease and wait of a lock.
#[derive(Debug, Clone, Copy)]
pub struct LockTiming {
    /// How long the lock stays held without renewal.
    pub lease: Duration,
    /// How long an acquirer waits before giving up.
    pub wait: Duration,
}

fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Back-off between attempts at a lease lock: doubling from 1 ms to `cap`.
fn backoff(attempt: u32, cap: Duration) -> Duration {
    Duration::from_millis(1u64 << attempt.min(6)).min(cap)
}

/// A typical hold of a campaign lock (a handful of Redis round trips).
const TYPICAL_HOLD: Duration = Duration::from_millis(2);

/// Longest pause of a fair-lock waiter at `place` in the queue before it
/// tries again unwoken: the head every millisecond, the others about when
/// their turn could come (at least twice a second). Polling every waiter
/// often spends Redis on scripts that cannot succeed: with 2,000 waiters
/// polling every 50 ms and no wake-ups, Redis ran 230,000 commands/s and
/// granted the lock some 30 times a second.
fn fair_poll(place: u32) -> Duration {
    (TYPICAL_HOLD * place).clamp(Duration::from_millis(1), Duration::from_millis(500))
}

/// The channel a lock's releases are published on.
fn release_channel(lock_key: &str) -> String {
    format!("{lock_key}:released")
}

fn register(
    waker: &Option<Arc<LockWaker>>,
    channel: &str,
    token: Option<&str>,
) -> Option<Registration> {
    waker.as_ref().map(|w| w.register(channel, token))
}

async fn pause(registration: &Option<Registration>, timeout: Duration) {
    match registration {
        Some(r) => r.wait(timeout).await,
        None => tokio::time::sleep(timeout).await,
    }
}

/// A held lock. Release it with [`LockGuard::release`]; if dropped without,
/// the watchdog stops and the lease simply runs out.
#[derive(Debug)]
pub struct LockGuard {
    redis: RedisClient,
    key: String,
    token: String,
    release: &'static Script,
    release_keys: Vec<String>,
    release_channel: String,
    watchdog: tokio::task::JoinHandle<()>,
    lost: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    /// How long acquiring took.
    pub waited: Duration,
    /// The fair lock's ticket this hold was granted on (`None`: lease lock).
    pub ticket: Option<i64>,
}

impl LockGuard {
    #[allow(clippy::too_many_arguments)]
    fn start(
        redis: RedisClient,
        key: String,
        token: String,
        renew: &'static Script,
        release: &'static Script,
        release_keys: Vec<String>,
        lease: Duration,
        waited: Duration,
    ) -> Self {
        let release_channel = release_channel(&key);
        let lost = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let watchdog = tokio::spawn({
            let (redis, key, token) = (redis.clone(), key.clone(), token.clone());
            let (lost, paused) = (lost.clone(), paused.clone());
            async move {
                let every = (lease / 3).max(Duration::from_millis(1));
                loop {
                    tokio::time::sleep(every).await;
                    if paused.load(Ordering::Acquire) {
                        continue;
                    }
                    match redis
                        .run_script::<i64>(
                            renew,
                            &[key.as_str()],
                            &[token.as_str(), &lease.as_millis().to_string()],
                        )
                        .await
                    {
                        Ok(1) => {}
                        Ok(_) => {
                            lost.store(true, Ordering::Release);
                            tracing::warn!(lock = %key, "lock lease lost before release");
                            return;
                        }
                        Err(e) => tracing::warn!(lock = %key, error = %e, "lock renewal failed"),
                    }
                }
            }
        });
        Self {
            redis,
            key,
            token,
            release,
            release_keys,
            release_channel,
            watchdog,
            lost,
            paused,
            waited,
            ticket: None,
        }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The lock's key, for a write fenced by this hold
    /// (`redis_state::LockSections::take`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Records that a fenced write found the lock taken from us.
    pub fn mark_lost(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// Whether the watchdog found the lock taken from us (its lease ran out).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Test support: stops (`true`) or restarts renewals, as a process pause
    /// would, so that a held lease can run out.
    pub fn pause_renewals(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }

    /// Releases the lock if still ours. `Ok(false)`: it was not (any more).
    pub async fn release(self) -> Result<bool, RedisCallError> {
        self.watchdog.abort();
        self.try_release().await
    }

    /// [`LockGuard::release`], tried again every 250 ms while it fails, for
    /// up to `within`: a release that a Redis restart refused would
    /// otherwise leave the lock (persisted before the restart) to its whole
    /// lease, keeping every other taker waiting after Redis is back. The
    /// release is compare-and-delete on this hold's token, so a late try
    /// never deletes another holder's lock.
    pub async fn release_within(self, within: Duration) -> Result<bool, RedisCallError> {
        self.watchdog.abort();
        let started = Instant::now();
        loop {
            match self.try_release().await {
                Err(e) if started.elapsed() < within => {
                    tracing::debug!(lock = %self.key, error = %e, "lock release failed; trying again");
                    tokio::time::sleep(RELEASE_RETRY.min(within.saturating_sub(started.elapsed())))
                        .await;
                }
                result => return result,
            }
        }
    }

    async fn try_release(&self) -> Result<bool, RedisCallError> {
        let keys: Vec<&str> = self.release_keys.iter().map(String::as_str).collect();
        let released: i64 = self
            .redis
            .run_script(
                self.release,
                &keys,
                &[self.token.as_str(), self.release_channel.as_str()],
            )
            .await?;
        if released == 0 {
            tracing::warn!(lock = %self.key, "lock was no longer held at release");
        }
        Ok(released == 1)
    }
}

/// How soon a failed release or give-back is tried again.
const RELEASE_RETRY: Duration = Duration::from_millis(250);

/// Gives back a lease lock whose `SET NX` may have run with its reply lost
/// (a timeout, a connection a Redis restart broke): a lock nobody knows it
/// holds would keep every taker out for a whole lease. The give-back is
/// compare-and-delete on a token no one else has, so it runs in the
/// background, tried again after 250 ms, then 500 ms, 1 s… until it deletes
/// the lock or the lease has passed: a `SET` that a paused Redis runs after
/// the first try (it may come on another connection) is undone by a later
/// one. A `SET` run later than the lease after the failure lives its lease
/// out: either way the lock is orphaned for at most about one lease. (The
/// doubling keeps a Redis outage that fails many acquires from being
/// answered with several give-backs a second each.)
fn give_back_in_background(redis: RedisClient, key: String, token: String, lease: Duration) {
    tokio::spawn(async move {
        let started = Instant::now();
        let channel = release_channel(&key);
        let mut wait = RELEASE_RETRY;
        loop {
            let given_back = redis
                .run_script::<i64>(
                    &scripts::LOCK_RELEASE,
                    &[key.as_str()],
                    &[token.as_str(), channel.as_str()],
                )
                .await;
            if matches!(given_back, Ok(1)) || started.elapsed() >= lease {
                return;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    });
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.watchdog.abort();
    }
}

/// `SET key value NX PX ms`: `true` when set. On Redis Cluster with `GET`
/// too, and also `true` when the key already holds `value`: the cluster
/// client sends a call again when the connection it went out on broke before
/// the reply came back, and this second run must find the caller's own lock
/// held, not wait out its lease behind it (`NX` with `GET` needs Redis 7.0).
/// A single Redis's connection never sends a call twice: it keeps the plain
/// `SET`.
async fn set_nx_px(
    redis: &RedisClient,
    key: &str,
    value: &str,
    ms: u64,
) -> Result<bool, RedisCallError> {
    redis
        .run(|mut conn| async move {
            let mut set = redis::cmd("SET");
            set.arg(key).arg(value).arg("NX").arg("PX").arg(ms);
            if !conn.is_cluster() {
                // `OK` when set, nil when not.
                let reply: Option<String> = set.query_async(&mut conn).await?;
                return Ok(reply.is_some());
            }
            // With `GET`: nil when set, else what the key holds (not set).
            let held: Option<String> = set.arg("GET").query_async(&mut conn).await?;
            Ok(held.is_none_or(|held| held == value))
        })
        .await
}

/// `SET key token NX PX lease` with bounded waiting.
#[derive(Debug, Clone)]
pub struct LeaseLock {
    redis: RedisClient,
    timing: LockTiming,
    waker: Option<Arc<LockWaker>>,
}

impl LeaseLock {
    pub fn new(redis: RedisClient, timing: LockTiming, waker: Option<Arc<LockWaker>>) -> Self {
        Self {
            redis,
            timing,
            waker,
        }
    }

    pub async fn acquire(&self, key: &str) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        let token = new_token();
        let lease_ms = self.timing.lease.as_millis() as u64;
        let mut registration = None;
        for attempt in 0.. {
            let set = match set_nx_px(&self.redis, key, &token, lease_ms).await {
                Ok(set) => set,
                Err(e) => {
                    if e.may_have_run() {
                        give_back_in_background(
                            self.redis.clone(),
                            key.to_owned(),
                            token.clone(),
                            self.timing.lease,
                        );
                    }
                    return Err(e.into());
                }
            };
            if set {
                return Ok(LockGuard::start(
                    self.redis.clone(),
                    key.to_owned(),
                    token,
                    &scripts::LOCK_RENEW,
                    &scripts::LOCK_RELEASE,
                    vec![key.to_owned()],
                    self.timing.lease,
                    started.elapsed(),
                ));
            }
            let left = self.timing.wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            if attempt == 0 {
                // Registered after the first miss: a release published
                // before this registration is caught by the retry below.
                registration = register(&self.waker, &release_channel(key), None);
                continue;
            }
            let cap = if registration.is_some() {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(20)
            };
            pause(&registration, backoff(attempt, cap).min(left)).await;
        }
        Err(LockError::WaitTimeout(self.timing.wait))
    }
}

/// The fair lock: a ticket lock in Redis. Each waiter takes a ticket and is
/// granted the lock when its ticket is served, so grants follow arrival
/// order; a waiter that gives up or dies is stepped past. Every operation is
/// O(1) amortised, where Redisson's algorithm (used before) costs
/// O(waiters) per acquire, poll and give-up and saturated Redis at 2,000
/// waiters. What it keeps from Redisson: only the next in line may take a
/// free lock, a waiter's place expires with its wait, the lock is a HASH
/// with the owner's token and a renewed lease, and a release wakes exactly
/// the next waiter. A line of `max_waiters` turns newcomers away at once.
#[derive(Debug, Clone)]
pub struct FairLock {
    redis: RedisClient,
    timing: LockTiming,
    waker: Option<Arc<LockWaker>>,
    max_waiters: u64,
}

impl FairLock {
    pub fn new(redis: RedisClient, timing: LockTiming, waker: Option<Arc<LockWaker>>) -> Self {
        Self {
            redis,
            timing,
            waker,
            max_waiters: u64::MAX,
        }
    }

    /// Caps the line (the holder included): a newcomer finding it full gets
    /// [`LockError::LineFull`] at once instead of a ticket.
    pub fn with_max_waiters(mut self, max_waiters: u64) -> Self {
        self.max_waiters = max_waiters.max(1);
        self
    }

    pub async fn acquire(&self, keys: &FairLockKeys) -> Result<LockGuard, LockError> {
        self.acquire_with_token(keys, new_token()).await
    }

    /// As [`FairLock::acquire`], with the caller's token (tests record it).
    pub async fn acquire_with_token(
        &self,
        keys: &FairLockKeys,
        token: String,
    ) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        let lease_ms = self.timing.lease.as_millis().to_string();
        let wait_ms = self.timing.wait.as_millis().to_string();
        let max_waiters = self.max_waiters.to_string();
        let channel = release_channel(&keys.lock);
        let script_keys = keys.all();
        let mut ticket: i64 = 0;
        let mut registration = None;
        loop {
            let reply = self
                .redis
                .run_script::<Vec<i64>>(
                    &scripts::FAIR_LOCK_ACQUIRE,
                    &script_keys,
                    &[
                        lease_ms.as_str(),
                        token.as_str(),
                        wait_ms.as_str(),
                        channel.as_str(),
                        &ticket.to_string(),
                        max_waiters.as_str(),
                    ],
                )
                .await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) => {
                    // The reply may be lost, not the call: a ticket taken
                    // (or the lock granted) without our knowing is given up
                    // by our token.
                    self.cancel(keys, ticket, &token).await;
                    return Err(e.into());
                }
            };
            let ahead = match reply.as_slice() {
                [-1, granted, _] => {
                    let granted = *granted;
                    let mut guard = LockGuard::start(
                        self.redis.clone(),
                        keys.lock.clone(),
                        token,
                        &scripts::FAIR_LOCK_RENEW,
                        &scripts::FAIR_LOCK_RELEASE,
                        script_keys.iter().map(|k| (*k).to_owned()).collect(),
                        self.timing.lease,
                        started.elapsed(),
                    );
                    guard.ticket = Some(granted);
                    return Ok(guard);
                }
                [-2, _, line] => {
                    return Err(LockError::LineFull(u64::try_from(*line).unwrap_or(0)));
                }
                [-3, ..] => return Err(LockError::WaitTimeout(self.timing.wait)),
                [0, mine, ahead] => {
                    if ticket == 0 {
                        ticket = *mine;
                        // Registered once the ticket is known: a release
                        // naming it before this is caught by polling.
                        registration = register(&self.waker, &channel, Some(&ticket.to_string()));
                    }
                    u32::try_from(*ahead).unwrap_or(u32::MAX)
                }
                other => {
                    let e = RedisCallError::Protocol(format!("fair lock replied {other:?}"));
                    self.cancel(keys, ticket, &token).await;
                    return Err(e.into());
                }
            };
            let left = self.timing.wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            pause(&registration, fair_poll(ahead).min(left)).await;
        }
        self.cancel(keys, ticket, &token).await;
        Err(LockError::WaitTimeout(self.timing.wait))
    }

    /// Leaves the line by `token` (and `ticket`, 0 when unknown), or
    /// releases the lock if it was granted to `token` unbeknown (best
    /// effort: a place left behind expires with its wait and is stepped
    /// past; a lost grant, with its lease).
    async fn cancel(&self, keys: &FairLockKeys, ticket: i64, token: &str) {
        let channel = release_channel(&keys.lock);
        if let Err(e) = self
            .redis
            .run_script::<i64>(
                &scripts::FAIR_LOCK_CANCEL,
                &keys.all(),
                &[&ticket.to_string(), channel.as_str(), token],
            )
            .await
        {
            tracing::warn!(error = %e, "could not leave the fair lock's line");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cap = Duration::from_millis(20);
        assert_eq!(backoff(0, cap), Duration::from_millis(1));
        assert_eq!(backoff(3, cap), Duration::from_millis(8));
        assert_eq!(backoff(10, cap), cap);
    }

    #[test]
    fn fair_waiters_poll_sooner_the_nearer_the_head() {
        assert_eq!(fair_poll(0), Duration::from_millis(1));
        assert_eq!(fair_poll(3), Duration::from_millis(6));
        assert_eq!(fair_poll(10_000), Duration::from_millis(500));
    }
}
