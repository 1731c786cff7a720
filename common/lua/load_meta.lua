-- Load a campaign's meta (after fence.lua): what the gate checks, and the
-- epoch that makes its state count on this server.
--
-- KEYS[1]  coupon:{c}:meta    HASH written here
-- KEYS[2]  coupon:{c}:taken   counter, created at 0 if absent
-- ARGV[1]  stock
-- ARGV[2]  starts_ms (Unix milliseconds)
-- ARGV[3]  ends_ms (Unix milliseconds, any sign) or "none" for no end
-- ARGV[4]  state: open | closed
-- ARGV[5]  waiting room: positions admitted per second, or "" for none
-- ARGV[6]  waiting room: ms an admitted user may take to issue
-- ARGV[7]  waiting room: the shuffle's seed
-- ARGV[8]  the run_id of the server the caller's connection reached ("" to
--          ask it: Redis Cluster): the epoch written
-- ARGV[9]  "" to load at once; else the run_id this load must happen on (a
--          rebuild that started on that server): on another, nothing is
--          written
--
-- Returns 1, or 0 when ARGV[9] names another server. The counter is left
-- alone when it already exists, so loading meta again never resets a
-- campaign's count. A meta that says `closed` stays closed: a close is
-- final, and one answered while a rebuild waited (close.lua writes it on
-- the fenced meta, the row after) must not be undone by the row the
-- rebuild read before it.
local server = fence_server(ARGV[8])
if ARGV[9] ~= '' and ARGV[9] ~= server then
  return 0
end
local state = ARGV[4]
if redis.call('HGET', KEYS[1], 'state') == 'closed' then
  state = 'closed'
end
redis.call('HSET', KEYS[1], 'stock', ARGV[1], 'starts_ms', ARGV[2], 'ends_ms', ARGV[3], 'state', state,
  'epoch', server)
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'wr_rate', ARGV[5], 'wr_ttl_ms', ARGV[6], 'wr_seed', ARGV[7])
else
  redis.call('HDEL', KEYS[1], 'wr_rate', 'wr_ttl_ms', 'wr_seed')
end
redis.call('SET', KEYS[2], '0', 'NX')
return 1
