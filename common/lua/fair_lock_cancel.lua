-- Fair lock (ticket lock), a waiter gives up: it leaves the line, and if its
-- ticket was being served while the lock is free, the next waiter still
-- there is served and woken. O(1) amortised.
--
-- KEYS[1]  the lock (HASH)
-- KEYS[2]  the last ticket handed out
-- KEYS[3]  the ticket being served
-- KEYS[4]  the waiters (HASH ticket -> "<deadline ms>:<token>")
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
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
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
return left
