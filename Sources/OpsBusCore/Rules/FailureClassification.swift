/// What kind of failure ended a job attempt; raw values are the wire/Redis strings (`error_type`).
public enum FailureType: String, Sendable, CaseIterable {
    case timeout
    case outOfMemory = "out_of_memory"
    case network
    case validation
    case modelMissing = "model_missing"
    case workerLost = "worker_lost"
    case resourceExhausted = "resource_exhausted"
    case permission
    /// An external service the job calls (storage, upstream API) failed or is unavailable.
    case dependency
    case cancelled
    case unknown
}

/// Who or what has to act for the job to succeed: decides retry and alerting, not the exact cause.
public enum FailureCategory: String, Sendable, CaseIterable {
    case transient, resource, input, configuration, infrastructure, user, unknown
}

public enum ImpactLevel: String, Sendable, CaseIterable, Comparable {
    case none, low, medium, high

    private var order: Int {
        switch self {
        case .none: 0
        case .low: 1
        case .medium: 2
        case .high: 3
        }
    }

    public static func < (lhs: ImpactLevel, rhs: ImpactLevel) -> Bool { lhs.order < rhs.order }
}

/// The consequences of a failure type. See `FailureAnalysis.init(errorType:)` for the table.
public struct FailureAnalysis: Sendable, Equatable {
    public var errorType: FailureType
    public var category: FailureCategory
    /// The same job (unchanged input) can still succeed — possibly only after an operator fixes something.
    public var recoverable: Bool
    /// The platform should retry automatically, without anyone acting.
    public var retryRecommended: Bool
    /// How much capacity the failure wasted or may waste again.
    public var resourceImpact: ImpactLevel
    /// How visible the failure is to the job's submitter.
    public var userImpact: ImpactLevel
    /// Ceiling on the total number of attempts (first run included) for this type; 1 = never retry.
    /// `RetryPolicy.shouldRetry` uses the smaller of this and its own `maxAttempts`.
    public var maxAttempts: Int

    public init(
        errorType: FailureType, category: FailureCategory, recoverable: Bool, retryRecommended: Bool,
        resourceImpact: ImpactLevel, userImpact: ImpactLevel, maxAttempts: Int
    ) {
        self.errorType = errorType
        self.category = category
        self.recoverable = recoverable
        self.retryRecommended = retryRecommended
        self.resourceImpact = resourceImpact
        self.userImpact = userImpact
        self.maxAttempts = maxAttempts
    }

    /// The platform's consequences of each failure type:
    ///
    /// | type               | category       | recoverable | retry | resource | user   | max attempts |
    /// |--------------------|----------------|-------------|-------|----------|--------|--------------|
    /// | timeout            | transient      | yes         | yes   | medium   | medium | 3            |
    /// | out_of_memory      | resource       | yes         | yes   | high     | medium | 2            |
    /// | network            | transient      | yes         | yes   | low      | low    | 3            |
    /// | validation         | input          | no          | no    | none     | high   | 1            |
    /// | model_missing      | configuration  | yes         | no    | low      | high   | 1            |
    /// | worker_lost        | infrastructure | yes         | yes   | medium   | low    | 3            |
    /// | resource_exhausted | resource       | yes         | yes   | high     | medium | 3            |
    /// | permission         | configuration  | yes         | no    | none     | high   | 1            |
    /// | dependency         | infrastructure | yes         | yes   | low      | medium | 3            |
    /// | cancelled          | user           | no          | no    | none     | none   | 1            |
    /// | unknown            | unknown        | yes         | yes   | medium   | medium | 2            |
    ///
    /// Why: transient and infrastructure failures usually clear by themselves, so retrying is cheap
    /// insurance. Out-of-memory is retried once only (it tends to repeat unless the job lands on a
    /// bigger worker, and each try burns a whole GPU). Bad input and a user's cancellation will never
    /// succeed on retry. A missing model or a permission problem needs an operator: retrying before the
    /// fix only fails again, yet the job is recoverable once fixed (e.g. by a dead-letter replay).
    /// Unknown failures get one more try: most unexplained failures in practice are transient.
    public init(errorType: FailureType) {
        switch errorType {
        case .timeout:
            self.init(errorType: errorType, category: .transient, recoverable: true, retryRecommended: true,
                      resourceImpact: .medium, userImpact: .medium, maxAttempts: 3)
        case .outOfMemory:
            self.init(errorType: errorType, category: .resource, recoverable: true, retryRecommended: true,
                      resourceImpact: .high, userImpact: .medium, maxAttempts: 2)
        case .network:
            self.init(errorType: errorType, category: .transient, recoverable: true, retryRecommended: true,
                      resourceImpact: .low, userImpact: .low, maxAttempts: 3)
        case .validation:
            self.init(errorType: errorType, category: .input, recoverable: false, retryRecommended: false,
                      resourceImpact: .none, userImpact: .high, maxAttempts: 1)
        case .modelMissing:
            self.init(errorType: errorType, category: .configuration, recoverable: true, retryRecommended: false,
                      resourceImpact: .low, userImpact: .high, maxAttempts: 1)
        case .workerLost:
            self.init(errorType: errorType, category: .infrastructure, recoverable: true, retryRecommended: true,
                      resourceImpact: .medium, userImpact: .low, maxAttempts: 3)
        case .resourceExhausted:
            self.init(errorType: errorType, category: .resource, recoverable: true, retryRecommended: true,
                      resourceImpact: .high, userImpact: .medium, maxAttempts: 3)
        case .permission:
            self.init(errorType: errorType, category: .configuration, recoverable: true, retryRecommended: false,
                      resourceImpact: .none, userImpact: .high, maxAttempts: 1)
        case .dependency:
            self.init(errorType: errorType, category: .infrastructure, recoverable: true, retryRecommended: true,
                      resourceImpact: .low, userImpact: .medium, maxAttempts: 3)
        case .cancelled:
            self.init(errorType: errorType, category: .user, recoverable: false, retryRecommended: false,
                      resourceImpact: .none, userImpact: .none, maxAttempts: 1)
        case .unknown:
            self.init(errorType: errorType, category: .unknown, recoverable: true, retryRecommended: true,
                      resourceImpact: .medium, userImpact: .medium, maxAttempts: 2)
        }
    }
}

/// Turns a worker's failure report into a `FailureType` and its consequences.
///
/// 1. `declaredType` first, when the worker named one we recognise: it knows the exception class,
///    which is more reliable than text. Matching ignores case, punctuation and a module prefix, and a
///    trailing `Error`/`Exception`: `"OOM"`, `"torch.cuda.OutOfMemoryError"`, `"out_of_memory"`,
///    `"TimeoutError"`, `"ECONNRESET"` all resolve.
/// 2. Otherwise the message, case-insensitively, against the patterns below, most specific first
///    (so "heartbeat timeout" is `worker_lost`, "connection timed out" is `timeout`, "invalid token"
///    is `permission`). Short tokens such as "oom" or "403" must stand as whole words, so that
///    "bloom-7b" or "job 14030" do not match.
/// 3. Otherwise `unknown`.
public struct FailureClassifier: Sendable {
    public init() {}

    public func classify(message: String, declaredType: String? = nil) -> FailureAnalysis {
        FailureAnalysis(errorType: type(message: message, declaredType: declaredType))
    }

    /// The failure type alone (same rules as `classify`).
    public func type(message: String, declaredType: String? = nil) -> FailureType {
        if let declaredType, let declared = Self.declaredType(declaredType) {
            return declared
        }
        return Self.typeFromMessage(message)
    }

    // MARK: - Declared type

    static func declaredType(_ raw: String) -> FailureType? {
        // "torch.cuda.OutOfMemoryError" → "OutOfMemoryError"
        let lastComponent = raw.split(separator: ".").last.map(String.init) ?? raw
        var key = lastComponent.lowercased().filter { $0.isASCII && ($0.isLetter || $0.isNumber) }
        for suffix in ["exception", "error"] where key.hasSuffix(suffix) && key.count > suffix.count {
            key.removeLast(suffix.count)
        }
        let type = declaredAliases[key]
        return type == .unknown ? nil : type
    }

    /// Normalised names (lowercase letters and digits only, without `error`/`exception` suffix).
    /// Every raw value is included; `unknown` is looked up but then falls through to the message.
    private static let declaredAliases: [String: FailureType] = {
        var table: [String: FailureType] = [:]
        for type in FailureType.allCases {
            table[type.rawValue.replacingUnderscores()] = type
        }
        let aliases: [FailureType: [String]] = [
            .timeout: ["timedout", "etimedout", "deadlineexceeded", "sockettimeout", "readtimeout",
                       "connecttimeout", "connectiontimeout", "jobtimeout"],
            .outOfMemory: ["oom", "outofmemory", "memory", "enomem", "cudaoutofmemory", "oomkilled",
                           "cudaoom", "badalloc", "stdbadalloc"],
            .network: ["connection", "connectionreset", "connectionrefused", "connectionaborted",
                       "econnreset", "econnrefused", "econnaborted", "ehostunreach", "enetunreach",
                       "enetdown", "epipe", "brokenpipe", "dns", "gaierror", "socket"],
            .validation: ["invalid", "invalidinput", "invalidargument", "invalidrequest", "value", "schema",
                          "badrequest", "jsondecode", "einval"],
            .modelMissing: ["modelnotfound", "nosuchmodel", "checkpointmissing", "checkpointnotfound",
                            "missingmodel", "missingcheckpoint"],
            .workerLost: ["workerdied", "workercrashed", "heartbeattimeout", "heartbeatlost", "heartbeatmissed",
                          "preempted", "nodelost"],
            .resourceExhausted: ["diskfull", "enospc", "nospaceleft", "quotaexceeded", "ratelimit",
                                 "ratelimited", "toomanyrequests", "emfile", "resourcesexhausted",
                                 "nogpuavailable", "capacity"],
            .permission: ["permissiondenied", "forbidden", "unauthorized", "unauthenticated", "eacces",
                          "eperm", "accessdenied", "auth", "authentication", "authorization"],
            .dependency: ["dependencyfailed", "serviceunavailable", "unavailable", "badgateway", "upstream",
                          "http503", "http502"],
            .cancelled: ["canceled", "cancellation", "keyboardinterrupt", "interrupted", "usercancelled"],
        ]
        for (type, names) in aliases {
            for name in names { table[name] = type }
        }
        return table
    }()

    // MARK: - Message patterns

    /// A phrase to look for; `wholeWord` for short tokens that would otherwise match inside words.
    private struct Pattern: Sendable {
        let text: String
        let wholeWord: Bool
    }

    private static func phrases(_ texts: String...) -> [Pattern] { texts.map { Pattern(text: $0, wholeWord: false) } }
    private static func words(_ texts: String...) -> [Pattern] { texts.map { Pattern(text: $0, wholeWord: true) } }

    /// First matching rule wins; order from most to least specific.
    private static let messageRules: [(FailureType, [Pattern])] = [
        (.modelMissing, phrases("model not found", "no such model", "checkpoint missing", "missing checkpoint",
                                "checkpoint not found", "model file not found", "model does not exist",
                                "unknown model", "model weights not found")),
        (.outOfMemory, phrases("out of memory", "cannot allocate", "failed to allocate", "memoryerror",
                               "bad_alloc", "oomkilled", "oom-kill", "exit code 137")
            + words("oom")),
        (.resourceExhausted, phrases("no space left", "disk full", "disk quota", "quota exceeded",
                                     "resource exhausted", "resource_exhausted", "too many open files",
                                     "rate limit", "too many requests", "no gpu available",
                                     "no available gpu", "devices are busy", "insufficient capacity")
            + words("429", "enospc")),
        (.workerLost, phrases("worker lost", "worker died", "worker crashed", "worker exited",
                              "worker disappeared", "worker_lost", "heartbeat", "preempted", "node lost")),
        (.timeout, phrases("timed out", "timeout", "deadline exceeded", "deadline_exceeded",
                           "time limit exceeded", "etimedout")),
        (.cancelled, phrases("cancelled", "canceled", "keyboardinterrupt", "cancellederror")),
        (.permission, phrases("permission denied", "forbidden", "unauthorized", "unauthorised",
                              "access denied", "not authorized", "authentication failed", "invalid token",
                              "invalid credentials", "invalid api key", "expired token", "token expired")
            + words("401", "403", "eacces", "eperm")),
        (.network, phrases("connection refused", "connection reset", "connection aborted", "connection closed",
                           "network", "unreachable", "econnrefused", "econnreset", "broken pipe",
                           "name resolution", "could not resolve", "failed to resolve", "name or service not known",
                           "tls handshake", "remote end closed", "eof occurred")
            + words("ssl")),
        (.dependency, phrases("service unavailable", "bad gateway", "upstream", "dependency")
            + words("502", "503")),
        (.validation, phrases("invalid", "validation", "bad request", "schema", "malformed", "valueerror",
                              "unsupported", "must be", "missing required", "is required")),
    ]

    /// A model file named first and its absence said later ("Model checkpoint 'x' not found in /models") is the
    /// commonest wording of a missing model, and no fixed phrase covers it.
    private static let modelNouns = ["model", "checkpoint", "lora", "weights", "safetensors", "vae"]
    private static let absencePhrases = ["not found", "missing", "does not exist", "no such file"]

    static func typeFromMessage(_ message: String) -> FailureType {
        let text = message.lowercased()
        guard !text.isEmpty else { return .unknown }
        if let noun = modelNouns.compactMap({ text.firstRange(of: $0) }).min(by: { $0.lowerBound < $1.lowerBound }),
           absencePhrases.contains(where: { text[noun.upperBound...].contains($0) }) {
            return .modelMissing
        }
        for (type, patterns) in messageRules where patterns.contains(where: { matches($0, in: text) }) {
            return type
        }
        return .unknown
    }

    private static func matches(_ pattern: Pattern, in text: String) -> Bool {
        guard pattern.wholeWord else { return text.contains(pattern.text) }
        return text.ranges(of: pattern.text).contains { range in
            let before = range.lowerBound == text.startIndex ? nil : text[text.index(before: range.lowerBound)]
            let after = range.upperBound == text.endIndex ? nil : text[range.upperBound]
            return !isWordCharacter(before) && !isWordCharacter(after)
        }
    }

    private static func isWordCharacter(_ character: Character?) -> Bool {
        guard let character else { return false }
        return character.isLetter || character.isNumber || character == "_"
    }
}

extension String {
    fileprivate func replacingUnderscores() -> String { filter { $0 != "_" } }
}
