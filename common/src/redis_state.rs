//! Campaigns' state in Redis: one connection ([`RedisClient`]: the pool,
//! the timeouts, the errors) and one handle per concept, each in its own
//! file with its own small API:
//!
//! | handle | file | what |
//! |---|---|---|
//! | [`Gate`] | [`gate`] | a campaign's slots: take one (`lua/gate.lua`), withdraw a take whose reply was lost, give one back, count them, a dead letter's slot for its re-drive |
//! | [`CampaignMetas`] | [`meta`] | a campaign's meta (stock, window, closed, room rules): load, close, unload, read |
//! | [`StatusRecords`] | [`status`] | the per-user records `/coupons/me` reads |
//! | [`QueuedMarks`] | [`queued`] | the async-queue's `queued` marks |
//! | [`Rooms`] | [`room`] | the waiting rooms: join, look (`lua/room.lua`), the line's counters |
//! | [`LockSections`] | [`lock_section`] | the lock strategies' separate reads and fenced write |
//! | [`Repair`] | [`repair`] | reconcile's and rebuild's reads and repairs |
//! | [`IdempotencyRecords`] | [`idempotency`] | `Idempotency-Key` records: claim, finish, read |
//!
//! The locks themselves are `crate::lock`.
//!
//! Every call is bounded twice: by the wait for a connection (only long when
//! one has to be opened) and by the time Redis takes to answer. A call that
//! timed out after it was sent may still have run; callers of
//! [`Gate::take`] must treat [`RedisCallError::Timeout`] as "maybe taken".

mod client;
pub mod gate;
pub mod idempotency;
pub mod lock_section;
pub mod meta;
pub mod queued;
pub mod repair;
pub mod room;
pub mod status;

pub use client::{RedisCallError, RedisClient};
pub use gate::{Gate, GateReply, RedriveSlot, Refusal, Withdrawal};
pub use idempotency::{Claim, IdempotencyRecords};
pub use lock_section::{FencedTake, LockSections, Precheck};
pub use meta::{CampaignMeta, CampaignMetas, EpochState, RoomRules};
pub use queued::{QueueMark, QueuedMarks};
pub use repair::{AdminHold, DroppedSlot, Installed, NotInstalled, RebuildId, Repair};
pub use room::{RoomLine, RoomReply, RoomState, RoomView, Rooms, shuffled_position};
pub use status::{RecordedState, StatusRecord, StatusRecords};
