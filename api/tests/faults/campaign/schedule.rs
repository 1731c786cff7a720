//! The plan of a campaign, drawn from its seed before anything runs: the
//! rounds (one strategy form each, two campaigns each: one plain, one
//! behind a waiting room), each round's stocks and room settings, its
//! admin close and its flash crowd (some rounds), and its faults — each
//! with a start, a duration and a target, alone or overlapping (at most
//! [`MOST_AT_ONCE`] at once, never two on one target).
//!
//! The plan is a pure function of the [`Config`]: the same seed, minutes,
//! forms and skipped kinds give the same plan, printed at the start
//! ([`Plan::render`]) so that a run can be replayed with `--seed`.

use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Every strategy form, in the order the rounds cycle through them.
pub const FORMS: [&str; 6] = [
    "sync",
    "async-queue",
    "distributed-lock",
    "distributed-lock+naive",
    "fair-lock",
    "fair-lock+naive",
];

/// The most faults active at one instant.
pub const MOST_AT_ONCE: usize = 3;

/// What a run is asked to do (`scripts/faults --campaign`'s options).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub seed: u64,
    pub minutes: f64,
    pub forms: Vec<String>,
    /// Fault kinds left out (`COUPON_CAMPAIGN_SKIP`).
    pub skip: Vec<FaultKind>,
    /// Client tasks per campaign.
    pub clients: usize,
    /// Redis's `appendfsync`.
    pub fsync: String,
}

/// Which of a round's two campaigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    Plain,
    Room,
}

impl Which {
    pub const BOTH: [Which; 2] = [Which::Plain, Which::Room];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Room => "room",
        }
    }
}

/// A fault, or an operation run beside the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// kill -9 of an api instance, restarted after the duration.
    ApiKill,
    /// SIGSTOP of an api instance longer than the lock lease, then SIGCONT.
    ApiPause,
    /// SIGTERM (a rolling restart: it must drain and exit 0), restarted
    /// after the duration.
    ApiTerm,
    WorkerKill,
    WorkerPause,
    /// SIGTERM (controlled shutdown), started again after the duration.
    BrokerStop,
    BrokerKill,
    BrokerPause,
    /// kill -9, restarted after the duration (the AOF reloaded).
    RedisKill,
    /// SIGSTOP longer than the command timeout (500 ms).
    RedisPause,
    /// SIGSTOP of the server and its backends.
    PostgresPause,
    /// Fast shutdown, started after the duration.
    PostgresStop,
    /// `issuer-worker reconcile --campaign C --repair` beside traffic.
    Reconcile,
    /// `issuer-worker rebuild --campaign C --force` beside traffic.
    Rebuild,
    /// About 1 MB of garbage produced onto the issue topic: it fits the
    /// broker's `message.max.bytes`, its dead letter (with the `dlq.*`
    /// headers) does not. Once per run, in the last round.
    Oversized,
}

impl FaultKind {
    pub const ALL: [FaultKind; 15] = [
        Self::ApiKill,
        Self::ApiPause,
        Self::ApiTerm,
        Self::WorkerKill,
        Self::WorkerPause,
        Self::BrokerStop,
        Self::BrokerKill,
        Self::BrokerPause,
        Self::RedisKill,
        Self::RedisPause,
        Self::PostgresPause,
        Self::PostgresStop,
        Self::Reconcile,
        Self::Rebuild,
        Self::Oversized,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ApiKill => "api-kill",
            Self::ApiPause => "api-pause",
            Self::ApiTerm => "api-term",
            Self::WorkerKill => "worker-kill",
            Self::WorkerPause => "worker-pause",
            Self::BrokerStop => "broker-stop",
            Self::BrokerKill => "broker-kill",
            Self::BrokerPause => "broker-pause",
            Self::RedisKill => "redis-kill",
            Self::RedisPause => "redis-pause",
            Self::PostgresPause => "postgres-pause",
            Self::PostgresStop => "postgres-stop",
            Self::Reconcile => "reconcile",
            Self::Rebuild => "rebuild",
            Self::Oversized => "oversized",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// How often it is drawn, relative to the others.
    fn weight(self) -> u32 {
        match self {
            Self::ApiKill | Self::ApiPause => 3,
            Self::BrokerStop | Self::BrokerKill | Self::PostgresStop => 1,
            Self::Rebuild | Self::Oversized => 1,
            Self::Reconcile => 3,
            _ => 2,
        }
    }

    /// The range of its duration (ms); (0, 0) for operations, which last
    /// as long as they run.
    fn durations(self) -> (u64, u64) {
        match self {
            Self::ApiKill => (500, 3_000),
            // Longer than the lock lease (3 s).
            Self::ApiPause => (3_300, 6_000),
            Self::ApiTerm => (500, 2_500),
            Self::WorkerKill => (500, 4_000),
            Self::WorkerPause => (1_000, 7_000),
            Self::BrokerStop | Self::BrokerKill => (1_000, 5_000),
            Self::BrokerPause => (1_000, 6_000),
            Self::RedisKill => (200, 2_000),
            // Longer than the command timeout (500 ms).
            Self::RedisPause => (600, 3_000),
            Self::PostgresPause => (1_000, 6_000),
            Self::PostgresStop => (1_000, 5_000),
            Self::Reconcile | Self::Rebuild | Self::Oversized => (0, 0),
        }
    }

    /// What it takes beyond its duration before its target is whole again
    /// (a restart, a drain; an operation's own run), for the overlap count.
    fn tail_ms(self) -> u64 {
        match self {
            Self::ApiKill => 2_000,
            Self::ApiTerm => 3_000,
            Self::WorkerKill | Self::PostgresStop => 1_000,
            Self::BrokerStop | Self::BrokerKill => 8_000,
            Self::RedisKill => 500,
            Self::Reconcile | Self::Rebuild => 10_000,
            Self::Oversized => 200,
            _ => 0,
        }
    }

    /// Whether it acts on one of the round's campaigns.
    pub fn on_campaign(self) -> bool {
        matches!(self, Self::Reconcile | Self::Rebuild)
    }
}

/// What a fault acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Api(usize),
    Worker,
    Broker,
    Redis,
    Postgres,
    /// One of the round's campaigns (the tools).
    Campaign(Which),
    /// The issue topic.
    Topic,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Api(i) => write!(f, "api{i}"),
            Self::Worker => f.write_str("worker"),
            Self::Broker => f.write_str("broker"),
            Self::Redis => f.write_str("redis"),
            Self::Postgres => f.write_str("postgres"),
            Self::Campaign(w) => write!(f, "campaign:{}", w.as_str()),
            Self::Topic => f.write_str("topic"),
        }
    }
}

impl Target {
    /// Two faults on one target never overlap; the tools of both campaigns
    /// share one target (the campaign's admin lock is theirs alone, and a
    /// second tool would only wait for it).
    fn slot(self) -> Target {
        match self {
            Self::Campaign(_) => Self::Campaign(Which::Plain),
            t => t,
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFault {
    /// Its number in the round.
    pub index: usize,
    pub kind: FaultKind,
    pub target: Target,
    /// When it starts, from the start of the round's traffic.
    pub at_ms: u64,
    /// How long it lasts (0 for operations).
    pub for_ms: u64,
}

impl PlannedFault {
    /// Busy from its start to its end plus its tail.
    fn busy(&self) -> (u64, u64) {
        (self.at_ms, self.at_ms + self.for_ms + self.kind.tail_ms())
    }
}

/// A round's campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignPlan {
    pub which: Which,
    pub stock: u64,
    /// `(admit_per_second, admission_ttl_secs)` for the room campaign.
    pub room: Option<(u32, u32)>,
}

/// One round: a form, its campaigns, its traffic window and what happens
/// in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundPlan {
    pub index: usize,
    pub form: String,
    pub window_ms: u64,
    pub campaigns: [CampaignPlan; 2],
    /// An admin close of one campaign at an instant of the window.
    pub close: Option<(Which, u64)>,
    /// A flash crowd on the plain campaign.
    #[serde(default)]
    pub burst: Option<Burst>,
    pub faults: Vec<PlannedFault>,
}

/// A flash crowd: `users` new users issue at once on the plain campaign,
/// most of them through one instance (a skewed balancer), some hanging up
/// after 50 ms to 2 s. Half the time it comes just before an api fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Burst {
    pub at_ms: u64,
    pub users: u64,
    /// The instance that gets three quarters of it.
    pub instance: usize,
    /// The share of its users who hang up early, in percent.
    pub hang_up_percent: u32,
}

impl RoundPlan {
    pub fn campaign(&self, which: Which) -> &CampaignPlan {
        &self.campaigns[which as usize]
    }
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub seed: u64,
    pub rounds: Vec<RoundPlan>,
}

/// An RNG for one purpose of one run: the seed mixed with a tag (FNV-1a,
/// then SplitMix64), stable across builds and platforms.
pub fn rng_for(seed: u64, tag: &str) -> StdRng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tag.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = seed ^ h;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// What a round costs besides its traffic window (restart of the api
/// instances, heal, liveness, settle, reconcile, the top-up): the window is
/// what is left of the round's share of the minutes.
const ROUND_OVERHEAD_MS: u64 = 25_000;
/// The shortest window, whatever the minutes.
const SHORTEST_WINDOW_MS: u64 = 10_000;
/// The longest round, so that a long run goes through every form often.
const LONGEST_ROUND_MS: u64 = 120_000;

impl Plan {
    pub fn draw(config: &Config) -> Plan {
        let total_ms = (config.minutes.max(0.1) * 60_000.0) as u64;
        let forms = config.forms.len().max(1) as u64;
        let per_form = total_ms / forms;
        let round_ms = per_form.clamp(SHORTEST_WINDOW_MS + ROUND_OVERHEAD_MS, LONGEST_ROUND_MS);
        let rounds = (total_ms / round_ms).max(forms) as usize;
        let window_ms = round_ms
            .saturating_sub(ROUND_OVERHEAD_MS)
            .max(SHORTEST_WINDOW_MS);
        let count = rounds;
        let rounds = (0..count)
            .map(|index| {
                let form = config.forms[index % config.forms.len()].clone();
                let mut rng = rng_for(config.seed, &format!("round-{index}"));
                // The oversized message only in the last round: a worker
                // that cannot get past it stalls for good, and every later
                // round would show only that.
                let oversized = index + 1 == count;
                draw_round(&mut rng, config, index, form, window_ms, oversized)
            })
            .collect();
        Plan {
            seed: config.seed,
            rounds,
        }
    }

    /// The plan as printed at the start of a run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.rounds {
            let plain = r.campaign(Which::Plain);
            let room = r.campaign(Which::Room);
            let (rate, ttl) = room.room.unwrap_or_default();
            let _ = writeln!(
                out,
                "round {} [{}] window {:.1} s; plain stock {}; room stock {} ({} admitted/s, {} s to issue){}{}",
                r.index,
                r.form,
                r.window_ms as f64 / 1000.0,
                plain.stock,
                room.stock,
                rate,
                ttl,
                r.close
                    .map(|(w, at)| format!("; close {} at {:.1} s", w.as_str(), at as f64 / 1000.0))
                    .unwrap_or_default(),
                r.burst
                    .map(|b| format!(
                        "; a burst of {} users at {:.1} s (three quarters via api{}, {}% hang up)",
                        b.users,
                        b.at_ms as f64 / 1000.0,
                        b.instance,
                        b.hang_up_percent
                    ))
                    .unwrap_or_default()
            );
            for f in &r.faults {
                let _ = writeln!(
                    out,
                    "  #{:<2} {:>6.1} s  {:<15} {:<14} {}",
                    f.index,
                    f.at_ms as f64 / 1000.0,
                    f.kind.name(),
                    f.target.to_string(),
                    if f.for_ms > 0 {
                        format!("for {:.1} s", f.for_ms as f64 / 1000.0)
                    } else {
                        "(runs to its end)".to_owned()
                    }
                );
            }
        }
        out
    }
}

fn draw_round(
    rng: &mut StdRng,
    config: &Config,
    index: usize,
    form: String,
    window_ms: u64,
    oversized_allowed: bool,
) -> RoundPlan {
    let window_s = window_ms as f64 / 1000.0;
    // About four new users a second per client task.
    let demand = (config.clients as f64 * 4.0 * window_s).max(20.0);
    // Mostly sold out within the window (the faults then meet the sold-out
    // paths too), and a top-up that stays short.
    let plain_stock = (demand * rng.random_range(0.3..0.9)).round().max(10.0) as u64;
    // Slow enough that the room's clients (twice as many as the plain
    // campaign's) make a line.
    let rate: u32 = rng.random_range(3..=12);
    let ttl: u32 = rng.random_range(2..=6);
    // Behind the room the stock is bounded by what the line lets through
    // (and by what the top-up can fill at the rate afterwards).
    let room_stock = (f64::from(rate) * window_s.min(30.0) * rng.random_range(0.3..0.9))
        .round()
        .max(10.0) as u64;
    let close = rng.random_bool(0.35).then(|| {
        let which = if rng.random_bool(0.5) {
            Which::Plain
        } else {
            Which::Room
        };
        let at = rng.random_range(window_ms * 3 / 10..window_ms * 85 / 100);
        (which, at)
    });
    let kinds: Vec<FaultKind> = FaultKind::ALL
        .into_iter()
        .filter(|k| !config.skip.contains(k))
        .collect();
    let mut faults: Vec<PlannedFault> = Vec::new();
    let mut oversized_used = !oversized_allowed;
    let mut t = rng.random_range(300..1_500);
    while !kinds.is_empty() && t + 500 < window_ms {
        for _attempt in 0..8 {
            let Some(fault) = draw_fault(rng, &kinds, t, window_ms, oversized_used, faults.len())
            else {
                continue;
            };
            if fits(&faults, &fault) {
                oversized_used |= fault.kind == FaultKind::Oversized;
                faults.push(fault);
                break;
            }
        }
        t += rng.random_range(400..2_500);
    }
    let burst = rng.random_bool(0.6).then(|| {
        let api_faults: Vec<&PlannedFault> = faults
            .iter()
            .filter(|f| matches!(f.target, Target::Api(_)))
            .collect();
        let before_fault = !api_faults.is_empty() && rng.random_bool(0.5);
        let at_ms = if before_fault {
            let f = api_faults[rng.random_range(0..api_faults.len())];
            f.at_ms.saturating_sub(rng.random_range(0..1_000))
        } else {
            rng.random_range(window_ms / 10..window_ms * 8 / 10)
        };
        Burst {
            at_ms,
            users: rng.random_range(200..=1_500),
            instance: rng.random_range(0..2),
            hang_up_percent: rng.random_range(10..=50),
        }
    });
    // The crowd wants more than the stock, but not by much more.
    let plain_stock =
        plain_stock + burst.map_or(0, |b| (b.users as f64 * rng.random_range(0.2..0.8)) as u64);
    RoundPlan {
        index,
        form,
        window_ms,
        campaigns: [
            CampaignPlan {
                which: Which::Plain,
                stock: plain_stock,
                room: None,
            },
            CampaignPlan {
                which: Which::Room,
                stock: room_stock,
                room: Some((rate, ttl)),
            },
        ],
        close,
        burst,
        faults,
    }
}

fn draw_fault(
    rng: &mut StdRng,
    kinds: &[FaultKind],
    at_ms: u64,
    window_ms: u64,
    oversized_used: bool,
    index: usize,
) -> Option<PlannedFault> {
    let total: u32 = kinds.iter().map(|k| k.weight()).sum();
    let mut pick = rng.random_range(0..total);
    let kind = *kinds.iter().find(|k| {
        if pick < k.weight() {
            true
        } else {
            pick -= k.weight();
            false
        }
    })?;
    let target = match kind {
        FaultKind::ApiKill | FaultKind::ApiPause | FaultKind::ApiTerm => {
            Target::Api(rng.random_range(0..2))
        }
        FaultKind::WorkerKill | FaultKind::WorkerPause => Target::Worker,
        FaultKind::BrokerStop | FaultKind::BrokerKill | FaultKind::BrokerPause => Target::Broker,
        FaultKind::RedisKill | FaultKind::RedisPause => Target::Redis,
        FaultKind::PostgresPause | FaultKind::PostgresStop => Target::Postgres,
        FaultKind::Reconcile | FaultKind::Rebuild => Target::Campaign(if rng.random_bool(0.5) {
            Which::Plain
        } else {
            Which::Room
        }),
        FaultKind::Oversized => Target::Topic,
    };
    let (lo, hi) = kind.durations();
    let for_ms = if hi == 0 {
        0
    } else {
        rng.random_range(lo..=hi)
    };
    // One oversized message per run (see `Plan::draw`).
    if kind == FaultKind::Oversized && oversized_used {
        return None;
    }
    // A fault ends inside the window; a tool (whose first ~9 s are a
    // sleep) starts 2 s before its end at the latest, and the traffic goes
    // on until it is over.
    let fits_window = if kind.on_campaign() {
        at_ms + 2_000 <= window_ms
    } else {
        at_ms + for_ms + 300 <= window_ms
    };
    fits_window.then_some(PlannedFault {
        index,
        kind,
        target,
        at_ms,
        for_ms,
    })
}

/// Whether `new` keeps the rules: never two on one target at once, never
/// more than [`MOST_AT_ONCE`] at once.
fn fits(faults: &[PlannedFault], new: &PlannedFault) -> bool {
    let (a, b) = new.busy();
    let overlapping: Vec<&PlannedFault> = faults
        .iter()
        .filter(|f| {
            let (c, d) = f.busy();
            c < b && a < d
        })
        .collect();
    if overlapping
        .iter()
        .any(|f| f.target.slot() == new.target.slot())
    {
        return false;
    }
    // The most at once within [a, b): check at every start inside it.
    let mut starts: Vec<u64> = overlapping.iter().map(|f| f.busy().0.max(a)).collect();
    starts.push(a);
    starts.into_iter().all(|t| {
        overlapping
            .iter()
            .filter(|f| {
                let (c, d) = f.busy();
                c <= t && t < d
            })
            .count()
            < MOST_AT_ONCE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64, minutes: f64) -> Config {
        Config {
            seed,
            minutes,
            forms: FORMS.iter().map(|s| (*s).to_owned()).collect(),
            skip: Vec::new(),
            clients: 8,
            fsync: "always".into(),
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_plan_and_another_seed_another() {
        let a = Plan::draw(&config(42, 3.0));
        assert_eq!(a, Plan::draw(&config(42, 3.0)));
        assert_ne!(a, Plan::draw(&config(43, 3.0)));
    }

    #[test]
    fn every_form_gets_a_round_and_a_long_run_cycles_through_them() {
        let short = Plan::draw(&config(1, 3.0));
        assert_eq!(short.rounds.len(), 6);
        let forms: Vec<&str> = short.rounds.iter().map(|r| r.form.as_str()).collect();
        assert_eq!(forms, FORMS.to_vec());
        let long = Plan::draw(&config(1, 60.0));
        assert!(long.rounds.len() >= 24, "{}", long.rounds.len());
        assert!(long.rounds.iter().all(|r| r.window_ms >= 60_000));
    }

    #[test]
    fn faults_keep_to_their_window_their_targets_and_the_most_at_once() {
        for seed in 0..200 {
            let plan = Plan::draw(&config(seed, 3.0));
            let mut oversized = 0;
            for r in &plan.rounds {
                assert!(!r.faults.is_empty(), "seed {seed} round {}", r.index);
                for (i, f) in r.faults.iter().enumerate() {
                    assert_eq!(f.index, i);
                    if f.kind == FaultKind::Oversized {
                        assert_eq!(r.index + 1, plan.rounds.len(), "seed {seed}");
                    }
                    if !f.kind.on_campaign() {
                        assert!(f.at_ms + f.for_ms <= r.window_ms, "{f:?}");
                    }
                    let (lo, hi) = f.kind.durations();
                    assert!((lo..=hi).contains(&f.for_ms), "{f:?}");
                    let others: Vec<PlannedFault> =
                        r.faults.iter().filter(|g| g != &f).copied().collect();
                    assert!(fits(&others, f), "seed {seed}: {f:?} among {others:?}");
                    oversized += usize::from(f.kind == FaultKind::Oversized);
                }
            }
            assert!(oversized <= 1, "seed {seed}");
        }
    }

    #[test]
    fn faults_overlap_sometimes_and_every_kind_is_drawn() {
        let mut overlapping = 0;
        let mut kinds = std::collections::HashSet::new();
        for seed in 0..50 {
            for r in Plan::draw(&config(seed, 3.0)).rounds {
                for (i, f) in r.faults.iter().enumerate() {
                    kinds.insert(f.kind);
                    let (a, b) = f.busy();
                    overlapping += r.faults[i + 1..]
                        .iter()
                        .filter(|g| g.busy().0 < b && a < g.busy().1)
                        .count();
                }
            }
        }
        assert!(overlapping > 50, "{overlapping}");
        assert_eq!(kinds.len(), FaultKind::ALL.len(), "{kinds:?}");
    }

    #[test]
    fn most_rounds_have_a_burst_and_half_of_them_just_before_an_api_fault() {
        let (mut rounds, mut bursts, mut before) = (0, 0, 0);
        for seed in 0..100 {
            for r in Plan::draw(&config(seed, 3.0)).rounds {
                rounds += 1;
                let Some(b) = r.burst else { continue };
                bursts += 1;
                assert!((200..=1_500).contains(&b.users));
                before += usize::from(r.faults.iter().any(|f| {
                    matches!(f.target, Target::Api(_))
                        && f.at_ms >= b.at_ms
                        && f.at_ms < b.at_ms + 1_000
                }));
            }
        }
        assert!(bursts * 2 > rounds, "{bursts} of {rounds}");
        assert!(before * 4 > bursts, "{before} of {bursts}");
    }

    #[test]
    fn skipped_kinds_are_never_drawn() {
        let mut c = config(7, 3.0);
        c.skip = vec![FaultKind::Oversized, FaultKind::BrokerKill];
        for r in Plan::draw(&c).rounds {
            assert!(r.faults.iter().all(|f| !c.skip.contains(&f.kind)));
        }
    }

    #[test]
    fn two_faults_on_one_target_or_four_at_once_do_not_fit() {
        let f = |index, kind, target, at_ms, for_ms| PlannedFault {
            index,
            kind,
            target,
            at_ms,
            for_ms,
        };
        let placed = vec![
            f(0, FaultKind::RedisPause, Target::Redis, 1_000, 2_000),
            f(1, FaultKind::WorkerPause, Target::Worker, 1_500, 3_000),
            f(2, FaultKind::ApiPause, Target::Api(0), 2_000, 4_000),
        ];
        assert!(!fits(
            &placed,
            &f(3, FaultKind::RedisKill, Target::Redis, 2_500, 500)
        ));
        assert!(!fits(
            &placed,
            &f(3, FaultKind::BrokerPause, Target::Broker, 2_500, 500)
        ));
        // After the first ended, a third at once is fine.
        assert!(fits(
            &placed,
            &f(3, FaultKind::BrokerPause, Target::Broker, 3_100, 500)
        ));
        // The tools of both campaigns share one target.
        let tool = vec![f(
            0,
            FaultKind::Reconcile,
            Target::Campaign(Which::Plain),
            0,
            0,
        )];
        assert!(!fits(
            &tool,
            &f(
                1,
                FaultKind::Rebuild,
                Target::Campaign(Which::Room),
                5_000,
                0
            )
        ));
    }
}
