import OpsBusCore

/// The stats line of one message (`opsbus:stats` and its per-minute hash), counted by the same atomic script call
/// that applies the event: the dedup decision and the count are one step, so an applied event is counted exactly
/// once and no second round trip is needed. `opsbus health`, the dashboard and `/api/summary` read these fields.
///
/// A plan re-run after a failure that may have reached Redis (`retried`) does not count a `duplicate` outcome: the
/// earlier attempt most likely applied and counted the message, and the re-run only finds its own write. (A genuine
/// redelivered duplicate whose first attempt failed that way goes uncounted: an undercount of one duplicate, never a
/// double count.)
enum EventStatsScript {
    /// Lua defining `count_event(stats_key, minute_key, event_type, outcome, now_iso, retried)`.
    static let function = #"""
local function count_event(stats_key, minute_key, event_type, outcome, now_iso, retried)
  if retried == '1' and outcome == 'duplicate' then return end
  redis.call('HINCRBY', stats_key, 'events_received', 1)
  redis.call('HINCRBY', stats_key, 'type:' .. event_type, 1)
  redis.call('HINCRBY', stats_key, 'outcome:' .. outcome, 1)
  redis.call('HSET', stats_key, 'last_event_at', now_iso, 'last_event_type', event_type)
  if redis.call('HINCRBY', minute_key, 'events', 1) == 1 then
    redis.call('EXPIRE', minute_key, \#(RedisKeys.minuteStatsRetention))
  end
  redis.call('HINCRBY', minute_key, 'type:' .. event_type, 1)
  redis.call('HINCRBY', minute_key, 'outcome:' .. outcome, 1)
end

"""#

    /// The same counting as plain commands, for the dead-letter path (no script there; it is rare). Sent in the same
    /// pipeline as the dead-letter entry.
    static func commands(keys: RedisKeys, eventType: String, outcome: String, now: EventTimestamp) -> [[String]] {
        let minuteKey = keys.statsMinute(now.millisecondsSinceEpoch / 60_000)
        return [
            ["HINCRBY", keys.stats, "events_received", "1"],
            ["HINCRBY", keys.stats, "type:\(eventType)", "1"],
            ["HINCRBY", keys.stats, "outcome:\(outcome)", "1"],
            ["HSET", keys.stats, "last_event_at", now.iso8601, "last_event_type", eventType],
            ["HINCRBY", minuteKey, "events", "1"],
            ["HINCRBY", minuteKey, "type:\(eventType)", "1"],
            ["HINCRBY", minuteKey, "outcome:\(outcome)", "1"],
            ["EXPIRE", minuteKey, String(RedisKeys.minuteStatsRetention)],
        ]
    }
}
