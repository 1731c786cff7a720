-- Writing a campaign's meta. Not a script of its own: put in front of
-- load_meta.lua and rebuild_install.lua (common/src/scripts.rs).
--
-- `args` (from ARGV, in this order): stock, starts_ms (Unix milliseconds),
-- ends_ms (Unix milliseconds, any sign, or "none" for no end), state (open
-- | closed), and the waiting room's positions admitted per second ("" for
-- no room), ms an admitted user may take to issue, and shuffle seed.
--
-- The counter is created at 0 only when absent, so loading a meta again
-- never resets a campaign's count. A campaign closed in Redis stays closed
-- (its meta says so, or close.lua's mark, `closed_key`, is there): a close is
-- final, and one answered while a rebuild waited (close.lua writes it on the
-- fenced meta, or only its mark on a missing one, and the row after) must
-- not be undone by the row the rebuild read before it.
local function write_meta(meta_key, taken_key, closed_key, args, epoch)
  local state = args[4]
  if redis.call('HGET', meta_key, 'state') == 'closed'
      or redis.call('EXISTS', closed_key) == 1 then
    state = 'closed'
  end
  redis.call('HSET', meta_key, 'stock', args[1], 'starts_ms', args[2], 'ends_ms', args[3],
    'state', state, 'epoch', epoch)
  if args[5] ~= '' then
    redis.call('HSET', meta_key, 'wr_rate', args[5], 'wr_ttl_ms', args[6], 'wr_seed', args[7])
  else
    redis.call('HDEL', meta_key, 'wr_rate', 'wr_ttl_ms', 'wr_seed')
  end
  redis.call('SET', taken_key, '0', 'NX')
end
