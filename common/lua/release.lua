-- Compensation: give back a slot the gate handed out.
--
-- KEYS[1]  coupon:{c}:users   SET of user ids holding a slot
-- KEYS[2]  coupon:{c}:issued  counter of slots handed out
-- KEYS[3]  coupon:{c}:claims  HASH user id -> coupon id of the admission
-- ARGV[1]  user id
--
-- Returns 1 when the user held a slot and it was released, 0 otherwise.
-- The counter moves only when the set did, so releasing twice is harmless.
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('DECR', KEYS[2])
  return 1
end
return 0
