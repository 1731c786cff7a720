-- Release a lock only if this holder still owns it (compare-and-delete).
--
-- KEYS[1]  the lock key (STRING holding the owner's token)
-- ARGV[1]  the owner's token
-- ARGV[2]  the lock's release channel: an empty message wakes a waiter
--
-- Returns 1 when released, 0 when the lock is gone or owned by another token
-- (its lease expired and someone else took it): a non-owner changes nothing.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0
