-- async-queue: record that a user's request is queued, unless the user
-- already has a slot or has a request queued or pending.
--
-- KEYS[1]  coupon:{c}:meta            HASH (must exist: the campaign is
--          loaded; its epoch must hold on this server, fence.lua)
-- KEYS[2]  coupon:{c}:users           SET of users with a slot
-- KEYS[3]  coupon:{c}:status:<user>   STRING (JSON status record)
-- ARGV[1]  user id
-- ARGV[2]  the queued record (JSON)
-- ARGV[3]  its TTL in seconds
-- ARGV[4]  the run_id of the server the caller's connection reached ("" to
--          ask it: Redis Cluster)
--
-- Returns "queued", "duplicate", "closed" (closed by an admin: a request
-- after the close is refused at once, never queued to be refused later),
-- "missing" (no meta) or "stale" (fenced).
--
-- Run again (a Redis Cluster client sends a call again when the connection it
-- went out on broke before the reply came back), it finds this very request's
-- record (ARGV[2]: its time has nanoseconds) and answers what the first run
-- did, "queued", before any other check: a close or a fence since then would
-- otherwise refuse a request whose mark stays (a 409 to the user's retry for
-- a mark with nothing queued behind it). The queue's take then meets the
-- close or the fence, as any queued request's does.
local current = redis.call('GET', KEYS[3])
if current == ARGV[2] then
  return 'queued'
end
local epoch = redis.call('HMGET', KEYS[1], 'stock', 'epoch', 'state')
if not epoch[1] then
  return 'missing'
end
if not fence_holds(epoch[2], ARGV[4]) then
  return 'stale'
end
if epoch[3] == 'closed' then
  return 'closed'
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return 'duplicate'
end
if current then
  local state = cjson.decode(current)['state']
  if state == 'queued' or state == 'pending' or state == 'issued' then
    return 'duplicate'
  end
end
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3])
return 'queued'
