import OpsBusRedis

/// Applies one event to the current-state hash of a worker, queue, service, model or a worker's resources,
/// atomically and idempotently.
///
/// State fields are "last writer by event time wins": they are written only when the event is not older than the
/// state already stored (`state_ts`), so a late, reordered health message cannot overwrite a newer one.
/// A last will is the exception: its envelope was built when the connection opened (the broker only stores it), so
/// its timestamp is old by design. It applies when it comes from the session that wrote the current state (that
/// session is dead now); a will from an older session never overrides a newer live one.
/// Counters (model loads, cache hits, load time) are added exactly once per event id, whatever the order.
///
/// KEYS: 1 entity hash, 2 seen-event-id set, 3 index sorted set (ids by last update).
/// ARGV: 1 event_id, 2 event time (ms since epoch), 3 seen-set TTL seconds, 4 entity id, 5 number of state pairs,
///       6 session id of a last will ("" for other events), 7.. state field/value pairs, then counter pairs.
/// Returns: `applied`, `stale` (counters added, state kept because a newer event is stored) or `duplicate`.
enum EntityEventScript {
    static let script = RedisScript(name: "opsbus_apply_entity_event", source: #"""
local entity, seen, index = KEYS[1], KEYS[2], KEYS[3]
local event_id, ts, seen_ttl, id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local state_pairs, will_session = tonumber(ARGV[5]), ARGV[6]
if redis.call('SADD', seen, event_id) == 0 then return 'duplicate' end
redis.call('EXPIRE', seen, seen_ttl)
local first_counter = 7 + state_pairs * 2
for i = first_counter, #ARGV, 2 do redis.call('HINCRBYFLOAT', entity, ARGV[i], ARGV[i + 1]) end
local last_seen = tonumber(redis.call('HGET', entity, 'last_seen_ms')) or 0
if ts > last_seen then redis.call('HSET', entity, 'last_seen_ms', ts) end
redis.call('ZADD', index, math.max(ts, last_seen), id)
local state_ts = tonumber(redis.call('HGET', entity, 'state_ts')) or -1
local same_session_will = will_session ~= '' and redis.call('HGET', entity, 'session_id') == will_session
if ts < state_ts and not same_session_will then return 'stale' end
for i = 7, first_counter - 1, 2 do redis.call('HSET', entity, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', entity, 'state_ts', math.max(ts, state_ts), 'id', id)
return 'applied'
"""#)
}
