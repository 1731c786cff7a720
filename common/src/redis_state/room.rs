//! A campaign's waiting room: users join, see their place, and are admitted
//! at a fixed rate; the gate then takes a slot only for a user admitted just
//! now. The procedures are Lua (`common/lua/room.lua`), run atomically beside
//! the gate; this module is their typed face, and the shuffle's twin in Rust
//! so that an audit can recompute every position from the recorded seed.

use chrono::{DateTime, Utc};
use sha1::{Digest, Sha1};

use super::{RedisCallError, RedisClient};
use crate::ids::{CampaignId, UserId};
use crate::keys::CampaignKeys;
use crate::scripts;

/// Where a user stands in a waiting room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomState {
    /// Never joined.
    None,
    /// In line; `position` is `None` before the start (the block of early
    /// joiners is shuffled then).
    Waiting,
    /// Admitted: may issue until `admitted_until`.
    Admitted,
    /// Admitted, did not issue in time; the place went to the next.
    Expired,
    /// Has a slot (issued, pending or queued).
    Taken,
    SoldOut,
    Closed,
}

impl RoomState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Waiting => "waiting",
            Self::Admitted => "admitted",
            Self::Expired => "expired",
            Self::Taken => "taken",
            Self::SoldOut => "sold_out",
            Self::Closed => "closed",
        }
    }

    fn parse(s: &str) -> Result<Self, RedisCallError> {
        Ok(match s {
            "none" => Self::None,
            "waiting" => Self::Waiting,
            "admitted" => Self::Admitted,
            "expired" => Self::Expired,
            "taken" => Self::Taken,
            "sold_out" => Self::SoldOut,
            "closed" => Self::Closed,
            other => return Err(RedisCallError::Protocol(format!("room state {other:?}"))),
        })
    }
}

/// A user's view of a waiting room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomView {
    pub state: RoomState,
    /// The user joined the room.
    pub joined: bool,
    /// 1, 2, 3, … ; `None` if the user never joined, or joined before the
    /// start and the start has not come.
    pub position: Option<u64>,
    /// Positions ahead not yet admitted (waiting only; `None` before the start).
    pub ahead: Option<u64>,
    pub admitted_until: Option<DateTime<Utc>>,
    /// When to ask again (waiting only).
    pub retry_after_ms: Option<u64>,
}

/// What a join or a look found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomReply {
    View(RoomView),
    /// The campaign has no waiting room.
    NoRoom,
    /// No meta: unknown campaign, or its gate state lost.
    Missing,
    /// The campaign's state is fenced (`lua/fence.lua`).
    Stale,
}

/// A waiting room's line as its counters stand. The room moves only when
/// it is asked (a join, a status read, an issue), so these are as of its
/// last move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLine {
    /// Users who joined.
    pub joined: u64,
    /// Positions admitted so far (those who issued or expired included).
    pub admitted: u64,
}

impl RoomLine {
    /// Users still in line: joined and not admitted yet.
    pub fn waiting(&self) -> u64 {
        self.joined.saturating_sub(self.admitted)
    }
}

/// The campaigns' waiting rooms.
#[derive(Debug, Clone)]
pub struct Rooms {
    client: RedisClient,
}

impl Rooms {
    pub fn new(client: RedisClient) -> Self {
        Self { client }
    }

    /// Joins the campaign's waiting room (joining again changes nothing).
    pub async fn join(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<RoomReply, RedisCallError> {
        self.call(campaign, user, "join").await
    }

    /// The user's place in the campaign's waiting room. It also admits
    /// whoever's time has come: the room advances when it is asked.
    pub async fn look(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<RoomReply, RedisCallError> {
        self.call(campaign, user, "look").await
    }

    /// The room's line: its counters read, nothing moved (zeros for a
    /// room nobody joined).
    pub async fn line(&self, campaign: &CampaignId) -> Result<RoomLine, RedisCallError> {
        let key = CampaignKeys::new(campaign).room().room;
        let (joined, front): (Option<u64>, Option<u64>) = self
            .client
            .run(|mut conn| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("joined")
                    .arg("front")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(RoomLine {
            joined: joined.unwrap_or(0),
            admitted: front.unwrap_or(0),
        })
    }

    async fn call(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        mode: &'static str,
    ) -> Result<RoomReply, RedisCallError> {
        let keys = CampaignKeys::new(campaign);
        let room = keys.room();
        let reply: Vec<redis::Value> = self
            .client
            .run_on(|mut conn, server| {
                let server = server.to_owned();
                async move {
                    scripts::ROOM_JOIN
                        .key(keys.meta())
                        .key(keys.users())
                        .key(keys.taken())
                        .key(&room.all()[..])
                        .arg(user.as_str())
                        .arg(mode)
                        .arg(server)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        parse_reply(&reply)
    }
}

fn parse_reply(reply: &[redis::Value]) -> Result<RoomReply, RedisCallError> {
    let text = |v: &redis::Value| -> Result<String, RedisCallError> {
        match v {
            redis::Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
            redis::Value::SimpleString(s) => Ok(s.clone()),
            other => Err(RedisCallError::Protocol(format!(
                "room reply field {other:?}"
            ))),
        }
    };
    let number = |v: &redis::Value| -> Result<i64, RedisCallError> {
        match v {
            redis::Value::Int(n) => Ok(*n),
            other => Err(RedisCallError::Protocol(format!(
                "room reply field {other:?}"
            ))),
        }
    };
    let Some(first) = reply.first() else {
        return Err(RedisCallError::Protocol("empty room reply".into()));
    };
    let state = text(first)?;
    match state.as_str() {
        "missing" => return Ok(RoomReply::Missing),
        "stale" => return Ok(RoomReply::Stale),
        "no_room" => return Ok(RoomReply::NoRoom),
        _ => {}
    }
    let [_, position, ahead, until, retry] = reply else {
        return Err(RedisCallError::Protocol(format!(
            "room reply of {} fields",
            reply.len()
        )));
    };
    let known = |n: i64| u64::try_from(n).ok();
    let state = RoomState::parse(&state)?;
    let (position, until, retry) = (number(position)?, number(until)?, number(retry)?);
    Ok(RoomReply::View(RoomView {
        state,
        joined: position >= 0,
        position: (position > 0).then_some(position as u64),
        ahead: (state == RoomState::Waiting)
            .then(|| number(ahead).map(known))
            .transpose()?
            .flatten(),
        admitted_until: (until > 0)
            .then(|| DateTime::from_timestamp_millis(until))
            .flatten(),
        retry_after_ms: (retry > 0).then_some(retry as u64),
    }))
}

/// The position of the `join`-th of the `block` users who joined before the
/// start: the keyed permutation `room.lua` computes (four Feistel rounds
/// keyed by SHA-1 of the seed, cycle-walked into 1..=block).
pub fn shuffled_position(join: u64, block: u64, seed: i64) -> u64 {
    assert!(
        (1..=block).contains(&join),
        "join {join} outside 1..={block}"
    );
    let mut half = 1u32;
    while (1u128 << (2 * half)) < u128::from(block) {
        half += 1;
    }
    let size = 1u64 << half;
    let round = |round: u32, r: u64| -> u64 {
        let digest = Sha1::digest(format!("{seed}:{round}:{r}").as_bytes());
        let top = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        u64::from(top) % size
    };
    let mut x = join - 1;
    loop {
        let (mut l, mut r) = (x / size, x % size);
        for i in 1..=4 {
            (l, r) = (r, l ^ round(i, r));
        }
        x = l * size + r;
        if x < block {
            return x + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shuffle_is_a_permutation_of_the_block() {
        for block in [1u64, 2, 3, 5, 16, 17, 1000] {
            let mut seen: Vec<u64> = (1..=block)
                .map(|j| shuffled_position(j, block, 42))
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (1..=block).collect::<Vec<_>>(), "block {block}");
        }
    }

    #[test]
    fn the_shuffle_depends_on_the_seed() {
        let order =
            |seed| -> Vec<u64> { (1..=50).map(|j| shuffled_position(j, 50, seed)).collect() };
        assert_ne!(order(1), order(2));
        assert_ne!(order(1), (1..=50).collect::<Vec<_>>());
    }
}
