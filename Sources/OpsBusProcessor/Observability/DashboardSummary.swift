import OpsBusCore
import OpsBusRedis

/// What the dashboard shows, read from Redis with the same readers as `opsbus health`, `opsbus jobs` and
/// `opsbus workers`, plus queues and models.
struct DashboardSummary {
    var report: HealthReport
    var recentJobs: [JobSummary]
    var failures: [JobSummary]
    var workers: [WorkerEntry]
    var queues: [(id: String, fields: [String: String])]
    var models: [(id: String, fields: [String: String])]
    var depths: QueueDepths

    static let jobsShown = 30
    static let failuresShown = 20
    static let entitiesShown = 20

    static func read(redis: RedisConnection, keys: RedisKeys, thresholds: HealthThresholds) throws -> DashboardSummary {
        let now = EventTimestamp.now()
        let report = try ProcessorHealth.read(redis: redis, keys: keys, now: now, thresholds: thresholds)
        let jobs = try JobIndex.list(redis: redis, keys: keys, query: JobQuery(limit: jobsShown)).jobs
        var failures = try JobIndex.list(redis: redis, keys: keys, query: JobQuery(status: "failed", limit: failuresShown)).jobs
        failures += try JobIndex.list(redis: redis, keys: keys, query: JobQuery(status: "dead_lettered", limit: failuresShown)).jobs
        failures += try JobIndex.list(redis: redis, keys: keys, query: JobQuery(status: "retry_scheduled", limit: failuresShown)).jobs
        failures = failures.map { ($0, $0.updated) }.sorted(by: JobIndex.newestFirst).map(\.0).prefix(failuresShown).map { $0 }
        let workers = try WorkerRegistry.read(redis: redis, keys: keys, now: now, staleAfter: thresholds.staleAfterSeconds)
        return DashboardSummary(
            report: report, recentJobs: jobs, failures: failures, workers: workers,
            queues: try entities("queue", redis: redis, keys: keys), models: try entities("model", redis: redis, keys: keys),
            depths: try ProcessorObservability.readDepths(redis, keys: keys))
    }

    /// The most recently updated entities of one kind (`queues`, `models` indexes) with their hash fields.
    static func entities(_ kind: String, redis: RedisConnection, keys: RedisKeys) throws(RedisError)
        -> [(id: String, fields: [String: String])]
    {
        let ids = (try redis.command(["ZREVRANGE", keys.entityIndex(kind), "0", String(entitiesShown - 1)]).array ?? [])
            .compactMap(\.string)
        guard !ids.isEmpty else { return [] }
        let replies = try redis.pipeline(ids.map { ["HGETALL", keys.entity(kind, $0)] })
        return zip(ids, replies).map { ($0, $1.hashDictionary()) }
    }

    func json(eventsPerSecond: [String: Double], processor: EventProcessor) -> JSONValue {
        func number(_ text: String?) -> Double? { text.flatMap(Double.init) }
        var failureTypes: [String: Int64] = [:]
        for job in failures { failureTypes[job.errorType ?? "unknown", default: 0] += 1 }
        let models: [JSONValue] = models.map { model in
            let loads = number(model.fields["loads"]) ?? 0
            let hits = number(model.fields["cache_hits"]) ?? 0
            let totalLoad = number(model.fields["total_load_time_ms"]) ?? 0
            return .object([
                "model": .string(model.id), "loads": .double(loads), "cache_hits": .double(hits),
                "cache_hit_rate": loads > 0 ? .double((hits / loads * 1000).rounded() / 1000) : .null,
                "average_load_ms": loads > 0 ? .double((totalLoad / loads).rounded()) : .null,
                "jobs_completed": .double(number(model.fields["jobs_completed"]) ?? 0),
                "precache_triggered_at": model.fields["precache_triggered_at"].map(JSONValue.string) ?? .null,
            ])
        }
        let queues: [JSONValue] = queues.map { queue in
            var object: JSONObject = ["queue": .string(queue.id)]
            for (name, value) in queue.fields.sorted(by: { $0.key < $1.key }) where !name.hasPrefix("_") {
                object[name] = number(value).map(JSONValue.double) ?? .string(value)
            }
            return .object(object)
        }
        let counters = processor.counters
        let verdict = report.verdict
        return .object([
            "generated_at": .string(report.generatedAt.iso8601),
            "verdict": .string(verdict.status.rawValue),
            "reasons": .array(verdict.reasons.map(JSONValue.string)),
            "processor": .object([
                "client_id": .string(processor.configuration.clientID),
                "broker_connected": .bool(processor.isBrokerConnected),
                "received": .int(Int64(counters.received)), "applied": .int(Int64(counters.applied)),
                "duplicates": .int(Int64(counters.duplicates)), "dead_lettered": .int(Int64(counters.deadLettered)),
            ]),
            "jobs_by_status": .object(JSONObject(pairs: report.jobsByStatus.map { ($0.status, JSONValue.int($0.count)) })),
            "recent_jobs": .array(recentJobs.map { $0.json() }),
            "recent_failures": .array(failures.map { $0.json() }),
            "failure_types": .object(JSONObject(pairs: failureTypes.sorted { $0.key < $1.key }.map { ($0.key, .int($0.value)) })),
            "workers": .array(workers.map { $0.json() }),
            "workers_by_status": .object(JSONObject(
                pairs: report.workersByStatus.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) })),
            "events": .object([
                "total": .int(report.eventsTotal),
                "last_minute": .int(report.eventsLastMinute),
                "per_second_by_type": .object(JSONObject(
                    pairs: eventsPerSecond.sorted { $0.key < $1.key }.map { ($0.key, .double($0.value)) })),
                "by_type": .object(JSONObject(
                    pairs: report.eventTypes.sorted { $0.key < $1.key }.map { ($0.key, .int($0.value)) })),
                "last_event_at": report.lastEventAt.map { .string($0.iso8601) } ?? .null,
            ]),
            "queues": .array(queues),
            "depths": .object([
                "retries_pending": .int(depths.retries), "outbox": .int(depths.outbox),
                "dead_letter_stream": .int(report.deadLetters), "job_dead_letters": .int(depths.jobDeadLetters),
            ]),
            "models": .array(models),
            "precache_triggers": .int(self.models.filter { $0.fields["precache_triggered_at"] != nil }.count.int64),
            "retries": .object([
                "scheduled_jobs": .int(report.jobsByStatus.first { $0.status == "retry_scheduled" }?.count ?? 0),
                "pending": .int(depths.retries),
            ]),
            "dead_letters": .object([
                "events": .int(report.deadLetters), "jobs": .int(depths.jobDeadLetters),
                "dead_lettered_jobs": .int(report.jobsByStatus.first { $0.status == "dead_lettered" }?.count ?? 0),
            ]),
            "actions": report.actions.map { .object(["succeeded": .int($0.succeeded), "failed": .int($0.failed)]) } ?? .null,
            // The processor's pattern analysis (as in `opsbus health`): generated_at, window, recommendations.
            "recommendations": report.patternAnalysis?.json() ?? .null,
            "webhooks": report.webhooks.map {
                .object(["delivered": .int($0.succeeded), "failed_attempts": .int($0.failed)])
            } ?? .null,
        ])
    }
}

private extension Int {
    var int64: Int64 { Int64(self) }
}
