-- The gate: take a slot for each user of a batch, in order, atomically
-- (after room.lua, slots.lua, fence.lua).
--
-- KEYS[1]  coupon:{c}:meta    HASH stock, starts_ms, ends_ms ("none" = no end), state
--          (open|closed), epoch (fence.lua), and wr_rate, wr_ttl_ms, wr_seed when
--          it has a waiting room
-- KEYS[2]  coupon:{c}:users   SET of users with a slot (issued, pending or queued)
-- KEYS[3]  coupon:{c}:taken   counter of slots taken
-- KEYS[4]  coupon:{c}:slots   HASH user id -> the coupon id its slot names
-- KEYS[5..9]  coupon:{c}:room, :room:order, :room:windows, :room:used,
--          :room:joined_at (the waiting room, room.lua; untouched without one)
-- then, for the i-th take of the batch (i = 1..n):
-- KEYS[8 + 2i]  coupon:{c}:status:<user>  an earlier request's status record
-- KEYS[9 + 2i]  coupon:{c}:void:<coupon id>  present when this take was
--          withdrawn (withdraw.lua) before this script got to run
-- ARGV[1]  the run_id of the server the caller's connection reached ("" to
--          ask it: Redis Cluster)
-- ARGV[2i], ARGV[2i + 1]  the i-th take's user id and the coupon id its slot
--          names
--
-- Returns one reply per take, in order: "taken", "duplicate", "sold_out",
-- "not_open", "closed", "missing" (no meta: the campaign's gate state is not
-- loaded), "stale" (the state was loaded on another server: fenced until
-- rebuilt), "withdrawn" (the caller gave up on this take before Redis ran
-- it), "not_admitted" (the campaign has a waiting room that has not admitted
-- the user just now). Behind a waiting room a slot taken answers
-- "taken:<ms>": how long the user waited between joining and being admitted.
--
-- The takes run one after the other as if each were a call of its own, at
-- one instant (the server's time, read once): a later take sees what the
-- earlier ones wrote (a user twice in a batch: "duplicate" the second time,
-- the stock counted across the batch). The meta, the fence and the count of
-- slots taken are read once per batch.
--
-- Run again with the coupon id of the slot it took (slots.lua,
-- slot_is_own), a take answers "taken" and writes nothing: a Redis Cluster
-- client re-sends a call whose reply a broken connection lost. (Behind a
-- waiting room without the wait: that run did not admit the user.)
--
-- Every check of a take runs before its first write, so a refused user
-- changes nothing; a sold-out user is not added to the set. Time comes from
-- the Redis server, so api instances with skewed clocks agree on the sale
-- window.
local meta = redis.call('HMGET', KEYS[1], 'stock', 'starts_ms', 'ends_ms', 'state', 'wr_rate',
  'wr_ttl_ms', 'wr_seed', 'epoch')
-- What every take of the batch answers before its own checks, if anything.
local all = nil
local now_ms, shut, stock, taken = nil, nil, nil, nil
if not meta[1] then
  all = 'missing'
elseif not fence_holds(meta[8], ARGV[1]) then
  all = 'stale'
else
  now_ms = room_now()
  if meta[4] == 'closed' or (meta[3] ~= 'none' and now_ms >= tonumber(meta[3])) then
    shut = 'closed'
  elseif now_ms < tonumber(meta[2]) then
    shut = 'not_open'
  end
  stock = tonumber(meta[1])
  taken = tonumber(redis.call('GET', KEYS[3]) or '0')
end

local function take(user, coupon, status, void)
  if redis.call('EXISTS', void) == 1 then
    return 'withdrawn'
  end
  if all then
    return all
  end
  if shut then
    if slot_is_own(KEYS[4], user, coupon) then
      return 'taken'
    end
    return shut
  end
  if redis.call('SISMEMBER', KEYS[2], user) == 1 then
    if slot_is_own(KEYS[4], user, coupon) then
      return 'taken'
    end
    return 'duplicate'
  end
  if taken >= stock then
    return 'sold_out'
  end
  local window, waited = nil, nil
  if meta[5] then
    local K = room_keys(KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9])
    local ttl_ms = tonumber(meta[6])
    local room = room_advance(K, tonumber(meta[5]), ttl_ms, tonumber(meta[2]), now_ms, false)
    local pos = room_position(K, room, user, meta[7])
    local ends, admitted_at
    if pos then
      window, ends, admitted_at = room_window(K, room, pos, ttl_ms, now_ms)
    end
    if not window then
      return 'not_admitted'
    end
    waited = room_waited(K, user, admitted_at)
  end
  slot_take(KEYS[2], KEYS[3], status, KEYS[4], user, coupon, KEYS[8], window)
  taken = taken + 1
  if waited then
    return 'taken:' .. waited
  end
  return 'taken'
end

local replies = {}
for i = 1, (#ARGV - 1) / 2 do
  replies[i] = take(ARGV[2 * i], ARGV[2 * i + 1], KEYS[8 + 2 * i], KEYS[9 + 2 * i])
end
return replies
