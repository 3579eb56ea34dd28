import OpsBusRedis

/// Applies one job lifecycle event to the job's state, atomically and idempotently: the Redis-side twin of
/// `OpsBusCore.JobStateMachine`, whose doc comment states the rules this script follows step by step.
/// Why Lua: the read-decide-write must be one atomic step, or two processors handling two events of the same job
/// (shared subscriptions deliver them to different instances, in any order) could both act on a stale status.
///
/// KEYS: 1 job hash, 2 timeline list, 3 seen-event-id set, 4..9 the status index sets in `statuses` order,
///       10 the worker's job set (or the job hash again when the event names no worker: a harmless no-op key).
/// ARGV: 1 event_id, 2 lifecycle event (`received` … `dead_lettered`), 3 attempt, 4 progress or "",
///       5 event timestamp (ISO 8601), 6 timeline entry (the event JSON), 7 timeline limit, 8 job id,
///       9 seen-set TTL seconds, 10 worker id or "", then field/value pairs to write for this event.
/// Returns: { outcome, status, previous status or "", reason or "" } with outcome
///          `applied` (status changed), `filled` (fields filled, status kept), `ignored`, or `duplicate`.
enum JobEventScript {
    static let statuses = ["received", "processing", "completed", "failed", "retry_scheduled", "dead_lettered"]

    static let script = RedisScript(name: "opsbus_apply_job_event", source: #"""
local job, timeline, seen = KEYS[1], KEYS[2], KEYS[3]
local statuses = {'received', 'processing', 'completed', 'failed', 'retry_scheduled', 'dead_lettered'}
local rank = {received = 0, processing = 1, completed = 2, failed = 2, retry_scheduled = 3, dead_lettered = 3}
local implied = {received = 'received', started = 'processing', progress = 'processing', completed = 'completed',
                 failed = 'failed', retry_scheduled = 'retry_scheduled', dead_lettered = 'dead_lettered'}
local event_id, event, attempt = ARGV[1], ARGV[2], tonumber(ARGV[3])
local progress_arg, ts, entry = ARGV[4], ARGV[5], ARGV[6]
local timeline_limit, job_id, seen_ttl, worker_id = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]), ARGV[10]

local stored = redis.call('HMGET', job, 'status', 'attempt', 'progress')
local status, stored_attempt, progress = stored[1], tonumber(stored[2]) or 0, tonumber(stored[3]) or 0
if not status then status = nil end

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
if attempt < stored_attempt then return {'ignored', status or '', status or '', 'stale attempt'} end

local previous = status
if attempt > stored_attempt then
  -- A newer attempt starts clean: per-attempt fields go, history (timeline, attempts) stays.
  redis.call('HDEL', job, 'progress', 'started_at', 'completed_at', 'failed_at', 'processing_time', 'output_size',
    'cost_estimate', 'resource_efficiency', 'error_type', 'error_message', 'error_category', 'retry_recommended',
    'execution_step')
  redis.call('HSET', job, 'attempt', attempt, 'attempts', attempt)
  status, progress = nil, 0
end

-- Progress only rises within an attempt; completion means 100 %.
local new_progress = progress
if progress_arg ~= '' then
  local p = tonumber(progress_arg)
  if p ~= nil and p == p and p ~= math.huge and p ~= -math.huge then
    if p < 0 then p = 0 elseif p > 100 then p = 100 end
    if p > new_progress then new_progress = p end
  end
end
if target == 'completed' then new_progress = 100 end

local function conflicts(a, b)
  if rank[a] < 2 or rank[b] < 2 or a == b then return false end
  if (a == 'completed') ~= (b == 'completed') then return true end
  return rank[a] == 3 and rank[b] == 3
end

local outcome, reason = 'filled', ''
if status == nil then
  outcome = 'applied'
elseif target == status then
  outcome = 'filled'
elseif conflicts(status, target) then
  return {'ignored', status, previous or '', 'conflicting outcome'}
elseif rank[target] > rank[status] then
  outcome = 'applied'
end

if outcome == 'applied' then
  redis.call('HSET', job, 'status', target)
  for i = 11, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
  for i, name in ipairs(statuses) do
    if name == target then redis.call('SADD', KEYS[3 + i], job_id) else redis.call('SREM', KEYS[3 + i], job_id) end
  end
  status = target
else
  for i = 11, #ARGV, 2 do redis.call('HSETNX', job, ARGV[i], ARGV[i + 1]) end
end
if worker_id ~= '' then redis.call('SADD', KEYS[10], job_id) end
redis.call('HSET', job, 'progress', tostring(new_progress))
return {outcome, status, previous or '', reason}
"""#)
}
