-- Fair lock (ticket lock), release by the owner: serve the next ticket whose
-- waiter is still there and wake it. O(1) amortised (each gone ticket is
-- stepped past once).
--
-- KEYS[1]  the lock (HASH owner token -> 1)
-- KEYS[2]  the last ticket handed out
-- KEYS[3]  the ticket being served (the owner's while it holds the lock)
-- KEYS[4]  the waiters (HASH ticket -> "<deadline ms>:<token>")
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
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local serving = tonumber(redis.call('GET', KEYS[3]) or '1') + 1
while serving <= last do
  local entry = redis.call('HGET', KEYS[4], serving)
  if entry and tonumber(string.match(entry, '^(%d+)')) > now then
    break
  end
  redis.call('HDEL', KEYS[4], serving)
  serving = serving + 1
end
if serving > last then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
else
  redis.call('SET', KEYS[3], serving)
  redis.call('PUBLISH', ARGV[2], tostring(serving))
end
return 1
