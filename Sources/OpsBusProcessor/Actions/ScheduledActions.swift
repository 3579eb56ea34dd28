import Foundation
import Logging
import OpsBusCore
import OpsBusRedis

/// Time-driven actions: due retries become `trigger.retry` events, and workers that stopped sending heartbeats are
/// declared offline (which fails their in-flight jobs over, like a last will).
///
/// Both only move work into the outbox, in one script each, so several processor instances can run them at once:
/// a due retry is claimed by exactly one of them (ZREM inside the script).
final class ScheduledActions: Sendable {
    private let configuration: ProcessorConfiguration
    private let logger: Logger

    init(configuration: ProcessorConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Claims due retries (`<job>|<attempt>` members scored by due time) and queues one `trigger.retry` event each.
    /// The queueing system re-runs the job on that trigger, with the next attempt number.
    /// KEYS: 1 retries zset, 2 outbox stream. ARGV: 1 now (ms), 2 batch size. Returns the number claimed.
    static let claimDueRetries = RedisScript(name: "opsbus_claim_due_retries", source: #"""
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local sep = string.find(member, '|', 1, true)
  local job_id, attempt = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000000', '*', 'kind', 'publish', 'event_type', 'trigger.retry',
    'subject', job_id, 'job_id', job_id, 'attempt', attempt, 'event_id', 're-' .. redis.sha1hex(member),
    'fields', cjson.encode({reason = 'retry due', subject = job_id, target = 'job-queue',
                            details = {job_id = job_id, attempt = tonumber(attempt)}}),
    'created_at', ARGV[1])
end
return #due
"""#)

    /// Finds workers that sent heartbeats and then nothing for `timeout`, still marked alive, and queues an
    /// `offline` health event for each (applied like any other: it fails their in-flight jobs over).
    /// KEYS: 1 workers zset (by last seen ms), 2 outbox. ARGV: 1 now (ms), 2 timeout (ms), 3 key prefix.
    static let sweepSilentWorkers = RedisScript(name: "opsbus_sweep_silent_workers", source: #"""
local now, timeout, p = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local silent = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - timeout, 'LIMIT', 0, 100)
local count = 0
for _, id in ipairs(silent) do
  local w = redis.call('HMGET', p .. 'worker:{' .. id .. '}', 'status', 'heartbeats', 'last_seen_ms')
  local status, heartbeats, last_seen = w[1], tonumber(w[2]) or 0, tonumber(w[3]) or 0
  if heartbeats > 0 and (status == 'online' or status == 'busy' or status == 'idle' or status == 'degraded') then
    count = count + 1
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000000', '*', 'kind', 'publish', 'event_type', 'worker.health',
      'subject', id, 'worker_id', id, 'event_id', 'hb-' .. redis.sha1hex(id .. '|' .. last_seen),
      'fields', cjson.encode({status = 'offline', reason = 'heartbeat timeout: nothing for ' ..
                              math.floor((now - last_seen) / 1000) .. ' s'}),
      'created_at', ARGV[1])
  end
end
return count
"""#)

    /// Runs until cancelled: retries every second, the heartbeat sweep every 5 s.
    func run() async {
        guard configuration.automation else { return }
        var connection: RedisConnection?
        var round = 0
        while !Task.isCancelled {
            do {
                let redis = try OutboxRelay.connected(&connection, configuration: configuration, logger: logger)
                let now = String(EventTimestamp.now().millisecondsSinceEpoch)
                let keys = configuration.keys
                let claimed = try redis.evaluate(Self.claimDueRetries, keys: [keys.retries, keys.outbox],
                                                 arguments: [now, String(configuration.outboxBatchSize)])
                if let count = claimed.int, count > 0 { logger.info("retries due", metadata: ["count": "\(count)"]) }
                if round % 5 == 0 {
                    let swept = try redis.evaluate(
                        Self.sweepSilentWorkers, keys: [keys.entityIndex("worker"), keys.outbox],
                        arguments: [now, String(Int(configuration.heartbeatTimeout * 1000)), keys.prefix])
                    if let count = swept.int, count > 0 {
                        logger.notice("workers silent past the heartbeat timeout", metadata: ["count": "\(count)"])
                    }
                }
            } catch {
                logger.warning("scheduled actions: \(error)")
                connection = nil
            }
            round += 1
            try? await Task.sleep(for: .seconds(1))
        }
    }
}
