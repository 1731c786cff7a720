//! Redis key layout.
//!
//! Every key of a campaign carries the campaign id as a hash tag (`{…}`), so
//! on Redis Cluster they all live in one slot and the Lua scripts, which touch
//! several of them, stay legal.

use crate::ids::{CampaignId, CouponId, UserId};

/// ZSET of campaign ids a forced rebuild fenced on a server that did not
/// change, each scored with Redis's time (ms) of its last add: the gate
/// keeper's hint, read every tick, so that a forced rebuild that fails (or
/// is killed) leaves its campaign fenced for one keeper tick and a
/// rebuild, not until the keeper's full scan. Not a campaign's key (no
/// hash tag): written and read on its own (`lua/fenced_hint*.lua`). Lost
/// with the rest when Redis restarts empty; the keeper then looks at every
/// campaign anyway (its server changed).
pub const FENCED_CAMPAIGNS: &str = "coupon:fenced";

/// The keys of one campaign.
#[derive(Debug, Clone)]
pub struct CampaignKeys {
    prefix: String,
}

impl CampaignKeys {
    pub fn new(campaign: &CampaignId) -> Self {
        Self {
            prefix: format!("coupon:{{{campaign}}}"),
        }
    }

    /// HASH `stock`, `starts_ms`, `ends_ms` (`none`: no end), `state`; its presence means the
    /// gate state is loaded.
    pub fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }

    /// STRING: the campaign was closed (`lua/close.lua`), written even when
    /// its meta is missing, so that a rebuild's load keeps the close.
    pub fn closed(&self) -> String {
        format!("{}:closed", self.prefix)
    }

    /// SET of the users with a slot (issued, pending or queued).
    pub fn users(&self) -> String {
        format!("{}:users", self.prefix)
    }

    /// Counter of slots taken.
    pub fn taken(&self) -> String {
        format!("{}:taken", self.prefix)
    }

    /// HASH user id -> coupon id: the coupon id each slot's request named
    /// (written when the slot is taken, removed when it is given back), so
    /// that a request whose reply from Redis was lost can be told from
    /// another.
    pub fn slots(&self) -> String {
        format!("{}:slots", self.prefix)
    }

    /// STRING (with a TTL): the take that named `coupon` was withdrawn
    /// before Redis ran it; if it runs later, it writes nothing.
    pub fn void(&self, coupon: &CouponId) -> String {
        format!("{}:void:{coupon}", self.prefix)
    }

    /// The waiting room's keys (`common/lua/room.lua`).
    pub fn room(&self) -> RoomKeys {
        RoomKeys {
            room: format!("{}:room", self.prefix),
            order: format!("{}:room:order", self.prefix),
            windows: format!("{}:room:windows", self.prefix),
            used: format!("{}:room:used", self.prefix),
            joined_at: format!("{}:room:joined_at", self.prefix),
        }
    }

    /// STRING (JSON, with a TTL): the last asynchronous state of one user's
    /// request (`pending`, `queued`, `rejected`), read by `/coupons/me`.
    pub fn status(&self, user: &UserId) -> String {
        format!("{}:status:{user}", self.prefix)
    }

    /// The campaign's lease lock (`distributed-lock`; STRING holding a token).
    pub fn lock(&self) -> String {
        format!("{}:lock", self.prefix)
    }

    /// The lock reconcile, rebuild and a re-drive hold (STRING holding a token).
    pub fn admin_lock(&self) -> String {
        format!("{}:admin", self.prefix)
    }

    /// STRING (with a TTL): the token of the rebuild under way; a rebuild
    /// installs its state only while the token is its own
    /// (`lua/rebuild_install.lua`).
    pub fn rebuild(&self) -> String {
        format!("{}:rebuild", self.prefix)
    }

    /// SET (with a TTL): the users a rebuild staged under `token`, renamed
    /// into [`CampaignKeys::users`] when it installs them.
    pub fn rebuild_users(&self, token: &str) -> String {
        format!("{}:rebuild:{token}", self.prefix)
    }

    /// The campaign's fair lock (`fair-lock`).
    pub fn fair_lock(&self) -> FairLockKeys {
        FairLockKeys::new(&format!("{}:fairlock", self.prefix))
    }

    /// Pattern matching every key of the campaign (cleanup of test data).
    pub fn all_pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }
}

/// The keys of one caller's `Idempotency-Key` records, by digests (hex
/// SHA-256) so that neither the caller nor a key appears in Redis and a
/// caller can only ever reach its own records. Both carry the caller's
/// digest as their hash tag (one Redis Cluster slot).
#[derive(Debug, Clone)]
pub struct IdempotencyKeys {
    /// STRING, JSON, with a TTL: the record of one key.
    pub record: String,
    /// ZSET of the caller's records scored by when each expires: the bound
    /// on how many one caller keeps.
    pub caller: String,
}

impl IdempotencyKeys {
    pub fn new(caller_digest: &str, key_digest: &str) -> Self {
        Self {
            record: format!("idempotency:{{{caller_digest}}}:{key_digest}"),
            caller: format!("idempotency:{{{caller_digest}}}"),
        }
    }
}

/// The keys of a campaign's waiting room, in the order the scripts take them.
#[derive(Debug, Clone)]
pub struct RoomKeys {
    /// HASH of the room's counters.
    pub room: String,
    /// HASH user -> join number.
    pub order: String,
    /// ZSET of admission windows.
    pub windows: String,
    /// HASH window -> slots taken.
    pub used: String,
    /// HASH user -> when it joined (ms).
    pub joined_at: String,
}

impl RoomKeys {
    pub fn all(&self) -> [&str; 5] {
        [
            self.room.as_str(),
            self.order.as_str(),
            self.windows.as_str(),
            self.used.as_str(),
            self.joined_at.as_str(),
        ]
    }
}

/// The keys of one fair lock (a ticket lock; `common/lua/fair_lock*.lua`).
#[derive(Debug, Clone)]
pub struct FairLockKeys {
    /// HASH owner token -> 1, with the lease as its TTL.
    pub lock: String,
    /// STRING: the last ticket handed out.
    pub tickets: String,
    /// STRING: the ticket being served.
    pub serving: String,
    /// HASH ticket -> `"<deadline ms>:<token>"`: the waiters in line.
    pub waiting: String,
    /// HASH token -> ticket: the waiters by token, for one that does not
    /// know its ticket (its first reply lost).
    pub tokens: String,
}

impl FairLockKeys {
    /// The keys of the fair lock named `lock` (its siblings share the name,
    /// and so its hash tag).
    pub fn new(lock: &str) -> Self {
        Self {
            lock: lock.to_owned(),
            tickets: format!("{lock}:tickets"),
            serving: format!("{lock}:serving"),
            waiting: format!("{lock}:waiting"),
            tokens: format!("{lock}:tokens"),
        }
    }

    /// In the order the scripts take them.
    pub fn all(&self) -> [&str; 5] {
        [
            self.lock.as_str(),
            self.tickets.as_str(),
            self.serving.as_str(),
            self.waiting.as_str(),
            self.tokens.as_str(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shares_the_campaign_hash_tag() {
        let c = CampaignId::parse("0192f0c4-7a51-7cc3-9a35-6b1c0d2e8f10").unwrap();
        let k = CampaignKeys::new(&c);
        let tag = "{0192f0c4-7a51-7cc3-9a35-6b1c0d2e8f10}";
        let user = UserId::parse("u1").unwrap();
        let fair = k.fair_lock();
        for key in [
            k.meta(),
            k.users(),
            k.taken(),
            k.status(&user),
            k.slots(),
            k.void(&CouponId::new()),
            k.room().room,
            k.room().order,
            k.room().windows,
            k.room().used,
            k.room().joined_at,
            k.lock(),
            k.admin_lock(),
            k.closed(),
            k.rebuild(),
            k.rebuild_users("token"),
            fair.lock,
            fair.tickets,
            fair.serving,
            fair.waiting,
            fair.tokens,
        ] {
            assert!(key.starts_with(&format!("coupon:{tag}:")), "{key}");
        }
        assert_eq!(k.meta(), format!("coupon:{tag}:meta"));
    }
}
