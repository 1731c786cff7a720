//! The request path's strategy and its bounds: `strategy`, the gate's
//! calls (`gate.*`), the async queue (`queue.*`), the locks (`lock.*`), and
//! the bounds between a take and its message.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The request-path strategy of the api (docs/STRATEGIES.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// Lua gate, produce, await the delivery report.
    #[default]
    Sync,
    /// A bounded in-process queue; background tasks run the `sync` path.
    AsyncQueue,
    /// A per-campaign lease lock around separate Redis commands.
    DistributedLock,
    /// A fair ticket lock (arrival order) around the same section.
    FairLock,
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 4] = [
        Self::Sync,
        Self::AsyncQueue,
        Self::DistributedLock,
        Self::FairLock,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::AsyncQueue => "async-queue",
            Self::DistributedLock => "distributed-lock",
            Self::FairLock => "fair-lock",
        }
    }
}

impl std::str::FromStr for StrategyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown strategy {s:?}; expected one of {}",
                    known.join(", ")
                )
            })
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest an api lets pass between the gate taking a slot and the
/// slot's message entering the producer's buffer. Past it (a process paused,
/// a starved runtime) the slot is given back and the reply is 503, so that
/// repair tools can bound how long a take stays unsettled; a message that
/// entered the buffer past it anyway (paused between the check and the
/// enqueue) counts as unconfirmed even once delivered (`pending`).
pub const PRODUCE_WITHIN: Duration = Duration::from_secs(2);

/// How long a request keeps trying to withdraw a take whose reply from
/// Redis never came, before it leaves the slot to reconciliation.
pub const WITHDRAW_WITHIN: Duration = Duration::from_secs(3);

/// The gate's calls (`gate.*`), in every strategy that takes a slot with
/// `lua/gate.lua` (`sync`, async-queue's consumers).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct GateSettings {
    /// The most takes of one campaign one gate call carries: while
    /// `calls_out` calls of an instance's campaign are out, the takes that
    /// arrive wait for one and go together in the next
    /// (`api::strategy::gate_batch`). A take alone goes at once. 1: every
    /// take in a call of its own; at most 512
    /// (`api::strategy::gate_batch::MOST_PER_CALL`).
    pub batch_size: usize,
    /// How many gate calls of one campaign an instance has out before the
    /// takes that arrive wait in its line for one to return (at least 1).
    /// Below that a take goes at once, in a call of its own. More serve
    /// more at light load and less under a burst (docs/PERFORMANCE.md,
    /// "The gate's batch"); a large value turns the batch off.
    pub calls_out: usize,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            batch_size: 64,
            calls_out: 1,
        }
    }
}

/// The `async-queue` strategy's queue.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct QueueSettings {
    /// Requests waiting at most.
    pub capacity: usize,
    /// How long a request waits for space in a full queue before it is
    /// answered 503 (0: at once). Back-pressure instead of a 503 storm.
    pub enqueue_wait_ms: u64,
    /// Background tasks taking requests off the queue.
    pub consumers: usize,
    /// The most requests one consumer takes off the queue at once and runs
    /// together: their gate calls share the Redis connection's pipeline and
    /// their messages one producer batch, so the drain keeps pace with the
    /// `sync` path (up to `consumers × batch_size` requests in flight).
    pub batch_size: usize,
    /// On shutdown, how long the queue may take to drain; what is left is
    /// recorded as rejected (`unavailable`).
    pub drain_timeout_ms: u64,
    /// TTL of the `queued` mark: a request lost with its process stops
    /// blocking its user after this.
    pub mark_ttl_secs: u64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            enqueue_wait_ms: 1_000,
            consumers: 64,
            batch_size: 64,
            drain_timeout_ms: 10_000,
            mark_ttl_secs: 60,
        }
    }
}

/// How the lock strategies use their campaign's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LockMode {
    /// One lock hold per request: the seed's design, kept for the
    /// comparison.
    Naive,
    /// One lock hold serves every request of this instance waiting for the
    /// campaign's lock at that moment (flat combining, as a database's group
    /// commit): the holder reads the meta once and sends its users' fenced
    /// writes together, in arrival order. The default.
    #[default]
    Combining,
}

impl LockMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Naive => "naive",
            Self::Combining => "combining",
        }
    }
}

/// The lock strategies' per-campaign lock.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LockSettings {
    /// `combining` (one hold per batch of this instance's waiting requests,
    /// the default) or `naive` (one hold per request, the seed's design).
    pub mode: LockMode,
    /// Lease; a watchdog renews it every third while the lock is held.
    pub lease_ms: u64,
    /// How long a request waits for the lock before answering 503. In
    /// `combining` mode, how long it waits to be taken into a batch; the
    /// batch then waits for the lock as long again, so a request waits
    /// about twice this at most, plus the section.
    pub wait_ms: u64,
    /// The most requests of one campaign in line for its lock; a request
    /// finding the line full is answered 503 at once rather than after
    /// `wait_ms`. `fair-lock`: across instances, the holder included;
    /// `combining` mode: this instance's line, the batch in hand included.
    pub max_waiters: u64,
}

impl Default for LockSettings {
    fn default() -> Self {
        Self {
            mode: LockMode::Combining,
            lease_ms: 3_000,
            wait_ms: 2_000,
            max_waiters: 1_000,
        }
    }
}
