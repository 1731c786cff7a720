//! The Lua scripts, loaded from `common/lua/*.lua` (each file starts with a
//! KEYS/ARGV/Returns header). `redis::Script` runs them by SHA and falls back
//! to sending the body when the server does not know it yet.

use std::sync::LazyLock;

use redis::Script;

/// The waiting room's procedures, put in front of the scripts that use them.
const ROOM: &str = include_str!("../lua/room.lua");

/// A script that calls the waiting room's procedures.
fn with_room(body: &str) -> Script {
    Script::new(&format!("{ROOM}\n{body}"))
}

/// Admit a user: dedupe, cap stock (and, with a waiting room, check the
/// user is let in) in one atomic step.
pub static GATE: LazyLock<Script> = LazyLock::new(|| with_room(include_str!("../lua/gate.lua")));

/// The waiting room: join it (`join`) or read one's place (`look`).
pub static ROOM_JOIN: LazyLock<Script> =
    LazyLock::new(|| with_room(include_str!("../lua/room_join.lua")));

/// Compensation: `if SREM == 1 then DECR`.
pub static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/release.lua")));

/// Withdraw an admission whose reply was lost: give its slot back, or
/// void it so that it never takes one.
pub static WITHDRAW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/withdraw.lua")));

/// `Idempotency-Key`: claim a key, or read its record.
pub static IDEMPOTENCY_CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/idempotency_claim.lua")));

/// `Idempotency-Key`: keep the reply of the claiming request, or free the key.
pub static IDEMPOTENCY_FINISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/idempotency_finish.lua")));

/// Load a new campaign's meta and zero counter.
pub static LOAD_META: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/load_meta.lua")));

/// Close a campaign's gate if its meta exists.
pub static CLOSE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/close.lua")));

/// Lease lock: compare-and-delete release.
pub static LOCK_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/lock_release.lua")));

/// Lease lock: compare-and-extend (the watchdog).
pub static LOCK_RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/lock_renew.lua")));

/// Fair lock (Redisson's algorithm): try to acquire, queueing on the first try.
pub static FAIR_LOCK_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/fair_lock_acquire.lua")));

/// Fair lock: release by the owner.
pub static FAIR_LOCK_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/fair_lock_release.lua")));

/// Fair lock: a waiter gives up and leaves the queue.
pub static FAIR_LOCK_CANCEL: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/fair_lock_cancel.lua")));

/// Fair lock: extend the owner's lease.
pub static FAIR_LOCK_RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/fair_lock_renew.lua")));

/// Lock strategies: the section's writes, only while the lock is the
/// caller's (SADD, and INCR only when SADD added).
pub static LOCKED_ADMIT: LazyLock<Script> =
    LazyLock::new(|| with_room(include_str!("../lua/locked_admit.lua")));

/// async-queue: mark a user queued unless it already holds or awaits a slot.
pub static MARK_QUEUED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/mark_queued.lua")));

/// Reconciliation: counter := set size; returns the drift.
pub static FIX_COUNT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/fix_count.lua")));
