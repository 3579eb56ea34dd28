import OpsBusMQTT
import Prometheus

/// `opsbus_mqtt_connects_total`, `opsbus_mqtt_disconnects_total` and `opsbus_mqtt_reconnect_attempts_total`: the
/// same three counters for every service that holds a broker connection (processor, bridge), counted one way.
public struct MQTTConnectionMetrics: Sendable {
    private let connects: Prometheus.Counter
    private let disconnects: Prometheus.Counter
    private let reconnectAttempts: Prometheus.Counter

    public init(registry: MetricsRegistry) {
        connects = registry.counter("mqtt_connects", help: "MQTT connections established (first connect and reconnects)")
        disconnects = registry.counter("mqtt_disconnects", help: "MQTT connections lost")
        reconnectAttempts = registry.counter("mqtt_reconnect_attempts", help: "MQTT reconnect attempts scheduled")
    }

    /// Counts connection events until the stream ends or the task is cancelled. A deliberate disconnect (no error)
    /// is not a lost connection.
    public func count(_ events: AsyncStream<MQTTConnectionEvent>) async {
        for await event in events {
            switch event {
            case .connected: connects.increment()
            case .disconnected(let error): if error != nil { disconnects.increment() }
            case .reconnecting: reconnectAttempts.increment()
            }
        }
    }
}
