-- Fair lock, a waiter gives up (Redisson's acquireFailed): leave the queue
-- and give the waiters behind it back the wait it was holding for them.
--
-- KEYS[1]  the wait queue (LIST)
-- KEYS[2]  the waiters' timeouts (ZSET)
-- KEYS[3]  the lock (HASH)
-- ARGV[1]  the waiter's token
-- ARGV[2]  how long a waiter may wait for its turn, in ms
-- ARGV[3]  the lock's release channel
--
-- Returns 1 when the waiter was queued, 0 otherwise. When it was at the head
-- and the lock is free, the new head is woken.
local queue = redis.call('LRANGE', KEYS[1], 0, -1)
local i = 1
while i <= #queue and queue[i] ~= ARGV[1] do
  i = i + 1
end
if i > #queue then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
for j = i + 1, #queue do
  redis.call('ZINCRBY', KEYS[2], -tonumber(ARGV[2]), queue[j])
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('LREM', KEYS[1], 0, ARGV[1])
if i == 1 and redis.call('EXISTS', KEYS[3]) == 0 then
  local next = redis.call('LINDEX', KEYS[1], 0)
  if next then
    redis.call('PUBLISH', ARGV[3], next)
  end
end
return 1
