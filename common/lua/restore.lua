-- Reconciliation's repair of phantoms: users with a row but no slot get
-- their slot back (the counter is fixed afterwards: fix_count.lua).
--
-- KEYS[1]  coupon:{c}:users   SET of users with a slot
-- KEYS[2]  coupon:{c}:admin   the admin lock (admin_fence.lua)
-- ARGV[1]  the repair's admin lock token
-- ARGV[2…] user ids
--
-- Returns how many were added; the error ADMINLOST when the lock is not
-- the repair's.
local lost = admin_fence(KEYS[2], ARGV[1])
if lost then
  return lost
end
local added = 0
for i = 2, #ARGV do
  added = added + redis.call('SADD', KEYS[1], ARGV[i])
end
return added
