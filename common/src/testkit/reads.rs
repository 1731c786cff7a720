//! Reads of the broker, PostgreSQL and Redis that tests check outcomes
//! against.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use secrecy::SecretString;

use super::{database_url, redis_url};
use crate::entities::{campaigns, coupons};
use crate::ids::CampaignId;
use crate::keys::CampaignKeys;
use crate::settings::DatabaseSettings;

/// Messages in a topic: the sum over partitions of high − low watermarks.
pub async fn topic_messages(brokers: &str, topic: &str) -> i64 {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer = plain_consumer(&brokers);
        let partitions = partitions(&consumer, &topic);
        (0..partitions)
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(5))
                    .unwrap();
                high - low
            })
            .sum()
    })
    .await
    .unwrap()
}

fn plain_consumer(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "coupon-testkit-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> i32 {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    metadata.topics()[0].partitions().len() as i32
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl ReadMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every message of a topic from the beginning, read without a group commit.
pub async fn read_topic(brokers: &str, topic: &str) -> Vec<ReadMessage> {
    let expected = topic_messages(brokers, topic).await;
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer = plain_consumer(&brokers);
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions(&consumer, &topic) {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let started = Instant::now();
        while (out.len() as i64) < expected && started.elapsed() < Duration::from_secs(20) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let value =
                                    h.value.map(String::from_utf8_lossy).unwrap_or_default();
                                (h.key.to_owned(), value.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(ReadMessage {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        out
    })
    .await
    .unwrap()
}

pub async fn db() -> DatabaseConnection {
    db_at(&database_url()).await
}

pub async fn db_at(url: &str) -> DatabaseConnection {
    let settings = DatabaseSettings {
        url: SecretString::from(url.to_owned()),
        ..DatabaseSettings::default()
    };
    crate::db::connect(&settings, Duration::from_secs(60))
        .await
        .unwrap()
}

/// An open campaign row written directly, for tests and benchmarks of the
/// worker (no api in the way).
pub async fn insert_campaign(db: &DatabaseConnection, name: &str, stock: i64) -> CampaignId {
    use sea_orm::{ActiveModelTrait, Set};
    let id = CampaignId::new();
    let now = chrono::Utc::now();
    campaigns::ActiveModel {
        id: Set(id.as_uuid()),
        name: Set(name.to_owned()),
        stock: Set(stock),
        persisted: Set(0),
        starts_at: Set(now),
        ends_at: Set(None),
        state: Set("open".into()),
        created_at: Set(now),
        room_admit_per_second: Set(None),
        room_admission_ttl_secs: Set(None),
        room_shuffle_seed: Set(None),
        archived_at: Set(None),
    }
    .insert(db)
    .await
    .unwrap();
    id
}

pub async fn rows(db: &DatabaseConnection, campaign: &CampaignId) -> u64 {
    coupons::Entity::find()
        .filter(coupons::Column::CampaignId.eq(campaign.as_uuid()))
        .count(db)
        .await
        .unwrap()
}

pub async fn row_users(db: &DatabaseConnection, campaign: &CampaignId) -> Vec<String> {
    row_coupons(db, campaign).await.into_keys().collect()
}

/// The campaign's rows: user id → coupon id.
pub async fn row_coupons(
    db: &DatabaseConnection,
    campaign: &CampaignId,
) -> std::collections::BTreeMap<String, uuid::Uuid> {
    coupons::Entity::find()
        .filter(coupons::Column::CampaignId.eq(campaign.as_uuid()))
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.user_id, r.id))
        .collect()
}

/// The `persisted` column of the campaign's row.
pub async fn persisted_column(db: &DatabaseConnection, campaign: &CampaignId) -> i64 {
    campaigns::Entity::find_by_id(campaign.as_uuid())
        .one(db)
        .await
        .unwrap()
        .expect("campaign row")
        .persisted
}

/// Polls until the campaign has `expected` rows; panics after `within`.
pub async fn wait_for_rows(
    db: &DatabaseConnection,
    campaign: &CampaignId,
    expected: u64,
    within: Duration,
) {
    let started = Instant::now();
    loop {
        let n = rows(db, campaign).await;
        if n == expected {
            return;
        }
        assert!(
            n < expected && started.elapsed() < within,
            "campaign {campaign}: {n} rows after {:?}, expected {expected}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis_at(&redis_url()).await
}

/// A connection to the Redis at `url`.
pub async fn redis_at(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The campaign's gate state: the users with a slot, sorted, and the count
/// of slots taken.
pub async fn gate_state(campaign: &CampaignId) -> (Vec<String>, Option<i64>) {
    gate_state_at(&redis_url(), campaign).await
}

/// [`gate_state`] on the Redis at `url` (a test's own).
pub async fn gate_state_at(url: &str, campaign: &CampaignId) -> (Vec<String>, Option<i64>) {
    let keys = CampaignKeys::new(campaign);
    let mut conn = redis_at(url).await;
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.users())
        .query_async(&mut conn)
        .await
        .unwrap();
    members.sort();
    let taken: Option<i64> = redis::cmd("GET")
        .arg(keys.taken())
        .query_async(&mut conn)
        .await
        .unwrap();
    (members, taken)
}

pub async fn redis_del(keys: &[String]) {
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut redis().await)
        .await
        .unwrap();
}

pub async fn redis_exists(key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut redis().await)
        .await
        .unwrap()
        == 1
}
