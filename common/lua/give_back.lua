-- Compensation: give back a slot the gate took.
--
-- KEYS[1]  coupon:{c}:users   SET of users with a slot
-- KEYS[2]  coupon:{c}:taken   counter of slots taken
-- KEYS[3]  coupon:{c}:slots   HASH user id -> the coupon id its slot names
-- ARGV[1]  user id
--
-- Returns 1 when the user had a slot and it was given back, 0 otherwise.
-- The counter moves only when the set did, so giving back twice is harmless.
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('DECR', KEYS[2])
  return 1
end
return 0
