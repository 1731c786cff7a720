-- Load a new campaign's gate state.
--
-- KEYS[1]  coupon:{c}:meta    HASH written here
-- KEYS[2]  coupon:{c}:issued  counter, created at 0 if absent
-- ARGV[1]  stock
-- ARGV[2]  starts_ms (Unix milliseconds)
-- ARGV[3]  ends_ms (Unix milliseconds, any sign) or "none" for no end
-- ARGV[4]  state: open | closed
--
-- Returns 1. The counter is left alone when it already exists, so loading
-- meta again never resets a campaign's count.
redis.call('HSET', KEYS[1], 'stock', ARGV[1], 'starts_ms', ARGV[2], 'ends_ms', ARGV[3], 'state', ARGV[4])
redis.call('SET', KEYS[2], '0', 'NX')
return 1
