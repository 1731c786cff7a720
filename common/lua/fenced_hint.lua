-- The gate keeper's hint (keys::FENCED_CAMPAIGNS): a forced rebuild adds
-- its campaign before it fences it and again after, each time scored with
-- Redis's time, so that the keeper takes out only a hint older than its
-- own read of the campaign's epoch (fenced_hints_clear.lua).
--
-- KEYS[1]  coupon:fenced  ZSET campaign id -> ms of the last add
-- ARGV[1]  campaign id
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
return 1
