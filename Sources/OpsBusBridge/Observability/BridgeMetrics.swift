import OpsBusJournal
import OpsBusHTTP
import OpsBusMQTT
import Prometheus

/// The bridge's Prometheus metrics (`opsbus_bridge_*`), counted by this process (reset on restart). Most mirror
/// `BridgeStatistics`, brought up to date at scrape time; the Redis `opsbus:stats` hash keeps totals across restarts.
public final class BridgeMetrics: Sendable {
    public let registry = MetricsRegistry()
    private let connection: MQTTConnectionMetrics

    public init() {
        connection = MQTTConnectionMetrics(registry: registry)
    }

    /// Counts connection events until the stream ends or the task is cancelled.
    func count(_ events: AsyncStream<MQTTConnectionEvent>) async { await connection.count(events) }

    /// Syncs the counters from the bridge's statistics and journal, then renders the text format.
    func render(_ stats: BridgeStatistics, journal: (usedBytes: Int64, pendingBytes: Int64),
                oldestPendingAge: Double?, brokerConnected: Bool, redisReachable: Bool) -> String {
        let sync = { (name: String, value: Int, help: String) in
            self.registry.syncCounter("bridge_\(name)", total: Int64(value), help: help)
        }
        sync("messages_journaled", stats.journaled, "MQTT messages written to the journal (then acknowledged)")
        sync("messages_rejected", stats.rejected, "MQTT messages refused (journal full or failing): the broker redelivers them")
        sync("entries_written", stats.entries, "Stream entries written to Redis, all routes")
        sync("dedup_hits", stats.duplicates, "Records Redis already had (dedup id or committed seq): not written again")
        sync("sequence_duplicates", stats.sequenceDuplicates, "Of the dedup hits: ack:true envelopes whose seq was committed")
        sync("out_of_order_held_back", stats.outOfOrder, "ack:true envelopes held back because an earlier seq is missing")
        sync("dead_lettered", stats.deadLettered, "Records written to the bridge dead-letter stream")
        sync("acks_published", stats.acksPublished, "End-to-end acks the broker confirmed")
        sync("redis_errors", stats.redisFailures, "Failed Redis batch writes (each batch is retried)")
        for (stream, count) in stats.entriesByStream {
            registry.syncCounter("bridge_route_entries", [("stream", stream)], total: Int64(count),
                                 help: "Stream entries written, by route (target stream)")
        }
        registry.gauge("mqtt_connected", help: "1 while connected to the broker").set(to: brokerConnected ? 1.0 : 0.0)
        registry.gauge("redis_up", help: "1 when the last Redis check worked").set(to: redisReachable ? 1.0 : 0.0)
        registry.gauge("bridge_journal", unit: "bytes", help: "Bytes of journal segments on disk")
            .set(journal.usedBytes)
        registry.gauge("bridge_journal_pending", unit: "bytes",
                       help: "Journal bytes not yet committed to Redis (an upper bound across segments)")
            .set(journal.pendingBytes)
        registry.gauge("bridge_journal_oldest_pending_age", unit: "seconds",
                       help: "Age of the oldest journaled record not yet in Redis (0 when none)")
            .set(oldestPendingAge ?? 0)
        return registry.render()
    }
}
