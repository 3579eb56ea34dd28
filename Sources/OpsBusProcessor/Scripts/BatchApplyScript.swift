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
/// KEYS: the calls' keys, concatenated.
/// ARGV: 1 number of calls, then per call: kind (`j` job, `e` entity, `s` sequence), its number of keys, its number
///       of arguments, its arguments.
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
local key_at, arg_at = 0, 2
for i = 1, tonumber(ARGV[1]) do
  local fn, key_count, arg_count = calls[ARGV[arg_at]], tonumber(ARGV[arg_at + 1]), tonumber(ARGV[arg_at + 2])
  arg_at = arg_at + 3
  -- `unpack` into a table constructor: one allocation of the right size, copied in C (a Lua loop cost a tenth of
  -- Redis's instructions per event, `Benchmarks/redis_replay.py`). A call has at most a few hundred arguments (`EventEnvelope.maximumEventFields`),
  -- far below what `unpack` can return (8,000).
  local keys = {unpack(KEYS, key_at + 1, key_at + key_count)}
  local args = {unpack(ARGV, arg_at, arg_at + arg_count - 1)}
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
