-- The admin lock's fence: a repair (reconcile --repair, a re-drive) writes
-- a campaign's slots, and an archive deletes them, only while the
-- campaign's admin lock (coupon:{c}:admin) still holds its token. A repair
-- paused past the lock's lease, or one whose lock a Redis that lost its
-- last second forgot, may meanwhile have been overtaken by another repair,
-- which read the slots after it: its writes would act on a stale view (a
-- slot given back that a re-drive has just kept for its message). Not a
-- script of its own: it is put in front of the scripts that use it
-- (common/src/scripts.rs).
--
-- Fails the script with the error ADMINLOST (nothing written) when the lock
-- is not the caller's; a token of "" skips the check (a dry run, no lock).
local function admin_fence(key, token)
  if token ~= '' and redis.call('GET', key) ~= token then
    return redis.error_reply('ADMINLOST the admin lock is no longer this repair\'s')
  end
  return nil
end
