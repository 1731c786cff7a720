//! Which user each request speaks for, and the ledger of what each promised
//! user was answered (for the audit).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::stats::Outcome;

/// How requests map to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum UserMode {
    /// Every request a new user (the seed's runs: stock never ran out).
    Unique,
    /// Each vuser is one user; after its first request it meets `duplicate`.
    PerVuser,
    /// A small set of users, picked at random, repeats.
    Hot { users: u32 },
}

impl UserMode {
    /// The ledger key of a request: what, with the vuser, names its user.
    pub fn key(&self, seq: u64, random: u64) -> u64 {
        match self {
            Self::Unique => seq,
            Self::PerVuser => 0,
            Self::Hot { users } => random % u64::from((*users).max(1)),
        }
    }

    /// Writes the user id of (`vuser`, `key`) into `out` (cleared first).
    pub fn user(&self, run: &str, vuser: u32, key: u64, out: &mut String) {
        out.clear();
        let _ = match self {
            Self::Unique => write!(out, "{run}-{vuser}-{key}"),
            Self::PerVuser => write!(out, "{run}-{vuser}"),
            Self::Hot { .. } => write!(out, "{run}-hot-{key}"),
        };
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Unique => "unique".into(),
            Self::PerVuser => "per-vuser".into(),
            Self::Hot { users } => format!("hot ({users} users)"),
        }
    }
}

/// What promised users (accepted, pending, queued) were answered, kept
/// compactly: 16 bytes a request, the id rebuilt from (vuser, key).
#[derive(Debug)]
pub struct Ledger {
    shards: Vec<Mutex<Vec<(u32, u64, Outcome)>>>,
}

impl Ledger {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    pub fn record(&self, vuser: u32, key: u64, outcome: Outcome) {
        if outcome.is_promise() {
            self.shards[vuser as usize % self.shards.len()]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((vuser, key, outcome));
        }
    }

    /// Every promised user with its strongest answer (accepted over
    /// pending over queued).
    pub fn promised(&self, mode: &UserMode, run: &str) -> BTreeMap<String, Outcome> {
        let mut users = BTreeMap::new();
        let mut id = String::new();
        for shard in &self.shards {
            for &(vuser, key, outcome) in shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
            {
                mode.user(run, vuser, key, &mut id);
                users
                    .entry(id.clone())
                    .and_modify(|o: &mut Outcome| {
                        if rank(outcome) < rank(*o) {
                            *o = outcome;
                        }
                    })
                    .or_insert(outcome);
            }
        }
        users
    }
}

fn rank(o: Outcome) -> u8 {
    match o {
        Outcome::Accepted => 0,
        Outcome::Pending => 1,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_follow_the_mode() {
        let mut out = String::new();
        UserMode::Unique.user("r1", 3, 17, &mut out);
        assert_eq!(out, "r1-3-17");
        UserMode::PerVuser.user("r1", 3, UserMode::PerVuser.key(17, 99), &mut out);
        assert_eq!(out, "r1-3");
        let hot = UserMode::Hot { users: 10 };
        assert_eq!(hot.key(5, 123), 3);
        hot.user("r1", 3, 3, &mut out);
        assert_eq!(out, "r1-hot-3");
    }

    #[test]
    fn the_ledger_keeps_promised_users_with_their_strongest_answer() {
        let ledger = Ledger::new(2);
        let mode = UserMode::Hot { users: 10 };
        ledger.record(0, 1, Outcome::Queued);
        ledger.record(1, 1, Outcome::Accepted);
        ledger.record(0, 2, Outcome::Duplicate);
        ledger.record(1, 3, Outcome::Pending);
        let promised = ledger.promised(&mode, "r");
        assert_eq!(promised.len(), 2);
        assert_eq!(promised["r-hot-1"], Outcome::Accepted);
        assert_eq!(promised["r-hot-3"], Outcome::Pending);
    }
}
