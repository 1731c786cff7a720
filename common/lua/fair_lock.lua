-- The fair lock's (ticket lock's) procedures. Not a script of its own: it is
-- put in front of fair_lock_acquire.lua, fair_lock_release.lua and
-- fair_lock_cancel.lua (common/src/scripts.rs).
--
-- The keys (FairLockKeys, common/src/keys.rs), in every script's order:
--   KEYS[1]  the lock (HASH owner token -> 1, with the lease as its TTL)
--   KEYS[2]  the last ticket handed out (STRING counter)
--   KEYS[3]  the ticket being served (STRING; absent: 1)
--   KEYS[4]  the waiters (HASH ticket -> "<deadline ms>:<token>"); a waiter
--            whose deadline passed counts as gone
--   KEYS[5]  the waiters by token (HASH token -> ticket): a waiter whose
--            acquire reply was lost does not know its ticket, and one that
--            knows it must never touch another's (the counters start again
--            from 1 once the line is empty)
--   KEYS[4] and KEYS[5] expire a wait and a lease after the last ticket
--   taken (fair_lock_acquire.lua); the counters and the lock do not

local function fair_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A waiter's entry: its deadline and its token.
local function fair_entry(entry)
  local deadline, token = string.match(entry, '^(%d+):(.*)$')
  return tonumber(deadline), token
end

-- Removes ticket's waiter from the line (both indexes).
local function fair_forget(lock_keys, ticket, entry)
  redis.call('HDEL', lock_keys[4], ticket)
  if entry then
    local _, token = fair_entry(entry)
    redis.call('HDEL', lock_keys[5], token)
  end
end

-- Steps `serving` past tickets up to `upto` whose waiter is gone (no entry,
-- or its deadline passed), deleting their entries; returns the first ticket
-- still waited for, or upto + 1. Each ticket is stepped past once.
local function fair_step_past(lock_keys, serving, upto, now)
  while serving <= upto do
    local entry = redis.call('HGET', lock_keys[4], serving)
    if entry and fair_entry(entry) > now then
      break
    end
    fair_forget(lock_keys, serving, entry)
    serving = serving + 1
  end
  return serving
end

-- With the lock free, serves `serving` or the next ticket still waited for
-- and wakes that waiter on `channel`; with nobody left, removes the
-- counters (the next waiter starts again from ticket 1).
local function fair_serve_next(lock_keys, serving, now, channel)
  local last = tonumber(redis.call('GET', lock_keys[2]) or '0')
  serving = fair_step_past(lock_keys, serving, last, now)
  if serving > last then
    redis.call('DEL', lock_keys[2], lock_keys[3], lock_keys[4], lock_keys[5])
  else
    redis.call('SET', lock_keys[3], serving)
    redis.call('PUBLISH', channel, tostring(serving))
  end
end
