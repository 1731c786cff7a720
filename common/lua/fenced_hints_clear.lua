-- Takes hints out of the gate keeper's list (keys::FENCED_CAMPAIGNS): each
-- campaign the keeper found current, unless it was added again after the
-- keeper's read began (a forced rebuild that fenced it since: its hint
-- must stay).
--
-- KEYS[1]  coupon:fenced  ZSET campaign id -> ms of the last add
-- ARGV[1]  the time of the keeper's read (fenced_hints.lua), ms
-- ARGV[2…] campaign ids
--
-- Returns how many were taken out.
local before = tonumber(ARGV[1])
local removed = 0
for i = 2, #ARGV do
  local at = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if at and tonumber(at) < before then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
