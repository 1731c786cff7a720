-- A rebuild's last step, in one atomic step (after fence.lua and
-- meta.lua): the users it staged become the campaign's set, the count
-- their number (for an archived campaign the staged users are deleted and
-- the count is the number the rebuild found: its set and slots stay
-- archived), the slots' coupon ids are dropped (a rebuilt slot has no
-- take a withdrawal could name), the users whose slot it drops get their
-- `none` record, and the meta is loaded with this server's epoch, which
-- unfences the campaign. Nothing is written unless this rebuild is still
-- the one the campaign waits for:
-- - the server is the one the rebuild started on (one that restarted or
--   failed over meanwhile would get a state built on its predecessor);
-- - the campaign's rebuild token is this rebuild's (a rebuild that started
--   after it, its admin lock lost to a Redis restart or a pause past the
--   lease, replaced the token: the newer one decides);
-- - the meta is still fenced or missing (a rebuild that finished first
--   unfenced it and takes counted on its state since).
--
-- KEYS[1]  coupon:{c}:meta             HASH
-- KEYS[2]  coupon:{c}:users            SET, replaced
-- KEYS[3]  coupon:{c}:taken            counter, set to the set's size
-- KEYS[4]  coupon:{c}:slots            HASH, deleted
-- KEYS[5]  coupon:{c}:rebuild          STRING, the token of the rebuild under way
-- KEYS[6]  coupon:{c}:rebuild:<token>  SET, the users staged (may be absent: none)
-- KEYS[7]  coupon:{c}:closed           STRING, close.lua's mark (read)
-- KEYS[8..]  coupon:{c}:status:<user>  the record of each user ARGV names below
-- ARGV[1..7]  the meta (meta.lua's `args`)
-- ARGV[8]  the run_id of the server the caller's connection reached ("" to
--          ask it: Redis Cluster)
-- ARGV[9]  the run_id of the server the rebuild started on
-- ARGV[10] the rebuild's token
-- ARGV[11] the status records' TTL in seconds
-- ARGV[12] "" to load the staged users; for a campaign an operator archived
--          (`campaigns.archived_at`), the count to keep without them
-- ARGV[13..]  per user whose slot the rebuild drops, as it saw it: user id,
--          the coupon id its slot named ("" none), the `none` record (JSON);
--          in the order of KEYS[8..]
--
-- Returns {"installed", records written}, or {"refused", why}: "server",
-- "superseded" or "current". The staged set is deleted (unlinked) either way.
local server = fence_server(ARGV[8])
local refused = nil
if server ~= ARGV[9] then
  refused = 'server'
elseif redis.call('GET', KEYS[5]) ~= ARGV[10] then
  refused = 'superseded'
elseif fence_holds(redis.call('HGET', KEYS[1], 'epoch'), ARGV[8]) then
  refused = 'current'
end
if refused then
  redis.call('UNLINK', KEYS[6])
  return { 'refused', refused }
end
-- The records first, while the set found is still there: a user whose slot
-- is still the one the rebuild saw and not staged.
local recorded = 0
for i = 8, #KEYS do
  local at = 13 + (i - 8) * 3
  local user, coupon = ARGV[at], ARGV[at + 1]
  if redis.call('SISMEMBER', KEYS[2], user) == 1
      and redis.call('SISMEMBER', KEYS[6], user) == 0
      and (redis.call('HGET', KEYS[4], user) or '') == coupon then
    redis.call('SET', KEYS[i], ARGV[at + 2], 'EX', ARGV[11])
    recorded = recorded + 1
  end
end
-- UNLINK, not DEL: a large campaign's set and hash are freed on Redis's
-- background thread. Freed here, a million users held Redis past the
-- 500 ms command timeout: every campaign's gate calls waited behind it,
-- and the install's own call timed out.
redis.call('UNLINK', KEYS[2], KEYS[4], KEYS[5])
if ARGV[12] ~= '' then
  redis.call('UNLINK', KEYS[6])
  redis.call('SET', KEYS[3], ARGV[12])
else
  if redis.call('EXISTS', KEYS[6]) == 1 then
    redis.call('RENAME', KEYS[6], KEYS[2])
    redis.call('PERSIST', KEYS[2])
  end
  redis.call('SET', KEYS[3], redis.call('SCARD', KEYS[2]))
end
write_meta(KEYS[1], KEYS[3], KEYS[7], ARGV, server)
return { 'installed', recorded }
