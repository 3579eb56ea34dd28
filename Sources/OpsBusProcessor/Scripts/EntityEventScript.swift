import OpsBusRedis

/// Applies one event to the current-state hash of a worker, queue, service, model or a worker's resources,
/// atomically and idempotently, with the automated actions of that kind.
///
/// State fields are "last writer by event time wins": they are written only when the event is not older than the
/// state already stored (`state_ts`), so a late, reordered health message cannot overwrite a newer one.
/// A last will is the exception: its envelope was built when the connection opened (the broker only stores it), so
/// its timestamp is old by design. It applies when it comes from the session that wrote the current state (that
/// session is dead now); a will from an older session never overrides a newer live one.
/// Counters (model loads, cache hits, load time) are added exactly once per event id, whatever the order.
///
/// Actions (when `ctx.automation`; outgoing events go to the outbox stream for `OutboxRelay`, with event ids derived
/// from what caused them, so a repeated action is a duplicate downstream):
/// - worker → `offline` (last will, or `HeartbeatMonitor`): every job in the worker's in-flight set fails over: a
///   `job.failed` with `error_type: worker_lost` is published for it, and the normal retry rules follow.
/// - model: the seed's precache rule (more than N loads, average load over T ms, cache hit rate under R) publishes
///   one `trigger.precache` per model, not one per event.
/// - queue: depth/capacity crossing the high watermark publishes `trigger.scaling` (scale_up) once; falling below
///   the low watermark afterwards publishes scale_down.
/// - service: turning `unhealthy` publishes `trigger.failover` (reason unhealthy); turning healthy again after
///   that publishes it with reason recovered.
///
/// KEYS: 1 entity hash, 2 seen-event-id set, 3 index sorted set (ids by last update).
/// ARGV: 1 event_id, 2 event time (ms since epoch), 3 seen-set TTL seconds, 4 entity id, 5 number of state pairs,
///       6 session id of a last will ("" for other events), 7 action context (JSON), 8.. state field/value pairs,
///       then counter field/increment pairs.
/// Returns: `applied`, `stale` (counters added, state kept because a newer event is stored) or `duplicate`.
enum EntityEventScript {
    static let script = RedisScript(name: "opsbus_apply_entity_event", source: #"""
local entity, seen, index = KEYS[1], KEYS[2], KEYS[3]
local event_id, ts, seen_ttl, id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local state_pairs, will_session = tonumber(ARGV[5]), ARGV[6]
local ctx = cjson.decode(ARGV[7])
local first_state = 8
local p = ctx.prefix
if redis.call('SADD', seen, event_id) == 0 then return 'duplicate' end
redis.call('EXPIRE', seen, seen_ttl)
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
local same_session_will = will_session ~= '' and redis.call('HGET', entity, 'session_id') == will_session
if ts < state_ts and not same_session_will then return 'stale' end
local previous_status = redis.call('HGET', entity, 'status')
for i = first_state, first_counter - 1, 2 do redis.call('HSET', entity, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', entity, 'state_ts', math.max(ts, state_ts), 'id', id)
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
  redis.call('HDEL', entity, 'current_job')
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
"""#)
}
