import OpsBusRedis

/// Applies a batch of events in one script call: the batching processor's way to Redis (issue 6, lever 3).
///
/// Why: Redis spends tens of microseconds on every script call before the script runs a command (argument set-up,
/// the call itself, the reply, the AOF entry), and the per-event call was what bounded the processor (BENCHMARKS.md).
/// Here each event's script runs as a Lua function inside one call, with the same KEYS and ARGV it would get on its
/// own, so the per-event logic is exactly `JobEventScript`, `EntityEventScript` and `SequenceScript`. The stats of
/// the whole batch are summed in Lua and written once at the end (`count_event` here collects instead of writing);
/// so are the sequence calls' bookkeeping writes (`SequenceScript.shared`), and each job's seen-set TTL is checked
/// once (`JobEventScript.shared`).
///
/// Each call runs under `pcall`: an event that Redis refuses (e.g. `WRONGTYPE`) gets its error in its own slot of the
/// reply, and the events after it still run. Like any Redis script, a failed event's writes before its error stay
/// (scripts have no rollback), as with the per-event scripts.
///
/// Order: the calls run in the order given, and the whole call is atomic, so per-job order is the journal's order.
///
/// What all job and sequence calls share (the status sets, the stats and gap-index keys, limits, flags, the batch's
/// clock) comes once, first (`RedisPlan.batchConstants`); their calls carry only their own keys and arguments
/// (`RedisPlan.batchJobKeyPositions` …), and the loop below puts the constants back in place, so each event's
/// function gets the KEYS and ARGV of its single call.
///
/// KEYS: 1–11 the batch's constant keys, then the calls' keys, concatenated.
/// ARGV: 1 number of calls, 2–9 the batch's constant arguments, then per call: kind (`j` job, `e` entity,
///       `s` sequence), its number of keys, its number of arguments, its arguments.
/// Returns: one `{1, result}` or `{0, error message}` per call, in order; a job call's result is its outcome alone
/// (the rest of `JobEventScript`'s reply serves single calls; every reply value costs Redis and the processor a
/// conversion).
enum BatchApplyScript {
    static let script = RedisScript(name: "opsbus_apply_batch", source: #"""
local counts = {}
local last = {}
-- The counters' field names by event type and outcome, built once per call (a string concatenation per event
-- costs Redis more than the counting).
local type_fields, outcome_fields = {}, {}
local function count_event(stats_key, minute_key, event_type, outcome, now_iso, retried)
  if retried == '1' and outcome == 'duplicate' then return end
  local type_field, outcome_field = type_fields[event_type], outcome_fields[outcome]
  if not type_field then type_field = 'type:' .. event_type; type_fields[event_type] = type_field end
  if not outcome_field then outcome_field = 'outcome:' .. outcome; outcome_fields[outcome] = outcome_field end
  local s = counts[stats_key]
  if not s then s = {}; counts[stats_key] = s end
  s['events_received'] = (s['events_received'] or 0) + 1
  s[type_field] = (s[type_field] or 0) + 1
  s[outcome_field] = (s[outcome_field] or 0) + 1
  local l = last[stats_key]
  if l then l[1], l[2] = now_iso, event_type else last[stats_key] = {now_iso, event_type} end
  local m = counts[minute_key]
  if not m then m = {}; counts[minute_key] = m end
  m['events'] = (m['events'] or 0) + 1
  m[type_field] = (m[type_field] or 0) + 1
  m[outcome_field] = (m[outcome_field] or 0) + 1
end

"""# + JobEventScript.shared + SequenceScript.shared + #"""
local function job_event(KEYS, ARGV)
"""# + JobEventScript.body + "\n" + #"""
end

local function entity_event(KEYS, ARGV)
"""# + EntityEventScript.body + "\n" + #"""
end

local function sequence_event(KEYS, ARGV)
"""# + SequenceScript.body + "\n" + #"""
end

local calls = {j = job_event, e = entity_event, s = sequence_event}
local results = {}
local K, A = KEYS, ARGV
-- The batch's constants (`RedisPlan.batchConstants`).
local s1, s2, s3, s4, s5, s6 = K[1], K[2], K[3], K[4], K[5], K[6]
local stats_key, minute_key, owners_key, pending_key, reported_key = K[7], K[8], K[9], K[10], K[11]
local timeline_limit, seen_ttl, prefix, automation, now_iso, retried, now_ms, max_gaps =
  A[2], A[3], A[4], A[5], A[6], A[7], A[8], A[9]
local key_at, arg_at = 11, 10
for i = 1, tonumber(A[1]) do
  local fn, key_count, arg_count = calls[A[arg_at]], tonumber(A[arg_at + 1]), tonumber(A[arg_at + 2])
  arg_at = arg_at + 3
  -- Each call's KEYS and ARGV as its single call has them: table constructors (one allocation of the right size;
  -- a Lua loop cost a tenth of Redis's instructions per event, `Benchmarks/redis_replay.py`), with the constants
  -- in their places (`JobEventScript`, `SequenceScript`). A call has at most a few hundred arguments
  -- (`EventEnvelope.maximumEventFields`), far below what `unpack` can return (8,000).
  local k, a = key_at, arg_at
  local keys, args
  if fn == job_event then
    keys = {K[k + 1], K[k + 2], K[k + 3], s1, s2, s3, s4, s5, s6, K[k + 4], stats_key, minute_key}
    args = {A[a], A[a + 1], A[a + 2], A[a + 3], A[a + 4], A[a + 5], timeline_limit, A[a + 6], seen_ttl, A[a + 7],
            A[a + 8], prefix, automation, A[a + 9], A[a + 10], A[a + 11], now_iso, retried,
            unpack(A, a + 12, a + arg_count - 1)}
  elseif fn == sequence_event then
    keys = {K[k + 1], K[k + 2], stats_key, K[k + 3], owners_key, pending_key, reported_key}
    args = {A[a], A[a + 1], A[a + 2], A[a + 3], now_ms, A[a + 4], seen_ttl, max_gaps}
  else
    keys = {unpack(K, k + 1, k + key_count)}
    args = {unpack(A, a, a + arg_count - 1)}
  end
  key_at, arg_at = key_at + key_count, arg_at + arg_count
  seq_call = i
  local ok, result = pcall(fn, keys, args)
  if ok then
    if fn == job_event then
      \#(JobEventScript.count(keys: "keys", arguments: "args"))
      result = result[1]
    elseif fn == entity_event then
      \#(EntityEventScript.count(keys: "keys", arguments: "args"))
    end
    results[i] = {1, result}
  elseif type(result) == 'table' and result.err then
    results[i] = {0, result.err}
  else
    results[i] = {0, tostring(result)}
  end
end

-- The sequence calls' collected writes; a refused one is the error of the last call that wrote that key.
for _, failure in ipairs(seq_flush()) do results[failure[1]] = {0, failure[2]} end

-- The batch's stats, one write per counter.
for key, fields in pairs(counts) do
  local created = false
  for field, n in pairs(fields) do
    if redis.call('HINCRBY', key, field, n) == n and field == 'events' then created = true end
  end
  if created then redis.call('EXPIRE', key, \#(RedisKeys.minuteStatsRetention)) end
end
for key, value in pairs(last) do
  redis.call('HSET', key, 'last_event_at', value[1], 'last_event_type', value[2])
end
return results
"""#)
}
