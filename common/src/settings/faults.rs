//! Test-only fault hooks (`faults.*`).

use serde::{Deserialize, Serialize};

/// Test-only fault hooks. Honoured by debug builds only; release builds
/// compile the hooks out and ignore these settings.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct FaultSettings {
    /// Lock strategies: a request of this user, once it holds the lock and
    /// has read the count, stops as a paused process would (its lease is no
    /// longer renewed) for `pause_lock_holder_ms`.
    pub pause_lock_holder_user: Option<String>,
    pub pause_lock_holder_ms: u64,
    /// The process aborts right after the gate took this user's slot,
    /// before its message is produced (a crash between gate and produce).
    pub crash_after_gate_user: Option<String>,
    /// Right after the gate took this user's slot, the request stops for
    /// `pause_after_gate_ms` (a slow step between gate and produce, during
    /// which its client can give up).
    pub pause_after_gate_user: Option<String>,
    pub pause_after_gate_ms: u64,
    /// Right after this user's gate call is sent, the thread that would
    /// read its reply is kept busy for `busy_thread_ms` (a burst that
    /// starves it), while Redis answers at once.
    pub busy_thread_user: Option<String>,
    pub busy_thread_ms: u64,
    /// Lock strategies in `combining` mode: this user's request gives up
    /// its reply as soon as it joined the line (as a request whose task
    /// died), leaving its take to the server.
    pub drop_reply_user: Option<String>,
    /// Lock strategies in `combining` mode: the task serving the line
    /// panics when this user's request is in its batch.
    pub panic_in_lock_line_user: Option<String>,
}
