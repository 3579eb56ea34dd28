import OpsBusRedis

/// Applies one job lifecycle event to the job's state and performs the automated actions of that transition, all
/// in one atomic, idempotent step: the Redis-side twin of `OpsBusCore.JobStateMachine`, whose doc comment states the
/// rules this script follows step by step.
///
/// Why Lua: the read-decide-write must be one atomic step, or two processors handling two events of the same job
/// (shared subscriptions deliver them to different instances, in any order) could both act on a stale status. The
/// actions live in the same script for the same reason, and because a crash between "state applied" and "action
/// done" would otherwise lose the action: a redelivered event is a duplicate and changes nothing. Actions that
/// leave Redis (MQTT triggers, webhooks) are appended to the outbox stream here and sent by `OutboxRelay`.
///
/// Every event of the worker itself also records its session as the job's `worker_session` when it is the
/// attempt's newest (see `EntityEventScript`: a restarted worker's old jobs fail over).
///
/// Actions (only when `ctx.automation`):
/// - started/progress (status → processing): the worker gets `current_job`, the job joins the worker's in-flight
///   set (for failover), the worker turns `busy` unless it reported a newer health or is `unreachable`;
///   `resource_allocation` is
///   recorded in `resources:{worker}`; a `job.started` notification when the job asked for one (`notify`).
/// - completed: resources released, job leaves the in-flight set, a busy worker turns `idle`, model usage statistics (`model:{m}` jobs, cost,
///   processing time, cache hits), a success pattern per service type and model in an hourly bucket, notification.
/// - failed: resources released, job leaves the in-flight set, failure pattern, a worker whose failure had high
///   resource impact is marked for investigation, notification; then the processor's outcome: `retry_scheduled`
///   (the job joins the `retries` sorted set at `ctx.retry_due_ms`; `RetryScheduler` publishes `trigger.retry` when due)
///   or `dead_lettered` (an entry in the `jobs:deadletter` stream with the reason).
/// These keys are outside the job's hash slot: on a Redis Cluster the actions need their own calls (issue 3 note).
///
/// KEYS: 1 job hash, 2 timeline list, 3 seen-event-id set, 4..9 the status index sets in `statuses` order,
///       10 the worker's job set (or the job hash again when the event names no worker: a harmless no-op key).
/// ARGV: 1 event_id, 2 lifecycle event (`received` … `dead_lettered`), 3 attempt, 4 progress or "",
///       5 event timestamp (ISO 8601), 6 timeline entry (the event JSON), 7 timeline limit, 8 job id,
///       9 seen-set TTL seconds, 10 worker id or "", 11 action context (JSON, `JobActionContext`),
///       then field/value pairs to write for this event.
/// Returns: { outcome, status, previous status or "", reason or "" } with outcome
///          `applied` (status changed), `filled` (fields filled, status kept), `ignored`, or `duplicate`.
enum JobEventScript {
    static let statuses = ["received", "processing", "completed", "failed", "retry_scheduled", "dead_lettered"]
    static let firstFieldArgument = 12

    static let script = RedisScript(name: "opsbus_apply_job_event", source: #"""
local job, timeline, seen = KEYS[1], KEYS[2], KEYS[3]
local statuses = {'received', 'processing', 'completed', 'failed', 'retry_scheduled', 'dead_lettered'}
local rank = {received = 0, processing = 1, completed = 2, failed = 2, retry_scheduled = 3, dead_lettered = 3}
local implied = {received = 'received', started = 'processing', progress = 'processing', completed = 'completed',
                 failed = 'failed', retry_scheduled = 'retry_scheduled', dead_lettered = 'dead_lettered'}
local event_id, event, attempt = ARGV[1], ARGV[2], tonumber(ARGV[3])
local progress_arg, ts, entry = ARGV[4], ARGV[5], ARGV[6]
local timeline_limit, job_id, seen_ttl, worker_id = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]), ARGV[10]
local ctx = cjson.decode(ARGV[11])
local first_field = 12
local p = ctx.prefix

local function outbox(fields)
  local args = {p .. 'opsbus:outbox', 'MAXLEN', '~', '1000000', '*'}
  for k, v in pairs(fields) do table.insert(args, k); table.insert(args, tostring(v)) end
  table.insert(args, 'created_at'); table.insert(args, ts)
  redis.call('XADD', unpack(args))
end
local function notify(kind, details)
  if not ctx.notifications or redis.call('HGET', job, 'notify') ~= 'true' then return end
  details.job_id = job_id
  details.event = kind
  details.status = redis.call('HGET', job, 'status')
  details.attempt = attempt
  details.timestamp = ts
  outbox({kind = 'webhook', endpoint = 'default', notification_id = kind .. ':' .. event_id,
          body = cjson.encode(details)})
end
local function release_resources(worker)
  if worker then
    redis.call('HDEL', p .. 'resources:{' .. worker .. '}', 'job:' .. job_id)
    redis.call('SREM', p .. 'worker:{' .. worker .. '}:inflight', job_id)
    local wkey = p .. 'worker:{' .. worker .. '}'
    if redis.call('HGET', wkey, 'current_job') == job_id then
      -- The worker is free again, unless it reported a newer health of its own.
      redis.call('HDEL', wkey, 'current_job')
      local state_ts = tonumber(redis.call('HGET', wkey, 'state_ts')) or -1
      if ctx.ts_ms >= state_ts and redis.call('HGET', wkey, 'status') == 'busy' then
        redis.call('HSET', wkey, 'status', 'idle', 'state_ts', ctx.ts_ms)
      end
    end
  end
end
local stored = redis.call('HMGET', job, 'status', 'attempt', 'progress', 'worker_id')
local status, stored_attempt, progress = stored[1], tonumber(stored[2]) or 0, tonumber(stored[3]) or 0
local stored_worker = stored[4]
if not status then status = nil end
if not stored_worker then stored_worker = nil end

-- Duplicate delivery (same event_id): nothing changes, not even the timeline.
if redis.call('SADD', seen, event_id) == 0 then
  return {'duplicate', status or '', status or '', ''}
end
redis.call('EXPIRE', seen, seen_ttl)
redis.call('RPUSH', timeline, entry)
redis.call('LTRIM', timeline, -timeline_limit, -1)
redis.call('HSET', job, 'last_event_id', event_id, 'last_event_at', ts, 'job_id', job_id)

local target = implied[event]
if target == nil then return {'ignored', status or '', status or '', 'unknown lifecycle event'} end
if attempt == nil or attempt < 1 then return {'ignored', status or '', status or '', 'invalid attempt'} end
if attempt < stored_attempt then
  -- What a `received` says (model, sizes, notify) is about the job, not the attempt: fill what is missing, so the
  -- final hash does not depend on whether it arrived before a retry's events.
  if event == 'received' then
    for i = first_field, #ARGV, 2 do redis.call('HSETNX', job, ARGV[i], ARGV[i + 1]) end
  end
  return {'ignored', status or '', status or '', 'stale attempt'}
end

local previous = status
if attempt > stored_attempt then
  -- A newer attempt starts clean: per-attempt fields go, history (timeline, attempts) stays. The previous
  -- attempt's worker no longer runs this job.
  if ctx.automation then
    if stored_worker then release_resources(stored_worker) end
    -- The attempt is running: a retry still scheduled for it (it started without waiting for the trigger,
    -- e.g. a replay) must not fire later.
    redis.call('ZREM', p .. 'retries', job_id .. '|' .. attempt)
  end
  redis.call('HDEL', job, 'progress', 'started_at', 'completed_at', 'failed_at', 'processing_time', 'output_size',
    'cost_estimate', 'resource_efficiency', 'error_type', 'error_message', 'error_category', 'retry_recommended',
    'execution_step', 'retry_due_at', 'next_attempt', 'dead_letter_reason', 'worker_id', 'worker_session',
    'worker_session_ms')
  redis.call('HSET', job, 'attempt', attempt, 'attempts', attempt)
  status, progress = nil, 0
end

-- Which worker process sent the attempt's newest event (by event time, then session id, so arrival order does
-- not matter): after a worker restart, the jobs whose newest word came from the old process fail over.
if ctx.session_id then
  local ws = redis.call('HMGET', job, 'worker_session_ms', 'worker_session')
  local ws_ms = tonumber(ws[1]) or -1
  if ctx.ts_ms > ws_ms or (ctx.ts_ms == ws_ms and ctx.session_id > (ws[2] or '')) then
    redis.call('HSET', job, 'worker_session', ctx.session_id, 'worker_session_ms', string.format('%d', ctx.ts_ms))
  end
end

-- Progress only rises within an attempt; completion means 100 %.
local new_progress = progress
if progress_arg ~= '' then
  local value = tonumber(progress_arg)
  if value ~= nil and value == value and value ~= math.huge and value ~= -math.huge then
    if value < 0 then value = 0 elseif value > 100 then value = 100 end
    if value > new_progress then new_progress = value end
  end
end
if target == 'completed' then new_progress = 100 end

local function conflicts(a, b)
  if rank[a] < 2 or rank[b] < 2 or a == b then return false end
  if (a == 'completed') ~= (b == 'completed') then return true end
  return rank[a] == 3 and rank[b] == 3
end

local outcome = 'filled'
if status == nil then
  outcome = 'applied'
elseif target == status then
  outcome = 'filled'
elseif conflicts(status, target) then
  return {'ignored', status, previous or '', 'conflicting outcome'}
elseif rank[target] > rank[status] then
  outcome = 'applied'
end

local function set_status(name)
  redis.call('HSET', job, 'status', name)
  for i, s in ipairs(statuses) do
    if s == name then redis.call('SADD', KEYS[3 + i], job_id) else redis.call('SREM', KEYS[3 + i], job_id) end
  end
  status = name
end

if outcome == 'applied' then
  for i = first_field, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
  set_status(target)
else
  for i = first_field, #ARGV, 2 do redis.call('HSETNX', job, ARGV[i], ARGV[i + 1]) end
end
if worker_id ~= '' then redis.call('SADD', KEYS[10], job_id) end
redis.call('HSET', job, 'progress', tostring(new_progress))

-- Automated actions, once per transition (a duplicate returned above; `filled` repeats nothing).
if outcome ~= 'applied' or not ctx.automation then return {outcome, status, previous or '', ''} end

local worker = worker_id
if worker == '' then worker = stored_worker end
local hour_ttl = 30 * 86400

if target == 'processing' then
  local worker_status = worker and worker ~= '' and redis.call('HGET', p .. 'worker:{' .. worker .. '}', 'status')
  if worker_status == 'offline' or worker_status == 'deregistered' then
    -- The worker's death was applied before this (earlier-timestamped) start arrived, so no failover will come
    -- from the worker side: fail the job over now, with the same derived id as that failover would have.
    outbox({kind = 'publish', event_type = 'job.failed', subject = job_id, job_id = job_id, attempt = attempt,
            worker_id = worker, event_id = 'wl-' .. redis.sha1hex(job_id .. '|' .. attempt .. '|' .. worker),
            fields = cjson.encode({error = 'worker ' .. worker .. ' went offline during the job (' ..
              (redis.call('HGET', p .. 'worker:{' .. worker .. '}', 'reason') or 'offline') .. ')',
              error_type = 'worker_lost', error_category = 'infrastructure', error_recoverable = true,
              retry_recommended = true, resource_impact = 'medium', user_impact = 'low'})})
  elseif worker and worker ~= '' then
    local wkey = p .. 'worker:{' .. worker .. '}'
    redis.call('SADD', p .. 'worker:{' .. worker .. '}:inflight', job_id)
    redis.call('HSET', wkey, 'current_job', job_id)
    local state_ts = tonumber(redis.call('HGET', wkey, 'state_ts')) or -1
    -- An unreachable worker stays so until its birth: a start flushed or reordered after the will is older news.
    if ctx.ts_ms >= state_ts and worker_status ~= 'unreachable' then
      redis.call('HSET', wkey, 'status', 'busy', 'state_ts', ctx.ts_ms)
    end
    if ctx.resource_allocation then
      redis.call('HSET', p .. 'resources:{' .. worker .. '}', 'job:' .. job_id, ctx.resource_allocation)
    end
  end
  notify('job.started', {worker_id = worker})
elseif target == 'completed' then
  release_resources(worker)
  local service = ctx.service_type or 'unknown'
  local model = ctx.model or 'unknown'
  if ctx.model_tracking and ctx.model then
    local mkey = p .. 'model:{' .. ctx.model .. '}'
    redis.call('HINCRBY', mkey, 'jobs_completed', 1)
    if ctx.cost_estimate then redis.call('HINCRBYFLOAT', mkey, 'total_cost', ctx.cost_estimate) end
    if ctx.processing_time then redis.call('HINCRBYFLOAT', mkey, 'total_processing_time', ctx.processing_time) end
    if ctx.model_cache_hit == true then redis.call('HINCRBY', mkey, 'job_cache_hits', 1) end
    redis.call('ZADD', p .. 'models', ctx.ts_ms, ctx.model)
  end
  local bucket = p .. 'patterns:success:' .. ctx.hour
  local field = service .. '|' .. model
  redis.call('HINCRBY', bucket, field .. ':count', 1)
  if ctx.processing_time then redis.call('HINCRBYFLOAT', bucket, field .. ':processing_time', ctx.processing_time) end
  if ctx.resource_efficiency then redis.call('HINCRBYFLOAT', bucket, field .. ':efficiency', ctx.resource_efficiency) end
  redis.call('EXPIRE', bucket, hour_ttl)
  notify('job.completed', {processing_time = ctx.processing_time, output_urls = ctx.output_urls})
elseif target == 'failed' then
  release_resources(worker)
  local service = ctx.service_type or 'unknown'
  local error_type = ctx.error_type or 'unknown'
  local bucket = p .. 'patterns:failure:' .. ctx.hour
  redis.call('HINCRBY', bucket, service .. '|' .. error_type .. ':count', 1)
  redis.call('EXPIRE', bucket, hour_ttl)
  if ctx.resource_impact == 'high' and worker then
    redis.call('HSET', p .. 'worker:{' .. worker .. '}', 'investigate', 'true',
      'investigate_reason', error_type .. ' with high resource impact on job ' .. job_id)
    redis.call('SADD', p .. 'workers:investigate', worker)
  end
  if ctx.retry_due_ms then
    set_status('retry_scheduled')
    redis.call('HSET', job, 'retry_due_at', ctx.retry_due_at, 'next_attempt', ctx.next_attempt)
    redis.call('ZADD', p .. 'retries', ctx.retry_due_ms, job_id .. '|' .. ctx.next_attempt)
  else
    set_status('dead_lettered')
    redis.call('HSET', job, 'dead_letter_reason', ctx.retry_reason)
    redis.call('XADD', p .. 'jobs:deadletter', 'MAXLEN', '~', '100000', '*', 'job_id', job_id,
      'attempt', attempt, 'error_type', error_type, 'reason', ctx.retry_reason, 'failed_at', ts)
  end
  notify('job.failed', {error_type = error_type, error = ctx.error_message, retry = ctx.retry_due_at or false})
end
return {outcome, status, previous or '', ''}
"""#)
}
