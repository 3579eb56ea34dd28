import ArgumentParser
import Foundation
import OpsBusBridge
import OpsBusCore
import OpsBusRedis

struct StreamsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "streams",
        abstract: "List the bridge's routes and streams: length, first/last ids, consumer groups and their lag.",
        discussion: """
            Uses the same routes as `opsbus bridge` (--route, --bridge-config or a JSON --config, $OPSBUS_BRIDGE_ROUTES or the defaults). \
            Template routes (events:{1}) list every existing stream their pattern covers. The dead-letter stream \
            bridge:deadletter is listed last. Lag is Redis's XINFO GROUPS 'lag' (entries not yet delivered to the \
            group); pending is delivered but not acknowledged.
            """)

    @OptionGroup var routeOptions: BridgeRouteOptions

    @Flag(help: "One JSON object per stream instead of a table.")
    var json = false

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var common: CommonOptions

    struct Row {
        var route: String
        var stream: String
        var info: [String: RedisReply]
        var groups: [[String: String]]
    }

    func run() async throws {
        _ = try common.makeLogger("opsbus.streams", bridgeJSON: true)
        let (routes, _) = try routeOptions.resolve(scheme: try connection.topicScheme())
        let redis: RedisConnection
        do { redis = try RedisConnection(endpoint: try connection.redisEndpoint()) } catch { throw CLIError("\(error)") }
        var rows: [Row] = []
        do {
            var seen: Set<String> = []
            var targets: [(route: String, stream: String)] = []
            for route in routes {
                let streams = route.stream.isFixed ? [route.stream.rawValue] : try scan(redis, pattern: route.stream.scanPattern)
                for stream in streams where seen.insert(stream).inserted { targets.append((route.description, stream)) }
            }
            if seen.insert("bridge:deadletter").inserted { targets.append(("(dead letters)", "bridge:deadletter")) }
            let table = RouteTable(routes)
            for (route, stream) in targets {
                let type = try redis.command(["TYPE", stream]).string ?? "none"
                var info: [String: RedisReply] = [:]
                var groups: [[String: String]] = []
                var owner = route
                if type == "stream" {
                    let reply = try redis.command(["XINFO", "STREAM", stream]).array ?? []
                    var index = 0
                    while index + 1 < reply.count {
                        if let name = reply[index].string { info[name] = reply[index + 1] }
                        index += 2
                    }
                    groups = (try redis.command(["XINFO", "GROUPS", stream]).array ?? []).map { $0.hashDictionary() }
                    // Several template routes can share a pattern (the defaults all use events:{1}): name the route
                    // that the newest entry's topic matches.
                    if stream != "bridge:deadletter", let last = info["last-entry"].flatMap(StreamEntry.init(reply:)),
                        let topic = last.topic, let matched = table.route(for: topic)
                    {
                        owner = matched.description
                    }
                } else if type != "none" {
                    info["type"] = .status(type)
                }
                rows.append(Row(route: owner, stream: stream, info: info, groups: groups))
            }
        } catch {
            throw CLIError("\(error)")
        }
        if json {
            for row in rows { output(jsonLine(row)) }
        } else {
            output("ROUTE\tSTREAM\tLENGTH\tFIRST\tLAST")
            for row in rows {
                let length = row.info["length"]?.int.map(String.init) ?? (row.info["type"].map { "(\($0))" } ?? "-")
                output("\(row.route)\t\(row.stream)\t\(length)\t\(entryID(row.info["first-entry"]))\t\(entryID(row.info["last-entry"]))")
                for group in row.groups {
                    output("\tgroup \(group["name"] ?? "?"): consumers \(group["consumers"] ?? "?"), pending \(group["pending"] ?? "?"), "
                        + "lag \(group["lag"] ?? "?"), last delivered \(group["last-delivered-id"] ?? "?")")
                }
            }
        }
    }

    private func entryID(_ reply: RedisReply?) -> String {
        reply?.array?.first?.string ?? "-"
    }

    private func jsonLine(_ row: Row) -> String {
        var object: JSONObject = ["route": .string(row.route), "stream": .string(row.stream)]
        object["length"] = row.info["length"]?.int.map { .int($0) } ?? .int(0)
        object["first_id"] = row.info["first-entry"]?.array?.first?.string.map { .string($0) } ?? .null
        object["last_id"] = row.info["last-entry"]?.array?.first?.string.map { .string($0) } ?? .null
        if let type = row.info["type"]?.string { object["type"] = .string(type) }
        object["groups"] = .array(row.groups.map { group in
            var entry = JSONObject()
            entry["name"] = .string(group["name"] ?? "")
            for key in ["consumers", "pending", "lag", "entries-read"] {
                entry[key.replacingOccurrences(of: "-", with: "_")] = group[key].flatMap { Int64($0) }.map { .int($0) } ?? .null
            }
            entry["last_delivered_id"] = group["last-delivered-id"].map { .string($0) } ?? .null
            return .object(entry)
        })
        return object.serialized()
    }

    private func scan(_ redis: RedisConnection, pattern: String) throws -> [String] {
        var cursor = "0"
        var keys: Set<String> = []
        repeat {
            let reply = try redis.command(["SCAN", cursor, "MATCH", pattern, "COUNT", "1000", "TYPE", "stream"])
            guard let parts = reply.array, parts.count == 2 else { break }
            cursor = parts[0].string ?? "0"
            for key in parts[1].array ?? [] { if let key = key.string { keys.insert(key) } }
        } while cursor != "0"
        return keys.sorted()
    }
}
