-- The writes of a slot taken, shared by the scripts that take one (gate.lua,
-- locked_take.lua). Not a script of its own: it is put in front of them
-- (common/src/scripts.rs), after room.lua.
--
-- A slot is a user in coupon:{c}:users, counted in coupon:{c}:taken, with
-- the coupon id its request named in coupon:{c}:slots. Taking one also
-- deletes the user's earlier status record (it would hide the new slot from
-- /coupons/me: a `rejected` from a 503, an async-queue mark), and behind a
-- waiting room counts the place used in the user's admission window.

local function slot_take(users, taken, status, slots, user, coupon, room_used, window)
  redis.call('SADD', users, user)
  redis.call('INCR', taken)
  redis.call('DEL', status)
  redis.call('HSET', slots, user, coupon)
  if window then
    redis.call('HINCRBY', room_used, window, 1)
  end
end

-- Whether the user's slot names `coupon`: this very request took it. A take
-- can run twice: a Redis Cluster client sends a call again when the
-- connection it went out on broke before its reply came back, and the call
-- may have run. The run again must then answer what the first one did
-- ('taken'), writing nothing, not refuse the slot the request holds (a 409
-- "already has one" for a slot no message would fill, or a 503 "nothing was
-- issued" beside it). Asked only on the paths that refuse, so a take that
-- succeeds pays nothing for it.
local function slot_is_own(slots, user, coupon)
  return redis.call('HGET', slots, user) == coupon
end
