//! What one run does: targets, load model, length, users.

use serde::{Deserialize, Serialize};

use crate::users::UserMode;

/// How load is offered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "model")]
pub enum LoadModel {
    /// nGrinder's model: `vusers` each send, wait for the reply, think, send
    /// again. Vusers start `ramp_initial` at once, then `ramp_step` every
    /// `ramp_interval_secs`.
    Closed {
        vusers: u32,
        ramp_initial: u32,
        ramp_step: u32,
        ramp_interval_secs: u64,
        think_ms: u64,
    },
    /// A target rate, whatever the replies do. Latency is measured from the
    /// intended send time (coordinated omission corrected); a send that finds
    /// no free connection at its time is *late* and goes out when one frees;
    /// one still waiting when the run stops is *unsent*, counted as an error
    /// with the time it had waited.
    Open { rate: u64, max_connections: u32 },
}

impl LoadModel {
    /// Vusers (closed) or connections (open) at full load.
    pub fn concurrency(&self) -> u32 {
        match self {
            Self::Closed { vusers, .. } => *vusers,
            Self::Open {
                max_connections, ..
            } => *max_connections,
        }
    }
}

/// How the targets are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spread {
    /// One URL: a load balancer spreads the load.
    Balancer,
    /// Several instance URLs, vusers spread round-robin over them, as a
    /// discovery client (the seed's Eureka + client-side balancing) would.
    ClientSide,
}

/// What each request calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Endpoint {
    /// `POST /api/v1/campaigns/{id}/issue` as a user.
    #[default]
    Issue,
    /// `GET /healthz`: the same server doing no work, the baseline that
    /// shows what the HTTP path alone costs.
    Trivial,
}

/// A waiting room in front of the run's campaign: each user joins it,
/// polls its place as `Retry-After` says, and issues once admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSpec {
    pub admit_per_second: u32,
    pub admission_ttl_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub label: String,
    pub targets: Vec<String>,
    #[serde(default)]
    pub endpoint: Endpoint,
    /// The issue endpoint behind a waiting room (closed model only).
    #[serde(default)]
    pub waiting_room: Option<RoomSpec>,
    pub model: LoadModel,
    /// Measured seconds after the warm-up; `None` with `requests`.
    pub duration_secs: Option<u64>,
    /// Stop after this many requests (warm-up included).
    pub requests: Option<u64>,
    pub warmup_secs: u64,
    pub users: UserMode,
    pub request_timeout_ms: u64,
    /// Stop when more than this share of requests fail (after 1,000).
    pub stop_error_ratio: f64,
    /// Stop when no test succeeds for this many seconds.
    pub stop_zero_tps_secs: u64,
    /// Runtime threads of the load client.
    pub threads: usize,
}

impl RunSpec {
    pub fn spread(&self) -> Spread {
        if self.targets.len() > 1 {
            Spread::ClientSide
        } else {
            Spread::Balancer
        }
    }
}
