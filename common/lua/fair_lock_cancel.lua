-- Fair lock (ticket lock), a waiter gives up (after fair_lock.lua): it
-- leaves the line, and if its ticket was being served while the lock is
-- free, the next waiter still there is served and woken. O(1) amortised.
--
-- A waiter that does not know its ticket (its first acquire's reply was
-- lost) gives up by its token alone; one whose grant was lost with the reply
-- (it holds the lock without knowing it) releases it. A ticket is only ever
-- removed by the token it was handed to: after the line empties the
-- counters start again from 1, and a stale ticket number names another
-- waiter.
--
-- KEYS[1..5]  the lock's keys (fair_lock.lua)
-- ARGV[1]  the waiter's ticket, 0 when unknown
-- ARGV[2]  the lock's release channel
-- ARGV[3]  the waiter's token
--
-- Returns 1 when the waiter was in line (or held the lock), 0 otherwise.
local now = fair_now()
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 1 then
  redis.call('DEL', KEYS[1])
  local serving = tonumber(redis.call('GET', KEYS[3]) or '1') + 1
  fair_serve_next(KEYS, serving, now, ARGV[2])
  return 1
end
local ticket = tonumber(ARGV[1])
if ticket == 0 then
  ticket = tonumber(redis.call('HGET', KEYS[5], ARGV[3]) or '0')
end
if ticket == 0 then
  return 0
end
local entry = redis.call('HGET', KEYS[4], ticket)
if not entry or select(2, fair_entry(entry)) ~= ARGV[3] then
  return 0
end
fair_forget(KEYS, ticket, entry)
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 1
end
local serving = tonumber(redis.call('GET', KEYS[3]) or '1')
if serving == ticket then
  fair_serve_next(KEYS, serving, now, ARGV[2])
end
return 1
