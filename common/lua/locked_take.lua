-- The write of the lock strategies' section, fenced twice (after room.lua,
-- slots.lua, fence.lua): take a slot for a user only if the caller still
-- holds the campaign's lock, and the campaign's state holds on this server. The section's checks (meta, time, SISMEMBER, GET) run
-- before it as separate commands, as in the seed; this makes the write safe
-- when a holder paused past its lease wakes up. With a waiting room, the
-- user must be admitted just now.
--
-- KEYS[1]  the lock: a STRING holding the owner's token (lease lock) or a
--          HASH with the owner's token as a field (fair lock)
-- KEYS[2]  coupon:{c}:users          SET of users with a slot
-- KEYS[3]  coupon:{c}:taken          counter of slots taken
-- KEYS[4]  coupon:{c}:status:<user>  STRING, an earlier request's record
-- KEYS[5]  coupon:{c}:slots          HASH user id -> coupon id (gate.lua)
-- KEYS[6]  coupon:{c}:void:<coupon id>  present when the request was withdrawn
-- KEYS[7]  coupon:{c}:meta  HASH (stock, window, state, epoch, the waiting
--          room's wr_* fields if any)
-- KEYS[8..12]  coupon:{c}:room, :room:order, :room:windows, :room:used,
--          :room:joined_at
-- ARGV[1]  the caller's lock token
-- ARGV[2]  user id
-- ARGV[3]  the coupon id the slot names
-- ARGV[4]  the run_id of the server the caller's connection reached ("" to
--          ask it: Redis Cluster)
--
-- Every check of the gate is made here again (the meta present, not closed,
-- the window open, the count below the stock): the section's own checks
-- before it are the seed's, but a combining holder (several users in one
-- hold) sends its users' takes in arrival order after one read of the meta,
-- and a batch can outlive a close, the end of the window, or a rebuild that
-- deleted the meta; none of them may take a slot then.
--
-- Run again with the coupon id of the slot it took (a Redis Cluster client
-- re-sends a call whose reply a broken connection lost, slots.lua,
-- slot_is_own), it answers "taken" and writes nothing, the lock held or not.
--
-- Returns "taken", "duplicate" (the user has a slot: nothing written),
-- "sold_out" (the count reached the stock: nothing written), "closed"
-- (closed or past its end), "not_open", "missing" (no meta), "stale" (fenced),
-- "lost" (the lock is not the caller's: nothing written), "withdrawn"
-- (the caller gave up on this request before Redis ran it) or
-- "not_admitted" (not admitted by the waiting room: nothing written).
if redis.call('EXISTS', KEYS[6]) == 1 then
  return 'withdrawn'
end
local kind = redis.call('TYPE', KEYS[1])['ok']
local held = false
if kind == 'string' then
  held = redis.call('GET', KEYS[1]) == ARGV[1]
elseif kind == 'hash' then
  held = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
end
-- The answer of a run again whose first run took the slot: 'taken', unless
-- the state was since fenced (this server took over: its rebuild decides).
local function own_slot()
  if not fence_holds(redis.call('HGET', KEYS[7], 'epoch'), ARGV[4]) then
    return 'stale'
  end
  return 'taken'
end
if not held then
  if slot_is_own(KEYS[5], ARGV[2], ARGV[3]) then
    return own_slot()
  end
  return 'lost'
end
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then
  if slot_is_own(KEYS[5], ARGV[2], ARGV[3]) then
    return own_slot()
  end
  return 'duplicate'
end
local window = nil
local meta = redis.call('HMGET', KEYS[7], 'starts_ms', 'wr_rate', 'wr_ttl_ms', 'wr_seed', 'stock',
  'state', 'ends_ms', 'epoch')
if not meta[5] then
  return 'missing'
end
if not fence_holds(meta[8], ARGV[4]) then
  return 'stale'
end
local now = room_now()
if meta[6] == 'closed' or (meta[7] ~= 'none' and now >= tonumber(meta[7])) then
  return 'closed'
end
if now < tonumber(meta[1]) then
  return 'not_open'
end
if tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(meta[5]) then
  return 'sold_out'
end
if meta[2] then
  local K = room_keys(KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12])
  local ttl_ms = tonumber(meta[3])
  local room = room_advance(K, tonumber(meta[2]), ttl_ms, tonumber(meta[1]), now, false)
  local pos = room_position(K, room, ARGV[2], meta[4])
  if pos then
    window = room_window(K, room, pos, ttl_ms, now)
  end
  if not window then
    return 'not_admitted'
  end
end
slot_take(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[2], ARGV[3], KEYS[11], window)
return 'taken'
