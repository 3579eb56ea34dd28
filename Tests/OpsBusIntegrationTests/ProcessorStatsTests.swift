import OpsBusCore
@testable import OpsBusProcessor
import OpsBusPublisher
import OpsBusRedis
import Testing

/// The stats line of a message is written by the same script call that applies it (`EventStatsScript`): one round
/// trip, and an applied event counted exactly once even when its plan is re-run after a lost reply.
@Suite("Processor stats counted in the apply call")
struct ProcessorStatsTests {
    let servers: TestServers
    let keys = RedisKeys()
    init() throws { servers = try TestServers() }

    private func plan(_ prepared: EventFactory.Prepared, configuration: ProcessorConfiguration,
                      clock: RedisPlan.Clock? = nil) throws -> RedisPlan {
        let payload = prepared.envelope.encoded()
        return RedisPlan(envelope: prepared.envelope, subject: try prepared.envelope.topicSubject(),
                         topic: prepared.topic, payload: payload, configuration: configuration, clock: clock)
    }

    private func stats(_ redis: RedisConnection) throws -> [String: String] {
        try redis.command(["HGETALL", keys.stats]).hashDictionary()
    }

    @Test("a job event is counted once; a re-run after a lost reply is not counted again; a redelivery counts as a duplicate")
    func jobEventCountedOnce() throws {
        let redis = try servers.redisConnection()
        let configuration = ProcessorConfiguration(mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint)
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: "gpu-s")))
        let started = try factory.prepare(.jobStarted, fields: ["worker_assigned": "gpu-s"],
                                          options: .init(jobID: try Identifier(validating: "job-stats")))
        let first = try plan(started, configuration: configuration)

        #expect(try first.apply(on: redis).result == .applied(outcome: "applied"))
        var counted = try stats(redis)
        #expect(counted["events_received"] == "1")
        #expect(counted["type:job.started"] == "1")
        #expect(counted["outcome:applied"] == "1")
        #expect(counted["last_event_type"] == "job.started")
        #expect(counted["last_event_at"] == first.now.iso8601)
        let minute = keys.statsMinute(first.now.millisecondsSinceEpoch / 60_000)
        let perMinute = try redis.command(["HGETALL", minute]).hashDictionary()
        #expect(perMinute["events"] == "1" && perMinute["type:job.started"] == "1" && perMinute["outcome:applied"] == "1")
        let ttl = try #require(try redis.command(["TTL", minute]).int)
        #expect(ttl > 0 && ttl <= RedisKeys.minuteStatsRetention)

        // The same plan again, as after a reply lost on a broken connection: the state is there, nothing is counted.
        #expect(try first.apply(on: redis, retried: true).result == .duplicate)
        counted = try stats(redis)
        #expect(counted["events_received"] == "1", "\(counted)")
        #expect(counted["outcome:duplicate"] == nil, "\(counted)")

        // The broker delivering the message again is a new message: counted, as a duplicate.
        #expect(try plan(started, configuration: configuration).apply(on: redis).result == .duplicate)
        counted = try stats(redis)
        #expect(counted["events_received"] == "2")
        #expect(counted["outcome:duplicate"] == "1")
        #expect(counted["type:job.started"] == "2")
        #expect(try redis.command(["LLEN", keys.jobTimeline("job-stats")]).int == 1)
    }

    @Test("an entity event is counted with its outcome in the same call; a re-run is not counted again")
    func entityEventCountedOnce() throws {
        let redis = try servers.redisConnection()
        let configuration = ProcessorConfiguration(mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint)
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: "gpu-e")))
        let heartbeat = try factory.prepare(.workerHeartbeat, fields: [:])
        let first = try plan(heartbeat, configuration: configuration)

        #expect(try first.apply(on: redis).result == .applied(outcome: "applied"))
        #expect(try first.apply(on: redis, retried: true).result == .duplicate)
        let counted = try stats(redis)
        #expect(counted["events_received"] == "1", "\(counted)")
        #expect(counted["type:worker.heartbeat"] == "1")
        #expect(counted["outcome:applied"] == "1")
        #expect(try redis.command(["HGET", keys.worker("gpu-e"), "heartbeats"]).string == "1")
    }

    @Test("the seen set keeps its TTL without a write per event, and the timeline stays trimmed")
    func seenTTLAndTimelineTrim() throws {
        let redis = try servers.redisConnection()
        var configuration = ProcessorConfiguration(mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint)
        configuration.timelineLimit = 3
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: "gpu-t")))
        let jobID = try Identifier(validating: "job-trim")
        for percent in [10, 20, 30, 40, 50] {
            let progress = try factory.prepare(.jobProgress, fields: ["progress_percentage": .int(Int64(percent))],
                                               options: .init(jobID: jobID))
            _ = try plan(progress, configuration: configuration).apply(on: redis)
        }
        #expect(try redis.command(["LLEN", keys.jobTimeline("job-trim")]).int == 3)
        #expect(try redis.command(["HGET", keys.job("job-trim"), "progress"]).string == "50")
        let ttl = try #require(try redis.command(["TTL", keys.jobSeen("job-trim")]).int)
        #expect(ttl > configuration.dedupWindowSeconds * 9 / 10 - 60 && ttl <= configuration.dedupWindowSeconds)
        #expect(try redis.command(["SCARD", keys.jobSeen("job-trim")]).int == 5)
        #expect(try stats(redis)["events_received"] == "5")
    }

    @Test("a batch call leaves what one call per event leaves: the same stats, per-minute hashes and state")
    func batchCountsLikeSingleCalls() throws {
        let redis = try servers.redisConnection()
        var configuration = ProcessorConfiguration(mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint)
        configuration.timelineLimit = 2  // job-b1's timeline is trimmed
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: "gpu-b")))
        let jobs = try ["job-b1", "job-b2"].map { try Identifier(validating: $0) }
        let started = try factory.prepare(.jobStarted, fields: ["worker_assigned": "gpu-b"], options: .init(jobID: jobs[0]))
        let prepared = [
            started,
            try factory.prepare(.jobProgress, fields: ["progress_percentage": 40], options: .init(jobID: jobs[0])),
            try factory.prepare(.jobProgress, fields: ["progress_percentage": 10], options: .init(jobID: jobs[1])),
            started,  // a duplicate
            try factory.prepare(.workerHeartbeat, fields: [:]),
            try factory.prepare(.jobCompleted, fields: ["processing_time": 2.5], options: .init(jobID: jobs[0])),
            try factory.prepare(.jobCompleted, fields: ["processing_time": 1], options: .init(jobID: jobs[1])),
        ]
        // One clock, as `EventApplier.applyBatch` gives its plans: the batch sends it once, with its other constants.
        let clock = RedisPlan.Clock(keys: keys)
        let plans = try prepared.map { try plan($0, configuration: configuration, clock: clock) }
        let minutes = Set(plans.map { keys.statsMinute($0.now.millisecondsSinceEpoch / 60_000) })
        func counted() throws -> [String: [String: String]] {
            var hashes = [keys.stats: try stats(redis)]
            for minute in minutes { hashes[minute] = try redis.command(["HGETALL", minute]).hashDictionary() }
            return hashes
        }

        try redis.command(["FLUSHDB"])
        let alone = try plans.map { try $0.apply(on: redis).result }
        #expect(alone.filter { $0 == .duplicate }.count == 1, "\(alone)")
        let each = try counted()
        let state = try redisState(redis)
        #expect(each[keys.stats]?["type:job.progress"] == "2" && each[keys.stats]?["outcome:duplicate"] == "1",
                "\(each)")

        try redis.command(["FLUSHDB"])
        let constants = RedisPlan.batchConstants(configuration: configuration, clock: clock, retried: false)
        var callKeys = constants.keys
        var arguments = constants.arguments
        var calls = 0
        for plan in plans {
            for call in [plan.eventCall(retried: false), plan.sequenceCall].compactMap({ $0 }) {
                callKeys += call.keys
                arguments += [call.kind, String(call.keys.count), String(call.arguments.count)] + call.arguments
                calls += 1
            }
        }
        let batch = try #require(try redis.evaluate(BatchApplyScript.script, keys: callKeys,
                                                    arguments: [String(calls)] + arguments).array)
        #expect(batch.allSatisfy { $0.array?.first?.int == 1 }, "\(batch)")
        #expect(try counted() == each)
        #expect(try redisState(redis) == state)
        #expect(try redis.command(["LLEN", keys.jobTimeline("job-b1")]).int == 2)
    }

    @Test("a batch's constants are what its job and sequence calls leave out: each call's own KEYS and ARGV")
    func batchConstantsFillTheCallsGaps() throws {
        var configuration = ProcessorConfiguration(mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint)
        configuration.timelineLimit = 77
        configuration.maxOpenGapsPerSession = 9
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: "gpu-c")))
        let clock = RedisPlan.Clock(keys: keys)
        let received = try factory.prepare(.jobReceived, fields: ["model_required": "sdxl"],
                                           options: .init(jobID: try Identifier(validating: "job-c")))
        let plan = try plan(received, configuration: configuration, clock: clock)
        guard case let .jobEvent(jobKeys, jobArguments) = plan.action, let sequence = plan.sequence else {
            Issue.record("expected a sequenced job event: \(plan.action)")
            return
        }
        for retried in [false, true] {
            let constants = RedisPlan.batchConstants(configuration: configuration, clock: clock, retried: retried)
            let call = try #require(plan.eventCall(retried: retried))
            // `BatchApplyScript`'s reassembly, 1-based there: keys 4–9 and 11–12, arguments 7, 9, 12, 13, 17 and 18.
            var keys = call.keys
            keys.insert(contentsOf: constants.keys[0..<6], at: 3)
            keys += constants.keys[6..<8]
            #expect(keys == jobKeys)
            var arguments = Array(call.arguments.prefix(12))
            for (position, constant) in [(6, 0), (8, 1), (11, 2), (12, 3), (16, 4), (17, 5)] {
                arguments.insert(constants.arguments[constant], at: position)
            }
            var expected = jobArguments
            if retried { expected[RedisPlan.jobRetriedArgument - 1] = "1" }
            #expect(arguments + call.arguments.dropFirst(12) == expected)

            let sequenceCall = try #require(plan.sequenceCall)
            #expect([sequenceCall.keys[0], sequenceCall.keys[1], constants.keys[6], sequenceCall.keys[2],
                     constants.keys[8], constants.keys[9], constants.keys[10]] == sequence.keys)
            #expect([sequenceCall.arguments[0], sequenceCall.arguments[1], sequenceCall.arguments[2],
                     sequenceCall.arguments[3], constants.arguments[6], sequenceCall.arguments[4],
                     constants.arguments[1], constants.arguments[7]] == sequence.arguments)
        }
    }
}
