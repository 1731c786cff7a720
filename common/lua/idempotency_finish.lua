-- Finish the request that claimed an Idempotency-Key: keep its reply for
-- replays, or free the key for a retry (a reply that changed nothing).
--
-- KEYS[1]  idempotency:<digest of caller and key>
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
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return 1
