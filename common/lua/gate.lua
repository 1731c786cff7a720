-- The gate: take a slot for one user, atomically (after room.lua, slots.lua,
-- fence.lua).
--
-- KEYS[1]  coupon:{c}:meta    HASH stock, starts_ms, ends_ms ("none" = no end), state
--          (open|closed), epoch (fence.lua), and wr_rate, wr_ttl_ms, wr_seed when
--          it has a waiting room
-- KEYS[2]  coupon:{c}:users   SET of users with a slot (issued, pending or queued)
-- KEYS[3]  coupon:{c}:taken   counter of slots taken
-- KEYS[4]  coupon:{c}:status:<user>  an earlier request's status record
-- KEYS[5]  coupon:{c}:slots   HASH user id -> the coupon id its slot names
-- KEYS[6]  coupon:{c}:void:<coupon id>  present when this request was
--          withdrawn (withdraw.lua) before this script got to run
-- KEYS[7..11]  coupon:{c}:room, :room:order, :room:windows, :room:used,
--          :room:joined_at (the waiting room, room.lua; untouched without one)
-- ARGV[1]  user id
-- ARGV[2]  the coupon id the slot names
-- ARGV[3]  the run_id of the server the caller's connection reached ("" to
--          ask it: Redis Cluster)
--
-- Returns one of: "taken", "duplicate", "sold_out", "not_open", "closed",
-- "missing" (no meta: the campaign's gate state is not loaded), "stale" (the
-- state was loaded on another server: fenced until rebuilt), "withdrawn"
-- (the caller gave up on this request before Redis ran it), "not_admitted"
-- (the campaign has a waiting room that has not admitted the user just now).
-- Behind a waiting room a slot taken answers "taken:<ms>": how long the
-- user waited between joining and being admitted.
--
-- Run again with the coupon id of the slot it took (slots.lua,
-- slot_is_own), it answers "taken" and writes nothing: a Redis Cluster client
-- re-sends a call whose reply a broken connection lost. (Behind a waiting
-- room without the wait: that run did not admit the user.)
--
-- Every check runs before the first write, so a refused user changes nothing;
-- a sold-out user is not added to the set. Time comes from the Redis server,
-- so api instances with skewed clocks agree on the sale window.
if redis.call('EXISTS', KEYS[6]) == 1 then
  return 'withdrawn'
end
local meta = redis.call('HMGET', KEYS[1], 'stock', 'starts_ms', 'ends_ms', 'state', 'wr_rate',
  'wr_ttl_ms', 'wr_seed', 'epoch')
if not meta[1] then
  return 'missing'
end
if not fence_holds(meta[8], ARGV[3]) then
  return 'stale'
end
local now_ms = room_now()
local shut = nil
if meta[4] == 'closed' or (meta[3] ~= 'none' and now_ms >= tonumber(meta[3])) then
  shut = 'closed'
elseif now_ms < tonumber(meta[2]) then
  shut = 'not_open'
end
if shut then
  if slot_is_own(KEYS[5], ARGV[1], ARGV[2]) then
    return 'taken'
  end
  return shut
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  if slot_is_own(KEYS[5], ARGV[1], ARGV[2]) then
    return 'taken'
  end
  return 'duplicate'
end
if tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(meta[1]) then
  return 'sold_out'
end
local window, waited = nil, nil
if meta[5] then
  local K = room_keys(KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11])
  local ttl_ms = tonumber(meta[6])
  local room = room_advance(K, tonumber(meta[5]), ttl_ms, tonumber(meta[2]), now_ms, false)
  local pos = room_position(K, room, ARGV[1], meta[7])
  local ends, admitted_at
  if pos then
    window, ends, admitted_at = room_window(K, room, pos, ttl_ms, now_ms)
  end
  if not window then
    return 'not_admitted'
  end
  waited = room_waited(K, ARGV[1], admitted_at)
end
slot_take(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], KEYS[10], window)
if waited then
  return 'taken:' .. waited
end
return 'taken'
