//! The Redis locks on real Redis: mutual exclusion, ownership, expiry, and
//! the fair lock's order, cleanup and give-up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;
use common::keys::FairLockKeys;
use common::lock::{FairLock, LeaseLock, LockError, LockTiming};
use common::lock_waker::LockWaker;
use common::redis_state::RedisClient;
use common::scripts;
use futures::future::join_all;

fn redis() -> RedisClient {
    let settings = common::settings::RedisSettings {
        url: redis_url(),
        ..Default::default()
    };
    RedisClient::new(&settings, None).unwrap()
}

/// Release wake-ups, as the api runs the locks.
fn waker(redis: &RedisClient) -> Option<Arc<LockWaker>> {
    Some(LockWaker::new(redis.client().clone()))
}

fn fresh(tag: &str) -> String {
    format!("test:{{{}}}:{tag}", uuid::Uuid::now_v7())
}

fn fair_keys() -> FairLockKeys {
    FairLockKeys::new(&fresh("fairlock"))
}

fn timing(lease_ms: u64, wait_ms: u64) -> LockTiming {
    LockTiming {
        lease: Duration::from_millis(lease_ms),
        wait: Duration::from_millis(wait_ms),
    }
}

/// A counter in Redis incremented by read, pause, write: only mutual
/// exclusion keeps it exact.
async fn unsafe_increment(redis: &RedisClient, key: &str) {
    let current: Option<i64> = redis
        .run_script(
            &redis::Script::new("return redis.call('GET', KEYS[1])"),
            &[key],
            &[],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_micros(200)).await;
    let next = (current.unwrap_or(0) + 1).to_string();
    let _: () = redis
        .run_script(
            &redis::Script::new("redis.call('SET', KEYS[1], ARGV[1])"),
            &[key],
            &[next.as_str()],
        )
        .await
        .unwrap();
}

async fn read_counter(redis: &RedisClient, key: &str) -> i64 {
    let v: Option<i64> = redis
        .run_script(
            &redis::Script::new("return redis.call('GET', KEYS[1])"),
            &[key],
            &[],
        )
        .await
        .unwrap();
    v.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lease_lock_excludes_200_contending_tasks() {
    let redis = redis();
    for waker in [waker(&redis), None] {
        excludes_with_lease_lock(
            &redis,
            LeaseLock::new(redis.clone(), timing(2_000, 60_000), waker),
        )
        .await;
    }
}

async fn excludes_with_lease_lock(redis: &RedisClient, lock: LeaseLock) {
    let (key, counter) = (fresh("lock"), fresh("counter"));
    join_all((0..200).map(|_| async {
        let guard = lock.acquire(&key).await.unwrap();
        unsafe_increment(redis, &counter).await;
        assert!(guard.release().await.unwrap());
    }))
    .await;
    assert_eq!(read_counter(redis, &counter).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fair_lock_excludes_200_contending_tasks_and_cleans_up() {
    let redis = redis();
    for waker in [waker(&redis), None] {
        excludes_with_fair_lock(
            &redis,
            FairLock::new(redis.clone(), timing(2_000, 60_000), waker),
        )
        .await;
    }
}

async fn excludes_with_fair_lock(redis: &RedisClient, lock: FairLock) {
    let (keys, counter) = (fair_keys(), fresh("counter"));
    join_all((0..200).map(|_| async {
        let guard = lock.acquire(&keys).await.unwrap();
        unsafe_increment(redis, &counter).await;
        assert!(guard.release().await.unwrap());
    }))
    .await;
    assert_eq!(read_counter(redis, &counter).await, 200);
    for key in keys.all() {
        assert!(!redis_exists(key).await, "{key} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_non_owner_cannot_release_either_lock() {
    let redis = redis();
    let key = fresh("lock");
    let guard = LeaseLock::new(redis.clone(), timing(5_000, 100), waker(&redis))
        .acquire(&key)
        .await
        .unwrap();
    let released: i64 = redis
        .run_script(&scripts::LOCK_RELEASE, &[key.as_str()], &["someone-else"])
        .await
        .unwrap();
    assert_eq!(released, 0);
    assert!(redis_exists(&key).await);
    assert!(guard.release().await.unwrap());
    assert!(!redis_exists(&key).await);

    let keys = fair_keys();
    let guard = FairLock::new(redis.clone(), timing(5_000, 100), waker(&redis))
        .acquire(&keys)
        .await
        .unwrap();
    let released: i64 = redis
        .run_script(
            &scripts::FAIR_LOCK_RELEASE,
            &keys.all(),
            &["someone-else", "x"],
        )
        .await
        .unwrap();
    assert_eq!(released, 0);
    assert!(redis_exists(&keys.lock).await);
    assert!(guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_lets_the_next_waiter_in() {
    let redis = redis();
    let key = fresh("lock");
    let lock = LeaseLock::new(redis.clone(), timing(300, 5_000), waker(&redis));
    let first = lock.acquire(&key).await.unwrap();
    first.pause_renewals(true); // the holder stops, as a paused process would
    let started = Instant::now();
    let second = lock.acquire(&key).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150),
        "got in while the lease held: {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert!(
        !first.release().await.unwrap(),
        "the expired holder released the new one's lock"
    );
    assert!(redis_exists(&key).await);
    assert!(second.release().await.unwrap());

    let keys = fair_keys();
    let lock = FairLock::new(redis.clone(), timing(300, 5_000), waker(&redis));
    let first = lock.acquire(&keys).await.unwrap();
    first.pause_renewals(true);
    let second = lock.acquire(&keys).await.unwrap();
    assert!(!first.release().await.unwrap());
    assert!(second.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_lock_outlives_its_lease_while_renewed() {
    let redis = redis();
    let key = fresh("lock");
    let lock = LeaseLock::new(redis.clone(), timing(300, 200), waker(&redis));
    let guard = lock.acquire(&key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(lock.acquire(&key).await.is_err(), "renewed lock was taken");
    assert!(!guard.is_lost());
    assert!(guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fair_lock_grants_in_the_order_its_script_queued_the_waiters() {
    let redis = redis();
    let keys = fair_keys();
    let lock = FairLock::new(redis.clone(), timing(5_000, 30_000), waker(&redis));
    let holder = lock.acquire(&keys).await.unwrap();

    let granted = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..20 {
        let (lock, waiter_keys, granted) = (lock.clone(), keys.clone(), granted.clone());
        let token = format!("waiter-{i:02}");
        waiters.push(tokio::spawn(async move {
            let guard = lock
                .acquire_with_token(&waiter_keys, token.clone())
                .await
                .unwrap();
            granted.lock().unwrap().push(token);
            tokio::time::sleep(Duration::from_millis(2)).await;
            guard.release().await.unwrap();
        }));
        // Let each waiter queue before the next one starts.
        let started = Instant::now();
        while queue(&redis, &keys).await.len() < i + 1 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "waiter {i} never queued"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let queued = queue(&redis, &keys).await;
    assert_eq!(queued.len(), 20);
    holder.release().await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(
        *granted.lock().unwrap(),
        queued,
        "grant order differs from queue order"
    );
    for key in keys.all() {
        assert!(!redis_exists(key).await, "{key} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fair_lock_waiter_that_gives_up_leaves_and_stalls_nobody() {
    let redis = redis();
    let keys = fair_keys();
    let holder = FairLock::new(redis.clone(), timing(5_000, 30_000), waker(&redis))
        .acquire(&keys)
        .await
        .unwrap();
    let impatient = FairLock::new(redis.clone(), timing(5_000, 300), waker(&redis));
    let patient = FairLock::new(redis.clone(), timing(5_000, 30_000), waker(&redis));

    let gave_up = tokio::spawn({
        let keys = keys.clone();
        async move {
            impatient
                .acquire_with_token(&keys, "impatient".into())
                .await
                .is_err()
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiting = tokio::spawn({
        let keys = keys.clone();
        async move {
            let guard = patient
                .acquire_with_token(&keys, "patient".into())
                .await
                .unwrap();
            (Instant::now(), guard)
        }
    });
    assert!(gave_up.await.unwrap(), "the impatient waiter got the lock");
    let queued = queue(&redis, &keys).await;
    assert_eq!(
        queued,
        ["patient"],
        "the waiter that gave up is still queued"
    );

    let released_at = Instant::now();
    holder.release().await.unwrap();
    let (granted_at, guard) = waiting.await.unwrap();
    assert!(
        granted_at.duration_since(released_at) < Duration::from_millis(500),
        "the next waiter was stalled"
    );
    guard.release().await.unwrap();
    for key in keys.all() {
        assert!(!redis_exists(key).await, "{key} left behind");
    }
}

/// The tokens in line for the fair lock, in ticket order.
async fn queue(redis: &RedisClient, keys: &FairLockKeys) -> Vec<String> {
    let flat: Vec<String> = redis
        .run_script(
            &redis::Script::new("return redis.call('HGETALL', KEYS[1])"),
            &[keys.waiting.as_str()],
            &[],
        )
        .await
        .unwrap();
    let mut line: Vec<(u64, String)> = flat
        .chunks(2)
        .map(|pair| {
            let token = pair[1].split_once(':').map(|(_, t)| t.to_owned()).unwrap();
            (pair[0].parse().unwrap(), token)
        })
        .collect();
    line.sort();
    line.into_iter().map(|(_, token)| token).collect()
}

/// 2,000 waiters on one fair lock at once, 200 ms holds budgeted by a 2 s
/// wait: every operation stays O(1), so Redis keeps answering within the
/// production command timeout, the line never exceeds its cap, grants stay
/// mutually exclusive, and everything is cleaned up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_fair_lock_waiters_are_served_in_order_or_turned_away() {
    let redis = redis();
    let keys = fair_keys();
    let counter = fresh("counter");
    let lock =
        FairLock::new(redis.clone(), timing(3_000, 2_000), waker(&redis)).with_max_waiters(500);
    // The line's length (tickets not yet served), sampled all along.
    let longest = Arc::new(Mutex::new(0i64));
    let sampling = tokio::spawn({
        let (redis, keys, longest) = (redis.clone(), keys.clone(), longest.clone());
        async move {
            loop {
                let (last, serving): (Option<i64>, Option<i64>) = redis
                    .run(|mut conn| {
                        let keys = keys.clone();
                        async move {
                            redis::pipe()
                                .get(&keys.tickets)
                                .get(&keys.serving)
                                .query_async(&mut conn)
                                .await
                        }
                    })
                    .await
                    .unwrap_or((None, None));
                let line = last.unwrap_or(0) - serving.unwrap_or(1) + 1;
                {
                    let mut seen = longest.lock().unwrap();
                    *seen = (*seen).max(line);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let granted_tickets = Arc::new(Mutex::new(Vec::new()));
    let outcomes = join_all((0..2_000).map(|_| async {
        match lock.acquire(&keys).await {
            Ok(guard) => {
                granted_tickets.lock().unwrap().push(guard.ticket.unwrap());
                unsafe_increment(&redis, &counter).await;
                assert!(guard.release().await.unwrap());
                "granted"
            }
            Err(LockError::LineFull(line)) => {
                assert!(line >= 500, "turned away from a line of {line}");
                "full"
            }
            Err(LockError::WaitTimeout(_)) => "timed_out",
            Err(e) => panic!("the lock failed: {e}"),
        }
    }))
    .await;
    let count = |o: &str| outcomes.iter().filter(|x| **x == o).count();
    let granted = count("granted");
    assert!(granted > 0, "nobody got the lock");
    assert!(count("full") > 0, "the cap never turned anyone away");
    assert_eq!(read_counter(&redis, &counter).await, granted as i64);
    sampling.abort();
    // In order: each grant's ticket after the one before (under the lock,
    // so the pushes are in grant order).
    let tickets = granted_tickets.lock().unwrap().clone();
    assert!(
        tickets.windows(2).all(|w| w[0] < w[1]),
        "granted out of ticket order: {tickets:?}"
    );
    // The cap: never more than 500 tickets unserved.
    let longest = *longest.lock().unwrap();
    assert!(longest <= 500, "the line reached {longest}");
    assert!(
        longest >= 400,
        "the line never filled ({longest}): the cap was not tried"
    );
    for key in keys.all() {
        assert!(!redis_exists(key).await, "{key} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_wakes_a_waiting_lease_lock_waiter_at_once() {
    let redis = redis();
    let key = fresh("lock");
    let lock = LeaseLock::new(redis.clone(), timing(5_000, 10_000), waker(&redis));
    let holder = lock.acquire(&key).await.unwrap();
    let waiter = tokio::spawn({
        let (lock, key) = (lock.clone(), key.clone());
        async move {
            let guard = lock.acquire(&key).await.unwrap();
            (Instant::now(), guard)
        }
    });
    // Long enough for the waiter's retries to back off to their 100 ms cap.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let released_at = Instant::now();
    holder.release().await.unwrap();
    let (granted_at, guard) = waiter.await.unwrap();
    let latency = granted_at.duration_since(released_at);
    assert!(
        latency < Duration::from_millis(40),
        "woken after {latency:?}: polled, not woken"
    );
    guard.release().await.unwrap();
}

/// The fenced take stops at the stock by itself: a combining holder sends
/// a batch's takes together and relies on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fenced_take_stops_at_the_stock() {
    use common::ids::{CampaignId, CouponId, UserId};
    use common::keys::CampaignKeys;
    use common::redis_state::{
        CampaignMeta, CampaignMetas, FencedTake, Gate, LockSections, Refusal,
    };

    let redis = redis();
    let campaign = CampaignId::new();
    CampaignMetas::new(redis.clone())
        .load(
            &campaign,
            &CampaignMeta {
                stock: 1,
                starts_at: chrono::Utc::now() - chrono::Duration::seconds(1),
                ends_at: None,
                closed: false,
                room: None,
            },
        )
        .await
        .unwrap();
    let keys = CampaignKeys::new(&campaign);
    let sections = LockSections::new(redis.clone());
    let lock = LeaseLock::new(redis.clone(), timing(3_000, 2_000), waker(&redis));
    let guard = lock.acquire(&keys.lock()).await.unwrap();
    let user = |u: &str| UserId::parse(u).unwrap();
    let take = |u: &str| {
        let (guard, keys, user, sections) = (&guard, &keys, user(u), &sections);
        async move {
            sections
                .take(guard.key(), guard.token(), keys, &user, &CouponId::new())
                .await
                .unwrap()
        }
    };
    assert_eq!(take("first").await, FencedTake::Taken);
    assert_eq!(take("second").await, FencedTake::Refused(Refusal::SoldOut));
    assert_eq!(take("first").await, FencedTake::Refused(Refusal::Duplicate));
    assert!(guard.release().await.unwrap());
    assert_eq!(Gate::new(redis).taken(&campaign).await.unwrap(), Some(1));
}

/// The fenced take fails closed: with the meta gone (a rebuild deleted it
/// under a combining batch), closed, or past its end, it takes nothing,
/// whatever the section read before. (It used to take without a stock or
/// window check when the meta was missing, and never looked at `closed`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fenced_take_takes_nothing_without_meta_or_once_closed() {
    use common::ids::{CampaignId, CouponId, UserId};
    use common::keys::CampaignKeys;
    use common::redis_state::{CampaignMeta, CampaignMetas, FencedTake, LockSections, Refusal};

    let redis = redis();
    let metas = CampaignMetas::new(redis.clone());
    let sections = LockSections::new(redis.clone());
    let open = |ends_at| CampaignMeta {
        stock: 10,
        starts_at: chrono::Utc::now() - chrono::Duration::seconds(10),
        ends_at,
        closed: false,
        room: None,
    };
    let take = |campaign: CampaignId, user: &str| {
        let (redis, sections) = (redis.clone(), sections.clone());
        let user = UserId::parse(user).unwrap();
        async move {
            let keys = CampaignKeys::new(&campaign);
            let lock = LeaseLock::new(redis.clone(), timing(3_000, 2_000), None);
            let guard = lock.acquire(&keys.lock()).await.unwrap();
            let taken = sections
                .take(guard.key(), guard.token(), &keys, &user, &CouponId::new())
                .await
                .unwrap();
            guard.release().await.unwrap();
            taken
        }
    };

    let missing = CampaignId::new();
    assert_eq!(take(missing, "a").await, FencedTake::Missing);

    let closed = CampaignId::new();
    metas.load(&closed, &open(None)).await.unwrap();
    assert_eq!(take(closed, "a").await, FencedTake::Taken);
    metas.close(&closed).await.unwrap();
    assert_eq!(
        take(closed, "b").await,
        FencedTake::Refused(Refusal::Closed)
    );

    let ended = CampaignId::new();
    metas
        .load(
            &ended,
            &open(Some(chrono::Utc::now() - chrono::Duration::seconds(1))),
        )
        .await
        .unwrap();
    assert_eq!(take(ended, "a").await, FencedTake::Refused(Refusal::Closed));

    let fenced = CampaignId::new();
    metas.load(&fenced, &open(None)).await.unwrap();
    metas.fence(&fenced).await.unwrap();
    assert_eq!(take(fenced, "a").await, FencedTake::Stale);

    for campaign in [missing, closed, ended, fenced] {
        let taken: Option<i64> = redis::cmd("GET")
            .arg(CampaignKeys::new(&campaign).taken())
            .query_async(
                &mut redis
                    .client()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
        let expected = if campaign == closed { Some(1) } else { Some(0) };
        assert_eq!(taken.or(Some(0)), expected, "{campaign}");
    }
}

/// One call of the fair lock's acquire script as a waiter with `token`
/// (`ticket` 0 on its first call), with a 5 s lease: `[code, ticket, n]`.
async fn fair_acquire_call(
    redis: &RedisClient,
    keys: &FairLockKeys,
    token: &str,
    ticket: i64,
    wait_ms: u64,
    max: u64,
) -> Vec<i64> {
    fair_acquire_call_leased(redis, keys, token, ticket, 5_000, wait_ms, max).await
}

/// `fair_acquire_call` with the lease given.
async fn fair_acquire_call_leased(
    redis: &RedisClient,
    keys: &FairLockKeys,
    token: &str,
    ticket: i64,
    lease_ms: u64,
    wait_ms: u64,
    max: u64,
) -> Vec<i64> {
    redis
        .run_script(
            &scripts::FAIR_LOCK_ACQUIRE,
            &keys.all(),
            &[
                &lease_ms.to_string(),
                token,
                &wait_ms.to_string(),
                "unused",
                &ticket.to_string(),
                &max.to_string(),
            ],
        )
        .await
        .unwrap()
}

/// The fair lock's acquire run again (a Redis Cluster client sends a call
/// again when its connection broke before the reply came back) answers as
/// its first run: a first call granted is granted again, not given a second
/// ticket behind its own lock; a first call that waits keeps its ticket; a
/// poll granted is granted again, not told its place was given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fair_lock_acquire_run_again_answers_as_its_first_run() {
    let redis = redis();
    let keys = fair_keys();
    let granted = fair_acquire_call(&redis, &keys, "holder", 0, 2_000, 10).await;
    assert_eq!(granted[0], -1, "{granted:?}");
    assert_eq!(
        fair_acquire_call(&redis, &keys, "holder", 0, 2_000, 10).await,
        granted,
        "a granted first call run again"
    );
    let waiting = fair_acquire_call(&redis, &keys, "waiter", 0, 2_000, 10).await;
    assert_eq!(waiting[0], 0, "{waiting:?}");
    assert_eq!(
        fair_acquire_call(&redis, &keys, "waiter", 0, 2_000, 10).await,
        waiting,
        "a waiting first call run again"
    );
    // The holder's lock gone (released without serving anyone): the
    // waiter's poll takes it, and that poll run again is granted too.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys.lock)
        .query_async(&mut conn)
        .await
        .unwrap();
    let ticket = waiting[1];
    let polled = fair_acquire_call(&redis, &keys, "waiter", ticket, 2_000, 10).await;
    assert_eq!(polled, vec![-1, ticket, 0]);
    assert_eq!(
        fair_acquire_call(&redis, &keys, "waiter", ticket, 2_000, 10).await,
        polled,
        "a granted poll run again"
    );
    drop_fair_keys(&redis, &keys).await;
}

/// Deletes every key of a fair lock a test used.
async fn drop_fair_keys(redis: &RedisClient, keys: &FairLockKeys) {
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for key in keys.all() {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// The ticket lock never wedges on dead waiters: a holder and a full line
/// of waiters all killed (a process with its whole line, never to ask
/// again nor to cancel) leave tickets nobody serves; once the lock is free,
/// the next newcomer steps past them. (Every newcomer was turned away as
/// "line full" before anyone stepped past them: 503 for good, until keys
/// were deleted by hand.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_line_of_dead_waiters_does_not_wedge_the_fair_lock() {
    let redis = redis();
    let keys = fair_keys();
    let lock = FairLock::new(redis.clone(), timing(300, 2_000), None).with_max_waiters(5);
    let holder = lock.acquire(&keys).await.unwrap();
    holder.pause_renewals(true);
    drop(holder); // dies holding the lock: its lease runs out
    for i in 0..4 {
        let reply = fair_acquire_call(&redis, &keys, &format!("dead-{i}"), 0, 100, 5).await;
        assert_eq!(reply[0], 0, "dead-{i} waits: {reply:?}");
    }
    assert_eq!(
        fair_acquire_call(&redis, &keys, "late", 0, 100, 5).await[0],
        -2,
        "the line is full"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let started = Instant::now();
    let newcomer = lock
        .acquire(&keys)
        .await
        .expect("a newcomer after the dead line");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(newcomer.release().await.unwrap());
    drop_fair_keys(&redis, &keys).await;
}

/// A holder and a waiter that die together (Redis killed under them: no
/// release, no give-up) on a lock nobody takes again (the campaign fenced,
/// then closed) leave no line behind once the wait and a lease are over,
/// at the production settings; a newcomer is still served at once. (The
/// dead place was kept for good: the 60-minute fault campaign of seed
/// 84950045 found one, rule 11.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_waiter_on_a_lock_nobody_takes_again_leaves_no_line() {
    let redis = redis();
    let keys = fair_keys();
    let s = common::settings::LockSettings::default();
    let call = |token| {
        fair_acquire_call_leased(
            &redis,
            &keys,
            token,
            0,
            s.lease_ms,
            s.wait_ms,
            s.max_waiters,
        )
    };
    assert_eq!(call("holder").await[0], -1, "the holder is granted");
    assert_eq!(call("dead").await[0], 0, "the dead waiter waits");
    assert_eq!(queue(&redis, &keys).await, ["dead"]);
    tokio::time::sleep(Duration::from_millis(s.wait_ms + s.lease_ms + 500)).await;
    assert!(
        queue(&redis, &keys).await.is_empty(),
        "a line left behind after its last deadline and a lease"
    );
    let lock = FairLock::new(redis.clone(), timing(s.lease_ms, s.wait_ms), None)
        .with_max_waiters(s.max_waiters);
    let started = Instant::now();
    let newcomer = lock.acquire(&keys).await.expect("a newcomer is served");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(newcomer.release().await.unwrap());
    drop_fair_keys(&redis, &keys).await;
}

/// A waiter gives up by its token: a stale ticket number (another waiter's
/// now, the counters having started again from 1) removes nothing, and a
/// waiter whose first reply was lost (it never learnt its ticket) still
/// leaves the line. (Cancel took a bare ticket number: the first removed
/// another waiter, the second was impossible and left an orphan.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fair_lock_waiter_gives_up_only_its_own_place() {
    let redis = redis();
    let keys = fair_keys();
    let holder = fair_acquire_call(&redis, &keys, "holder", 0, 30_000, 100).await;
    assert_eq!(holder[0], -1);
    let waiting = fair_acquire_call(&redis, &keys, "waiting", 0, 30_000, 100).await;
    assert_eq!(waiting[0], 0);
    let cancel = |ticket: i64, token: &'static str| {
        let (redis, keys) = (redis.clone(), keys.clone());
        async move {
            redis
                .run_script::<i64>(
                    &scripts::FAIR_LOCK_CANCEL,
                    &keys.all(),
                    &[&ticket.to_string(), "unused", token],
                )
                .await
                .unwrap()
        }
    };
    // Another waiter's stale ticket number: nothing removed.
    assert_eq!(cancel(waiting[1], "stale").await, 0);
    assert_eq!(
        fair_acquire_call(&redis, &keys, "waiting", waiting[1], 30_000, 100).await[0],
        0
    );
    // A waiter that never learnt its ticket leaves by its token.
    let lost = fair_acquire_call(&redis, &keys, "lost", 0, 30_000, 100).await;
    assert_eq!(lost[0], 0);
    assert_eq!(cancel(0, "lost").await, 1);
    assert_eq!(
        fair_acquire_call(&redis, &keys, "lost", lost[1], 30_000, 100).await[0],
        -3,
        "its place is gone"
    );
    // A holder whose grant reply was lost releases by its token.
    assert_eq!(cancel(0, "holder").await, 1);
    assert_eq!(
        fair_acquire_call(&redis, &keys, "waiting", waiting[1], 30_000, 100).await[0],
        -1,
        "the next waiter is served"
    );
    drop_fair_keys(&redis, &keys).await;
}
