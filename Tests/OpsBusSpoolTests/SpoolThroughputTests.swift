import Foundation
import Testing

@testable import OpsBusSpool

/// Append throughput per durability mode and recovery speed. Prints figures (the `Spool` doc comment quotes them);
/// asserts only that every append landed, never a duration.
@Suite("Spool throughput", .serialized)
struct SpoolThroughputTests {
    struct Scenario {
        var label: String
        var durability: SpoolDurability
        var appenders: Int
        var appendsPerAppender: Int
    }

    @Test("append throughput per durability mode, and replay speed")
    func throughput() async throws {
        let scenarios = [
            Scenario(label: "never", durability: .never, appenders: 1, appendsPerAppender: 20_000),
            Scenario(label: "interval:10", durability: .interval(milliseconds: 10), appenders: 1, appendsPerAppender: 20_000),
            Scenario(label: "always, 1 appender", durability: .everyEvent, appenders: 1, appendsPerAppender: 300),
            Scenario(label: "always, 8 appenders", durability: .everyEvent, appenders: 8, appendsPerAppender: 150),
            Scenario(label: "always, 64 appenders", durability: .everyEvent, appenders: 64, appendsPerAppender: 60),
        ]
        for scenario in scenarios {
            let directory = TemporaryDirectory("spool-throughput")
            defer { directory.remove() }
            let spool = try Spool.open(configuration(directory, durability: scenario.durability))
            let started = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for appender in 0..<scenario.appenders {
                    group.addTask {
                        for seq in 1...UInt64(scenario.appendsPerAppender) {
                            try await spool.append(event("s\(appender)", seq, bytes: 200))
                        }
                    }
                }
                try await group.waitForAll()
            }
            let elapsed = ContinuousClock.now - started
            let total = scenario.appenders * scenario.appendsPerAppender
            #expect(spool.depth == total)
            spool.close()
            print("spool append \(scenario.label): \(total) appends in \(milliseconds(elapsed)) ms = "
                + "\(Int(Double(total) / max(0.000_001, seconds(elapsed)))) appends/s")

            if scenario.label == "never" {
                let reopenStarted = ContinuousClock.now
                let reopened = try Spool.open(configuration(directory))
                let reopenElapsed = ContinuousClock.now - reopenStarted
                #expect(reopened.depth == total)
                reopened.close()
                print("spool replay: \(total) records in \(milliseconds(reopenElapsed)) ms = "
                    + "\(Int(Double(total) / max(0.000_001, seconds(reopenElapsed)))) records/s")
            }
        }
    }

    func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
