import OpsBusRedis

/// Applies one event to the current-state hash of a worker, queue, service, model or a worker's resources,
/// atomically and idempotently, with the automated actions of that kind.
///
/// State fields are "last writer by event time wins": they are written only when the event is not older than the
/// state already stored (`state_ts`), so a late, reordered health message cannot overwrite a newer one.
/// Counters (model loads, cache hits, load time) are added exactly once per event id, whatever the order.
///
/// Worker births and deaths (`worker.health`, Sparkplug-style):
/// - A last will (`last_will: true`) is built when the connection opened (the broker only stores it), so its
///   timestamp is old by design. With `bd_seq` it applies when its `bd_seq` is at least the worker's stored one,
///   whatever timestamps or sessions say, and is a stale will (ignored, counted in `stale_wills`) otherwise.
///   Without `bd_seq` (or before any birth carried one) it applies when it comes from the session that wrote the
///   current state, or is not older than it.
/// - An applied will means "link down", not "dead": the worker turns `unreachable` (`link_down_at`, `current_job`
///   kept) and joins `workers:link_down`. Its jobs keep running; the sweep (`ScheduledActions`) fails them over only
///   if it stays unreachable for the grace period. Health events of the dead connection's session that arrive
///   after the will were sent before it: they update fields but not the status.
/// - A birth (`status: online`) records its `bd_seq` (the maximum is kept). The birth of the connection whose
///   death was already applied (same session, `bd_seq` not above the death's) is stale. A birth from the session
///   whose link dropped brings the worker back (`last_outage: link_down`, `last_outage_ms`), no failover. Any
///   health from another session means the old process died (`last_outage: worker_restarted`): the old session's
///   jobs still in flight fail over after the grace unless an event for them (the restarted worker flushing its
///   spool) settles them first.
/// - An explicit `offline` (clean shutdown, heartbeat timeout) or a deregistration fails the jobs over at once.
///
/// Actions (when `ctx.automation`; outgoing events go to the outbox stream for `OutboxRelay`, with event ids derived
/// from what caused them, so a repeated action is a duplicate downstream):
/// - worker → `offline`/`deregistered`: every job in the worker's in-flight set fails over: a `job.failed` with
///   `error_type: worker_lost` is published for it, and the normal retry rules follow.
/// - model: the seed's precache rule (more than N loads, average load over T ms, cache hit rate under R) publishes
///   one `trigger.precache` per model, not one per event.
/// - queue: depth/capacity crossing the high watermark publishes `trigger.scaling` (scale_up) once; falling below
///   the low watermark afterwards publishes scale_down.
/// - service: turning `unhealthy` publishes `trigger.failover` (reason unhealthy); turning healthy again after
///   that publishes it with reason recovered.
///
/// KEYS: 1 entity hash, 2 seen-event-id set, 3 index sorted set (ids by last update), 4 the stats hash, 5 the stats
///       hash of the current minute (`EventStatsScript`: the event is counted in the same call).
/// ARGV: 1 event_id, 2 event time (ms since epoch), 3 seen-set TTL seconds, 4 entity id, 5 number of state pairs,
///       6 session id of a last will ("" for other events), 7 action context (JSON), 8 event type, 9 now (ISO 8601),
///       10 "1" when an earlier attempt of this call may have run, 11.. state field/value pairs,
///       then counter field/increment pairs.
/// Returns: `applied`, `stale` (counters added, state kept because a newer event is stored), `stale_will` or
/// `duplicate`.
enum EntityEventScript {
    static let firstStateArgument = 11

    static let script = RedisScript(
        name: "opsbus_apply_entity_event",
        source: EventStatsScript.function + "local function apply_entity_event(KEYS, ARGV)\n" + body + "\nend\n"
            + "local result = apply_entity_event(KEYS, ARGV)\n" + count(keys: "KEYS", arguments: "ARGV") + "\nreturn result\n")

    /// Lua counting the event (`count_event`) with its reply `result`, after `body` returned it.
    static func count(keys: String, arguments: String) -> String {
        "count_event(\(keys)[4], \(keys)[5], \(arguments)[8], result, \(arguments)[9], \(arguments)[10])"
    }

    /// The Lua of one event, the body of a function of `KEYS` and `ARGV` that returns the event's reply (the caller
    /// counts it, `count`): run once by `script`, once per event by `BatchApplyScript` (see `JobEventScript.body`).
    static let body = #"""
local entity, seen, index = KEYS[1], KEYS[2], KEYS[3]
local event_id, ts, seen_ttl, id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local state_pairs, will_session = tonumber(ARGV[5]), ARGV[6]
local ctx = cjson.decode(ARGV[7])
local first_state = 11
local p = ctx.prefix

if redis.call('SADD', seen, event_id) == 0 then return 'duplicate' end
if redis.call('TTL', seen) < seen_ttl - math.floor(seen_ttl / 10) then redis.call('EXPIRE', seen, seen_ttl) end
local first_counter = first_state + state_pairs * 2
for i = first_counter, #ARGV, 2 do redis.call('HINCRBYFLOAT', entity, ARGV[i], ARGV[i + 1]) end
local last_seen = tonumber(redis.call('HGET', entity, 'last_seen_ms')) or 0
if ts > last_seen then redis.call('HSET', entity, 'last_seen_ms', ts) end
redis.call('ZADD', index, math.max(ts, last_seen), id)

local function outbox(fields)
  local args = {p .. 'opsbus:outbox', 'MAXLEN', '~', '1000000', '*'}
  for k, v in pairs(fields) do table.insert(args, k); table.insert(args, tostring(v)) end
  table.insert(args, 'created_at'); table.insert(args, tostring(ts))
  redis.call('XADD', unpack(args))
end
local function trigger(event_type, subject, derived_id, reason, details)
  outbox({kind = 'publish', event_type = event_type, subject = subject,
          event_id = string.sub(event_type, 9, 10) .. '-' .. redis.sha1hex(derived_id),
          fields = cjson.encode({reason = reason, subject = subject, details = details})})
end

-- Precache is counter-driven, so it runs for stale events too.
if ctx.kind == 'model' and ctx.automation and ctx.model_tracking then
  local stats = redis.call('HMGET', entity, 'loads', 'cache_hits', 'total_load_time_ms')
  local loads, hits, total = tonumber(stats[1]) or 0, tonumber(stats[2]) or 0, tonumber(stats[3]) or 0
  if loads > ctx.precache_min_loads and total / loads > ctx.precache_min_average_ms
     and hits / loads < ctx.precache_max_hit_rate
     and redis.call('HSETNX', entity, 'precache_triggered_at', tostring(ts)) == 1 then
    trigger('trigger.precache', id, 'precache:' .. id, 'model loads are slow and rarely cached',
            {loads = loads, average_load_ms = total / loads, cache_hit_rate = hits / loads})
  end
end

local state_ts = tonumber(redis.call('HGET', entity, 'state_ts')) or -1
local previous_status = redis.call('HGET', entity, 'status')
local function n(x) return string.format('%d', x) end

-- Worker births and deaths (see the doc comment): decided before the last-writer-wins check, because a birth
-- that lost that check (a newer event of its session got in first) still brings the link back.
local will_applies, link_down, keep_status, revived = false, false, nil, false
if ctx.kind == 'worker' and ctx.health then
  local stats, link_set = p .. 'opsbus:stats', p .. 'workers:link_down'
  local inflight = p .. 'worker:{' .. id .. '}:inflight'
  local w = redis.call('HMGET', entity, 'bd_seq', 'death_bd_seq', 'death_session', 'link_down_ms',
                       'link_down_session', 'session_id', 'restart_session')
  local stored_bd, death_bd, death_session = tonumber(w[1]), tonumber(w[2]), w[3]
  local down_ms, down_session, prev_session, restart_session = tonumber(w[4]), w[5], w[6], w[7]
  local live = {online = true, busy = true, idle = true, degraded = true, unreachable = true}
  local function stale_will()
    redis.call('HINCRBY', entity, 'stale_wills', 1)
    redis.call('HINCRBY', stats, 'stale_wills', 1)
    return 'stale_will'
  end
  local function outage(kind, since_ms)
    redis.call('HSET', entity, 'last_outage', kind, 'last_outage_at', ctx.now_iso)
    if since_ms then
      redis.call('HSET', entity, 'last_outage_ms', n(math.max(0, ctx.now_ms - since_ms)))
    else
      redis.call('HDEL', entity, 'last_outage_ms')
    end
    redis.call('HDEL', entity, 'link_down_ms', 'link_down_at', 'link_down_session', 'last_will')
    redis.call('HINCRBY', stats, kind == 'link_down' and 'link_restores' or 'worker_restarts', 1)
    revived = true
  end
  if ctx.will then
    if ctx.bd_seq and stored_bd then
      if ctx.bd_seq < stored_bd then return stale_will() end
      will_applies = true
    elseif ts < state_ts and prev_session ~= will_session then
      return stale_will()
    else
      will_applies = true
    end
    if ctx.bd_seq and (not stored_bd or ctx.bd_seq > stored_bd) then redis.call('HSET', entity, 'bd_seq', n(ctx.bd_seq)) end
    if previous_status == 'offline' or previous_status == 'deregistered' then
      keep_status = previous_status  -- already dead: nothing of it is in flight any more
    else
      link_down = true
    end
  else
    if ctx.birth and ctx.bd_seq then
      if death_bd and ctx.bd_seq <= death_bd and death_session == ctx.session then return 'stale' end
      if not stored_bd or ctx.bd_seq > stored_bd then redis.call('HSET', entity, 'bd_seq', n(ctx.bd_seq)) end
    end
    if not ctx.failover then
      if (down_ms and down_session ~= ctx.session)
         or (not down_ms and ctx.birth and prev_session and prev_session ~= ctx.session and live[previous_status]) then
        -- Another process speaks for the worker: the one before died. Its jobs get the grace to be settled.
        outage('worker_restarted', down_ms)
        if redis.call('SCARD', inflight) > 0 then
          redis.call('ZADD', link_set, 'NX', n(ctx.now_ms), id)
          redis.call('HSET', entity, 'restart_session', ctx.session)
        else
          redis.call('ZREM', link_set, id)
          redis.call('HDEL', entity, 'restart_session')
        end
      elseif down_ms and ctx.birth then
        -- The same session reconnected: the link is back, its jobs kept running.
        outage('link_down', down_ms)
        if not restart_session then redis.call('ZREM', link_set, id) end
      elseif down_ms then
        keep_status = previous_status  -- sent before the will, delivered after it
      end
    end
  end
end

if ts < state_ts and not will_applies then
  if revived and (previous_status == 'unreachable' or previous_status == 'offline') then
    redis.call('HSET', entity, 'status', 'online')
  end
  return 'stale'
end
for i = first_state, first_counter - 1, 2 do redis.call('HSET', entity, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', entity, 'state_ts', math.max(ts, state_ts), 'id', id)
if keep_status then redis.call('HSET', entity, 'status', keep_status) end
if link_down then
  redis.call('HSET', entity, 'status', 'unreachable', 'link_down_ms', n(ctx.now_ms), 'link_down_at', ctx.now_iso,
             'link_down_session', will_session)
  if ctx.bd_seq then redis.call('HSET', entity, 'death_bd_seq', n(ctx.bd_seq), 'death_session', will_session) end
  redis.call('ZADD', p .. 'workers:link_down', n(ctx.now_ms), id)
  redis.call('HINCRBY', p .. 'opsbus:stats', 'link_downs', 1)
end
if ctx.kind == 'worker' and ctx.health and not ctx.will then redis.call('HDEL', entity, 'last_will') end
if not ctx.automation then return 'applied' end

if ctx.kind == 'worker' and ctx.failover then
  local inflight = p .. 'worker:{' .. id .. '}:inflight'
  for _, job_id in ipairs(redis.call('SMEMBERS', inflight)) do
    local job = redis.call('HMGET', p .. 'job:{' .. job_id .. '}', 'status', 'attempt')
    if job[1] == 'processing' or job[1] == 'received' then
      local attempt = job[2] or '1'
      local reason = ctx.reason or 'offline'
      outbox({kind = 'publish', event_type = 'job.failed', subject = job_id, job_id = job_id, attempt = attempt,
              worker_id = id, event_id = 'wl-' .. redis.sha1hex(job_id .. '|' .. attempt .. '|' .. id),
              fields = cjson.encode({error = 'worker ' .. id .. ' went offline during the job (' .. reason .. ')',
                error_type = 'worker_lost', error_category = 'infrastructure', error_recoverable = true,
                retry_recommended = true, resource_impact = 'medium', user_impact = 'low'})})
    end
  end
  redis.call('DEL', inflight)
  redis.call('HDEL', entity, 'current_job', 'link_down_ms', 'link_down_at', 'link_down_session', 'restart_session')
  redis.call('ZREM', p .. 'workers:link_down', id)
elseif ctx.kind == 'queue' and ctx.capacity and ctx.capacity > 0 and ctx.depth then
  local ratio = ctx.depth / ctx.capacity
  local scaling = redis.call('HGET', entity, 'scaling_state')
  if ratio >= ctx.high_watermark and scaling ~= 'high' then
    redis.call('HSET', entity, 'scaling_state', 'high')
    trigger('trigger.scaling', id, 'scaling:' .. id .. ':' .. event_id, 'scale_up',
            {depth = ctx.depth, capacity = ctx.capacity, ratio = ratio})
  elseif ratio <= ctx.low_watermark and scaling == 'high' then
    redis.call('HSET', entity, 'scaling_state', 'normal')
    trigger('trigger.scaling', id, 'scaling:' .. id .. ':' .. event_id, 'scale_down',
            {depth = ctx.depth, capacity = ctx.capacity, ratio = ratio})
  end
elseif ctx.kind == 'service' and ctx.status then
  if ctx.status == 'unhealthy' and previous_status ~= 'unhealthy' then
    trigger('trigger.failover', id, 'failover:' .. id .. ':' .. event_id, 'unhealthy', {previous = previous_status or ''})
  elseif previous_status == 'unhealthy' and ctx.status == 'healthy' then
    trigger('trigger.failover', id, 'failover:' .. id .. ':' .. event_id, 'recovered', {previous = previous_status})
  end
end
return 'applied'
"""#
}
