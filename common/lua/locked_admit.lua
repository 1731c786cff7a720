-- The write of the lock strategies' section, fenced: admit a user only if
-- the caller still holds the campaign's lock, and count the slot only if the
-- user was added. The section's checks (meta, time, SISMEMBER, GET) run
-- before it as separate commands, as in the seed; this makes the writes
-- safe when a holder paused past its lease wakes up.
--
-- KEYS[1]  the lock: a STRING holding the owner's token (lease lock) or a
--          HASH with the owner's token as a field (fair lock)
-- KEYS[2]  coupon:{c}:users          SET of slot holders
-- KEYS[3]  coupon:{c}:issued         counter of slots handed out
-- KEYS[4]  coupon:{c}:status:<user>  STRING, an earlier request's record
-- KEYS[5]  coupon:{c}:claims         HASH user id -> coupon id (gate.lua)
-- KEYS[6]  coupon:{c}:void:<coupon id>  present when the request was withdrawn
-- ARGV[1]  the caller's lock token
-- ARGV[2]  user id
-- ARGV[3]  coupon id this admission claims
--
-- Returns "admitted", "duplicate" (already a holder: nothing written),
-- "lost" (the lock is not the caller's: nothing written) or "withdrawn"
-- (the caller gave up on this request before Redis ran it).
if redis.call('EXISTS', KEYS[6]) == 1 then
  return 'withdrawn'
end
local kind = redis.call('TYPE', KEYS[1])['ok']
local held = false
if kind == 'string' then
  held = redis.call('GET', KEYS[1]) == ARGV[1]
elseif kind == 'hash' then
  held = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
end
if not held then
  return 'lost'
end
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then
  return 'duplicate'
end
redis.call('INCR', KEYS[3])
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[5], ARGV[2], ARGV[3])
return 'admitted'
