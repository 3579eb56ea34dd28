import Foundation
import Logging
import OpsBusCore
import OpsBusRedis

extension RedisKeys {
    /// String with the latest pattern analysis as one JSON document (`generated_at`, `window`, `recommendations`),
    /// overwritten by every run; read by `opsbus health` and the dashboard (`PatternStore.read`).
    public var recommendations: String { "\(prefix)patterns:recommendations" }
    /// Sorted set of the derivation keys of recommendations already put in the outbox, scored by when (ms), so a
    /// recommendation is announced once per severity and window however often (and on however many processor
    /// instances) the analysis runs. Entries older than two days are trimmed.
    public var recommendationsAnnounced: String { "\(prefix)patterns:recommendations:announced" }
}

/// The latest analysis as stored in Redis.
public struct PatternAnalysisResult: Sendable, Equatable {
    public var generatedAt: EventTimestamp
    /// The hourly buckets analysed, `<first hour>/<last hour>` (`2026-11-29T01/2026-11-29T02`).
    public var window: String
    /// Most severe first.
    public var recommendations: [PatternRecommendation]

    public init(generatedAt: EventTimestamp, window: String, recommendations: [PatternRecommendation]) {
        self.generatedAt = generatedAt
        self.window = window
        self.recommendations = recommendations
    }

    public func json() -> JSONValue {
        .object([
            "generated_at": .string(generatedAt.iso8601), "window": .string(window),
            "recommendations": .array(recommendations.map { $0.json() }),
        ])
    }

    public init?(json value: JSONValue) {
        guard let object = value.objectValue,
              let generatedAt = object["generated_at"]?.stringValue.flatMap(EventTimestamp.init(iso8601:)),
              let window = object["window"]?.stringValue else { return nil }
        self.init(generatedAt: generatedAt, window: window,
                  recommendations: (object["recommendations"]?.arrayValue ?? []).compactMap(PatternRecommendation.init(json:)))
    }
}

/// Reads what the pattern analysis needs from the aggregates the processor already keeps, and its stored result.
public enum PatternStore {
    /// Hourly buckets analysed: the current UTC hour and the previous one, so that just after the hour the window
    /// still holds an hour of data.
    public static let windowHours = 2
    /// Completed jobs sampled (SRANDMEMBER) for the processing-time p95; the hourly buckets only hold sums.
    public static let processingTimeSample = 500
    /// Models read (the most recently used), for the precache rule.
    public static let modelsRead = 500

    /// The hour buckets of the window ending at `now`, oldest first (`2026-11-29T01`).
    public static func hours(endingAt now: EventTimestamp) -> [String] {
        (0..<windowHours).reversed().map { back in
            String(EventTimestamp(millisecondsSinceEpoch: now.millisecondsSinceEpoch - Int64(back) * 3_600_000)
                .iso8601.prefix(13))
        }
    }

    /// The window's outcomes per service type (summed over its hourly buckets), the processing-time p95 per service
    /// type from a sample of completed jobs of those hours, and the usage counters of recently used models.
    public static func window(redis: RedisConnection, keys: RedisKeys, hours: [String]) throws(InspectionError)
        -> PatternWindow
    {
        var commands = hours.flatMap { [["HGETALL", keys.successPatterns($0)], ["HGETALL", keys.failurePatterns($0)]] }
        commands.append(["SRANDMEMBER", keys.jobsByStatus("completed"), String(processingTimeSample)])
        commands.append(["ZREVRANGE", keys.entityIndex("model"), "0", String(modelsRead - 1)])
        let replies = try chunkedPipeline(redis, commands, reading: "pattern buckets")
        var services: [String: ServiceOutcomes] = [:]
        for index in hours.indices {
            for (field, value) in replies[2 * index].hashDictionary() {
                guard let (service, metric) = split(field), let number = Double(value) else { continue }
                var outcomes = services[service, default: ServiceOutcomes()]
                switch metric {
                case "count": outcomes.completed += Int(number)
                case "processing_time": outcomes.processingTimeTotal += number
                default: break
                }
                services[service] = outcomes
            }
            for (field, value) in replies[2 * index + 1].hashDictionary() {
                guard let (service, metric) = split(field), metric == "count", let number = Int(value) else { continue }
                let errorType = String(field[field.index(after: field.firstIndex(of: "|")!)...].dropLast(":count".count))
                services[service, default: ServiceOutcomes()].failuresByType[errorType, default: 0] += number
            }
        }
        let jobIDs = (replies[2 * hours.count].array ?? []).compactMap(\.string)
        let models = (replies[2 * hours.count + 1].array ?? []).compactMap(\.string)
        var samples: [String: [Double]] = [:]
        var fetch = jobIDs.map { ["HMGET", keys.job($0), "service_type", "processing_time", "completed_at"] }
        fetch += models.map { ["HMGET", keys.entity("model", $0), "loads", "cache_hits", "total_load_time_ms"] }
        let details = try chunkedPipeline(redis, fetch, reading: "completed jobs and models")
        let inWindow = Set(hours)
        for reply in details.prefix(jobIDs.count) {
            let values = (reply.array ?? []).map(\.string)
            guard values.count == 3, let time = values[1].flatMap(Double.init), let completed = values[2],
                  inWindow.contains(String(completed.prefix(13))) else { continue }
            samples[values[0] ?? "unknown", default: []].append(time)
        }
        for (service, times) in samples where services[service] != nil {
            services[service]!.processingTimeP95 = ServiceOutcomes.percentile95(times)
        }
        for service in services.keys where services[service]!.processingTimeTotal > 0 {
            // The bucket counts every completion but sums only the times reported: the mean is over all of them
            // (low only if some completions reported no time; the p95 from the sample is preferred anyway).
            services[service]!.timedCompletions = services[service]!.completed
        }
        var usage: [String: ModelUsageStats] = [:]
        for (model, reply) in zip(models, details.dropFirst(jobIDs.count)) {
            let values = (reply.array ?? []).map { $0.string.flatMap(Double.init) ?? 0 }
            guard values.count == 3, values[0] > 0 else { continue }
            usage[model] = ModelUsageStats(loads: Int(values[0]), cacheHits: Int(values[1]), totalLoadTimeMs: values[2])
        }
        return PatternWindow(services: services, models: usage)
    }

    /// `<service>|<rest>:<metric>` → (service, metric); the rest (model or error type) may itself contain `:`.
    private static func split(_ field: String) -> (String, String)? {
        guard let bar = field.firstIndex(of: "|"), let colon = field.lastIndex(of: ":"), colon > bar else { return nil }
        return (String(field[..<bar]), String(field[field.index(after: colon)...]))
    }

    /// The latest stored analysis; nil before the first run (or when analysis is off).
    public static func read(redis: RedisConnection, keys: RedisKeys) throws(InspectionError) -> PatternAnalysisResult? {
        let reply = try reading("pattern recommendations") { () throws(RedisError) in
            try redis.command(["GET", keys.recommendations])
        }
        guard let text = reply.string, let value = try? JSONValue.parse(text) else { return nil }
        return PatternAnalysisResult(json: value)
    }
}

/// Runs the pattern analysis every `PATTERN_ANALYSIS_INTERVAL` seconds: reads the window (`PatternStore`), applies
/// `PatternAnalysisRules`, stores the result, and announces new recommendations as `trigger.recommendation` events.
///
/// Why this event type: the existing triggers are commands that systems act on at once (a precache consumer loads
/// the model, an autoscaler scales); advice meant for operators sent on `triggers/scaling/…` would make them act on
/// it. `trigger.recommendation` keeps the trigger envelope and fields (`reason`, `subject`, `target`, `details`),
/// so every trigger consumer and the processor's own trigger state handle it, on a topic of its own.
///
/// Announcing goes through the outbox like every other processor event, so it is at least once: one script adds
/// the recommendation's derivation key to `patterns:recommendations:announced` and, only if it was new, the outbox
/// entry, with the event id `pa-<sha1 of the key>`. A crash before the relay published re-sends the same id; an
/// unchanged recommendation in a later run (or on another instance) adds nothing. `precache_model` is listed but
/// not announced: the model's own rule already published its `trigger.precache`.
final class PatternAnalyzer: Sendable {
    private let configuration: ProcessorConfiguration
    private let logger: Logger

    init(configuration: ProcessorConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Announced keys are forgotten after this long (the window is two hours; a day more is plenty).
    static let announcedRetentionMilliseconds: Int64 = 2 * 86_400_000

    /// KEYS: 1 announced zset, 2 outbox, 3 stats. ARGV: 1 now (ms), 2 retention (ms), then per recommendation
    /// derivation key, subject, fields JSON. Returns the number announced.
    static let announce = RedisScript(name: "opsbus_announce_recommendations", source: #"""
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - tonumber(ARGV[2])))
local announced = 0
for i = 3, #ARGV, 3 do
  local key, subject, fields = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('ZADD', KEYS[1], 'NX', ARGV[1], key) == 1 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000000', '*', 'kind', 'publish',
      'event_type', 'trigger.recommendation', 'subject', subject, 'event_id', 'pa-' .. redis.sha1hex(key),
      'fields', fields, 'created_at', ARGV[1])
    announced = announced + 1
  end
end
redis.call('HINCRBY', KEYS[3], 'pattern_analyses', 1)
if announced > 0 then redis.call('HINCRBY', KEYS[3], 'recommendations_announced', announced) end
return announced
"""#)

    /// Runs one analysis every `patternAnalysisInterval` seconds until cancelled (the first after one interval).
    func run() async {
        var connection: RedisConnection?
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(configuration.patternAnalysisInterval))
            if Task.isCancelled { break }
            do {
                let redis = try OutboxRelay.connected(&connection, configuration: configuration, logger: logger)
                try analyse(redis, now: .now())
            } catch {
                logger.warning("pattern analysis: \(error)")
                connection = nil
            }
        }
    }

    /// One analysis: read, judge, store, announce.
    func analyse(_ redis: RedisConnection, now: EventTimestamp) throws(PatternAnalysisError) {
        let keys = configuration.keys
        let hours = PatternStore.hours(endingAt: now)
        let window: PatternWindow
        do {
            window = try PatternStore.window(redis: redis, keys: keys, hours: hours)
        } catch {
            throw .read(error)
        }
        let label = "\(hours.first!)/\(hours.last!)"
        let result = PatternAnalysisResult(
            generatedAt: now, window: label,
            recommendations: configuration.patternRules.recommendations(for: window))
        var arguments = [String(now.millisecondsSinceEpoch), String(Self.announcedRetentionMilliseconds)]
        for recommendation in result.recommendations where recommendation.kind != .precacheModel {
            guard case .object(var details) = recommendation.json() else { continue }
            details["window"] = .string(label)
            let fields: JSONValue = .object([
                "reason": .string(recommendation.summary), "subject": .string(recommendation.subject),
                "target": "operators", "details": .object(details),
            ])
            arguments += [recommendation.derivationKey(window: label), recommendation.subject, fields.serialized()]
        }
        do {
            _ = try redis.command(["SET", keys.recommendations, result.json().serialized()])
            let announced = try redis.evaluate(
                Self.announce, keys: [keys.recommendationsAnnounced, keys.outbox, keys.stats], arguments: arguments)
            if let count = announced.int, count > 0 {
                logger.notice("pattern analysis: new recommendations", metadata: [
                    "count": "\(count)", "window": "\(label)",
                    "first": "\(result.recommendations.first?.summary ?? "")",
                ])
            }
        } catch {
            throw .write(error)
        }
    }
}

/// A pattern analysis run that could not read its window or store/announce its result.
enum PatternAnalysisError: Error, CustomStringConvertible {
    case read(InspectionError)
    case write(RedisError)

    var description: String {
        switch self {
        case .read(let error): "reading the window: \(error)"
        case .write(let error): "storing or announcing the recommendations: \(error)"
        }
    }
}
