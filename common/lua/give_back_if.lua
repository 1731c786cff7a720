-- Give back a slot only if it is still the one a repair saw: the same user
-- with the same coupon id (or, for a rebuilt slot, still none). A slot
-- given back and taken again since (another coupon id) is another slot, and
-- is left alone.
--
-- KEYS[1]  coupon:{c}:users   SET of users with a slot
-- KEYS[2]  coupon:{c}:taken   counter of slots taken
-- KEYS[3]  coupon:{c}:slots   HASH user id -> the coupon id its slot names
-- KEYS[4]  coupon:{c}:admin   the admin lock (admin_fence.lua)
-- ARGV[1]  user id
-- ARGV[2]  the coupon id the repair saw, or "" when the slot named none
-- ARGV[3]  the repair's admin lock token
--
-- Returns 1 when the slot was given back, 0 when the user has no slot or
-- another one; the error ADMINLOST when the lock is not the repair's.
local lost = admin_fence(KEYS[4], ARGV[3])
if lost then
  return lost
end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local coupon = redis.call('HGET', KEYS[3], ARGV[1])
if (coupon or '') ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DECR', KEYS[2])
return 1
