import OpsBusRedis

/// Tracks the `seq` numbers of one publisher session to find events lost on the way (gap detection), atomically
/// and idempotently, in its own call next to the event's script.
///
/// A session numbers its sequenced events 1, 2, 3 … without gaps. The state is the highest `seq` seen (`max`) and
/// the session's open gaps: runs of numbers below `max` not seen yet. A number that arrives below `max` fills its
/// gap (closing it, shrinking it, or splitting it in two, which counts as one more gap opened, so that opened −
/// closed − abandoned is always the number open); a number already seen is a duplicate and changes nothing.
/// `prev_seq` declares `prev_seq+1 … seq-1` as dropped by the publisher itself: they count as `declared_drops`,
/// never as a gap. Shared subscriptions and redelivery reorder events, so a gap is only news once it stays open:
/// the sweep (`ScheduledActions.sweepExpiredGaps`) reports those older than `GAP_REPORT_AFTER_SECONDS`, once.
///
/// A session seen for the first time starts at `seq` 1, so losing its first events is a gap too, unless it began
/// before gap tracking did or longer ago than the state is kept (its session id, a ULID, says when): then it starts
/// at the number that arrives, because the missing ones may have been applied before anyone counted.
///
/// Bounded: the session's keys expire `ttl` seconds after its last event, and at most `max_gaps` gaps stay open
/// (beyond that the oldest is given up, counted in `gaps_abandoned`). Keys of one session share the hash tag
/// `{<session_id>}`; the counters and indexes are outside it (like the other scripts' actions, see issue 3 note).
///
/// KEYS: 1 session hash, 2 session gaps, 3 stats hash, 4 owner hash, 5 owners index, 6 pending-gap index,
///       7 reported-gap index.
/// ARGV: 1 session id, 2 owner, 3 seq, 4 prev_seq or "", 5 now (ms), 6 session start (ms, from its ULID) or "",
///       7 state TTL (seconds), 8 open gaps kept per session.
/// Returns: { `applied` or `duplicate`, gaps opened, gaps closed, declared drops }.
///
/// Cost (issue 6): the session's `max` is read once per script call and the bookkeeping writes (the session's `max`
/// and time, its owner's record and counters, the owners index, the TTLs) are collected and made once per key at the
/// end of the call (`shared`: `seq_flush`). A batch (`BatchApplyScript`) holds many events of one session, so an
/// event that arrives in order costs no Redis command of its own; the writes were ten commands per event before.
/// Only the gap set is read and written as the events go, since later events of the batch read it.
enum SequenceScript {
    static let script = RedisScript(name: "opsbus_track_sequence", source: shared + #"""
local function sequence_event(KEYS, ARGV)
"""# + body + #"""

end
local result = sequence_event(KEYS, ARGV)
local failed = seq_flush()
if #failed > 0 then return redis.error_reply(failed[1][2]) end
return result
"""#)

    /// The cache of sessions' `max` and the collected writes, with `seq_flush`, which makes them and returns the
    /// ones Redis refused as `{call index, error}` (`seq_call` is the index of the call being run). Defined once
    /// per script call, before `body`.
    static let shared = #"""
local seq_max = {}
local seq_writes, seq_order = {}, {}
local seq_call = 1
local function seq_session_max(key)
  local max = seq_max[key]
  if max == nil then
    max = tonumber(redis.call('HGET', key, 'max')) or false
    seq_max[key] = max
  end
  return max or nil
end
local function seq_later(key)
  local w = seq_writes[key]
  if w == nil then
    w = {hset = {}, incr = {}, zadd = {}}
    seq_writes[key] = w
    seq_order[#seq_order + 1] = key
  end
  w.call = seq_call
  return w
end
local function seq_flush()
  local failed = {}
  for _, key in ipairs(seq_order) do
    local w = seq_writes[key]
    local ok, err = pcall(function()
      local args = {}
      for field, value in pairs(w.hset) do args[#args + 1] = field; args[#args + 1] = value end
      if #args > 0 then redis.call('HSET', key, unpack(args)) end
      for field, value in pairs(w.incr) do redis.call('HINCRBY', key, field, value) end
      args = {}
      for member, score in pairs(w.zadd) do args[#args + 1] = score; args[#args + 1] = member end
      if #args > 0 then redis.call('ZADD', key, unpack(args)) end
      if w.trim then redis.call('ZREMRANGEBYSCORE', key, '-inf', w.trim) end
      if w.expire then redis.call('EXPIRE', key, w.expire) end
    end)
    if not ok then
      failed[#failed + 1] = {w.call, type(err) == 'table' and err.err or tostring(err)}
    end
  end
  seq_writes, seq_order = {}, {}
  return failed
end

"""#

    /// The Lua of one event, run as a function after `shared`: by `script`, and per event by `BatchApplyScript`.
    static let body = #"""
local session_key, gaps_key, stats, owner_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local owners, pending, reported = KEYS[5], KEYS[6], KEYS[7]
local session, owner = ARGV[1], ARGV[2]
local seq, prev, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local started, ttl, max_gaps = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local function n(x) return string.format('%d', x) end
local counts = {gaps_opened = 0, gaps_closed = 0, declared_drops = 0, gaps_abandoned = 0, sessions = 0}

local function parse(member)
  local first, last, opened, flag = string.match(member, '^(%d+)|(%d+)|(%d+)|(%d)$')
  return {member = member, first = tonumber(first), last = tonumber(last), opened = tonumber(opened),
          reported = flag == '1'}
end
local added = false
local function add_gap(first, last, opened, was_reported)
  added = true
  redis.call('ZADD', gaps_key, n(first), n(first) .. '|' .. n(last) .. '|' .. n(opened) .. '|' .. (was_reported and '1' or '0'))
  redis.call('ZADD', was_reported and reported or pending, n(opened), session .. '|' .. n(first))
end
local function remove_gap(gap)
  redis.call('ZREM', gaps_key, gap.member)
  redis.call('ZREM', gap.reported and reported or pending, session .. '|' .. n(gap.first))
end
-- Marks a..b (all at or below max) as received; returns how many of them were missing.
local function fill(a, b)
  local found = {}
  local before = redis.call('ZREVRANGEBYSCORE', gaps_key, n(a), '-inf', 'LIMIT', 0, 1)
  if #before > 0 then
    local gap = parse(before[1])
    if gap.last >= a then table.insert(found, gap) end
  end
  if b > a then
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', gaps_key, '(' .. n(a), n(b))) do
      table.insert(found, parse(member))
    end
  end
  local filled = 0
  for _, gap in ipairs(found) do
    local lo, hi = math.max(a, gap.first), math.min(b, gap.last)
    filled = filled + hi - lo + 1
    remove_gap(gap)
    local left, right = gap.first < lo, gap.last > hi
    if left then add_gap(gap.first, lo - 1, gap.opened, gap.reported) end
    if right then add_gap(hi + 1, gap.last, gap.opened, gap.reported) end
    if left and right then
      counts.gaps_opened = counts.gaps_opened + 1
    elseif not left and not right then
      counts.gaps_closed = counts.gaps_closed + 1
    end
  end
  return filled
end

local max = seq_session_max(session_key)
if max == nil then
  local since = tonumber(redis.call('HGET', stats, 'seq_tracking_since_ms'))
  if since == nil then
    since = now
    redis.call('HSET', stats, 'seq_tracking_since_ms', n(now))
  end
  if started and started >= since and started >= now - ttl * 1000 then max = 0 else max = seq - 1 end
  redis.call('HSET', session_key, 'owner', owner, 'first_seq', n(seq), 'created_ms', n(now), 'max', n(max))
  seq_max[session_key] = max
  counts.sessions = 1
end
local session_writes = seq_later(session_key)

local declared_from = (prev ~= nil and prev + 1 <= seq - 1) and prev + 1 or nil
if seq <= max then
  if fill(seq, seq) == 0 then
    session_writes.expire = ttl
    return {'duplicate', 0, 0, 0}
  end
  if declared_from then counts.declared_drops = fill(declared_from, seq - 1) end
else
  local last_missing = seq - 1
  if declared_from then last_missing = math.min(last_missing, declared_from - 1) end
  if last_missing >= max + 1 then
    add_gap(max + 1, last_missing, now, false)
    counts.gaps_opened = counts.gaps_opened + 1
  end
  if declared_from then
    local above = math.max(declared_from, max + 1)
    counts.declared_drops = seq - above
    if declared_from <= max then counts.declared_drops = counts.declared_drops + fill(declared_from, max) end
  end
  seq_max[session_key] = seq
  session_writes.hset.max = n(seq)
  -- Only a gap added by this event can take the session over its limit (each event trims what it adds).
  if added then
    local open = redis.call('ZCARD', gaps_key)
    while open > max_gaps do
      remove_gap(parse(redis.call('ZRANGE', gaps_key, 0, 0)[1]))
      counts.gaps_abandoned = counts.gaps_abandoned + 1
      open = open - 1
    end
  end
end

session_writes.hset.updated_ms = n(now)
session_writes.expire = ttl
seq_later(gaps_key).expire = ttl
local owner_writes = seq_later(owner_key)
for field, value in pairs(counts) do
  if value > 0 then
    local stats_writes = seq_later(stats)
    stats_writes.incr[field] = (stats_writes.incr[field] or 0) + value
    owner_writes.incr[field] = (owner_writes.incr[field] or 0) + value
  end
end
owner_writes.hset.last_session = session
owner_writes.hset.last_seq = n(seq)
owner_writes.hset.updated_ms = n(now)
owner_writes.expire = ttl
local owners_writes = seq_later(owners)
owners_writes.zadd[owner] = n(now)
owners_writes.trim = n(now - ttl * 1000)
return {'applied', counts.gaps_opened, counts.gaps_closed, counts.declared_drops}
"""#
}
