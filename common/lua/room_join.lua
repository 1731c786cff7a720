-- Join a campaign's waiting room (after room.lua, fence.lua): a user who has not
-- joined gets the next join number, unless there is nothing left to wait
-- for (closed, sold out). Joining again changes nothing.
--
-- KEYS[1]  coupon:{c}:meta          HASH (with wr_rate, wr_ttl_ms, wr_seed, epoch)
-- KEYS[2]  coupon:{c}:users         SET of users with a slot
-- KEYS[3]  coupon:{c}:taken         counter of slots taken
-- KEYS[4]  coupon:{c}:room          HASH, the room's counters
-- KEYS[5]  coupon:{c}:room:order    HASH user -> join number
-- KEYS[6]  coupon:{c}:room:windows  ZSET of admission windows
-- KEYS[7]  coupon:{c}:room:used     HASH window -> slots taken by its users
-- KEYS[8]  coupon:{c}:room:joined_at  HASH user -> when it joined (ms)
-- ARGV[1]  user id
-- ARGV[2]  "join" or "look" (the same view, no join)
-- ARGV[3]  the run_id of the server the caller's connection reached ("" to
--          ask it: Redis Cluster)
--
-- Returns {"missing"} (no meta), {"stale"} (fenced), {"no_room"} (the campaign has no waiting
-- room), or the user's view {state, position, ahead, admitted_until_ms,
-- retry_after_ms} (room_view in room.lua).
local meta = redis.call('HMGET', KEYS[1], 'stock', 'starts_ms', 'ends_ms', 'state', 'wr_rate',
  'wr_ttl_ms', 'wr_seed', 'epoch')
if not meta[1] then
  return { 'missing' }
end
if not fence_holds(meta[8], ARGV[3]) then
  return { 'stale' }
end
if not meta[5] then
  return { 'no_room' }
end
local K = room_keys(KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
local now = room_now()
local starts_ms = tonumber(meta[2])
local rate, ttl_ms, seed = tonumber(meta[5]), tonumber(meta[6]), meta[7]
local closed = meta[4] == 'closed' or (meta[3] ~= 'none' and now >= tonumber(meta[3]))
local sold_out = tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(meta[1])
local room = room_advance(K, rate, ttl_ms, starts_ms, now, sold_out or closed)
local has_slot = redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1
if ARGV[2] == 'join' and not has_slot and not closed and not sold_out
    and redis.call('HEXISTS', K.order, ARGV[1]) == 0 then
  room.joined = redis.call('HINCRBY', K.room, 'joined', 1)
  redis.call('HSET', K.order, ARGV[1], room.joined)
  redis.call('HSET', K.joined_at, ARGV[1], now)
  if now >= starts_ms then
    -- A line with credit to spare admits the newcomer at once.
    room = room_advance(K, rate, ttl_ms, starts_ms, now, false)
  end
end
return room_view(K, room, ARGV[1], seed, rate, ttl_ms, starts_ms, now, has_slot, sold_out, closed)
