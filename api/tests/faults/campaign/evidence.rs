//! Reading what the system says, for the record: the metric samples taken
//! every ~500 ms through the run ([`sample_until`]), the drain after the
//! heal ([`settle`]: the worker group's lag read from the broker), a
//! campaign's state at a point ([`snapshot`]: the admin api, every row,
//! every key of the campaign in Redis) and the dead letters at the end
//! ([`letters`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::entities::coupons;
use common::ids::CampaignId;
use common::settings::KafkaSettings;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::Value;

use super::history::{Letter, Recorder, RedisSnapshot, Sample, Settle, Snapshot};
use crate::cell::{ADMIN_TOKEN, Cell};

/// The metrics sampled, by their name before any label.
const WORKER_METRICS: [&str; 8] = [
    "worker_paused",
    "worker_consumer_lag_offsets",
    "worker_dead_lettered_total",
    "worker_assigned_partitions",
    "worker_unstarted_partitions",
    "worker_coupons_persisted_total",
    "worker_db_errors_total",
    "worker_rebalances_total",
];
const API_METRICS: [&str; 6] = [
    "http_requests_in_flight",
    "issue_queue_depth",
    "producer_buffered_messages",
    "gate_compensations_total",
    "issue_outcomes_total",
    "idempotency_keys_total",
];

/// The lines of a Prometheus text whose metric is in `wanted`, as
/// `name{labels}` → value.
pub fn parse_metrics(text: &str, wanted: &[&str]) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            wanted
                .contains(&name)
                .then(|| Some((series.to_owned(), value.parse().ok()?)))?
        })
        .collect()
}

async fn metrics_of(
    http: &reqwest::Client,
    port: u16,
    wanted: &[&str],
) -> Result<BTreeMap<String, f64>, String> {
    let res = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_millis(400))
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timeout".into()
            } else {
                e.to_string()
            }
        })?;
    let text = res.text().await.map_err(|e| e.to_string())?;
    Ok(parse_metrics(&text, wanted))
}

/// Samples the worker's and every api's metrics every ~500 ms until `stop`.
pub async fn sample_until(cell: Arc<Cell>, rec: Recorder, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    let mut sources: Vec<(String, u16, &[&str])> =
        vec![("worker".into(), cell.worker_port(0), &WORKER_METRICS[..])];
    for (i, port) in cell.ops_ports.iter().enumerate() {
        sources.push((format!("api{i}"), *port, &API_METRICS[..]));
    }
    while !stop.load(Ordering::Relaxed) {
        let tick = tokio::time::Instant::now() + Duration::from_millis(500);
        for (source, port, wanted) in &sources {
            let t_ms = rec.now();
            let (values, error) = match metrics_of(&http, *port, wanted).await {
                Ok(v) => (v, None),
                Err(e) => (BTreeMap::new(), Some(e)),
            };
            rec.sample(Sample {
                t_ms,
                source: source.clone(),
                values,
                error,
            });
        }
        tokio::time::sleep_until(tick).await;
    }
}

/// The cell's Kafka settings (its broker, the default topic and group).
pub fn kafka(cell: &Cell) -> KafkaSettings {
    KafkaSettings {
        brokers: cell.broker.address(),
        ..KafkaSettings::default()
    }
}

/// The worker group's lag: the topic's end offsets minus where the group
/// will resume, summed over partitions.
pub async fn group_lag(cell: &Cell) -> Result<i64, String> {
    let k = kafka(cell);
    let ends = issuer_worker::topic::end_offsets(&k)
        .await
        .map_err(|e| e.to_string())?;
    let from = issuer_worker::topic::group_positions(&k)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ends
        .iter()
        .map(|(p, end)| (end - from.get(p).copied().unwrap_or(0)).max(0))
        .sum())
}

/// Waits (at most `within`) until the worker group's lag is 0.
pub async fn settle(cell: &Cell, rec: &Recorder, within: Duration) -> Settle {
    let started = tokio::time::Instant::now();
    let mut s = Settle::default();
    loop {
        match group_lag(cell).await {
            Ok(lag) => {
                s.group_lag = Some(lag);
                s.error = None;
                rec.sample(Sample {
                    t_ms: rec.now(),
                    source: "group".into(),
                    values: BTreeMap::from([("group_lag".to_owned(), lag as f64)]),
                    error: None,
                });
                if lag == 0 {
                    s.lag_zero = true;
                    break;
                }
            }
            Err(e) => s.error = Some(e),
        }
        if started.elapsed() > within {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.waited_ms = started.elapsed().as_millis() as u64;
    s.paused = cell.worker_metric(0, "worker_paused").await;
    s.assigned = cell.worker_metric(0, "worker_assigned_partitions").await;
    s
}

/// A campaign as the admin api shows it, from the first instance that
/// answers (503s retried as a client would, a few times).
pub async fn campaign_json(cell: &Cell, id: &str) -> Result<Value, String> {
    let http = reqwest::Client::new();
    let mut last = String::new();
    for attempt in 0..8 {
        let base = &cell.targets()[attempt % cell.api_ports.len()];
        match http
            .get(format!("{base}/api/v1/campaigns/{id}"))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                return r.json().await.map_err(|e| e.to_string());
            }
            Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

/// Creates a campaign (with a waiting room when `room` is set); its id.
pub async fn create_campaign(
    cell: &Cell,
    name: &str,
    stock: u64,
    room: Option<(u32, u32)>,
) -> Result<String, String> {
    let mut body = serde_json::json!({"name": name, "stock": stock});
    if let Some((rate, ttl)) = room {
        body["waiting_room"] =
            serde_json::json!({"admit_per_second": rate, "admission_ttl_secs": ttl});
    }
    let http = reqwest::Client::new();
    let mut last = String::new();
    for attempt in 0..6 {
        let base = &cell.targets()[attempt % cell.api_ports.len()];
        match http
            .post(format!("{base}/api/v1/campaigns"))
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", format!("create-{name}"))
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().await.map_err(|e| e.to_string())?;
                return v["id"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("no id in {v}"));
            }
            Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

/// A campaign's state now: the admin api's view, every row, its keys in
/// Redis.
pub async fn snapshot(cell: &Cell, rec: &Recorder, id: &str) -> Snapshot {
    let mut s = Snapshot {
        at_ms: rec.now(),
        ..Snapshot::default()
    };
    if let Ok(c) = campaign_json(cell, id).await {
        s.api_taken = c["taken"].as_i64();
        s.api_persisted = c["persisted"].as_i64();
        s.api_state = c["state"].as_str().map(str::to_owned);
        s.api_gate = c["gate"].as_str().map(str::to_owned);
    }
    if let Ok(campaign) = CampaignId::parse(id) {
        if let Ok(rows) = coupons::Entity::find()
            .filter(coupons::Column::CampaignId.eq(campaign.as_uuid()))
            .all(&cell.db)
            .await
        {
            s.rows = rows
                .into_iter()
                .map(|r| (r.user_id, r.id.to_string()))
                .collect();
            s.rows.sort();
        }
        s.persisted_column = Some(common::testkit::persisted_column(&cell.db, &campaign).await);
    }
    s.redis = redis_state(&cell.redis.url(), id)
        .await
        .unwrap_or_else(|e| RedisSnapshot {
            error: Some(e.to_string()),
            ..RedisSnapshot::default()
        });
    s
}

/// Every key of campaign `id` in Redis.
pub async fn redis_state(url: &str, id: &str) -> redis::RedisResult<RedisSnapshot> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let p = format!("coupon:{{{id}}}");
    let cmd = |name: &str, key: String| {
        let mut c = redis::cmd(name);
        c.arg(key);
        c
    };
    let mut users: Vec<String> = cmd("SMEMBERS", format!("{p}:users"))
        .query_async(&mut conn)
        .await?;
    users.sort();
    let order: BTreeMap<String, String> = cmd("HGETALL", format!("{p}:room:order"))
        .query_async(&mut conn)
        .await?;
    let time: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
    let unsettled = unsettled_records(&mut conn, &p).await?;
    Ok(RedisSnapshot {
        meta: cmd("HGETALL", format!("{p}:meta"))
            .query_async(&mut conn)
            .await?,
        users,
        taken: cmd("GET", format!("{p}:taken"))
            .query_async(&mut conn)
            .await?,
        slots: cmd("HGETALL", format!("{p}:slots"))
            .query_async(&mut conn)
            .await?,
        room: cmd("HGETALL", format!("{p}:room"))
            .query_async(&mut conn)
            .await?,
        room_order: order
            .into_iter()
            .filter_map(|(u, n)| Some((u, n.parse().ok()?)))
            .collect(),
        room_windows: redis::cmd("ZRANGE")
            .arg(format!("{p}:room:windows"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?,
        room_used: cmd("HGETALL", format!("{p}:room:used"))
            .query_async(&mut conn)
            .await?,
        fairlock_waiting: cmd("HGETALL", format!("{p}:fairlock:waiting"))
            .query_async(&mut conn)
            .await?,
        fairlock_tickets: cmd("GET", format!("{p}:fairlock:tickets"))
            .query_async(&mut conn)
            .await?,
        fairlock_serving: cmd("GET", format!("{p}:fairlock:serving"))
            .query_async(&mut conn)
            .await?,
        lock: cmd("GET", format!("{p}:lock"))
            .query_async(&mut conn)
            .await?,
        admin_lock: cmd("GET", format!("{p}:admin"))
            .query_async(&mut conn)
            .await?,
        redis_now_ms: Some(time.0 * 1000 + time.1 / 1000),
        unsettled,
        error: None,
    })
}

/// The campaign's status records that say `pending` or `queued`.
async fn unsettled_records(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> redis::RedisResult<BTreeMap<String, String>> {
    let pattern = format!("{prefix}:status:*");
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(500) {
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query_async(conn).await?;
        for (key, value) in chunk.iter().zip(values) {
            let Some(value) = value else { continue };
            let state = serde_json::from_str::<Value>(&value)
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_owned));
            if matches!(state.as_deref(), Some("pending" | "queued")) {
                let user = key
                    .strip_prefix(&format!("{prefix}:status:"))
                    .unwrap_or(key)
                    .to_owned();
                out.insert(user, value);
            }
        }
    }
    Ok(out)
}

/// Every dead letter on the DLQ topic.
pub async fn letters(cell: &Cell) -> Vec<Letter> {
    common::testkit::read_topic(&cell.broker.address(), "coupon.issue.v1.dlq")
        .await
        .into_iter()
        .map(|m| Letter {
            partition: m.partition,
            offset: m.offset,
            key: m.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
            payload_bytes: m.payload.map_or(0, |p| p.len()),
            headers: m.headers.into_iter().collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_picked_by_name_with_their_labels() {
        let text = "# HELP worker_paused x\nworker_paused 1\nworker_paused_not 3\n\
                    worker_dead_lettered_total{reason=\"over_stock\"} 2\nother 5\n";
        let m = parse_metrics(text, &["worker_paused", "worker_dead_lettered_total"]);
        assert_eq!(m.get("worker_paused"), Some(&1.0));
        assert_eq!(
            m.get("worker_dead_lettered_total{reason=\"over_stock\"}"),
            Some(&2.0)
        );
        assert_eq!(m.len(), 2);
    }
}
