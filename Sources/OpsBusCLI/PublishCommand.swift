import ArgumentParser
import Foundation
import OpsBusCore
import OpsBusMQTT
import OpsBusPublisher

struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Publish one event (typed, validated) or a raw message.",
        discussion: """
            Typed: opsbus publish job.completed --job j-42 --field processing_time=12.5 --field output_size=2048
              The topic, QoS and retain flag follow topics.md; the envelope (event_id, timestamp, session_id, seq, \
            machine/worker ids from MACHINE_ID/WORKER_ID …) is filled in. Field values are parsed as JSON when they \
            are valid JSON (numbers, true/false, objects, arrays, "quoted strings"), otherwise taken as strings. \
            Required fields are checked before anything is sent.
            Event types: \(EventType.allCases.map(\.rawValue).joined(separator: ", ")).

            Raw: opsbus publish --raw jobs/j-42/completed '{"event_id": …}' [--qos 1] [--retain]
              Sends the bytes as given (for scripts and replays); use '-' to read the payload from stdin.

            Spool: with a worker id (--worker or $WORKER_ID) a typed event of a spooled class (QoS 1 lifecycle, \
            failure, resource, model and trigger events) is first written to the worker's CLI spool \
            (~/.local/state/opsbus/spool/cli-<worker>, or --spool DIR) and then waits up to --ack-wait seconds for \
            the bridge's end-to-end acknowledgement (--ack broker: the broker's). If none comes, the event stays \
            spooled and the next publish from the same spool sends it again; `opsbus spool DIR` shows what waits. \
            --no-spool, or no worker id, publishes directly.

            Exits 0 once the event is acknowledged, or accepted into the spool (a warning says it is still \
            waiting); 1 with the reason otherwise.
            """)

    @Argument(help: "Event type (e.g. job.started), or with --raw: the topic.")
    var eventTypeOrTopic: String

    @Argument(help: "With --raw: the payload ('-' reads stdin).")
    var rawPayload: String?

    @Flag(help: "Publish a raw payload on a topic of your choice.")
    var raw = false

    @Option(name: .customLong("job"), help: "Job id (job events, and resource events).")
    var jobID: String?

    @Option(help: "Topic subject for queue/service/model/trigger events (default: the queue/service/model field).")
    var subject: String?

    @Option(name: .customLong("field"), help: ArgumentHelp("An event field, key=value (repeatable).", valueName: "key=value"))
    var fields: [String] = []

    @Option(help: "Attempt number (retries carry 2, 3 …).")
    var attempt: Int?

    @Option(help: "Trace id to correlate with your tracing system.")
    var traceID: String?

    @Option(help: "With --raw: QoS 0, 1 or 2 (default 1).")
    var qos: Int = 1

    @Flag(help: "With --raw: set the retain flag.")
    var retain = false

    @Option(help: "Machine id (default $MACHINE_ID).") var machine: String?
    @Option(help: "Worker id (default $WORKER_ID).") var worker: String?
    @Option(help: "Service type (default $SERVICE_TYPE).") var serviceType: String?
    @Option(help: "Connector id (default $CONNECTOR_ID).") var connector: String?

    @Option(help: ArgumentHelp("Seconds to wait for the acknowledgement of a spooled event.", valueName: "seconds"))
    var ackWait: Double = 10

    @OptionGroup var spooling: SpoolingOptions
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let logger = try common.makeLogger("opsbus.publish")
        let scheme = try connection.topicScheme()
        let endpoint = try connection.mqttEndpoint()
        let settings = try RuntimeSettings.current
        for (name, flag) in [("MACHINE_ID", machine), ("WORKER_ID", worker), ("SERVICE_TYPE", serviceType),
                             ("CONNECTOR_ID", connector)] where flag == nil {
            _ = try settings.value(name)
        }
        let context: PublisherContext
        do {
            context = try PublisherContext.fromEnvironment(
                settings.environment, machineID: machine, workerID: worker,
                serviceType: serviceType, connectorID: connector)
        } catch {
            throw ValidationError("\(error)")
        }

        if raw {
            guard let rawPayload else { throw ValidationError("--raw needs a topic and a payload") }
            guard let level = QoS(rawValue: qos) else { throw ValidationError("--qos must be 0, 1 or 2") }
            let payload = rawPayload == "-" ? Array(FileHandle.standardInput.readDataToEndOfFile()) : Array(rawPayload.utf8)
            let publisher = try await EventPublisher.connect(
                endpoint: endpoint, context: PublisherContext(source: "opsbus-cli"), scheme: scheme, logger: logger)
            do {
                try await publisher.publishRaw(topic: eventTypeOrTopic, payload: payload, qos: level, retain: retain)
            } catch {
                await publisher.close()
                throw CLIError("\(error)")
            }
            await publisher.close()
            output("published \(payload.count) bytes to \(eventTypeOrTopic)")
            return
        }

        guard let eventType = EventType(rawValue: eventTypeOrTopic) else {
            throw ValidationError(
                "unknown event type '\(eventTypeOrTopic)'; expected one of: \(EventType.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if rawPayload != nil { throw ValidationError("unexpected payload argument (did you mean --raw?)") }
        let body = try Self.parseFields(fields)
        let factory = EventFactory(context: context, scheme: scheme)
        let job = try jobID.map { (id) throws(EventPublisherError) in try EventFactory.identifier(id, field: "job_id") }
        let subjectValue = subject ?? Self.defaultSubject(for: eventType, fields: body)
        let subjectID = try subjectValue.map { (id) throws(EventPublisherError) in try EventFactory.identifier(id, field: "subject") }
        // Validate before connecting: a bad event never reaches the broker.
        let options = EventFactory.Options(jobID: job, attempt: attempt, traceID: traceID)
        _ = try factory.prepare(eventType, fields: body, subject: subjectID, options: options)

        let spool = try context.workerID.flatMap { worker in
            try spooling.options(owner: "cli-\(worker.rawValue)")
        } ?? (spooling.spool != nil ? try spooling.options(owner: "cli") : nil)
        let publisher = try await EventPublisher.connect(
            endpoint: endpoint, context: context, scheme: scheme, spool: spool, logger: logger, announceWorker: false)
        let envelope: EventEnvelope
        do {
            envelope = try await publisher.publish(eventType, fields: body, subject: subjectID, options: options)
        } catch {
            await publisher.disconnect()
            throw CLIError("\(error)")
        }
        if envelope.ack, let spool {
            let pending = await publisher.drain(timeout: ackWait)
            if pending > 0 {
                warn("""
                    \(eventType.rawValue) \(envelope.eventID) is safe in the spool \(spool.spool.directory) but not yet \
                    acknowledged by the \(spool.acknowledgement) after \(ackWait) s (\(pending) event(s) waiting); the next \
                    publish from this spool sends it again. Is a bridge running? (without one: --ack broker)
                    """)
            }
        }
        await publisher.disconnect()
        output("published \(eventType.rawValue) \(envelope.eventID)")
    }

    /// `key=value` pairs; values that are valid JSON keep their type.
    static func parseFields(_ pairs: [String]) throws -> JSONObject {
        var object = JSONObject()
        for pair in pairs {
            guard let equals = pair.firstIndex(of: "="), equals != pair.startIndex else {
                throw ValidationError("--field '\(pair)' is not key=value")
            }
            let key = String(pair[..<equals])
            let text = String(pair[pair.index(after: equals)...])
            object[key] = (try? JSONValue.parse(text)) ?? .string(text)
        }
        return object
    }

    /// Queue, service and model events name their subject in a field of the same name.
    static func defaultSubject(for eventType: EventType, fields: JSONObject) -> String? {
        switch eventType.subjectKind {
        case .queue: fields["queue"]?.stringValue
        case .service: fields["service"]?.stringValue
        case .model: fields["model"]?.stringValue
        default: nil
        }
    }
}

/// A command failure with a message for the user (exit code 1, no usage text).
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
