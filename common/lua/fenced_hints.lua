-- The gate keeper's read of its hint (keys::FENCED_CAMPAIGNS), with Redis's
-- time as it reads: a hint added after this time is newer than every epoch
-- the keeper reads afterwards, and fenced_hints_clear.lua keeps it.
--
-- KEYS[1]  coupon:fenced  ZSET campaign id -> ms of the last add
--
-- Returns { now_ms, campaign id, ... }.
local t = redis.call('TIME')
local out = { t[1] * 1000 + math.floor(t[2] / 1000) }
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  out[#out + 1] = id
end
return out
