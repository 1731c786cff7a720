-- Load a campaign's meta (after fence.lua and meta.lua): what the gate
-- checks, and the epoch that makes its state count on this server.
--
-- KEYS[1]  coupon:{c}:meta    HASH written here
-- KEYS[2]  coupon:{c}:taken   counter, created at 0 if absent
-- KEYS[3]  coupon:{c}:closed  STRING, close.lua's mark (read)
-- ARGV[1..7]  the meta (meta.lua's `args`)
-- ARGV[8]  the run_id of the server the caller's connection reached ("" to
--          ask it: Redis Cluster): the epoch written
--
-- Returns 1, or 0 with nothing written when the campaign has a meta
-- already: loaded, fenced or closed, its state is a rebuild's to replace
-- (rebuild_install.lua), never a new load's. (A create retried after
-- Redis restarted empty must not unfence the campaign with a zero count
-- while its users hold coupons.)
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
write_meta(KEYS[1], KEYS[2], KEYS[3], ARGV, fence_server(ARGV[8]))
return 1
