import Foundation
import Logging
import OpsBusCore
import OpsBusRedis

/// Time-driven actions: due retries become `trigger.retry` events, workers that stopped sending heartbeats are
/// declared offline (which fails their in-flight jobs over), the jobs of workers whose link stayed down (or whose
/// old process died) past the grace period fail over, and sequence gaps that stayed open are reported.
///
/// Each only moves work into the outbox or flags state, in one script each, so several processor instances can run
/// them at once: a due retry, a worker's grace or a gap is claimed by exactly one of them (ZREM inside the script).
/// Gap reports run even with automation off: they only observe.
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

    /// Fails over the jobs of workers whose link grace is over (`workers:link_down`, scored by when it began):
    /// - still `unreachable` (no birth since the will): every in-flight job fails over and the worker turns
    ///   `offline`; its `link_down_*` fields stay, so a later birth of the same session is still a `link_down` outage;
    /// - restarted as a new process (`restart_session`): the in-flight jobs whose newest word came from another
    ///   session (`worker_session`) fail over; jobs the spool flush settled meanwhile are no longer in flight.
    /// Failed-over jobs get the same derived event id as every other failover of that job attempt.
    /// KEYS: 1 link-down zset, 2 outbox, 3 stats. ARGV: 1 now (ms), 2 grace (ms), 3 key prefix, 4 batch, 5 now (ISO).
    /// Returns { workers declared offline, jobs failed over }.
    static let sweepLinkDown = RedisScript(name: "opsbus_sweep_link_down", source: #"""
local now, grace, p, batch, now_iso = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - grace), 'LIMIT', 0, batch)
local declared, failed = 0, 0
local function fail_over(job_id, worker, reason)
  local job = redis.call('HMGET', p .. 'job:{' .. job_id .. '}', 'status', 'attempt')
  if job[1] ~= 'processing' and job[1] ~= 'received' then return end
  local attempt = job[2] or '1'
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000000', '*', 'kind', 'publish', 'event_type', 'job.failed',
    'subject', job_id, 'job_id', job_id, 'attempt', attempt, 'worker_id', worker,
    'event_id', 'wl-' .. redis.sha1hex(job_id .. '|' .. attempt .. '|' .. worker),
    'fields', cjson.encode({error = 'worker ' .. worker .. ' went offline during the job (' .. reason .. ')',
      error_type = 'worker_lost', error_category = 'infrastructure', error_recoverable = true,
      retry_recommended = true, resource_impact = 'medium', user_impact = 'low'}),
    'created_at', ARGV[1])
  failed = failed + 1
end
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local wkey = p .. 'worker:{' .. id .. '}'
  local inflight = wkey .. ':inflight'
  local w = redis.call('HMGET', wkey, 'status', 'link_down_ms', 'restart_session')
  local status, down_ms, keep_session = w[1], tonumber(w[2]), w[3]
  if down_ms then
    local reason = 'unreachable for ' .. math.floor((now - down_ms) / 1000) .. ' s after its link dropped'
    for _, job_id in ipairs(redis.call('SMEMBERS', inflight)) do fail_over(job_id, id, reason) end
    redis.call('DEL', inflight)
    redis.call('HDEL', wkey, 'current_job', 'restart_session')
    if status == 'unreachable' then
      redis.call('HSET', wkey, 'status', 'offline', 'reason', reason .. ' (last will); jobs failed over',
                 'offline_at', now_iso)
      declared = declared + 1
      redis.call('HINCRBY', KEYS[3], 'link_timeouts', 1)
    end
  elseif keep_session then
    for _, job_id in ipairs(redis.call('SMEMBERS', inflight)) do
      if redis.call('HGET', p .. 'job:{' .. job_id .. '}', 'worker_session') ~= keep_session then
        fail_over(job_id, id, 'worker restarted')
        redis.call('SREM', inflight, job_id)
        local current = redis.call('HGET', wkey, 'current_job')
        if current == job_id then redis.call('HDEL', wkey, 'current_job') end
      end
    end
    redis.call('HDEL', wkey, 'restart_session')
  end
end
return {declared, failed}
"""#)

    /// Reports gaps in publisher sessions that stayed open past the report delay (see `SequenceScript`), once
    /// each: moves them from the pending to the reported index, flags them in the session, counts `gaps_expired`
    /// (total and per owner), and returns them for the warning log. With `cleanup`, also forgets reported gaps
    /// whose session state expired and keeps the reported index to `cap` entries.
    /// KEYS: 1 pending index, 2 reported index, 3 stats. ARGV: 1 now (ms), 2 report after (ms), 3 key prefix,
    /// 4 batch, 5 state TTL (ms), 6 cap, 7 cleanup (1/0). Returns { {session, owner, first, last, opened ms} … }.
    static let sweepExpiredGaps = RedisScript(name: "opsbus_sweep_expired_gaps", source: #"""
local pending, reported, stats = KEYS[1], KEYS[2], KEYS[3]
local now, after, p, batch = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local ttl, cap, cleanup = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
local function n(x) return string.format('%d', x) end
local out = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', pending, '-inf', n(now - after), 'LIMIT', 0, batch)) do
  redis.call('ZREM', pending, member)
  local session, first = string.match(member, '^(.+)|(%d+)$')
  if session then
    local gaps_key = p .. 'seq:{' .. session .. '}:gaps'
    local hit = redis.call('ZRANGEBYSCORE', gaps_key, first, first, 'LIMIT', 0, 1)
    if #hit > 0 then
      local f, l, opened, flag = string.match(hit[1], '^(%d+)|(%d+)|(%d+)|(%d)$')
      if f and flag == '0' then
        redis.call('ZREM', gaps_key, hit[1])
        redis.call('ZADD', gaps_key, f, f .. '|' .. l .. '|' .. opened .. '|1')
        redis.call('ZADD', reported, opened, member)
        local owner = redis.call('HGET', p .. 'seq:{' .. session .. '}', 'owner') or '_'
        redis.call('HINCRBY', stats, 'gaps_expired', 1)
        redis.call('HINCRBY', p .. 'publisher:{' .. owner .. '}', 'gaps_expired', 1)
        table.insert(out, {session, owner, f, l, opened})
      end
    end
  end
end
if cleanup then
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', reported, '-inf', n(now - ttl), 'LIMIT', 0, 1000)) do
    local session, first = string.match(member, '^(.+)|(%d+)$')
    if not session or redis.call('ZCOUNT', p .. 'seq:{' .. session .. '}:gaps', first, first) == 0 then
      redis.call('ZREM', reported, member)
    end
  end
  local size = redis.call('ZCARD', reported)
  if size > cap then redis.call('ZREMRANGEBYRANK', reported, 0, size - cap - 1) end
end
return out
"""#)

    /// Reported gaps kept listed for `opsbus health` (the newest).
    static let reportedGapsCap = 1000

    /// Runs until cancelled: retries, link grace and gap reports every second, the heartbeat sweep every 5 s.
    func run() async {
        var connection: RedisConnection?
        var round = 0
        while !Task.isCancelled {
            do {
                let redis = try OutboxRelay.connected(&connection, configuration: configuration, logger: logger)
                let now = EventTimestamp.now()
                try sweepGaps(redis, now: now, cleanup: round % 60 == 0)
                if configuration.automation { try automatedActions(redis, now: now, round: round) }
            } catch {
                logger.warning("scheduled actions: \(error)")
                connection = nil
            }
            round += 1
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// Gap reports: one warning per gap that stayed open past `gapReportAfter`.
    private func sweepGaps(_ redis: RedisConnection, now: EventTimestamp, cleanup: Bool) throws(RedisError) {
        let keys = configuration.keys
        let reply = try redis.evaluate(
            Self.sweepExpiredGaps, keys: [keys.gapsPending, keys.gapsReported, keys.stats],
            arguments: [String(now.millisecondsSinceEpoch), String(Int64(configuration.gapReportAfter * 1000)),
                        keys.prefix, "100", String(Int64(configuration.dedupWindowSeconds) * 1000),
                        String(Self.reportedGapsCap), cleanup ? "1" : "0"])
        for gap in reply.array ?? [] {
            let fields = (gap.array ?? []).map { $0.string ?? $0.int.map { String($0) } ?? "" }
            guard fields.count == 5, let opened = Int64(fields[4]) else { continue }
            let range = fields[2] == fields[3] ? fields[2] : "\(fields[2])…\(fields[3])"
            logger.warning("events lost: a sequence gap stayed open past the report delay", metadata: [
                "owner": "\(fields[1])", "session": "\(fields[0])", "missing_seq": "\(range)",
                "age_seconds": "\((now.millisecondsSinceEpoch - opened) / 1000)",
            ])
        }
    }

    private func automatedActions(_ redis: RedisConnection, now time: EventTimestamp, round: Int) throws(RedisError) {
        let now = String(time.millisecondsSinceEpoch)
        let keys = configuration.keys
        let claimed = try redis.evaluate(Self.claimDueRetries, keys: [keys.retries, keys.outbox],
                                         arguments: [now, String(configuration.outboxBatchSize)])
        if let count = claimed.int, count > 0 { logger.info("retries due", metadata: ["count": "\(count)"]) }
        let link = try redis.evaluate(
            Self.sweepLinkDown, keys: [keys.workersLinkDown, keys.outbox, keys.stats],
            arguments: [now, String(Int64(configuration.workerLinkGrace * 1000)), keys.prefix,
                        String(configuration.outboxBatchSize), time.iso8601])
        let counts = (link.array ?? []).map { $0.int ?? 0 }
        if counts.count == 2, counts[0] + counts[1] > 0 {
            logger.notice("link grace over: jobs failed over", metadata: [
                "workers_offline": "\(counts[0])", "jobs_failed_over": "\(counts[1])"])
        }
        if round % 5 == 0 {
            let swept = try redis.evaluate(
                Self.sweepSilentWorkers, keys: [keys.entityIndex("worker"), keys.outbox],
                arguments: [now, String(Int(configuration.heartbeatTimeout * 1000)), keys.prefix])
            if let count = swept.int, count > 0 {
                logger.notice("workers silent past the heartbeat timeout", metadata: ["count": "\(count)"])
            }
        }
    }
}
