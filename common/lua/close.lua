-- Close a campaign's gate: no slot is taken afterwards.
--
-- KEYS[1]  coupon:{c}:meta  HASH
--
-- Returns 1 when the gate was closed, 0 when the meta is missing (the state
-- was lost; it is not recreated here, `issuer-worker rebuild` does that).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'closed')
return 1
