//! Test-only fault hooks (`APP_FAULTS__*`). Debug builds run them; release
//! builds compile them to nothing.

use common::ids::UserId;
use common::lock::LockGuard;
use common::settings::FaultSettings;

/// A lock holder that stops as a paused process would: it holds the lock
/// but no longer renews its lease, so the lease can run out under it.
#[allow(unused_variables)]
pub async fn pause_lock_holder(faults: &FaultSettings, guard: &LockGuard, user: &UserId) {
    #[cfg(debug_assertions)]
    if faults.pause_lock_holder_user.as_deref() == Some(user.as_str()) {
        tracing::warn!(user.id = %user, "fault: lock holder paused");
        guard.pause_renewals(true);
        tokio::time::sleep(std::time::Duration::from_millis(
            faults.pause_lock_holder_ms,
        ))
        .await;
        guard.pause_renewals(false);
    }
}

/// Between the gate and the produce: a crash (the user has a slot with no
/// message behind it, a leaked slot for reconciliation to find), or a pause.
#[allow(unused_variables)]
pub async fn after_gate(faults: &FaultSettings, user: &UserId) {
    #[cfg(debug_assertions)]
    {
        if faults.crash_after_gate_user.as_deref() == Some(user.as_str()) {
            tracing::error!(user.id = %user, "fault: crashing between gate and produce");
            std::process::abort();
        }
        if faults.pause_after_gate_user.as_deref() == Some(user.as_str()) {
            tracing::warn!(user.id = %user, "fault: paused between gate and produce");
            tokio::time::sleep(std::time::Duration::from_millis(faults.pause_after_gate_ms)).await;
        }
    }
}

/// The calling thread busy for a while (`std::thread::sleep`: nothing else
/// on it runs, the Redis connection it drives included), as a burst of
/// other requests on two cores would keep it.
#[allow(unused_variables)]
pub fn busy_thread(faults: &FaultSettings, user: &UserId) {
    #[cfg(debug_assertions)]
    if faults.busy_thread_user.as_deref() == Some(user.as_str()) {
        tracing::warn!(user.id = %user, "fault: thread kept busy after the gate call was sent");
        std::thread::sleep(std::time::Duration::from_millis(faults.busy_thread_ms));
    }
}

/// Whether this user's request gives up its reply at once (combining).
#[allow(unused_variables)]
pub fn drops_its_reply(faults: &FaultSettings, user: &UserId) -> bool {
    #[cfg(debug_assertions)]
    if faults.drop_reply_user.as_deref() == Some(user.as_str()) {
        tracing::warn!(user.id = %user, "fault: the request drops its reply");
        return true;
    }
    false
}

/// The task serving a lock line panics when this user is in its batch.
#[allow(unused_variables)]
pub fn panic_in_lock_line(faults: &FaultSettings, user: &UserId) {
    #[cfg(debug_assertions)]
    if faults.panic_in_lock_line_user.as_deref() == Some(user.as_str()) {
        panic!("fault: the lock line's task panics");
    }
}

/// Says at start-up that fault settings are ignored by this build.
pub fn warn_if_ignored(faults: &FaultSettings) {
    if cfg!(not(debug_assertions))
        && (faults.pause_lock_holder_user.is_some()
            || faults.crash_after_gate_user.is_some()
            || faults.pause_after_gate_user.is_some()
            || faults.busy_thread_user.is_some()
            || faults.drop_reply_user.is_some()
            || faults.panic_in_lock_line_user.is_some())
    {
        tracing::warn!("APP_FAULTS__* is set but this release build has no fault hooks");
    }
}
