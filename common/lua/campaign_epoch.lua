-- Where a campaign's gate state stands against the fence (after fence.lua),
-- for the gate keeper.
--
-- KEYS[1]  coupon:{c}:meta  HASH
-- ARGV[1]  the run_id of the server the caller's connection reached ("" to
--          ask it: Redis Cluster)
--
-- Returns {state, server}: state "current" (loaded on this server),
-- "stale" (loaded on another, or fenced for a rebuild) or "missing" (no
-- meta); server, this server's run_id.
local server = fence_server(ARGV[1])
local meta = redis.call('HMGET', KEYS[1], 'stock', 'epoch')
if not meta[1] then
  return { 'missing', server }
end
if meta[2] == server then
  return { 'current', server }
end
return { 'stale', server }
