//! The campaign driver: one cell (Redis with its AOF, PostgreSQL, Kafka, two
//! api instances, one worker) for every round; each round rolls the api
//! instances to its form, creates its two campaigns, drives the traffic
//! while the faults run at their times, then heals everything, probes
//! liveness, settles, reconciles, reads every deferred user's final state,
//! tops the campaigns up to their stock, and records what it found. At the
//! end the history is written, judged and reported.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::check::{self, Violation};
use super::client::Api;
use super::evidence;
use super::history::{self, CampaignEvidence, Kind, Phases, Recorder, RoundEvidence};
use super::inject::{Injector, ready};
use super::report;
use super::schedule::{Config, FORMS, Plan, RoundPlan, Which};
use super::traffic::{self, Ctx};
use crate::cell::{ADMIN_TOKEN, Cell, CellOptions};
use crate::support::strategy_env;

/// What a run leaves.
#[derive(Debug)]
pub struct Outcome {
    pub violations: Vec<Violation>,
    pub dir: PathBuf,
}

/// Where a run's files go: `target/faults/campaign-<seed>/`.
pub fn out_dir(seed: u64) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/faults")
        .join(format!("campaign-{seed}"))
}

/// The api's settings for a form (`distributed-lock+naive`: the lock mode
/// after the `+`).
pub fn form_env(form: &str) -> Vec<(String, String)> {
    let known = FORMS
        .iter()
        .find(|f| **f == form)
        .unwrap_or_else(|| panic!("unknown form {form}; the forms are {FORMS:?}"));
    strategy_env(known, &[])
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

pub async fn run(config: Config) -> Outcome {
    let started = Instant::now();
    let plan = Plan::draw(&config);
    println!(
        "CAMPAIGN seed {} ({} min, forms {}, Redis appendfsync {})",
        config.seed,
        config.minutes,
        config.forms.join(","),
        config.fsync
    );
    print!("{}", plan.render());
    let dir = out_dir(config.seed);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the campaign's directory");
    std::fs::write(dir.join("schedule.txt"), plan.render()).expect("schedule.txt");
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap_or_default(),
    )
    .expect("config.json");

    let first = form_env(&plan.rounds[0].form);
    let cell = Arc::new(
        Cell::start_with(CellOptions {
            apis: 2,
            workers: 1,
            extra: &refs(&first),
            redis_fsync: Some(&config.fsync),
            logs: Some(dir.join("logs")),
        })
        .await,
    );
    cell.wait_assigned(0).await;
    let rec = Recorder::new(config.seed);
    let api = Api::new(
        cell.targets(),
        cell.minter.clone(),
        ADMIN_TOKEN,
        rec.clone(),
    );
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(evidence::sample_until(
        cell.clone(),
        rec.clone(),
        sampling.clone(),
    ));
    println!("cell ready after {:.0} s", started.elapsed().as_secs_f64());

    for round in &plan.rounds {
        let evidence = run_round(&cell, &rec, &api, &config, round).await;
        println!(
            "round {} [{}] done at {:.0} s: {}",
            round.index,
            round.form,
            started.elapsed().as_secs_f64(),
            evidence
                .campaigns
                .iter()
                .map(|c| format!(
                    "{} {} rows of {}",
                    c.which.as_str(),
                    c.after_topup.as_ref().unwrap_or(&c.after_repair).rows.len(),
                    c.stock
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        rec.round(evidence);
    }
    sampling.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let letters = {
        let cell = cell.clone();
        tokio::spawn(async move { evidence::letters(&cell).await })
            .await
            .unwrap_or_default()
    };
    rec.letters(letters);

    let history = rec.snapshot();
    history::write(&dir, &history).expect("the history's files");
    let violations = check::judge(&history);
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(
        dir.join("report.md"),
        report::markdown(&config, &plan, &history, &violations, seconds),
    )
    .expect("report.md");
    std::fs::write(dir.join("violations.jsonl"), report::jsonl(&violations))
        .expect("violations.jsonl");
    print!(
        "{}",
        report::summary(
            &config,
            &history,
            &violations,
            &dir.join("report.md").display().to_string()
        )
    );
    println!("campaign took {seconds:.0} s");
    Outcome { violations, dir }
}

/// Stops both api instances with SIGTERM (they must drain and exit 0) and
/// starts them with `env`; each running one's exit code (`None`: killed
/// by a signal).
async fn roll_apis(cell: &Arc<Cell>, env: &[(String, String)]) -> Vec<(usize, Option<i32>)> {
    let stops: Vec<_> = (0..cell.api_ports.len())
        .map(|i| {
            let cell = cell.clone();
            tokio::task::spawn_blocking(move || {
                cell.stop_api_if_running(i, "-TERM").map(|s| (i, s.code()))
            })
        })
        .collect();
    let mut rolled = Vec::new();
    for s in stops {
        if let Ok(Some(r)) = s.await {
            rolled.push(r);
        }
    }
    for i in 0..cell.api_ports.len() {
        cell.spawn_api(i, &refs(env));
    }
    for port in &cell.ops_ports {
        if let Err(e) = ready(*port, "/readyz", Duration::from_secs(60)).await {
            println!("api on {port} not ready after the roll: {e}");
        }
    }
    rolled
}

async fn run_round(
    cell: &Arc<Cell>,
    rec: &Recorder,
    api: &Api,
    config: &Config,
    r: &RoundPlan,
) -> RoundEvidence {
    let env = form_env(&r.form);
    let rolled = if r.index > 0 {
        roll_apis(cell, &env).await
    } else {
        Vec::new()
    };
    let mut phases = Phases {
        apis_ready: rec.now(),
        ..Phases::default()
    };
    let mut ids: Vec<String> = Vec::new();
    for which in Which::BOTH {
        let c = r.campaign(which);
        let name = format!("campaign-{}-r{}-{}", config.seed, r.index, which.as_str());
        let id = evidence::create_campaign(cell, &name, c.stock, c.room)
            .await
            .unwrap_or_else(|e| panic!("round {}: creating {name}: {e}", r.index));
        ids.push(id);
    }
    let campaigns = [ids[0].clone(), ids[1].clone()];
    let injector = Injector {
        cell: cell.clone(),
        rec: rec.clone(),
        round: r.index,
        api_env: env.clone(),
        campaigns: campaigns.clone(),
        busy: Arc::default(),
    };

    // The window: traffic, the close, the faults.
    let stop = Arc::new(AtomicBool::new(false));
    phases.traffic_start = rec.now();
    let t0 = tokio::time::Instant::now();
    let mut clients = Vec::new();
    for which in Which::BOTH {
        let ctx = Arc::new(Ctx {
            api: api.clone(),
            seed: config.seed,
            round: r.index,
            which,
            campaign: campaigns[which as usize].clone(),
            room: r.campaign(which).room,
            stop: stop.clone(),
        });
        // A room's client spends most of its time in line with one user:
        // twice as many of them.
        let n = match which {
            Which::Plain => config.clients,
            Which::Room => config.clients * 2,
        };
        for i in 0..n {
            clients.push(tokio::spawn(traffic::client(ctx.clone(), i)));
        }
    }
    let burst = r.burst.map(|b| {
        let ctx = Arc::new(Ctx {
            api: api.clone(),
            seed: config.seed,
            round: r.index,
            which: Which::Plain,
            campaign: campaigns[0].clone(),
            room: None,
            stop: stop.clone(),
        });
        tokio::spawn(async move {
            tokio::time::sleep_until(t0 + Duration::from_millis(b.at_ms)).await;
            traffic::burst(ctx, b).await;
        })
    });
    let close = r.close.map(|(which, at)| {
        let (api, id, round) = (api.clone(), campaigns[which as usize].clone(), r.index);
        tokio::spawn(async move {
            tokio::time::sleep_until(t0 + Duration::from_millis(at)).await;
            traffic::close(&api, round, &id).await
        })
    });
    let faults: Vec<_> = r
        .faults
        .iter()
        .map(|f| {
            let (injector, f) = (injector.clone(), *f);
            tokio::spawn(async move {
                tokio::time::sleep_until(t0 + Duration::from_millis(f.at_ms)).await;
                injector.run(f).await
            })
        })
        .collect();
    tokio::time::sleep_until(t0 + Duration::from_millis(r.window_ms)).await;
    // The traffic goes on while a fault still runs (a tool started late in
    // the window, a broker still restarting), for at most 30 s more.
    let mut faults = faults;
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(f) = faults.first_mut() {
            let _ = f.await;
            faults.remove(0);
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        // A request in flight may wait for its reply up to its timeout (45 s).
        if tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .is_err()
        {
            println!(
                "round {}: a client task did not end within 60 s of the window",
                r.index
            );
        }
    }
    phases.traffic_end = rec.now();
    if let Some(close) = close {
        let _ = close.await;
    }
    if let Some(burst) = burst {
        let _ = burst.await;
    }
    for f in faults {
        let _ = f.await;
    }
    phases.faults_end = rec.now();

    // Heal, liveness, settle, reconcile.
    let not_ready = injector.heal().await;
    injector.rebuild_missing().await;
    phases.healed = rec.now();
    phases.probe_start = rec.now();
    tokio::join!(
        traffic::probe(api, r.index, Which::Plain, &campaigns[0]),
        traffic::probe(api, r.index, Which::Room, &campaigns[1]),
    );
    let settle = evidence::settle(cell, rec, Duration::from_secs(30)).await;
    phases.settled = rec.now();
    // A worker that did not drain will not catch up for reconcile either:
    // its patience is then short (the round's findings say why).
    let patience = if settle.lag_zero { "30" } else { "10" };
    let reconcile = |id: String| {
        let injector = injector.clone();
        async move {
            injector
                .tool(&[
                    "reconcile",
                    "--campaign",
                    &id,
                    "--repair",
                    "--patience",
                    patience,
                ])
                .await
        }
    };
    let (plain_rec, room_rec) = tokio::join!(
        reconcile(campaigns[0].clone()),
        reconcile(campaigns[1].clone())
    );
    phases.reconciled = rec.now();

    final_reads(api, rec, r).await;
    phases.final_read = rec.now();

    // The state after the repair, then the top-up.
    let mut evidence = Vec::new();
    for (which, report) in [(Which::Plain, plain_rec), (Which::Room, room_rec)] {
        let id = &campaigns[which as usize];
        let after_repair = evidence::snapshot(cell, rec, id).await;
        evidence.push(CampaignEvidence {
            which,
            id: id.clone(),
            stock: r.campaign(which).stock,
            room: r.campaign(which).room,
            after_repair,
            reconcile: if report.0 {
                report.1
            } else {
                serde_json::json!({"error": report.1})
            },
            after_topup: None,
            topup_sold_out: false,
            topup_users: 0,
        });
    }
    let drained = settle.lag_zero;
    let topups = evidence
        .iter()
        .map(|c| top_up(cell, rec, api, r.index, c, drained));
    let topped: Vec<_> = futures::future::join_all(topups).await;
    for (c, (after, sold_out, users)) in evidence.iter_mut().zip(topped) {
        c.after_topup = after;
        c.topup_sold_out = sold_out;
        c.topup_users = users;
    }
    phases.topup_end = rec.now();
    phases.round_end = rec.now();
    RoundEvidence {
        round: r.index,
        form: r.form.clone(),
        phases,
        campaigns: evidence,
        settle,
        not_ready,
        rolled,
    }
}

/// Reads `/coupons/me` of every user of the round who got a deferred
/// reply. A user who still reads `queued` (async-queue) is read again once
/// its queued mark can have expired (60 s after its last `queued` reply):
/// a request whose instance died with it, or whose refusal could not be
/// recorded, reads `queued` until then.
async fn final_reads(api: &Api, rec: &Recorder, r: &RoundPlan) {
    let reqs = rec.requests_of_round(r.index);
    let mut last: std::collections::BTreeMap<(String, String), (u64, u64)> = Default::default();
    for q in reqs
        .iter()
        .filter(|q| q.deferred() && q.client != history::by::TOPUP)
    {
        if let Some(u) = &q.user {
            last.insert((q.campaign.clone(), u.clone()), (q.id, q.end_ms));
        }
    }
    let read = |items: Vec<((String, String), u64)>| {
        futures::stream::iter(items)
            .map(|((campaign, user), follows)| async move {
                traffic::final_read(api, r.index, &campaign, &user, follows).await;
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
    };
    read(last.iter().map(|(k, (id, _))| (k.clone(), *id)).collect()).await;
    let queued: Vec<((String, String), (u64, u64))> = rec
        .requests_of_round(r.index)
        .iter()
        .filter(|q| {
            q.client == history::by::FINAL
                && q.kind() == Kind::CouponsMe
                && q.state.as_deref() == Some("queued")
        })
        .filter_map(|q| {
            let key = (q.campaign.clone(), q.user.clone()?);
            last.get(&key).map(|v| (key, *v))
        })
        .collect();
    let Some(expired) = queued.iter().map(|(_, (_, end))| end + 61_000).max() else {
        return;
    };
    let now = rec.now();
    if expired > now {
        println!(
            "round {}: {} users still queued; reading them again in {:.0} s, when their marks can have expired",
            r.index,
            queued.len(),
            (expired - now) as f64 / 1000.0
        );
        tokio::time::sleep(Duration::from_millis(expired - now)).await;
    }
    read(queued.into_iter().map(|(k, (id, _))| (k, id)).collect()).await;
}

/// Tops a campaign up to its stock (unless it was closed): fresh users for
/// what the gate has left, a drain, a read; again (three passes at most;
/// one when the worker did not drain after the heal) while the gate counts
/// less than the stock (slots given back meanwhile). The snapshot, whether
/// the campaign ended sold out, the users sent.
async fn top_up(
    cell: &Arc<Cell>,
    rec: &Recorder,
    api: &Api,
    round: usize,
    c: &CampaignEvidence,
    drained: bool,
) -> (Option<history::Snapshot>, bool, u64) {
    if c.after_repair.api_state.as_deref() == Some("closed") {
        return (None, false, 0);
    }
    let mut users = 0;
    let mut sold_out = false;
    let mut s = c.after_repair.clone();
    let passes = if drained { 3 } else { 1 };
    for pass in 0..passes {
        let left = c
            .stock
            .saturating_sub(s.api_taken.unwrap_or(0).max(0) as u64);
        if left == 0 && pass > 0 {
            break;
        }
        // A few more than is left: one of them meets the sold out.
        let t = traffic::top_up(
            api,
            round,
            c.which,
            &c.id,
            pass,
            left + 4,
            Duration::from_secs(if drained { 60 } else { 20 }),
        )
        .await;
        users += t.users;
        sold_out |= t.sold_out;
        let within = Duration::from_secs(if drained { 15 } else { 3 });
        let _ = evidence::settle(cell, rec, within).await;
        // Rows land after the drain; give the last ones a moment.
        s = evidence::snapshot(cell, rec, &c.id).await;
        for _ in 0..if drained { 10 } else { 1 } {
            let in_flight = s.api_taken.is_some_and(|t| t > s.rows.len() as i64);
            if !in_flight {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            s = evidence::snapshot(cell, rec, &c.id).await;
        }
        sold_out |= s.api_state.as_deref() == Some("sold_out");
        if s.api_taken.is_some_and(|t| t as u64 >= c.stock) {
            break;
        }
    }
    (Some(s), sold_out, users)
}
