import Logging
import OpsBusCore
import OpsBusJournal
import OpsBusMQTT
import OpsBusRedis

/// Settings of `opsbus processor`. Every field has a flag and an environment variable (see `opsbus processor --help`).
public struct ProcessorConfiguration: Sendable {
    public var mqtt: MQTTEndpoint
    public var redis: RedisEndpoint
    public var scheme: TopicScheme
    public var keys: RedisKeys
    /// Fixed MQTT client id with a persistent session, so the broker queues events while the processor is down.
    public var clientID: String
    /// MQTT 5 shared-subscription group (`$share/<group>/…`): instances in one group split the events between them.
    public var group: String?
    /// Payloads above this size are dead-lettered without being parsed.
    public var maxPayloadBytes: Int
    /// Events kept per job for `opsbus job <id>`.
    public var timelineLimit: Int
    /// How long the ids of applied events are remembered per job or entity to drop duplicates (seconds).
    public var dedupWindowSeconds: Int
    /// How long one message may wait for Redis (retrying with backoff) before it is handed back to the broker
    /// for redelivery.
    public var redisRetryWindow: Double
    public var keepAlive: Int
    /// `BUSINESS_LOGIC_AUTOMATION`: run the automated actions (worker busy/idle, resources, retries, dead letters,
    /// patterns, triggers, failover). Off, the processor only records state.
    public var automation: Bool = true
    /// `MODEL_USAGE_TRACKING`: per-model usage statistics and the precache rule.
    public var modelUsageTracking: Bool = true
    /// `USER_NOTIFICATIONS_ENABLED`: queue webhook notifications for jobs that asked for one (`notify: true`).
    public var userNotifications: Bool = true
    /// Retry scheduling after a failure (delays per error type, attempts).
    public var retryPolicy: RetryPolicy = RetryPolicy()
    /// A worker that sends heartbeats and then goes silent this long is marked offline (and its jobs fail over).
    public var heartbeatTimeout: Double = 90
    /// `WORKER_LINK_GRACE_SECONDS`: a worker whose last will arrived is `unreachable` (its link dropped; it may
    /// still finish its job and flush the completion from its spool). Its in-flight jobs fail over only when it
    /// stays unreachable this long, or when it restarted as a new process and nothing more came for them.
    public var workerLinkGrace: Double = 30
    /// `GAP_REPORT_AFTER_SECONDS`: a gap in a publisher session's `seq` still open after this long is reported
    /// (warning log, `gaps_expired`, listed by `opsbus health`). Shorter gaps are reordering, not loss.
    public var gapReportAfter: Double = 60
    /// Open gaps kept per publisher session; beyond it the oldest is given up (`gaps_abandoned`), so a session
    /// that loses every other event cannot grow its state without bound.
    public var maxOpenGapsPerSession: Int = 256
    /// Queue depth / capacity at or above which a `trigger.scaling` (scale up) is published once, and below
    /// `queueLowWatermark` again a scale-down.
    public var queueHighWatermark: Double = 0.8
    public var queueLowWatermark: Double = 0.3
    /// `BUSINESS_LOGIC_TIMEOUT_MS`: the longest one Redis command (an event's script with its actions) may take
    /// before the connection counts as broken and the event is retried.
    public var redisCommandTimeout: Double = 5
    /// `EVENT_PROCESSING_BATCH_SIZE`: outbox entries relayed per round.
    public var outboxBatchSize: Int = 100
    /// Where events come from: MQTT (default) or a bridge-written Redis stream.
    public var source: ProcessorSource = .mqtt
    /// `--journal DIR` (`OPSBUS_PROCESSOR_JOURNAL`): journal each message and apply them to Redis in batches
    /// (one round trip and one script call per batch) instead of one at a time inside the message handler. nil: the
    /// synchronous path. See `ProcessorJournal`.
    public var journal: ProcessorJournal?
    /// Webhook targets for notifications (`NOTIFICATION_SERVICE_URL` is the one named `default`). Only these, never
    /// a URL from an event.
    public var webhooks: [WebhookEndpoint] = []
    /// Precache rule for models (the seed's thresholds).
    public var precacheRule: PrecacheRule = PrecacheRule()
    /// `PATTERN_ANALYSIS_INTERVAL`: seconds between pattern analyses (`PatternAnalyzer`); 0 turns it off.
    public var patternAnalysisInterval: Double = 300
    /// Thresholds of the pattern analysis (`PatternAnalysisRules` explains them).
    public var patternRules: PatternAnalysisRules = PatternAnalysisRules()

    public init(
        mqtt: MQTTEndpoint, redis: RedisEndpoint, scheme: TopicScheme = .unprefixed, keys: RedisKeys = RedisKeys(),
        clientID: String = "opsbus-processor", group: String? = nil, maxPayloadBytes: Int = 262_144,
        timelineLimit: Int = 200, dedupWindowSeconds: Int = 7 * 86_400, redisRetryWindow: Double = 20,
        keepAlive: Int = 30
    ) {
        self.mqtt = mqtt
        self.redis = redis
        self.scheme = scheme
        self.keys = keys
        self.clientID = clientID
        self.group = group
        self.maxPayloadBytes = maxPayloadBytes
        self.timelineLimit = timelineLimit
        self.dedupWindowSeconds = dedupWindowSeconds
        self.redisRetryWindow = redisRetryWindow
        self.keepAlive = keepAlive
    }

    /// A Redis connection with the processor's timeouts.
    func connectRedis(logger: Logger) throws(RedisError) -> RedisConnection {
        try RedisConnection(endpoint: redis, commandTimeout: redisCommandTimeout, logger: logger)
    }

    /// The MQTT filters the processor subscribes to, with the group prefix when it has one.
    public var subscriptionFilters: [String] {
        scheme.subscriptionFilters().map { filter in group.map { "$share/\($0)/\(filter)" } ?? filter }
    }
}

/// The batching processor's journal settings: messages are journaled by the MQTT handler (PUBACK after the
/// `write(2)`, as the bridge does) and applied by a drain thread in batches of up to `batchSize`.
public struct ProcessorJournal: Sendable, Equatable {
    /// The journal's directory; one per processor instance (it is locked).
    public var directory: String
    /// Bytes the journal may hold before the handler refuses messages (the broker keeps and redelivers them).
    public var maxBytes: Int64 = 1 << 30
    /// Events per script call. Larger batches cost fewer calls per event but hold Redis longer per call.
    public var batchSize: Int = 128
    /// Redis connections applying the journal's batches at once, each for its share of the publisher sessions:
    /// with 2, Redis runs one part while the next is prepared and sent. One publisher's events keep their journal
    /// order whatever the number; with 1, everything does.
    public var writers: Int = 2
    public var fsync: JournalFsync = .never
    /// On stop, how long the drain keeps applying what is journaled (the rest is applied at the next start).
    public var drainTimeout: Double = 10

    public init(directory: String) {
        self.directory = directory
    }
}
