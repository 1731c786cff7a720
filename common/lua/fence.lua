-- The fence: a campaign's gate state counts only on the Redis server it was
-- loaded or rebuilt on. Not a script of its own: it is put in front of the
-- scripts that read or write a campaign's slots or room (common/src/scripts.rs).
--
-- The meta's `epoch` field holds the `run_id` of that server. A restart (a
-- new run_id, with whatever the AOF kept: with `appendfsync everysec` the
-- last second may be gone) or a failover to a replica (another run_id,
-- possibly behind) leaves the meta with an epoch no server has any more: the
-- scripts answer "stale" and write nothing, the api answers 503, and the
-- worker's gate keeper rebuilds the state from PostgreSQL and the topic and
-- writes the new epoch (issuer-worker keeper.rs).
--
-- The caller passes the run_id of the server its connection reached (known
-- at connect time); in Redis Cluster, where one connection reaches several
-- servers, it passes "" and the script asks its own server (INFO: a few
-- microseconds more per call).

local function fence_server(known)
  if known ~= '' then
    return known
  end
  return string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
end

-- Whether the gate state whose meta says `epoch` holds on this server.
local function fence_holds(epoch, known)
  return epoch ~= nil and epoch ~= false and epoch == fence_server(known)
end
