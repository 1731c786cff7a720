-- Archive a closed campaign: the set and the hash that grow with its slots
-- are deleted; its meta (closed here too), count and close's mark are kept.
--
-- KEYS[1]  coupon:{c}:meta    HASH, its `state` set to closed if present
-- KEYS[2]  coupon:{c}:closed  STRING, the close's mark, written first
-- KEYS[3]  coupon:{c}:users   SET, deleted
-- KEYS[4]  coupon:{c}:slots   HASH, deleted
-- KEYS[5]  coupon:{c}:admin   the admin lock (admin_fence.lua)
-- ARGV[1]  the archive's admin lock token
--
-- The close is written in the same step (close.lua's, idempotent), so the
-- users set is never gone from a gate that could still take a slot: a gate
-- without it would let a user who holds a slot take a second one. Fenced on
-- the admin lock, which reconcile, rebuild and a re-drive hold too: an
-- archive paused past its lease deletes nothing (the error ADMINLOST).
-- UNLINK: a large campaign's set is freed on Redis's background thread.
--
-- Returns how many of the two keys it deleted.
local lost = admin_fence(KEYS[5], ARGV[1])
if lost then
  return lost
end
redis.call('SET', KEYS[2], '1')
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'state', 'closed')
end
return redis.call('UNLINK', KEYS[3], KEYS[4])
