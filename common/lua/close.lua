-- Close a campaign's gate: no slot is taken afterwards.
--
-- KEYS[1]  coupon:{c}:meta    HASH
-- KEYS[2]  coupon:{c}:closed  STRING, the close's mark, written either way
--
-- Returns 1 when the gate was closed, 0 when the meta is missing (the state
-- was lost; it is not recreated here, `issuer-worker rebuild` does that).
-- The mark keeps the close for the meta a rebuild loads later (meta.lua),
-- whatever row the rebuild read: a close answered while the meta was
-- missing is final too.
redis.call('SET', KEYS[2], '1')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'closed')
return 1
