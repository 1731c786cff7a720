//! `issuer-worker dlq`: the dead-letter topic read as letters. A letter is
//! named by where it sits in that topic, `<partition>:<offset>`; its
//! headers say why the worker set it aside and where it had read it
//! (`dlq::DeadLetters` writes them), and its bytes are the original
//! message's. It is read with a consumer that joins no group and commits
//! nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use clap::builder::PossibleValuesParser;
use common::message::{
    CouponIssued, DLQ_DETAIL_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_OFFSET_HEADER,
    DLQ_SOURCE_PARTITION_HEADER, DLQ_SOURCE_TOPIC_HEADER, DLQ_TRUNCATED_HEADER, DlqReason,
};
use common::settings::{KafkaSettings, Settings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::redrive::{self, RedriveArgs};
use super::{AdminError, EXIT_CODES, EXIT_OK, Output, print_json, print_text, require_secure};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// The letters in the topic's order (partition, then offset): reason,
    /// detail, where each was read from, its campaign, user and coupon id.
    #[command(after_help = EXIT_CODES)]
    List {
        /// Only letters with this reason.
        #[arg(long, value_parser = reasons())]
        reason: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One letter whole: headers, key, bytes, and whether it may be
    /// re-driven.
    #[command(after_help = EXIT_CODES)]
    Show {
        /// Where it sits in the dead-letter topic.
        #[arg(value_name = "PARTITION:OFFSET")]
        letter: LetterId,
    },
    /// Put letters' messages back on the issue topic (their key, coupon id,
    /// campaign and user; requested_at set to now), one audit line per
    /// letter. Only a letter whose message the worker can persist once and
    /// within the stock goes: its user has no row yet, and holds the slot
    /// its message names or takes one now through the gate.
    #[command(after_help = EXIT_CODES)]
    Redrive(RedriveArgs),
}

/// The reasons a letter can carry, for `--reason` and `--all-of-reason`.
pub(super) fn reasons() -> PossibleValuesParser {
    PossibleValuesParser::new(DlqReason::ALL.map(|r| r.as_str()))
}

pub async fn run(
    settings: &Settings,
    command: DlqCommand,
    output: Output,
) -> Result<i32, AdminError> {
    match command {
        DlqCommand::List { reason, limit } => {
            require_secure(settings, false, true)?;
            let scan = scan(&settings.kafka, move |l| {
                reason.is_none() || l.reason() == reason
            })
            .await?;
            let shown = &scan.letters[..scan.letters.len().min(limit)];
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "topic": settings.kafka.dlq_topic,
                    "scanned": scan.scanned,
                    "matched": scan.letters.len(),
                    "letters": shown.iter().map(Letter::view).collect::<Vec<_>>(),
                }))?,
                Output::Text => print_text(&table(shown, scan.scanned, scan.letters.len())),
            }
            Ok(EXIT_OK)
        }
        DlqCommand::Show { letter } => {
            require_secure(settings, false, true)?;
            let found = read(&settings.kafka, &[letter]).await?;
            let Some(Some(letter)) = found.into_iter().next() else {
                return Err(AdminError::NotFound(format!(
                    "no letter at {letter} of {}",
                    settings.kafka.dlq_topic
                )));
            };
            let refusal = redrive::refusal(&letter, &settings.kafka.topic);
            match output {
                Output::Json => print_json(&letter.whole(refusal.as_ref().map(|r| r.1.as_str())))?,
                Output::Text => print_text(&card(
                    &letter,
                    &settings.kafka.dlq_topic,
                    refusal.as_ref().map(|r| r.1.as_str()),
                )),
            }
            Ok(EXIT_OK)
        }
        DlqCommand::Redrive(args) => redrive::run(settings, args, output).await,
    }
}

/// A letter's place in the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LetterId {
    pub partition: i32,
    pub offset: i64,
}

impl FromStr for LetterId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not <partition>:<offset>");
        let (p, o) = s.split_once(':').ok_or_else(bad)?;
        let partition: i32 = p.parse().map_err(|_| bad())?;
        let offset: i64 = o.parse().map_err(|_| bad())?;
        if partition < 0 || offset < 0 {
            return Err(bad());
        }
        Ok(Self { partition, offset })
    }
}

impl fmt::Display for LetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

/// A place in a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}:{}", self.topic, self.partition, self.offset)
    }
}

/// One message of the dead-letter topic.
#[derive(Debug, Clone)]
pub struct Letter {
    pub id: LetterId,
    pub timestamp: Option<DateTime<Utc>>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Letter {
    fn from_message(m: &impl Message) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            id: LetterId {
                partition: m.partition(),
                offset: m.offset(),
            },
            timestamp: m
                .timestamp()
                .to_millis()
                .and_then(DateTime::from_timestamp_millis),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The value of a header, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn reason(&self) -> Option<String> {
        self.header(DLQ_REASON_HEADER)
    }

    /// Whether its bytes are only the first of a message too large to be
    /// set aside whole ([`DLQ_TRUNCATED_HEADER`]): the original stays at
    /// its source place, and the letter is never re-driven.
    pub fn truncated(&self) -> bool {
        self.headers.iter().any(|(k, _)| k == DLQ_TRUNCATED_HEADER)
    }

    /// Where the worker had read it.
    pub fn source(&self) -> Option<Place> {
        Some(Place {
            topic: self.header(DLQ_SOURCE_TOPIC_HEADER)?,
            partition: self.header(DLQ_SOURCE_PARTITION_HEADER)?.parse().ok()?,
            offset: self.header(DLQ_SOURCE_OFFSET_HEADER)?.parse().ok()?,
        })
    }

    /// Its bytes as the message they were, unless truncated or not one.
    pub fn message(&self) -> Result<CouponIssued, String> {
        if self.truncated() {
            return Err("a truncated copy".into());
        }
        let bytes = self.payload.as_deref().ok_or("no bytes")?;
        CouponIssued::decode(bytes).map_err(|e| e.to_string())
    }

    /// The letter in a listing.
    pub fn view(&self) -> LetterView {
        let message = self.message().ok();
        LetterView {
            letter: self.id.to_string(),
            partition: self.id.partition,
            offset: self.id.offset,
            timestamp: self.timestamp,
            reason: self.reason(),
            detail: self.header(DLQ_DETAIL_HEADER),
            source: self.source(),
            campaign_id: message.as_ref().map(|m| m.campaign_id.to_string()),
            user_id: message.as_ref().map(|m| m.user_id.to_string()),
            coupon_id: message.as_ref().map(|m| m.coupon_id.to_string()),
            truncated: self.truncated(),
        }
    }

    /// The letter whole (`dlq show`), with why it may not be re-driven.
    fn whole(&self, refusal: Option<&str>) -> serde_json::Value {
        let text = |b: &Option<Vec<u8>>| {
            b.as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let headers: BTreeMap<&str, Option<String>> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), text(v)))
            .collect();
        let mut value = serde_json::to_value(self.view()).unwrap_or_default();
        value["key"] = text(&self.key).into();
        value["payload"] = text(&self.payload).into();
        value["headers"] = serde_json::to_value(headers).unwrap_or_default();
        value["redrive"] = serde_json::json!({
            "allowed": refusal.is_none(),
            "why": refusal.unwrap_or(REDRIVE_CHECKS),
        });
        value
    }
}

/// What a re-drive checks of a letter whose bytes are a message.
const REDRIVE_CHECKS: &str = "when re-driven: its user must have no row yet, the campaign rows left under its stock, and the user hold the slot its message names or take one through the gate";

/// A letter in a listing (JSON).
#[derive(Debug, Serialize)]
pub struct LetterView {
    pub letter: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub source: Option<Place>,
    pub campaign_id: Option<String>,
    pub user_id: Option<String>,
    pub coupon_id: Option<String>,
    pub truncated: bool,
}

fn or_dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".into())
}

fn table(letters: &[Letter], scanned: u64, matched: usize) -> String {
    let mut out = format!(
        "{:<9}  {:<32}  {:<12}  {:<36}  {:<20}  {:<36}  DETAIL",
        "LETTER", "REASON", "SOURCE", "CAMPAIGN", "USER", "COUPON"
    );
    for l in letters {
        let v = l.view();
        let mut reason = or_dash(v.reason);
        if v.truncated {
            reason.push_str(" (truncated)");
        }
        let source = v
            .source
            .map_or_else(|| "-".into(), |s| format!("{}:{}", s.partition, s.offset));
        out.push_str(&format!(
            "\n{:<9}  {:<32}  {:<12}  {:<36}  {:<20}  {:<36}  {}",
            v.letter,
            reason,
            source,
            or_dash(v.campaign_id),
            or_dash(v.user_id),
            or_dash(v.coupon_id),
            or_dash(v.detail)
        ));
    }
    out.push_str(&format!(
        "\n{} shown; {matched} matched of {scanned} letters",
        letters.len()
    ));
    out
}

fn card(letter: &Letter, topic: &str, refusal: Option<&str>) -> String {
    let v = letter.view();
    let text = |b: &Option<Vec<u8>>| {
        b.as_deref()
            .map_or_else(|| "-".into(), |b| String::from_utf8_lossy(b).into_owned())
    };
    let headers: Vec<String> = letter
        .headers
        .iter()
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    let redrive = match refusal {
        None => format!("allowed, {REDRIVE_CHECKS}"),
        Some(why) => format!("refused: {why}"),
    };
    format!(
        "letter     {} of {topic} ({})\nreason     {}{}\ndetail     {}\nsource     {}\ncampaign   {}\nuser       {}\ncoupon     {}\nkey        {}\nheaders    {}\nbytes      {}\nre-drive   {redrive}",
        v.letter,
        v.timestamp
            .map_or_else(|| "no time".into(), |t| t.to_rfc3339()),
        or_dash(v.reason),
        if v.truncated { " (truncated copy)" } else { "" },
        or_dash(v.detail),
        v.source.map_or_else(|| "-".into(), |s| s.to_string()),
        or_dash(v.campaign_id),
        or_dash(v.user_id),
        or_dash(v.coupon_id),
        text(&letter.key),
        headers.join(", "),
        text(&letter.payload),
    )
}

/// How long a read may go without a message while some are still due.
const PATIENCE: Duration = Duration::from_secs(30);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A reader of the dead-letter topic: assigned partitions only, no group
/// joined, nothing committed. Its group id is under the `coupon-redrive`
/// prefix that the deployment's `coupon-ops` Kafka user may use.
fn reader(settings: &KafkaSettings) -> anyhow::Result<BaseConsumer> {
    common::kafka::client_config(settings)
        .set("group.id", "coupon-redrive-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("creating a reader of the dead-letter topic")
}

/// Each partition's first and next offsets.
fn watermarks(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let t = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| anyhow::anyhow!("no topic {topic}"))?;
    t.partitions()
        .iter()
        .map(|p| {
            let marks = consumer.fetch_watermarks(topic, p.id(), METADATA_TIMEOUT)?;
            Ok((p.id(), marks))
        })
        .collect()
}

/// The letters that `keep` keeps, in the topic's order, of all the topic
/// held when the scan began.
#[derive(Debug)]
pub struct Scan {
    pub letters: Vec<Letter>,
    pub scanned: u64,
}

pub async fn scan(
    settings: &KafkaSettings,
    keep: impl Fn(&Letter) -> bool + Send + 'static,
) -> anyhow::Result<Scan> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let topic = &settings.dlq_topic;
        let consumer = reader(&settings)?;
        let marks = watermarks(&consumer, topic)?;
        let mut tpl = TopicPartitionList::new();
        let mut due: BTreeMap<i32, i64> = BTreeMap::new();
        for (&p, &(low, high)) in &marks {
            if high > low {
                tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
                due.insert(p, high);
            }
        }
        let mut letters = Vec::new();
        let mut scanned = 0u64;
        if due.is_empty() {
            return Ok(Scan { letters, scanned });
        }
        consumer.assign(&tpl)?;
        let mut last = Instant::now();
        while !due.is_empty() {
            anyhow::ensure!(
                last.elapsed() < PATIENCE,
                "reading {topic}: no letter for {PATIENCE:?} while {} partitions were not read to their end",
                due.len()
            );
            let Some(received) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let m = received.with_context(|| format!("reading {topic}"))?;
            last = Instant::now();
            let Some(&end) = due.get(&m.partition()) else {
                continue;
            };
            if m.offset() < end {
                scanned += 1;
                let letter = Letter::from_message(&m);
                if keep(&letter) {
                    letters.push(letter);
                }
            }
            if m.offset() + 1 >= end {
                due.remove(&m.partition());
            }
        }
        letters.sort_by_key(|l| l.id);
        Ok(Scan { letters, scanned })
    })
    .await?
}

/// The letters at `ids`, each `None` where there is none.
pub async fn read(
    settings: &KafkaSettings,
    ids: &[LetterId],
) -> anyhow::Result<Vec<Option<Letter>>> {
    let settings = settings.clone();
    let ids = ids.to_vec();
    tokio::task::spawn_blocking(move || {
        let topic = &settings.dlq_topic;
        let consumer = reader(&settings)?;
        let marks = watermarks(&consumer, topic)?;
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            let held = marks
                .get(&id.partition)
                .is_some_and(|&(low, high)| (low..high).contains(&id.offset));
            if !held {
                found.push(None);
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, id.partition, Offset::Offset(id.offset))?;
            consumer.assign(&tpl)?;
            let started = Instant::now();
            let letter = loop {
                anyhow::ensure!(
                    started.elapsed() < PATIENCE,
                    "reading {topic} at {id}: nothing came within {PATIENCE:?}"
                );
                if let Some(received) = consumer.poll(Duration::from_millis(500)) {
                    let m = received.with_context(|| format!("reading {topic} at {id}"))?;
                    // A gap (a control record, a removed message) skips it.
                    break (m.offset() == id.offset).then(|| Letter::from_message(&m));
                }
            };
            found.push(letter);
        }
        Ok(found)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letter_ids_read_partition_colon_offset() {
        assert_eq!(
            "3:1042".parse::<LetterId>(),
            Ok(LetterId {
                partition: 3,
                offset: 1042
            })
        );
        for bad in ["3", "3:", ":4", "a:1", "1:b", "-1:4", "1:-4", "1:2:3"] {
            assert!(bad.parse::<LetterId>().is_err(), "{bad}");
        }
        assert_eq!(
            LetterId {
                partition: 0,
                offset: 7
            }
            .to_string(),
            "0:7"
        );
    }
}
