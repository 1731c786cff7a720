-- Claim an Idempotency-Key for one request, or read who has it.
--
-- KEYS[1]  idempotency:{<caller digest>}:<key digest>  STRING, JSON record
-- KEYS[2]  idempotency:{<caller digest>}  ZSET of the caller's records,
--          scored by when each expires (ms)
-- ARGV[1]  the running record of this request (fingerprint, token)
-- ARGV[2]  how long a running record lives (seconds): past it, a request
--          still marked running is taken for dead and the key is free again
-- ARGV[3]  the most records one caller may have at once
--
-- Returns nil when the key was free and is now this request's, "full" when
-- the caller already has ARGV[3] records, else the record found (running or
-- done). Two racing requests never both get nil.
local found = redis.call('GET', KEYS[1])
-- This very request's record (it holds the request's own token): a Redis
-- Cluster client re-sent the call after a broken connection lost the first
-- run's reply. The key is this request's, as that run said.
if found == ARGV[1] then
  return false
end
if found then
  return found
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return 'full'
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]) * 1000, KEYS[1])
redis.call('PEXPIREAT', KEYS[2], now + tonumber(ARGV[2]) * 1000, 'GT')
if redis.call('PTTL', KEYS[2]) < 0 then
  redis.call('PEXPIREAT', KEYS[2], now + tonumber(ARGV[2]) * 1000)
end
return false
