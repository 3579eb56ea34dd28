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
enum SequenceScript {
    static let script = RedisScript(name: "opsbus_track_sequence", source: body)

    /// The Lua of one call: also run per event, as a function, by `BatchApplyScript`.
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
local function add_gap(first, last, opened, was_reported)
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

local max = tonumber(redis.call('HGET', session_key, 'max'))
if max == nil then
  local since = tonumber(redis.call('HGET', stats, 'seq_tracking_since_ms'))
  if since == nil then
    since = now
    redis.call('HSET', stats, 'seq_tracking_since_ms', n(now))
  end
  if started and started >= since and started >= now - ttl * 1000 then max = 0 else max = seq - 1 end
  redis.call('HSET', session_key, 'owner', owner, 'first_seq', n(seq), 'created_ms', n(now), 'max', n(max))
  counts.sessions = 1
end

local declared_from = (prev ~= nil and prev + 1 <= seq - 1) and prev + 1 or nil
if seq <= max then
  if fill(seq, seq) == 0 then
    redis.call('EXPIRE', session_key, ttl)
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
  redis.call('HSET', session_key, 'max', n(seq))
  local open = redis.call('ZCARD', gaps_key)
  while open > max_gaps do
    remove_gap(parse(redis.call('ZRANGE', gaps_key, 0, 0)[1]))
    counts.gaps_abandoned = counts.gaps_abandoned + 1
    open = open - 1
  end
end

redis.call('HSET', session_key, 'updated_ms', n(now))
redis.call('EXPIRE', session_key, ttl)
redis.call('EXPIRE', gaps_key, ttl)
for field, value in pairs(counts) do
  if value > 0 then
    redis.call('HINCRBY', stats, field, value)
    redis.call('HINCRBY', owner_key, field, value)
  end
end
redis.call('HSET', owner_key, 'last_session', session, 'last_seq', n(seq), 'updated_ms', n(now))
redis.call('EXPIRE', owner_key, ttl)
redis.call('ZADD', owners, n(now), owner)
redis.call('ZREMRANGEBYSCORE', owners, '-inf', n(now - ttl * 1000))
return {'applied', counts.gaps_opened, counts.gaps_closed, counts.declared_drops}
"""#
}
