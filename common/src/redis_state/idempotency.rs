//! `Idempotency-Key` records: one caller's key claimed by its first
//! request (`lua/idempotency_claim.lua`), finished with the reply to keep or
//! freed (`lua/idempotency_finish.lua`), read for a replay. What a record
//! holds is the api's (`api::idempotency`); this is where it lives.

use redis::AsyncCommands;

use super::{RedisCallError, RedisClient};
use crate::keys::IdempotencyKeys;
use crate::scripts;

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free: it is the caller's request's now.
    Claimed,
    /// The caller already has as many records as it may keep.
    Full,
    /// The key's record (running or done), as stored.
    Found(String),
}

/// The records, with their lifetimes and the bound per caller.
#[derive(Debug, Clone)]
pub struct IdempotencyRecords {
    client: RedisClient,
    /// How long a running record lives (seconds): the longest request.
    running_secs: u64,
    /// How long a done record is kept (seconds).
    kept_secs: u64,
    max_per_caller: u64,
}

impl IdempotencyRecords {
    pub fn new(
        client: RedisClient,
        running_secs: u64,
        kept_secs: u64,
        max_per_caller: u64,
    ) -> Self {
        Self {
            client,
            running_secs: running_secs.max(1),
            kept_secs: kept_secs.max(1),
            max_per_caller: max_per_caller.max(1),
        }
    }

    pub fn max_per_caller(&self) -> u64 {
        self.max_per_caller
    }

    /// Claims the key with `running` (the running record), unless it is
    /// someone's already or the caller is full. Two racing claims never
    /// both get [`Claim::Claimed`].
    pub async fn claim(
        &self,
        keys: &IdempotencyKeys,
        running: &str,
    ) -> Result<Claim, RedisCallError> {
        let found: Option<String> = self
            .client
            .run_script(
                &scripts::IDEMPOTENCY_CLAIM,
                &[keys.record.as_str(), keys.caller.as_str()],
                &[
                    running,
                    &self.running_secs.to_string(),
                    &self.max_per_caller.to_string(),
                ],
            )
            .await?;
        Ok(match found {
            None => Claim::Claimed,
            Some(full) if full == "full" => Claim::Full,
            Some(found) => Claim::Found(found),
        })
    }

    /// Finishes the request that claimed the key with `running`: keeps
    /// `done`, or frees the key when `None`. `Ok(false)`: the key was no
    /// longer this request's (its running record expired and another took
    /// it); nothing was written.
    pub async fn finish(
        &self,
        keys: &IdempotencyKeys,
        running: &str,
        done: Option<&str>,
    ) -> Result<bool, RedisCallError> {
        let finished: i64 = self
            .client
            .run_script(
                &scripts::IDEMPOTENCY_FINISH,
                &[keys.record.as_str(), keys.caller.as_str()],
                &[running, done.unwrap_or(""), &self.kept_secs.to_string()],
            )
            .await?;
        Ok(finished == 1)
    }

    /// The key's record, if any (read only: a replay claims nothing).
    pub async fn read(&self, keys: &IdempotencyKeys) -> Result<Option<String>, RedisCallError> {
        let record = keys.record.clone();
        self.client
            .run(|mut conn| async move { conn.get(record).await })
            .await
    }
}
