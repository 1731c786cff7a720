-- Record the state of a user's request for /coupons/me, unless the user has
-- a slot another request took (another coupon id): that slot is newer than
-- this request's news and /coupons/me must keep showing it. (A give-back
-- followed by a take of the same user's retry, then this request's late
-- record, would otherwise hide the new slot behind a stale `rejected`.)
--
-- KEYS[1]  coupon:{c}:status:<user>  STRING, the record
-- KEYS[2]  coupon:{c}:users          SET of users with a slot
-- KEYS[3]  coupon:{c}:slots          HASH user id -> the coupon id its slot names
-- ARGV[1]  user id
-- ARGV[2]  the coupon id this request named, or "" when it named none
-- ARGV[3]  the record (JSON)
-- ARGV[4]  its TTL in seconds
--
-- Returns 1 when recorded, 0 when left out for a newer slot.
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1
    and (redis.call('HGET', KEYS[3], ARGV[1]) or '') ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
return 1
