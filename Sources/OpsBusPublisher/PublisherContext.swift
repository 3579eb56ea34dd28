import OpsBusCore

/// Who is publishing: stamped on every envelope so consumers can tell machines, workers and connectors apart.
/// The seed's `ConnectorLogger` read the same four environment variables.
public struct PublisherContext: Sendable, Hashable {
    public var machineID: Identifier?
    public var workerID: Identifier?
    public var serviceType: String?
    public var connectorID: String?
    /// The envelope's `source`: the connector id when there is one, else the service type, else "opsbus".
    public var source: String

    public init(
        machineID: Identifier? = nil, workerID: Identifier? = nil, serviceType: String? = nil,
        connectorID: String? = nil, source: String? = nil
    ) {
        self.machineID = machineID
        self.workerID = workerID
        self.serviceType = serviceType
        self.connectorID = connectorID
        self.source = source ?? connectorID ?? serviceType ?? "opsbus"
    }

    /// Fills what the caller did not give from `MACHINE_ID`, `WORKER_ID`, `SERVICE_TYPE` and `CONNECTOR_ID`.
    /// Ids are validated here, so a hostile `WORKER_ID` fails at start-up with the variable's name, not at publish time.
    public static func fromEnvironment(
        _ environment: [String: String],
        machineID: String? = nil, workerID: String? = nil, serviceType: String? = nil, connectorID: String? = nil
    ) throws(EventPublisherError) -> PublisherContext {
        func identifier(_ given: String?, _ variable: String, field: String) throws(EventPublisherError) -> Identifier? {
            guard let value = given ?? environment[variable], !value.isEmpty else { return nil }
            do {
                return try Identifier(validating: value, field: field)
            } catch {
                throw .invalidContext(variable: variable, reason: error.description)
            }
        }
        return PublisherContext(
            machineID: try identifier(machineID, "MACHINE_ID", field: "machine_id"),
            workerID: try identifier(workerID, "WORKER_ID", field: "worker_id"),
            serviceType: nonEmpty(serviceType ?? environment["SERVICE_TYPE"]),
            connectorID: nonEmpty(connectorID ?? environment["CONNECTOR_ID"]))
    }

    private static func nonEmpty(_ value: String?) -> String? {
        guard let value, !value.isEmpty else { return nil }
        return value
    }
}
