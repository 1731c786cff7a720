//! The harness against a tiny HTTP server of known behaviour: a fixed
//! service time and a fixed pattern of replies. What the harness counts must
//! be what the server did; its latencies must sit within a stated tolerance
//! of the service time.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ngrinder_equivalent::load;
use ngrinder_equivalent::spec::{Endpoint, LoadModel, RunSpec};
use ngrinder_equivalent::token::Minter;
use ngrinder_equivalent::users::UserMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server answered.
#[derive(Debug, Default)]
struct Served {
    accepted: AtomicU64,
    duplicate: AtomicU64,
    unavailable: AtomicU64,
}

impl Served {
    fn total(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
            + self.duplicate.load(Ordering::Relaxed)
            + self.unavailable.load(Ordering::Relaxed)
    }
}

/// Keep-alive HTTP/1.1: every request waits `service`, then request n gets
/// 409 duplicate if n % 10 == 0, 503 if n % 10 == 1, else 202 accepted.
async fn tiny_server(service: Duration) -> (SocketAddr, Arc<Served>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(Served::default());
    let counter = Arc::new(AtomicU64::new(0));
    let state = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (served, counter) = (state.clone(), counter.clone());
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buffer.drain(..end);
                    tokio::time::sleep(service).await;
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let (status, body) = match n % 10 {
                        0 => {
                            served.duplicate.fetch_add(1, Ordering::Relaxed);
                            ("409 Conflict", r#"{"outcome":"duplicate","message":"x"}"#)
                        }
                        1 => {
                            served.unavailable.fetch_add(1, Ordering::Relaxed);
                            (
                                "503 Service Unavailable",
                                r#"{"outcome":"unavailable","message":"x"}"#,
                            )
                        }
                        _ => {
                            served.accepted.fetch_add(1, Ordering::Relaxed);
                            ("202 Accepted", r#"{"outcome":"accepted","coupon_id":"c"}"#)
                        }
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, served)
}

fn spec(
    addr: SocketAddr,
    model: LoadModel,
    requests: Option<u64>,
    duration: Option<u64>,
) -> RunSpec {
    RunSpec {
        label: "tiny".into(),
        targets: vec![format!("http://{addr}")],
        endpoint: Endpoint::Issue,
        waiting_room: None,
        model,
        duration_secs: duration,
        requests,
        warmup_secs: 0,
        users: UserMode::Unique,
        request_timeout_ms: 5_000,
        stop_error_ratio: 1.0,
        stop_zero_tps_secs: 10,
        threads: 2,
    }
}

const SERVICE: Duration = Duration::from_millis(5);
/// Stated tolerance: a latency percentile lies between the service time and
/// the service time plus this (scheduling on a shared 2-core machine).
const TOLERANCE_US: u64 = 15_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_model_counts_what_the_server_did() {
    let (addr, served) = tiny_server(SERVICE).await;
    let model = LoadModel::Closed {
        vusers: 8,
        ramp_initial: 8,
        ramp_step: 8,
        ramp_interval_secs: 1,
        think_ms: 0,
    };
    let out = load::execute(
        &spec(addr, model, Some(1_000), None),
        "c1",
        Minter::new("k", 60).unwrap(),
    )
    .await
    .unwrap();
    let s = &out.summary;
    assert_eq!(s.executed, 1_000);
    assert_eq!(
        served.total(),
        1_000,
        "the server saw a different number of requests"
    );
    assert_eq!(
        s.outcomes["accepted"],
        served.accepted.load(Ordering::Relaxed)
    );
    assert_eq!(
        s.outcomes["duplicate"],
        served.duplicate.load(Ordering::Relaxed)
    );
    assert_eq!(
        s.outcomes["unavailable"],
        served.unavailable.load(Ordering::Relaxed)
    );
    assert_eq!(
        s.errors,
        served.unavailable.load(Ordering::Relaxed),
        "only 503s are errors"
    );
    assert_eq!(s.tests, s.executed - s.errors);
    let service_us = SERVICE.as_micros() as u64;
    for (name, p) in [("p50", s.p50_us), ("p99", s.p99_us)] {
        assert!(
            (service_us..service_us + TOLERANCE_US).contains(&p),
            "{name} {p} µs for a {service_us} µs service time"
        );
    }
    // 8 vusers at ≥ 5 ms each cannot exceed 1,600 TPS.
    assert!(
        s.tps > 0.0 && s.tps <= 8.0 / SERVICE.as_secs_f64() * 1.05,
        "TPS {}",
        s.tps
    );
    assert!(s.mean_ms >= 5.0, "mean {}", s.mean_ms);
    // The ledger holds exactly the promised (accepted) requests.
    let promised = out.ledger.promised(&UserMode::Unique, &out.run_id);
    assert_eq!(
        promised.len() as u64,
        served.accepted.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_keeps_its_rate_and_measures_from_the_intended_time() {
    let (addr, served) = tiny_server(SERVICE).await;
    let model = LoadModel::Open {
        rate: 200,
        max_connections: 50,
    };
    let out = load::execute(
        &spec(addr, model, None, Some(3)),
        "c1",
        Minter::new("k", 60).unwrap(),
    )
    .await
    .unwrap();
    let s = &out.summary;
    // Three seconds at 200/s: 600 sends, give or take the edges.
    assert!((540..=660).contains(&s.executed), "executed {}", s.executed);
    assert_eq!(served.total(), s.executed, "{s:?} {:?}", out.client);
    assert_eq!(out.client.late_sends, 0, "{:?}", out.client);
    assert_eq!(out.client.unsent_sends, 0);
    let service_us = SERVICE.as_micros() as u64;
    assert!(
        (service_us..service_us + TOLERANCE_US).contains(&s.p50_us),
        "p50 {}",
        s.p50_us
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_open_model_counts_late_sends_and_their_waiting() {
    let (addr, served) = tiny_server(Duration::from_millis(50)).await;
    // 2 connections at 50 ms serve 40/s; 200/s is offered for 2 s.
    let model = LoadModel::Open {
        rate: 200,
        max_connections: 2,
    };
    let out = load::execute(
        &spec(addr, model, None, Some(2)),
        "c1",
        Minter::new("k", 60).unwrap(),
    )
    .await
    .unwrap();
    let (s, c) = (&out.summary, &out.client);
    assert!(c.late_sends > 50, "{c:?}");
    assert!(c.saturated, "{c:?}");
    // Measured from the intended send time, latency grows with the backlog,
    // far beyond the 50 ms service time.
    assert!(s.p99_us > 500_000, "p99 {}", s.p99_us);
    // Nothing offered vanishes: what the server answered plus what was still
    // waiting at the stop is the whole schedule (400 sends, give or take the
    // edges), and the waiting ones are errors of their own kind.
    assert!(c.unsent_sends > 200, "{c:?}");
    assert_eq!(s.outcomes.get("unsent"), Some(&c.unsent_sends));
    assert_eq!(served.total() + c.unsent_sends, s.executed);
    assert!((360..=440).contains(&s.executed), "executed {}", s.executed);
    // The backlog's wait is in the every-request percentiles: the oldest
    // unsent send had waited well over a second (sent ones reach ~1.6 s).
    assert!(s.all_max_us > 1_200_000, "all max {}", s.all_max_us);
    assert!(s.all_p99_us > 1_000_000, "all p99 {}", s.all_p99_us);
}
