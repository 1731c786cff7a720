-- Fair lock, try to acquire: Redisson's RedissonFairLock algorithm, with the
-- time taken from the Redis server instead of the client, and without
-- re-entry (no holder here ever locks twice). Where Redisson returns a time
-- estimate for a subscriber to wait on, this returns the waiter's place in
-- the queue: waiters here poll, and the head polls soonest.
--
-- KEYS[1]  the lock (HASH owner token -> 1, with the lease as its TTL)
-- KEYS[2]  the wait queue (LIST of tokens, head first)
-- KEYS[3]  the waiters' timeouts (ZSET token -> absolute ms after which the
--          waiter counts as gone)
-- ARGV[1]  lease in ms
-- ARGV[2]  this waiter's token
-- ARGV[3]  how long a waiter may wait for its turn, in ms
-- ARGV[4]  the lock's release channel (a purge that leaves the lock free
--          wakes the new head)
--
-- Returns -1 when the lock was acquired, else the waiter's 0-based place in
-- the queue (it is queued on its first call).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = tonumber(ARGV[3])

-- Purge waiters at the head whose time ran out (they gave up or died).
local purged = false
while true do
  local head = redis.call('LINDEX', KEYS[2], 0)
  if head == false then break end
  local timeout = tonumber(redis.call('ZSCORE', KEYS[3], head))
  if timeout == nil or timeout <= now then
    redis.call('ZREM', KEYS[3], head)
    redis.call('LPOP', KEYS[2])
    purged = true
  else
    break
  end
end
if purged and redis.call('EXISTS', KEYS[1]) == 0 then
  local head = redis.call('LINDEX', KEYS[2], 0)
  if head and head ~= ARGV[2] then
    redis.call('PUBLISH', ARGV[4], head)
  end
end

-- Free, and nobody waiting or this waiter at the head: take it.
if redis.call('EXISTS', KEYS[1]) == 0
    and (redis.call('EXISTS', KEYS[2]) == 0 or redis.call('LINDEX', KEYS[2], 0) == ARGV[2]) then
  redis.call('LPOP', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  -- Everyone behind moved up one place: their deadlines shrink by one wait.
  local waiters = redis.call('ZRANGE', KEYS[3], 0, -1)
  for i = 1, #waiters do
    redis.call('ZINCRBY', KEYS[3], -wait, waiters[i])
  end
  redis.call('HSET', KEYS[1], ARGV[2], 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return -1
end

-- Already queued: report its place.
if redis.call('ZSCORE', KEYS[3], ARGV[2]) ~= false then
  local place = redis.call('LPOS', KEYS[2], ARGV[2])
  if place ~= false then
    return place
  end
end

-- Queue at the tail, with a deadline one wait after the waiter ahead of it
-- (or after the holder's lease when nobody waits).
local last = redis.call('LINDEX', KEYS[2], -1)
local ttl
if last ~= false and last ~= ARGV[2] then
  ttl = tonumber(redis.call('ZSCORE', KEYS[3], last)) - now
else
  ttl = redis.call('PTTL', KEYS[1])
end
if ttl < 0 then ttl = 0 end
redis.call('ZADD', KEYS[3], ttl + wait + now, ARGV[2])
redis.call('LREM', KEYS[2], 0, ARGV[2])
return redis.call('RPUSH', KEYS[2], ARGV[2]) - 1
