-- Withdraw one admission request whose reply from Redis never came (the
-- client's command timeout fired): the admission script may have run, may
-- still run, or never will. Whichever it is, afterwards the request holds
-- no slot and never will.
--
-- KEYS[1]  coupon:{c}:users   SET of user ids holding a slot
-- KEYS[2]  coupon:{c}:issued  counter of slots handed out
-- KEYS[3]  coupon:{c}:claims  HASH user id -> coupon id of the admission
-- KEYS[4]  coupon:{c}:void:<coupon id>  written here when the admission
--          has not run: it then finds this key and writes nothing
-- ARGV[1]  user id
-- ARGV[2]  the coupon id the request claimed
-- ARGV[3]  how long the void mark is kept (seconds): longer than any
--          command can wait in Redis's input buffer
--
-- Returns "released" (the request had been admitted: its slot is given
-- back) or "voided" (it had not: it never will be). A slot the same user
-- holds from another request (another coupon id) is left alone.
if redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[3], ARGV[1])
  if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then
    redis.call('DECR', KEYS[2])
  end
  return 'released'
end
redis.call('SET', KEYS[4], '1', 'EX', ARGV[3])
return 'voided'
