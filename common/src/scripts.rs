//! The Lua scripts, loaded from `common/lua/*.lua` (each file starts with a
//! KEYS/ARGV/Returns header). `redis::Script` runs them by SHA and falls back
//! to sending the body when the server does not know it yet.

use std::sync::LazyLock;

use redis::Script;

/// Admit a user: dedupe and cap stock in one atomic step.
pub static GATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/gate.lua")));

/// Compensation: `if SREM == 1 then DECR`.
pub static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/release.lua")));

/// Load a new campaign's meta and zero counter.
pub static LOAD_META: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/load_meta.lua")));

/// Close a campaign's gate if its meta exists.
pub static CLOSE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/close.lua")));
