-- Fair lock (ticket lock), a waiter gives up (after fair_lock.lua): it
-- leaves the line, and if its ticket was being served while the lock is
-- free, the next waiter still there is served and woken. O(1) amortised.
--
-- KEYS[1..4]  the lock's keys (fair_lock.lua)
-- ARGV[1]  the waiter's ticket
-- ARGV[2]  the lock's release channel
--
-- Returns 1 when the waiter was in line, 0 otherwise.
local left = redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  return left
end
local serving = tonumber(redis.call('GET', KEYS[3]) or '1')
if serving ~= tonumber(ARGV[1]) then
  return left
end
fair_serve_next(KEYS, serving, fair_now(), ARGV[2])
return left
