-- Fair lock, release (Redisson's unlock without re-entry counting).
--
-- KEYS[1]  the lock (HASH owner token -> 1)
-- KEYS[2]  the wait queue (LIST)
-- KEYS[3]  the waiters' timeouts (ZSET)
-- ARGV[1]  the releasing owner's token
-- ARGV[2]  the lock's release channel: the message names the waiter at the
--          head of the queue, the only one that may take the lock next
--
-- Returns 1 when released, 0 when this token does not hold the lock (a
-- non-owner changes nothing).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
while true do
  local head = redis.call('LINDEX', KEYS[2], 0)
  if head == false then break end
  local timeout = tonumber(redis.call('ZSCORE', KEYS[3], head))
  if timeout == nil or timeout <= now then
    redis.call('ZREM', KEYS[3], head)
    redis.call('LPOP', KEYS[2])
  else
    break
  end
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('DEL', KEYS[1])
local next = redis.call('LINDEX', KEYS[2], 0)
if next then
  redis.call('PUBLISH', ARGV[2], next)
end
return 1
