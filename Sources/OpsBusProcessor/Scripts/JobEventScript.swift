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
/// Actions (only with automation on, ARGV 13):
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
///       10 the worker's job set (or the job hash again when the event names no worker: a harmless no-op key),
///       11 the stats hash, 12 the stats hash of the current minute (`EventStatsScript`).
/// ARGV: 1 event_id, 2 lifecycle event (`received` … `dead_lettered`), 3 attempt, 4 progress or "",
///       5 event timestamp (ISO 8601), 6 timeline entry (the event JSON), 7 timeline limit, 8 job id,
///       9 seen-set TTL seconds, 10 worker id or "", 11 action context (JSON, `JobActionContext`; decoded only when
///       an action runs), 12 key prefix, 13 automation ("1" or ""), 14 event time (ms since epoch),
///       15 the sending worker's session id or "" (`JobActionContext.workerSession`), 16 event type (stats),
///       17 now (ISO 8601, stats), 18 "1" when an earlier attempt of this call may have run (stats),
///       then field/value pairs to write for this event.
/// Returns: { outcome, status, previous status or "", reason or "" } with outcome
///          `applied` (status changed), `filled` (fields filled, status kept), `ignored`, or `duplicate`.
///
/// Cost (issue 6): about 5 Redis commands for a progress event; in Redis each `redis.call` costs several times the
/// command itself, so the script makes as few as it can. The job hash is read with one `HMGET` (the fixed fields and
/// the event's own, for filling missing ones) and written with one `HSET` (pending writes are collected and flushed
/// before anything reads them back); a status change moves the job between two index sets (`SREM` + `SADD`); the
/// seen set's TTL is checked once per script call (a batch holds many events of a job) and renewed only when a
/// tenth of it has passed, the timeline trimmed only when over its limit, and the JSON context decoded only when an
/// automated action runs.
enum JobEventScript {
    static let statuses = ["received", "processing", "completed", "failed", "retry_scheduled", "dead_lettered"]
    static let firstFieldArgument = 19

    static let script = RedisScript(
        name: "opsbus_apply_job_event",
        source: EventStatsScript.function + shared + "local function apply_job_event(KEYS, ARGV)\n" + body + "\nend\n"
            + "local result = apply_job_event(KEYS, ARGV)\n" + count(keys: "KEYS", arguments: "ARGV") + "\nreturn result\n")

    /// Lua counting the event (`count_event`) with its reply `result`, after `body` returned it.
    static func count(keys: String, arguments: String) -> String {
        "count_event(\(keys)[11], \(keys)[12], \(arguments)[16], result[1], \(arguments)[17], \(arguments)[18])"
    }

    /// Defined once per script call, before `body`: the seen sets whose TTL this call has already checked (a batch
    /// holds many events of one job; the check is a `TTL` command), the status tables, and the helpers with the
    /// event state they read (built once, not per event; `body` sets the state first).
    static let shared = #"""
local seen_checked = {}
local status_index = {received = 1, processing = 2, completed = 3, failed = 4, retry_scheduled = 5, dead_lettered = 6}
local rank = {received = 0, processing = 1, completed = 2, failed = 2, retry_scheduled = 3, dead_lettered = 3}
local implied = {received = 'received', started = 'processing', progress = 'processing', completed = 'completed',
                 failed = 'failed', retry_scheduled = 'retry_scheduled', dead_lettered = 'dead_lettered'}
-- The event being applied, set at the start of `body`, and the helpers that read it: defined once per script call,
-- not per event (a closure per helper per event cost Redis about 5 % of its instructions per event,
-- `Benchmarks/redis_replay.py`). `job_keys`, `job_args`: the event's KEYS and ARGV.
local job, p, ts, ts_ms, ctx, job_id, event_id, attempt, pending, names, have, status, indexed, job_keys, job_args
local first_field = 19
-- Writes to the job hash, collected and sent as one HSET by flush() (before anything reads the hash again).
local function put(field, value)
  pending[#pending + 1] = field
  pending[#pending + 1] = value
end
local function flush()
  if #pending > 0 then
    redis.call('HSET', job, unpack(pending))
    pending = {}
  end
end

local function outbox(fields)
  local args = {p .. 'opsbus:outbox', 'MAXLEN', '~', '1000000', '*'}
  for k, v in pairs(fields) do table.insert(args, k); table.insert(args, tostring(v)) end
  table.insert(args, 'created_at'); table.insert(args, ts)
  redis.call('XADD', unpack(args))
end
local function notify(kind, details)
  flush()
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
    local current_job, state_ts, worker_status = unpack(redis.call('HMGET', wkey, 'current_job', 'state_ts', 'status'))
    if current_job == job_id then
      -- The worker is free again, unless it reported a newer health of its own.
      redis.call('HDEL', wkey, 'current_job')
      if ts_ms >= (tonumber(state_ts) or -1) and worker_status == 'busy' then
        redis.call('HSET', wkey, 'status', 'idle', 'state_ts', ts_ms)
      end
    end
  end
end
-- Fills the event's fields that the hash does not have yet (HSETNX semantics). It uses the values the first HMGET
-- read: nothing writes these fields in between (only a newer attempt deletes fields, and it never fills).
local function fill_missing()
  local filled = {}
  for k = 1, #names do
    if not have[k] and not filled[names[k]] then
      filled[names[k]] = true
      put(names[k], job_args[first_field + 2 * (k - 1) + 1])
    end
  end
end

local function conflicts(a, b)
  if rank[a] < 2 or rank[b] < 2 or a == b then return false end
  if (a == 'completed') ~= (b == 'completed') then return true end
  return rank[a] == 3 and rank[b] == 3
end

-- Moves the job from the set of its indexed status to the new one (two commands, not one per status).
local function set_status(name)
  put('status', name)
  if indexed ~= name then
    if indexed and status_index[indexed] then redis.call('SREM', job_keys[3 + status_index[indexed]], job_id) end
    redis.call('SADD', job_keys[3 + status_index[name]], job_id)
    indexed = name
  end
  status = name
end

"""#

    /// The Lua of one event, the body of a function of `KEYS` and `ARGV` that returns the event's reply (the caller
    /// counts it, `count`): run once by `script`, once per event by `BatchApplyScript`. The state logic is this
    /// function's own code, not a closure inside it: a closure captures every local it uses, and Redis's Lua
    /// allocates each captured local (3 % of Redis's instructions per event, `Benchmarks/redis_replay.py`).
    static let body = #"""
job_keys, job_args = KEYS, ARGV
job = KEYS[1]
local timeline, seen = KEYS[2], KEYS[3]
event_id, attempt = ARGV[1], tonumber(ARGV[3])
local event = ARGV[2]
local progress_arg, entry = ARGV[4], ARGV[6]
ts = ARGV[5]
local timeline_limit, seen_ttl, worker_id = tonumber(ARGV[7]), tonumber(ARGV[9]), ARGV[10]
job_id = ARGV[8]
p, ts_ms = ARGV[12], tonumber(ARGV[14])
local automation = ARGV[13] == '1'
local session_id = ARGV[15]
if session_id == '' then session_id = nil end
ctx = nil
pending = {}
-- The event's field names; the first HMGET reads their stored values too (`have`), for fill_missing.
names = {}
for i = first_field, #ARGV, 2 do names[#names + 1] = ARGV[i] end
have = {}

local stored = redis.call('HMGET', job, 'status', 'attempt', 'progress', 'worker_id', 'worker_session_ms',
                          'worker_session', unpack(names))
for k = 1, #names do have[k] = stored[6 + k] end
status = stored[1]
local stored_attempt, progress = tonumber(stored[2]) or 0, tonumber(stored[3]) or 0
local stored_worker = stored[4]
if not status then status = nil end
-- The status set the job is in: a newer attempt clears `status` below, not the job's membership.
indexed = status
if not stored_worker then stored_worker = nil end
local ws_ms, ws_session = tonumber(stored[5]) or -1, stored[6] or ''

-- Duplicate delivery (same event_id): nothing changes, not even the timeline.
if redis.call('SADD', seen, event_id) == 0 then
  return {'duplicate', status or '', status or '', ''}
end
-- The TTL runs from the job's latest events: renewed once a tenth of it has passed (a read, not a write, otherwise;
-- once per script call).
if not seen_checked[seen] then
  seen_checked[seen] = true
  if redis.call('TTL', seen) < seen_ttl - math.floor(seen_ttl / 10) then redis.call('EXPIRE', seen, seen_ttl) end
end
if redis.call('RPUSH', timeline, entry) > timeline_limit then redis.call('LTRIM', timeline, -timeline_limit, -1) end
put('last_event_id', event_id); put('last_event_at', ts); put('job_id', job_id)

local target = implied[event]
if target == nil then flush(); return {'ignored', status or '', status or '', 'unknown lifecycle event'} end
if attempt == nil or attempt < 1 then flush(); return {'ignored', status or '', status or '', 'invalid attempt'} end
if attempt < stored_attempt then
  -- What a `received` says (model, sizes, notify) is about the job, not the attempt: fill what is missing, so the
  -- final hash does not depend on whether it arrived before a retry's events.
  if event == 'received' then fill_missing() end
  flush()
  return {'ignored', status or '', status or '', 'stale attempt'}
end

local previous = status
local worker_known = stored_worker ~= nil and stored_worker == worker_id
if attempt > stored_attempt then
  -- A newer attempt starts clean: per-attempt fields go, history (timeline, attempts) stays. The previous
  -- attempt's worker no longer runs this job.
  if automation then
    if stored_worker then release_resources(stored_worker) end
    -- The attempt is running: a retry still scheduled for it (it started without waiting for the trigger,
    -- e.g. a replay) must not fire later.
    redis.call('ZREM', p .. 'retries', job_id .. '|' .. attempt)
  end
  redis.call('HDEL', job, 'progress', 'started_at', 'completed_at', 'failed_at', 'processing_time', 'output_size',
    'cost_estimate', 'resource_efficiency', 'error_type', 'error_message', 'error_category', 'retry_recommended',
    'execution_step', 'retry_due_at', 'next_attempt', 'dead_letter_reason', 'worker_id', 'worker_session',
    'worker_session_ms')
  put('attempt', attempt); put('attempts', attempt)
  status, progress = nil, 0
  ws_ms, ws_session = -1, ''
  worker_known = false
end

-- Which worker process sent the attempt's newest event (by event time, then session id, so arrival order does
-- not matter): after a worker restart, the jobs whose newest word came from the old process fail over.
if session_id then
  if ts_ms > ws_ms or (ts_ms == ws_ms and session_id > ws_session) then
    -- ARGV[14] is ts_ms as the processor wrote it (decimal digits): formatting the number again cost more.
    put('worker_session', session_id); put('worker_session_ms', ARGV[14])
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

local outcome = 'filled'
if status == nil then
  outcome = 'applied'
elseif target == status then
  outcome = 'filled'
elseif conflicts(status, target) then
  flush()
  return {'ignored', status, previous or '', 'conflicting outcome'}
elseif rank[target] > rank[status] then
  outcome = 'applied'
end

if outcome == 'applied' then
  for i = first_field, #ARGV, 2 do put(ARGV[i], ARGV[i + 1]) end
  set_status(target)
else
  fill_missing()
end
-- The worker's job set already holds the job when the stored worker is this one (added with it).
if worker_id ~= '' and not worker_known then redis.call('SADD', KEYS[10], job_id) end
put('progress', tostring(new_progress))
flush()

-- Automated actions, once per transition (a duplicate returned above; `filled` repeats nothing).
if outcome ~= 'applied' or not automation then return {outcome, status, previous or '', ''} end
ctx = cjson.decode(ARGV[11])

local worker = worker_id
if worker == '' then worker = stored_worker end
local hour_ttl = 30 * 86400

if target == 'processing' then
  local worker_status, state_ts = false, nil
  if worker and worker ~= '' then
    worker_status, state_ts = unpack(redis.call('HMGET', p .. 'worker:{' .. worker .. '}', 'status', 'state_ts'))
  end
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
    -- An unreachable worker stays so until its birth: a start flushed or reordered after the will is older news.
    if ts_ms >= (tonumber(state_ts) or -1) and worker_status ~= 'unreachable' then
      redis.call('HSET', wkey, 'current_job', job_id, 'status', 'busy', 'state_ts', ts_ms)
    else
      redis.call('HSET', wkey, 'current_job', job_id)
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
    redis.call('ZADD', p .. 'models', ts_ms, ctx.model)
  end
  local bucket = p .. 'patterns:success:' .. ctx.hour
  local field = service .. '|' .. model
  -- The hour's bucket expires 30 days after its first event (set when its first counter is created).
  if redis.call('HINCRBY', bucket, field .. ':count', 1) == 1 then redis.call('EXPIRE', bucket, hour_ttl) end
  if ctx.processing_time then redis.call('HINCRBYFLOAT', bucket, field .. ':processing_time', ctx.processing_time) end
  if ctx.resource_efficiency then redis.call('HINCRBYFLOAT', bucket, field .. ':efficiency', ctx.resource_efficiency) end
  notify('job.completed', {processing_time = ctx.processing_time, output_urls = ctx.output_urls})
elseif target == 'failed' then
  release_resources(worker)
  local service = ctx.service_type or 'unknown'
  local error_type = ctx.error_type or 'unknown'
  local bucket = p .. 'patterns:failure:' .. ctx.hour
  if redis.call('HINCRBY', bucket, service .. '|' .. error_type .. ':count', 1) == 1 then
    redis.call('EXPIRE', bucket, hour_ttl)
  end
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
flush()
return {outcome, status, previous or '', ''}
"""#
}
