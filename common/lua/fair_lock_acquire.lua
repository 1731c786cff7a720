-- Fair lock, try to acquire (after fair_lock.lua): a ticket lock. A waiter
-- takes a ticket once and is granted the lock when its ticket is served and
-- the lock is free, so grants follow ticket order (arrival at the lock).
-- Every call costs O(1) amortised: it reads the served ticket and, only when
-- the lock is free, steps past tickets whose waiter gave up or died (each
-- ticket is stepped past once). Redisson's fair lock, which this replaced,
-- walks its whole queue on every acquire (ZINCRBY over every waiter), which
-- saturated Redis at 2,000 waiters.
--
-- A line that looks full is first cleared of gone waiters when the lock is
-- free: a process killed with its whole line of waiters (or of lost
-- replies) leaves tickets nobody will ever ask for, and without this every
-- newcomer was turned away before anyone stepped past them, for good.
-- A line nobody comes back to expires: see the TTL below.
--
-- KEYS[1..5]  the lock's keys (fair_lock.lua)
-- ARGV[1]  lease in ms
-- ARGV[2]  this waiter's token
-- ARGV[3]  how long a waiter may wait, in ms
-- ARGV[4]  the lock's release channel (unused here; the same ARGV as release)
-- ARGV[5]  this waiter's ticket, 0 on its first call
-- ARGV[6]  the most tickets not yet served (the holder's included) before a
--          newcomer is turned away
--
-- Returns {code, ticket, n}: code -1 acquired; 0 waiting, n = tickets ahead;
-- -2 the line is full (no ticket taken), n = its length; -3 the waiter's
-- place was given up (its deadline passed, or the ticket is another's).
local now = fair_now()
local ticket = tonumber(ARGV[5])
local serving = tonumber(redis.call('GET', KEYS[3]) or '1')
-- A first call run again (a Redis Cluster client sends a call again when the
-- connection it went out on broke before the reply came back): the first
-- run's grant or ticket is the caller's, never a second ticket behind its own
-- lock. Its lease runs from the first run, which the caller's clock covers.
if ticket == 0 then
  if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
    -- Granted: the ticket served now is the one it was granted.
    return {-1, serving, 0}
  end
  ticket = tonumber(redis.call('HGET', KEYS[5], ARGV[2]) or '0')
end
if ticket == 0 then
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  local line = last - serving + 1
  if line >= tonumber(ARGV[6]) and redis.call('EXISTS', KEYS[1]) == 0 then
    serving = fair_step_past(KEYS, serving, last, now)
    redis.call('SET', KEYS[3], serving)
    line = last - serving + 1
  end
  if line < 0 then line = 0 end
  if line >= tonumber(ARGV[6]) then
    return {-2, 0, line}
  end
  ticket = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[3], serving)
  redis.call('HSET', KEYS[4], ticket, (now + tonumber(ARGV[3])) .. ':' .. ARGV[2])
  redis.call('HSET', KEYS[5], ARGV[2], ticket)
  -- The line's places outlive the last one's deadline by a lease, no
  -- longer: a line nobody comes back to (its holder and waiters died with
  -- Redis or their process, and the campaign was then fenced, closed or
  -- sold out, so no acquire, release or cancel runs again) would otherwise
  -- be kept for good. Only ever lengthened (PTTL is -1 on a new key), so
  -- every place still waiting is inside it. The counters keep no TTL: a
  -- holder past it would serve the wrong next ticket on release.
  local keep = tonumber(ARGV[3]) + tonumber(ARGV[1])
  for _, k in ipairs({KEYS[4], KEYS[5]}) do
    if redis.call('PTTL', k) < keep then redis.call('PEXPIRE', k, keep) end
  end
else
  local entry = redis.call('HGET', KEYS[4], ticket)
  if not entry or select(2, fair_entry(entry)) ~= ARGV[2] then
    -- A poll run again whose first run was granted: the lock is the
    -- caller's.
    if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
      return {-1, ticket, 0}
    end
    return {-3, ticket, 0}
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  serving = fair_step_past(KEYS, serving, ticket - 1, now)
  redis.call('SET', KEYS[3], serving)
  if serving == ticket then
    redis.call('HDEL', KEYS[4], ticket)
    redis.call('HDEL', KEYS[5], ARGV[2])
    redis.call('HSET', KEYS[1], ARGV[2], 1)
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    return {-1, ticket, 0}
  end
end
return {0, ticket, ticket - serving}
