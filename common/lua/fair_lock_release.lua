-- Fair lock (ticket lock), release by the owner (after fair_lock.lua):
-- serve the next ticket whose waiter is still there and wake it. O(1)
-- amortised (each gone ticket is stepped past once).
--
-- KEYS[1..5]  the lock's keys (fair_lock.lua)
-- ARGV[1]  the releasing owner's token
-- ARGV[2]  the lock's release channel: the message names the next ticket,
--          the only waiter that may take the lock next
--
-- Returns 1 when released, 0 when this token does not hold the lock (a
-- non-owner changes nothing). With nobody left waiting, the counters are
-- removed (the next waiter starts again from ticket 1).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('DEL', KEYS[1])
local serving = tonumber(redis.call('GET', KEYS[3]) or '1') + 1
fair_serve_next(KEYS, serving, fair_now(), ARGV[2])
return 1
