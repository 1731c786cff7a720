-- Withdraw one take whose reply from Redis never came (the client's command
-- timeout fired): the gate script may have run, may still run, or never
-- will. Whichever it is, afterwards the request has no slot and never will.
--
-- KEYS[1]  coupon:{c}:users   SET of users with a slot
-- KEYS[2]  coupon:{c}:taken   counter of slots taken
-- KEYS[3]  coupon:{c}:slots   HASH user id -> the coupon id its slot names
-- KEYS[4]  coupon:{c}:void:<coupon id>  written here: a take that has not
--          run (or runs again) finds this key and writes nothing
-- ARGV[1]  user id
-- ARGV[2]  the coupon id the request named
-- ARGV[3]  how long the void mark is kept (seconds): longer than any
--          command can wait in Redis's input buffer
--
-- Returns "given_back" (the request had taken its slot: it is given back)
-- or "voided" (it had not: it never will). A slot the same user has from
-- another request (another coupon id) is left alone.
--
-- The void mark is written in both cases: a take that ran can be sent again
-- (a Redis Cluster client re-sends a call whose reply a broken connection
-- lost), and that second run, coming after this, must take nothing either.
redis.call('SET', KEYS[4], '1', 'EX', ARGV[3])
if redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[3], ARGV[1])
  if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then
    redis.call('DECR', KEYS[2])
  end
  return 'given_back'
end
return 'voided'
