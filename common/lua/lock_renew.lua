-- Extend a held lock's lease (the watchdog), only if this holder owns it.
--
-- KEYS[1]  the lock key (STRING holding the owner's token)
-- ARGV[1]  the owner's token
-- ARGV[2]  the new lease, in milliseconds
--
-- Returns 1 when extended, 0 when the lock is no longer ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
