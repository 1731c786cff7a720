-- The waiting room's procedures. Not a script of its own: it is put in
-- front of the scripts that use it (room_join.lua, gate.lua,
-- locked_take.lua; see common/src/scripts.rs).
--
-- A campaign with a room has `wr_rate` (positions admitted per second),
-- `wr_ttl_ms` (how long an admitted user may take to issue) and `wr_seed` (the
-- shuffle's key) in its meta, and these keys beside it:
--
--   coupon:{c}:room          HASH joined (join numbers handed out), block
--                            (joins before the start: the shuffled block,
--                            fixed at the first call after the start), front
--                            (positions admitted), credit_ms (the rate's clock),
--                            comp (places given back by expired windows, not
--                            yet given again), expired_upto (the last
--                            position whose window closed)
--   coupon:{c}:room:order    HASH user -> join number (1, 2, ...)
--   coupon:{c}:room:windows  ZSET "lo:hi:at_ms" scored hi: positions lo+1..hi
--                            were admitted at at_ms
--   coupon:{c}:room:used     HASH hi -> slots taken by that window's users
--   coupon:{c}:room:joined_at  HASH user -> when it joined (ms)
--
-- A user's position is its join number, except in the block of joins before
-- the start, whose positions are a keyed permutation of 1..block (so that
-- joining early is no head start). Every call costs O(log windows), never
-- O(waiters): positions are admitted by moving `front`, and a window's unused
-- places are counted when it closes. Admissions within one tick share a
-- window, so there are at most T / tick windows open.

-- The windows' granularity, and the most credit an empty line keeps (so
-- that a user who joins it is admitted at once); close at most this many
-- windows per call.
local ROOM_TICK_MS = 100
local ROOM_CLOSE_BATCH = 32

local function room_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- One Feistel round: 32 bits of SHA-1 of the seed, the round and the half.
local function room_round(seed, round, r)
  return tonumber(string.sub(redis.sha1hex(seed .. ':' .. round .. ':' .. r), 1, 8), 16)
end

-- The keyed permutation of 1..n at j: four Feistel rounds over the smallest
-- square power of two >= n, cycle-walked back into range.
-- (common/src/redis_state/room.rs computes the same, for audits.)
local function room_shuffle(j, n, seed)
  local half = 1
  while (2 ^ half) * (2 ^ half) < n do
    half = half + 1
  end
  local size = 2 ^ half
  local x = j - 1
  repeat
    local l = math.floor(x / size)
    local r = x % size
    for round = 1, 4 do
      l, r = r, bit.bxor(l, room_round(seed, round, r) % size)
    end
    x = l * size + r
  until x < n
  return x + 1
end

local function room_keys(room, order, windows, used, joined_at)
  return { room = room, order = order, windows = windows, used = used, joined_at = joined_at }
end

-- The room's counters after admitting positions at the rate (and giving
-- closed windows' unused places to the next), as of `now`.
local function room_advance(K, rate, ttl_ms, starts_ms, now, sold_out)
  local f = redis.call('HMGET', K.room, 'joined', 'block', 'front', 'credit_ms', 'comp',
    'expired_upto')
  local room = {
    joined = tonumber(f[1]) or 0,
    block = tonumber(f[2]),
    front = tonumber(f[3]) or 0,
    credit_ms = tonumber(f[4]) or starts_ms,
    comp = tonumber(f[5]) or 0,
    expired_upto = tonumber(f[6]) or 0,
  }
  if now < starts_ms then
    return room
  end
  if room.block == nil then
    room.block = room.joined
    redis.call('HSET', K.room, 'block', room.block)
  end
  for _ = 1, ROOM_CLOSE_BATCH do
    local oldest = redis.call('ZRANGE', K.windows, 0, 0)[1]
    if not oldest then
      break
    end
    local lo, hi, at = string.match(oldest, '^(%d+):(%d+):(%d+)$')
    lo, hi, at = tonumber(lo), tonumber(hi), tonumber(at)
    if at + ttl_ms > now then
      break
    end
    local used = tonumber(redis.call('HGET', K.used, hi) or '0')
    room.comp = room.comp + math.max(0, hi - lo - used)
    room.expired_upto = hi
    redis.call('ZREM', K.windows, oldest)
    redis.call('HDEL', K.used, hi)
  end
  if sold_out then
    room.credit_ms = now
  else
    local grant = math.floor((now - room.credit_ms) * rate / 1000)
    local waiting = room.joined - room.front
    local by_rate = math.min(grant, waiting)
    local by_comp = math.min(room.comp, waiting - by_rate)
    room.credit_ms = room.credit_ms + by_rate * 1000 / rate
    if by_rate < grant then
      -- Nobody left to admit: an empty line keeps one tick of credit, no
      -- more, so a burst of later joiners cannot exceed the rate.
      room.credit_ms = math.max(room.credit_ms, now - ROOM_TICK_MS)
    end
    room.comp = room.comp - by_comp
    local n = by_rate + by_comp
    if n > 0 then
      local hi = room.front + n
      local lo, at = room.front, now
      local newest = redis.call('ZRANGE', K.windows, -1, -1)[1]
      if newest then
        local nlo, nhi, nat = string.match(newest, '^(%d+):(%d+):(%d+)$')
        if tonumber(nhi) == room.front and now - tonumber(nat) < ROOM_TICK_MS then
          -- The newest window is younger than a tick: it grows.
          lo, at = tonumber(nlo), tonumber(nat)
          redis.call('ZREM', K.windows, newest)
          local used = redis.call('HGET', K.used, nhi)
          if used then
            redis.call('HDEL', K.used, nhi)
            redis.call('HSET', K.used, hi, used)
          end
        end
      end
      redis.call('ZADD', K.windows, hi, string.format('%d:%d:%d', lo, hi, at))
      room.front = hi
    end
  end
  -- Written only when something moved: a poll of a line where nothing
  -- happened writes nothing (no AOF entry, nothing to replicate). The rate's
  -- clock alone is written once it moved a tick: a clock read up to a tick
  -- late grants at most a tick of credit, what an empty line keeps anyway.
  local moved = room.front ~= (tonumber(f[3]) or 0) or room.comp ~= (tonumber(f[5]) or 0)
    or room.expired_upto ~= (tonumber(f[6]) or 0) or f[4] == false
    or math.abs(room.credit_ms - tonumber(f[4])) >= ROOM_TICK_MS
  if moved then
    redis.call('HSET', K.room, 'front', room.front, 'credit_ms',
      string.format('%.3f', room.credit_ms), 'comp', room.comp, 'expired_upto',
      room.expired_upto)
  end
  return room
end

-- The user's position, or nil (not joined, or joined before the start
-- while the block is not placed yet); and whether the user joined.
local function room_position(K, room, user, seed)
  local j = tonumber(redis.call('HGET', K.order, user))
  if not j then
    return nil, false
  end
  if room.block == nil then
    return nil, true
  end
  if j <= room.block then
    return room_shuffle(j, room.block, seed), true
  end
  return j, true
end

-- The window that let `pos` in, if it is still open: its hi, its end and
-- when it admitted the user.
local function room_window(K, room, pos, ttl_ms, now)
  if pos <= room.expired_upto or pos > room.front then
    return nil
  end
  local w = redis.call('ZRANGEBYSCORE', K.windows, pos, '+inf', 'LIMIT', 0, 1)[1]
  if not w then
    return nil
  end
  local hi, at = string.match(w, '^%d+:(%d+):(%d+)$')
  local ends = tonumber(at) + ttl_ms
  if ends <= now then
    return nil
  end
  return hi, ends, tonumber(at)
end

-- How long the user waited between joining and being admitted (ms), or nil.
local function room_waited(K, user, admitted_at)
  local joined_at = tonumber(redis.call('HGET', K.joined_at, user))
  if not joined_at then
    return nil
  end
  return math.max(0, admitted_at - joined_at)
end

-- A user's view: {state, position (-1: never joined; 0: joined before the
-- start, not placed yet), ahead (-1: unknown), admitted_until_ms,
-- retry_after_ms}.
local function room_view(K, room, user, seed, rate, ttl_ms, starts_ms, now, has_slot, sold_out,
                         closed)
  local pos, joined = room_position(K, room, user, seed)
  local p = pos or (joined and 0 or -1)
  if has_slot then
    return { 'taken', p, 0, 0, 0 }
  end
  if not joined then
    if closed then
      return { 'closed', -1, 0, 0, 0 }
    elseif sold_out then
      return { 'sold_out', -1, 0, 0, 0 }
    end
    return { 'none', -1, 0, 0, 0 }
  end
  if closed then
    return { 'closed', p, 0, 0, 0 }
  end
  if sold_out then
    return { 'sold_out', p, 0, 0, 0 }
  end
  if pos == nil then
    return { 'waiting', 0, -1, 0, math.max(100, math.min(starts_ms - now, 5000)) }
  end
  local hi, ends = room_window(K, room, pos, ttl_ms, now)
  if hi then
    return { 'admitted', pos, 0, ends, 0 }
  end
  if pos <= room.front then
    return { 'expired', pos, 0, 0, 0 }
  end
  local ahead = pos - room.front - 1
  local wait = math.ceil((ahead + 1) * 1000 / rate)
  return { 'waiting', pos, ahead, 0, math.max(ROOM_TICK_MS, math.min(wait, 10000)) }
end
