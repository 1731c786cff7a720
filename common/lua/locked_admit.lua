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
-- ARGV[1]  the caller's lock token
-- ARGV[2]  user id
--
-- Returns "admitted", "duplicate" (already a holder: nothing written) or
-- "lost" (the lock is not the caller's: nothing written).
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
return 'admitted'
