import Foundation
import OpsBusCore
import OpsBusHTTP
import OpsBusMQTT
import Prometheus
import Synchronization

/// The processor's Prometheus metrics.
///
/// Two kinds, told apart by name:
/// * `opsbus_events_*`, `opsbus_event_latency_seconds`, `opsbus_redis_errors_total`, `opsbus_mqtt_*`: counted by this
///   process as it works (reset when it restarts; `sum` them over the instances of a group).
/// * `opsbus_bus_*` counters and the gauges (`opsbus_jobs`, `opsbus_workers`, …): read from Redis at scrape time,
///   so they are the whole bus's totals, the same from every instance (aggregate them with `max`, not `sum`).
public final class ProcessorMetrics: Sendable {
    public let registry = MetricsRegistry()
    let redisErrors: Prometheus.Counter
    let latency: DurationHistogram
    private let handedBack: Prometheus.Counter
    private let connection: MQTTConnectionMetrics
    /// The labelled counters by name and label value, made once: `makeCounter` builds and validates the metric's
    /// name and labels under the registry's lock on every call, a per-event cost on the hot path (issue 6).
    private let labelled = Mutex<[LabelledCounter: Prometheus.Counter]>([:])

    private struct LabelledCounter: Hashable {
        let name: String
        let value: String
    }

    public init() {
        redisErrors = registry.counter(
            "redis_errors", help: "Redis commands of the event path that failed (connection lost, timeout); each is retried")
        latency = registry.secondsHistogram(
            "event_latency", buckets: eventLatencyBuckets,
            help: "End-to-end latency: time of applying an event minus its timestamp (publisher clock)")
        handedBack = registry.counter(
            "events_handed_back",
            help: "Events handed back to the broker for redelivery: Redis stayed unreachable, or the journal was full")
        connection = MQTTConnectionMetrics(registry: registry)
    }

    /// Counts one message's outcome (called on the thread that applied it).
    func record(_ result: ApplyResult, eventType: EventType?, timestamp: EventTimestamp?) {
        let type = eventType?.rawValue ?? "undecodable"
        counter("events_received", "type", type, help: "Messages received, by event type").increment()
        switch result {
        case .applied:
            counter("events_applied", "type", type, help: "Events applied to Redis, by event type").increment()
            if let timestamp {
                let milliseconds = max(0, EventTimestamp.now().millisecondsSinceEpoch - timestamp.millisecondsSinceEpoch)
                latency.record(.milliseconds(milliseconds))
            }
        case .duplicate:
            counter("events_duplicate", "type", type, help: "Events seen before (same event_id): no change").increment()
        case .deadLettered(let reason):
            counter("events_dead_lettered", "reason", Self.reasonClass(reason),
                    help: "Messages refused into the dead-letter stream, by reason class").increment()
        case .retryLater:
            handedBack.increment()
        }
    }

    /// A message refused because the journal is full or failing: the broker redelivers it.
    func recordHandedBack() { handedBack.increment() }

    /// The counter `name` with one label, from the cache (label values are bounded: event types, reason classes).
    private func counter(_ name: String, _ label: String, _ value: String, help: String) -> Prometheus.Counter {
        let key = LabelledCounter(name: name, value: value)
        if let counter = labelled.withLock({ $0[key] }) { return counter }
        let counter = registry.counter(name, [(label, value)], help: help)
        labelled.withLock { $0[key] = counter }
        return counter
    }

    /// A bounded label for a free-text dead-letter reason.
    static func reasonClass(_ reason: String) -> String {
        if reason.hasPrefix("oversize") { return "oversize" }
        if reason.hasPrefix("invalid event") { return "invalid_event" }
        if reason.hasPrefix("Redis rejected") { return "redis_rejected" }
        if reason.contains("topic") { return "topic_mismatch" }
        return "other"
    }

    /// Counts connection events until the stream ends or the task is cancelled.
    func count(_ events: AsyncStream<MQTTConnectionEvent>) async { await connection.count(events) }

    /// Brings the bus-wide metrics up to date from a report and the extra depths, then renders everything.
    func render(report: HealthReport?, depths: QueueDepths?, brokerConnected: Bool, redisReachable: Bool,
                journal: (usedBytes: Int64, pendingBytes: Int64)? = nil) -> String {
        registry.gauge("mqtt_connected", help: "1 while connected to the broker").set(to: brokerConnected ? 1.0 : 0.0)
        if let journal {
            registry.gauge("processor_journal", unit: "bytes", help: "Bytes of journal segments on disk (--journal)")
                .set(journal.usedBytes)
            registry.gauge("processor_journal_pending", unit: "bytes",
                           help: "Journaled bytes not yet applied to Redis (an upper bound across segments)")
                .set(journal.pendingBytes)
        }
        registry.gauge("redis_up", help: "1 when the last read from Redis worked").set(to: redisReachable ? 1.0 : 0.0)
        if let report {
            for (type, value) in report.eventTypes {
                registry.syncCounter("bus_events", [("type", type)], total: value,
                                     help: "Events counted in Redis by all processors, by event type")
            }
            for (outcome, value) in report.outcomes {
                registry.syncCounter("bus_event_outcomes", [("outcome", outcome)], total: value,
                                     help: "Outcomes of applied events (all processors), e.g. retry_scheduled")
            }
            let actions = report.actions ?? SuccessCounts(succeeded: 0, failed: 0)
            for (outcome, value) in [("succeeded", actions.succeeded), ("failed", actions.failed)] {
                registry.syncCounter("bus_actions", [("outcome", outcome)], total: value,
                                     help: "Automated actions (triggers published), by outcome")
            }
            for (outcome, field) in [("delivered", "webhooks_delivered"), ("failed_attempt", "webhooks_failed_attempts"),
                                     ("dead_lettered", "webhooks_dead_lettered")] {
                registry.syncCounter("bus_webhook_deliveries", [("outcome", outcome)],
                                     total: report.actionCounters[field] ?? 0,
                                     help: "Webhook delivery attempts, by outcome")
            }
            for name in HealthReport.sequenceCounterNames {
                registry.syncCounter("bus_sequence_\(name)", total: report.sequenceCounters[name] ?? 0,
                                     help: "Publisher-session sequence tracking: \(name.replacingOccurrences(of: "_", with: " "))")
            }
            for name in HealthReport.linkCounterNames {
                registry.syncCounter("bus_link_\(name)", total: report.linkCounters[name] ?? 0,
                                     help: "Worker links: \(name.replacingOccurrences(of: "_", with: " "))")
            }
            for (status, count) in report.jobsByStatus {
                registry.gauge("jobs", [("status", status)], help: "Jobs by status").set(count)
            }
            for status in EventCatalog.workerStatuses + ["unreachable"] {
                registry.gauge("workers", [("status", status)], help: "Workers by status")
                    .set(Int64(report.workersByStatus[status] ?? 0))
            }
            registry.gauge("workers_stale", help: "Workers claiming to be up but silent past the stale limit")
                .set(Int64(report.staleWorkers))
            registry.gauge("dead_letter_stream_entries", help: "Entries in the event dead-letter stream")
                .set(report.deadLetters)
            registry.gauge("sequence_gaps_open_expired", help: "Sequence gaps open past the report delay (lost events)")
                .set(Int64(report.expiredGaps.count))
            if let age = report.lastEventAgeSeconds {
                registry.gauge("last_event_age", unit: "seconds", help: "Seconds since the last event was counted")
                    .set(age)
            }
        }
        if let depths {
            registry.gauge("retries_pending", help: "Job retries scheduled and not yet due or claimed").set(depths.retries)
            registry.gauge("retries_oldest_due_age", unit: "seconds",
                           help: "How far past due the oldest pending retry is (0 when none is overdue)")
                .set(depths.oldestRetryOverdueSeconds)
            registry.gauge("outbox_entries", help: "Actions in the outbox stream (relayed to MQTT, then trimmed)")
                .set(depths.outbox)
            registry.gauge("job_dead_letter_entries", help: "Jobs in the job dead-letter stream").set(depths.jobDeadLetters)
        }
        return registry.render()
    }
}

/// Lengths of the processor's queues in Redis.
struct QueueDepths: Sendable {
    var retries: Int64 = 0
    var oldestRetryOverdueSeconds: Double = 0
    var outbox: Int64 = 0
    var jobDeadLetters: Int64 = 0
}
