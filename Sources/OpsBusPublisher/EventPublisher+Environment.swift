import Foundation
import Logging
import OpsBusCore
import OpsBusMQTT

extension EventPublisher {
    /// Connects the way the seed's `ConnectorLogger` was configured: broker from `MQTT_URL`
    /// (default `mqtt://127.0.0.1:1883`), context from `MACHINE_ID`, `WORKER_ID`, `SERVICE_TYPE`, `CONNECTOR_ID`,
    /// topic prefix from `OPSBUS_TOPIC_PREFIX`, QoS overrides from `OPSBUS_QOS_OVERRIDES` (syntax in topics.md).
    /// A bad value fails here, naming the variable.
    public static func connectFromEnvironment(
        _ environment: [String: String] = ProcessInfo.processInfo.environment, waitForBroker: Bool = false,
        logger: Logger = Logger(label: "opsbus.publisher")
    ) async throws(EventPublisherError) -> EventPublisher {
        let url = environment["MQTT_URL"] ?? "mqtt://127.0.0.1:1883"
        let endpoint: MQTTEndpoint
        do {
            endpoint = try MQTTEndpoint(url: url)
        } catch {
            throw .invalidContext(variable: "MQTT_URL", reason: "\(error)")
        }
        let scheme: TopicScheme
        do {
            scheme = try TopicScheme(prefix: environment["OPSBUS_TOPIC_PREFIX"])
        } catch {
            throw .invalidContext(variable: "OPSBUS_TOPIC_PREFIX", reason: "\(error)")
        }
        var policy = QoSPolicy.default
        if let spec = environment["OPSBUS_QOS_OVERRIDES"], !spec.isEmpty {
            do {
                policy = QoSPolicy(overrides: try QoSPolicy.parseOverrides(spec))
            } catch {
                throw .invalidContext(variable: "OPSBUS_QOS_OVERRIDES", reason: "\(error)")
            }
        }
        let context = try PublisherContext.fromEnvironment(environment)
        return try await connect(
            endpoint: endpoint, context: context, scheme: scheme, policy: policy, waitForBroker: waitForBroker,
            logger: logger)
    }
}
