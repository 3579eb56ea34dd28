import CoreMetrics
import Prometheus
import Synchronization

/// One service's metrics, rendered in the Prometheus text format on `/metrics`.
///
/// Backed by swift-prometheus's registry. Metrics are made through it directly (not the global swift-metrics
/// bootstrap) so every one carries `# HELP` text and two services in one process (tests) keep separate registries;
/// `factory` serves code that records through the swift-metrics API.
public final class MetricsRegistry: Sendable {
    public let registry = PrometheusCollectorRegistry()
    /// Totals already added to counters that mirror a total kept elsewhere (see `syncCounter`).
    private let mirrored = Mutex<[String: Int64]>([:])

    public init() {}

    /// A swift-metrics factory that records into this registry.
    public var factory: PrometheusMetricsFactory { PrometheusMetricsFactory(registry: registry) }

    /// `opsbus_<name>_total`, help text required (Prometheus naming: counters end in `_total`).
    public func counter(_ name: String, _ labels: [(String, String)] = [], help: String) -> Prometheus.Counter {
        registry.makeCounter(
            descriptor: MetricNameDescriptor(namespace: "opsbus", metricName: name, unitName: "total", helpText: help),
            labels: labels)
    }

    public func gauge(_ name: String, unit: String = "", _ labels: [(String, String)] = [], help: String)
        -> Prometheus.Gauge
    {
        registry.makeGauge(
            descriptor: MetricNameDescriptor(namespace: "opsbus", metricName: name, unitName: unit, helpText: help),
            labels: labels)
    }

    /// A histogram of seconds (`opsbus_<name>_seconds`).
    public func secondsHistogram(_ name: String, _ labels: [(String, String)] = [], buckets: [Duration], help: String)
        -> DurationHistogram
    {
        registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(namespace: "opsbus", metricName: name, unitName: "seconds", helpText: help),
            labels: labels, buckets: buckets)
    }

    /// Brings a counter up to `total`, a count kept elsewhere (the service's own statistics, or Redis's stats
    /// hash): increments by what is new since the last sync. A total that went down (stats reset) is taken as the
    /// new base without a decrement, as Prometheus counters never go down.
    public func syncCounter(_ name: String, _ labels: [(String, String)] = [], total: Int64, help: String) {
        let key = name + "|" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        let counter = counter(name, labels, help: help)
        let delta = mirrored.withLock { seen -> Int64 in
            let before = seen[key] ?? 0
            seen[key] = total
            return total > before ? total - before : 0
        }
        if delta > 0 { counter.increment(by: delta) }
    }

    /// The text exposition format.
    public func render() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}

/// Latency buckets for event delivery (publish → applied): 5 ms … 5 min; lossy links and spools make minutes real.
public let eventLatencyBuckets: [Duration] = [
    .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
    .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
    .seconds(30), .seconds(60), .seconds(300),
]
