-- Fence a campaign whose gate state is about to be rebuilt (rebuild
-- --force): its epoch names no server, so every script that reads or
-- writes its slots answers "stale" (fence.lua) until the rebuild loads the
-- meta again with the current server's epoch.
--
-- KEYS[1]  coupon:{c}:meta  HASH
--
-- Returns 1 when fenced, 0 when the meta is missing (fenced already: the
-- scripts answer "missing").
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'epoch', 'rebuilding')
return 1
