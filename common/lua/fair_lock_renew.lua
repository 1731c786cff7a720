-- Fair lock (ticket lock), extend a held lock's lease (the watchdog).
--
-- KEYS[1]  the lock (HASH owner token -> 1)
-- ARGV[1]  the owner's token
-- ARGV[2]  the new lease, in milliseconds
--
-- Returns 1 when extended, 0 when the lock is no longer ours.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
