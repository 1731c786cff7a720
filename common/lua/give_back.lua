-- Compensation: give back a slot the gate took.
--
-- KEYS[1]  coupon:{c}:users   SET of users with a slot
-- KEYS[2]  coupon:{c}:taken   counter of slots taken
-- KEYS[3]  coupon:{c}:slots   HASH user id -> the coupon id its slot names
-- ARGV[1]  user id
-- ARGV[2]  the coupon id the slot names: the request's own
--
-- Returns 1 when the user had that slot and it was given back, 0 otherwise.
-- The counter moves only when the set did, so giving back twice is harmless;
-- and only the request's own slot goes, so a give-back run again (a Redis
-- Cluster client re-sends a call whose reply a broken connection lost) after
-- the user took a new slot leaves that one alone.
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('DECR', KEYS[2])
  return 1
end
return 0
