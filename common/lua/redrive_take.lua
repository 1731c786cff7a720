-- A re-drive's slot (issuer-worker dlq redrive; after slots.lua, fence.lua):
-- before a dead letter's message goes back on the issue topic, its user must
-- hold the slot that message names, or take one now, so that the gate keeps
-- counting every row the worker may write.
--
-- KEYS[1]  coupon:{c}:meta    HASH stock, state, epoch (fence.lua), ...
-- KEYS[2]  coupon:{c}:users   SET of users with a slot
-- KEYS[3]  coupon:{c}:taken   counter of slots taken
-- KEYS[4]  coupon:{c}:status:<user>  the user's status record
-- KEYS[5]  coupon:{c}:slots   HASH user id -> the coupon id its slot names
-- KEYS[6]  coupon:{c}:admin   the admin lock (admin_fence.lua)
-- ARGV[1]  user id
-- ARGV[2]  the coupon id of the letter's message
-- ARGV[3]  the run_id of the server the caller's connection reached ("" to
--          ask it: Redis Cluster)
-- ARGV[4]  "dry" to decide without writing, "" to take
-- ARGV[5]  the re-drive's admin lock token ("" for a dry run: no lock)
--
-- Returns one of: "held" (the user still holds the slot naming this coupon id:
-- nothing to take), "taken" (a slot was taken for it now), "would_take" (dry:
-- one would be), "other_slot" (the user holds a slot another request took),
-- "sold_out" (no slot left to take), "over_taken" (the user holds this slot
-- but the gate has taken more slots than the stock: re-driving it could
-- take a row from another held slot), "missing" (no meta), "stale" (fenced),
-- "archived" (slots counted but no users set: an archive deleted it, and
-- whether this user's slot is counted cannot be told);
-- the error ADMINLOST when the lock is not the re-drive's.
--
-- Unlike gate.lua it takes no notice of the window, a close or a waiting
-- room: a re-drive keeps a promise made when they allowed it. It keeps the
-- gate's two rules: one slot per user, never more slots than the stock.
local lost = admin_fence(KEYS[6], ARGV[5])
if lost then
  return lost
end
local meta = redis.call('HMGET', KEYS[1], 'stock', 'epoch')
if not meta[1] then
  return 'missing'
end
if not fence_holds(meta[2], ARGV[3]) then
  return 'stale'
end
local stock = tonumber(meta[1])
local taken = tonumber(redis.call('GET', KEYS[3]) or '0')
-- Whatever the campaign's row says: an archive whose mark an unarchive
-- cleared after it (one paused past its lock) leaves this state too.
if taken > 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  return 'archived'
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  if (redis.call('HGET', KEYS[5], ARGV[1]) or '') ~= ARGV[2] then
    return 'other_slot'
  end
  if taken > stock then
    return 'over_taken'
  end
  return 'held'
end
if taken >= stock then
  return 'sold_out'
end
if ARGV[4] == 'dry' then
  return 'would_take'
end
slot_take(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], nil, nil)
return 'taken'
