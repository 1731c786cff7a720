-- Finish the request that claimed an Idempotency-Key: keep its reply for
-- replays, or free the key (a reply that changed nothing).
--
-- KEYS[1]  idempotency:{<caller digest>}:<key digest>
-- KEYS[2]  idempotency:{<caller digest>}  ZSET of the caller's records
-- ARGV[1]  the running record this request wrote when it claimed the key
-- ARGV[2]  the done record, or "" to free the key
-- ARGV[3]  how long the done record is kept (seconds)
--
-- Returns 1, or 0 when the key is no longer this request's (its running
-- record expired and another request claimed it): nothing is written then.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], KEYS[1])
else
  local t = redis.call('TIME')
  local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3]) * 1000
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('ZADD', KEYS[2], expires, KEYS[1])
  redis.call('PEXPIREAT', KEYS[2], expires, 'GT')
end
return 1
