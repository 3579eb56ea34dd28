import Testing

@testable import OpsBusCore

/// Error messages as real workers and libraries print them, with the type each must map to.
private let realWorldMessages: [(String, FailureType)] = [
    // timeout
    ("Job exceeded maximum runtime of 3600s and timed out", .timeout),
    ("asyncio.exceptions.TimeoutError", .timeout),
    ("grpc: DEADLINE_EXCEEDED: Deadline Exceeded", .timeout),
    ("requests.exceptions.ReadTimeout: HTTPSConnectionPool(host='api.example.com', port=443): Read timed out. (read timeout=30)", .timeout),
    ("connect ETIMEDOUT 10.0.3.17:6379", .timeout),
    ("504 Gateway Timeout", .timeout),
    // out of memory
    ("torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.69 GiB total capacity)", .outOfMemory),
    ("RuntimeError: CUDA error: out of memory", .outOfMemory),
    ("Container killed: OOMKilled", .outOfMemory),
    ("fork: Cannot allocate memory", .outOfMemory),
    ("terminate called after throwing an instance of 'std::bad_alloc'", .outOfMemory),
    ("Process exited with exit code 137", .outOfMemory),
    ("GPU OOM while loading llama-70b", .outOfMemory),
    // model missing, worded as most loaders word it
    ("Model checkpoint 'sdxl-refiner-1.0' not found in /models/checkpoints", .modelMissing),
    ("LoRA file pixel-art.safetensors is missing", .modelMissing),
    ("FileNotFoundError: VAE weights at /models/vae/ae.sft does not exist", .modelMissing),
    // network
    ("dial tcp 10.0.0.5:1883: connect: connection refused", .network),
    ("ConnectionResetError: [Errno 104] Connection reset by peer", .network),
    ("OSError: [Errno 101] Network is unreachable", .network),
    ("getaddrinfo ENOTFOUND storage.internal: Temporary failure in name resolution", .network),
    ("Error: connect ECONNREFUSED 127.0.0.1:5432", .network),
    ("BrokenPipeError: [Errno 32] Broken pipe", .network),
    // validation
    ("ValueError: invalid literal for int() with base 10: 'abc'", .validation),
    ("pydantic_core._pydantic_core.ValidationError: 1 validation error for JobRequest", .validation),
    ("400 Bad Request: prompt exceeds maximum length", .validation),
    ("input does not match schema: missing field 'image_url'", .validation),
    ("batch_size must be a positive integer", .validation),
    // model missing
    ("OSError: Model not found at /models/sdxl-turbo", .modelMissing),
    ("No such model: llama-3-8b-instruct", .modelMissing),
    ("checkpoint missing: /ckpt/epoch_12.pt", .modelMissing),
    // worker lost
    ("worker lost: no heartbeat for 90s", .workerLost),
    ("Worker died unexpectedly (signal 11)", .workerLost),
    ("spot instance preempted by provider", .workerLost),
    // resource exhausted
    ("OSError: [Errno 28] No space left on device", .resourceExhausted),
    ("write /scratch/out.bin: disk full", .resourceExhausted),
    ("429 Too Many Requests: rate limit exceeded for model endpoint", .resourceExhausted),
    ("CUDA error: all CUDA-capable devices are busy or unavailable", .resourceExhausted),
    // permission
    ("PermissionError: [Errno 13] Permission denied: '/data/output'", .permission),
    ("botocore.exceptions.ClientError: An error occurred (403) when calling the PutObject operation: Forbidden", .permission),
    ("HTTP 401: invalid token", .permission),
    ("AccessDenied: Access Denied", .permission),
    // dependency
    ("503 Service Unavailable from upstream storage service", .dependency),
    ("502 Bad Gateway", .dependency),
    // cancelled
    ("Job cancelled by user", .cancelled),
    ("context canceled", .cancelled),
    ("asyncio.exceptions.CancelledError", .cancelled),
    // unknown
    ("Segmentation fault (core dumped)", .unknown),
    ("", .unknown),
    ("KeyError: 'result'", .unknown),
]

@Suite("Failure classification")
struct RulesFailureClassificationTests {
    let classifier = FailureClassifier()

    @Test func tableIsLargeEnough() {
        #expect(realWorldMessages.count >= 30)
    }

    @Test(arguments: realWorldMessages)
    func classifiesRealWorldMessages(message: String, expected: FailureType) {
        #expect(classifier.classify(message: message).errorType == expected, "\(message)")
    }

    @Test(arguments: [
        ("OOM", FailureType.outOfMemory),
        ("out_of_memory", .outOfMemory),
        ("torch.cuda.OutOfMemoryError", .outOfMemory),
        ("MemoryError", .outOfMemory),
        ("TimeoutError", .timeout),
        ("grpc.StatusCode.DEADLINE_EXCEEDED", .timeout),
        ("ECONNRESET", .network),
        ("requests.exceptions.ConnectionError", .network),
        ("worker_lost", .workerLost),
        ("model_missing", .modelMissing),
        ("ModelNotFoundError", .modelMissing),
        ("resource_exhausted", .resourceExhausted),
        ("ENOSPC", .resourceExhausted),
        ("PermissionError", .permission),
        ("ValidationError", .validation),
        ("ValueError", .validation),
        ("dependency", .dependency),
        ("CancelledError", .cancelled),
        ("canceled", .cancelled),
        ("Timeout", .timeout),
    ])
    func declaredTypeWinsOverMessage(declared: String, expected: FailureType) {
        // The message alone would say something else; the declared class is more reliable.
        let misleading = expected == .validation ? "connection reset by peer" : "invalid request"
        #expect(classifier.type(message: misleading) != expected)
        let analysis = classifier.classify(message: misleading, declaredType: declared)
        #expect(analysis.errorType == expected, "\(declared)")
    }

    @Test(arguments: ["", "Error", "RuntimeError", "unknown", "botocore.exceptions.ClientError"])
    func unrecognisedDeclaredTypeFallsBackToMessage(declared: String) {
        let analysis = classifier.classify(message: "Connection reset by peer", declaredType: declared)
        #expect(analysis.errorType == .network)
    }

    @Test(arguments: FailureType.allCases)
    func everyRawValueIsAcceptedAsDeclaredType(type: FailureType) {
        let expected: FailureType = type == .unknown ? .network : type
        #expect(classifier.type(message: "network down", declaredType: type.rawValue) == expected)
    }

    @Test func shortTokensMustBeWholeWords() {
        #expect(classifier.type(message: "loaded bloom-7b in room 4") == .unknown)
        #expect(classifier.type(message: "job 14030 finished with code 4011") == .unknown)
        #expect(classifier.type(message: "classless result") == .unknown)
        #expect(classifier.type(message: "status=403") == .permission)
        #expect(classifier.type(message: "(OOM)") == .outOfMemory)
    }

    @Test func specificPatternsWinOverGeneralOnes() {
        #expect(classifier.type(message: "heartbeat timeout after 60s") == .workerLost)
        #expect(classifier.type(message: "connection timed out") == .timeout)
        #expect(classifier.type(message: "invalid credentials") == .permission)
        #expect(classifier.type(message: "model not found: invalid name") == .modelMissing)
        #expect(classifier.type(message: "CUDA OUT OF MEMORY") == .outOfMemory, "case-insensitive")
    }

    @Test func retryRecommendationsFollowTheTable() {
        let retried = FailureType.allCases.filter { FailureAnalysis(errorType: $0).retryRecommended }
        #expect(Set(retried) == [.timeout, .network, .workerLost, .resourceExhausted, .outOfMemory, .dependency, .unknown])
        for type in [FailureType.validation, .permission, .modelMissing, .cancelled] {
            let analysis = FailureAnalysis(errorType: type)
            #expect(!analysis.retryRecommended, "\(type)")
            #expect(analysis.maxAttempts == 1, "\(type)")
        }
        #expect(!FailureAnalysis(errorType: .validation).recoverable)
        #expect(!FailureAnalysis(errorType: .cancelled).recoverable)
        #expect(FailureAnalysis(errorType: .modelMissing).recoverable, "recoverable once an operator installs it")
        for type in FailureType.allCases where FailureAnalysis(errorType: type).retryRecommended {
            #expect(FailureAnalysis(errorType: type).maxAttempts > 1, "\(type)")
        }
    }

    @Test func outOfMemoryHasHighResourceImpact() {
        let analysis = classifier.classify(message: "CUDA out of memory")
        #expect(analysis == FailureAnalysis(
            errorType: .outOfMemory, category: .resource, recoverable: true, retryRecommended: true,
            resourceImpact: .high, userImpact: .medium, maxAttempts: 2))
        #expect(ImpactLevel.none < .low && ImpactLevel.low < .medium && ImpactLevel.medium < .high)
    }

    @Test func categoriesFollowTheTable() {
        let categories = Dictionary(uniqueKeysWithValues: FailureType.allCases.map { ($0, FailureAnalysis(errorType: $0).category) })
        #expect(categories[.timeout] == .transient)
        #expect(categories[.network] == .transient)
        #expect(categories[.validation] == .input)
        #expect(categories[.modelMissing] == .configuration)
        #expect(categories[.permission] == .configuration)
        #expect(categories[.workerLost] == .infrastructure)
        #expect(categories[.cancelled] == .user)
        #expect(categories[.unknown] == .unknown)
    }
}
