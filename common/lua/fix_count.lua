-- Reconciliation: set the count of slots taken to the size of the set.
--
-- KEYS[1]  coupon:{c}:users   SET of users with a slot
-- KEYS[2]  coupon:{c}:taken   counter
-- KEYS[3]  coupon:{c}:admin   the admin lock (admin_fence.lua)
-- ARGV[1]  the repair's admin lock token
--
-- Returns the drift that was corrected (counter − set size before); the
-- error ADMINLOST when the lock is not the repair's. The gate script keeps
-- both in step; they drift only when a lock strategy's separate SADD and
-- INCR were cut between the two.
local lost = admin_fence(KEYS[3], ARGV[1])
if lost then
  return lost
end
local size = redis.call('SCARD', KEYS[1])
local count = tonumber(redis.call('GET', KEYS[2]) or '0')
if count ~= size then
  redis.call('SET', KEYS[2], size)
end
return count - size
