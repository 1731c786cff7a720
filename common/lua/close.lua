-- Close a campaign's gate: no slot is taken afterwards.
--
-- KEYS[1]  coupon:{c}:meta  HASH
--
-- Returns 1 when the gate was closed, 0 when the meta is missing (the state
-- was lost; it is not recreated here, `issuer-worker rebuild` does that).
-- The close is written either way: a meta of `state` alone has no epoch,
-- so the fence keeps the campaign unavailable until a rebuild loads it,
-- and the load keeps it closed (load_meta.lua) whatever row the rebuild
-- read before the close.
local existed = redis.call('EXISTS', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'closed')
return existed
