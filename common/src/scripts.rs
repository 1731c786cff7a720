//! The Lua scripts, loaded from `common/lua/*.lua` (each file starts with a
//! KEYS/ARGV/Returns header). `redis::Script` runs them by SHA and falls back
//! to sending the body when the server does not know it yet.
//!
//! Procedures shared by several scripts live in library files put in front
//! of the scripts that call them: `room.lua` (the waiting room), `slots.lua`
//! (the writes of a slot taken), `fence.lua` (a campaign's state counts only
//! on the server it was loaded on), `admin_fence.lua` (a repair writes only while it
//! holds the campaign's admin lock), `meta.lua` (writing a campaign's meta),
//! `fair_lock.lua` (the ticket lock's line).

use std::sync::LazyLock;

use redis::Script;

/// The waiting room's procedures.
const ROOM: &str = include_str!("../lua/room.lua");
/// The writes of a slot taken.
const SLOTS: &str = include_str!("../lua/slots.lua");
/// The fence: the gate state's epoch against the server's run_id.
const FENCE: &str = include_str!("../lua/fence.lua");
/// The admin lock's fence: a repair writes only while it holds the lock.
const ADMIN_FENCE: &str = include_str!("../lua/admin_fence.lua");
/// Writing a campaign's meta.
const META: &str = include_str!("../lua/meta.lua");
/// The fair lock's line: stepping past gone waiters, serving the next.
const FAIR_LOCK: &str = include_str!("../lua/fair_lock.lua");

/// A script with the libraries it calls in front of it.
fn with(libraries: &[&str], body: &str) -> Script {
    let mut source = libraries.join("\n");
    source.push('\n');
    source.push_str(body);
    Script::new(&source)
}

/// The gate: take a slot for a user (dedupe, cap stock and, with a waiting
/// room, check the user is admitted) in one atomic step.
pub static GATE: LazyLock<Script> =
    LazyLock::new(|| with(&[ROOM, SLOTS, FENCE], include_str!("../lua/gate.lua")));

/// The waiting room: join it (`join`) or read one's place (`look`).
pub static ROOM_JOIN: LazyLock<Script> =
    LazyLock::new(|| with(&[ROOM, FENCE], include_str!("../lua/room_join.lua")));

/// A dead letter's re-drive: the slot its message names, held or taken
/// now within the stock (`issuer-worker dlq redrive`).
pub static REDRIVE_TAKE: LazyLock<Script> = LazyLock::new(|| {
    with(
        &[SLOTS, FENCE, ADMIN_FENCE],
        include_str!("../lua/redrive_take.lua"),
    )
});

/// Compensation: `if SREM == 1 then DECR`.
pub static GIVE_BACK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/give_back.lua")));

/// Compensation by a repair: give back the slot it saw, not one taken since.
pub static GIVE_BACK_IF: LazyLock<Script> =
    LazyLock::new(|| with(&[ADMIN_FENCE], include_str!("../lua/give_back_if.lua")));

/// Reconciliation: phantoms' slots restored, under the admin lock.
pub static RESTORE: LazyLock<Script> =
    LazyLock::new(|| with(&[ADMIN_FENCE], include_str!("../lua/restore.lua")));

/// Record a request's state for `/coupons/me`, unless a newer slot is there.
pub static RECORD_STATUS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/record_status.lua")));

/// Withdraw a take whose reply was lost: give its slot back, or void it so
/// that it never takes one.
pub static WITHDRAW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/withdraw.lua")));

/// `Idempotency-Key`: claim a key, or read its record.
pub static IDEMPOTENCY_CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/idempotency_claim.lua")));

/// `Idempotency-Key`: keep the reply of the claiming request, or free the key.
pub static IDEMPOTENCY_FINISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/idempotency_finish.lua")));

/// Load a campaign's meta (with the epoch of this server) and zero counter.
pub static LOAD_META: LazyLock<Script> =
    LazyLock::new(|| with(&[FENCE, META], include_str!("../lua/load_meta.lua")));

/// A rebuild's last step: its staged users, the count and the meta, at
/// once, if it is still the rebuild the campaign waits for.
pub static REBUILD_INSTALL: LazyLock<Script> =
    LazyLock::new(|| with(&[FENCE, META], include_str!("../lua/rebuild_install.lua")));

/// Where a campaign's gate state stands against the fence.
pub static CAMPAIGN_EPOCH: LazyLock<Script> =
    LazyLock::new(|| with(&[FENCE], include_str!("../lua/campaign_epoch.lua")));

/// Fence a campaign before a rebuild: its epoch names no server.
pub static FENCE_CAMPAIGN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/fence_campaign.lua")));

/// The gate keeper's hint: add a fenced campaign, scored with Redis's time.
pub static FENCED_HINT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/fenced_hint.lua")));

/// The gate keeper's hint, read with Redis's time.
pub static FENCED_HINTS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/fenced_hints.lua")));

/// The gate keeper's hint: take out campaigns not added since a time.
pub static FENCED_HINTS_CLEAR: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/fenced_hints_clear.lua")));

/// Close a campaign's gate if its meta exists.
pub static CLOSE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/close.lua")));

/// Archive a closed campaign's users and slots, its close marked first,
/// fenced on the admin lock.
pub static ARCHIVE: LazyLock<Script> =
    LazyLock::new(|| with(&[ADMIN_FENCE], include_str!("../lua/archive.lua")));

/// Lease lock: compare-and-delete release.
pub static LOCK_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/lock_release.lua")));

/// Lease lock: compare-and-extend (the watchdog).
pub static LOCK_RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/lock_renew.lua")));

/// Fair lock (a ticket lock): try to acquire, taking a ticket on the first try.
pub static FAIR_LOCK_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| with(&[FAIR_LOCK], include_str!("../lua/fair_lock_acquire.lua")));

/// Fair lock: release by the owner.
pub static FAIR_LOCK_RELEASE: LazyLock<Script> =
    LazyLock::new(|| with(&[FAIR_LOCK], include_str!("../lua/fair_lock_release.lua")));

/// Fair lock: a waiter gives up and leaves the line.
pub static FAIR_LOCK_CANCEL: LazyLock<Script> =
    LazyLock::new(|| with(&[FAIR_LOCK], include_str!("../lua/fair_lock_cancel.lua")));

/// Fair lock: extend the owner's lease.
pub static FAIR_LOCK_RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/fair_lock_renew.lua")));

/// Lock strategies: the section's write, only while the lock is the
/// caller's.
pub static LOCKED_TAKE: LazyLock<Script> = LazyLock::new(|| {
    with(
        &[ROOM, SLOTS, FENCE],
        include_str!("../lua/locked_take.lua"),
    )
});

/// async-queue: mark a user queued unless it already has or awaits a slot.
pub static MARK_QUEUED: LazyLock<Script> =
    LazyLock::new(|| with(&[FENCE], include_str!("../lua/mark_queued.lua")));

/// Reconciliation: counter := set size; returns the drift.
pub static FIX_COUNT: LazyLock<Script> =
    LazyLock::new(|| with(&[ADMIN_FENCE], include_str!("../lua/fix_count.lua")));
