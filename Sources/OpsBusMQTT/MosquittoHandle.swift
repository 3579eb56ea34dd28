import CMosquitto

/// `mosquitto_lib_init` is not thread-safe and must run before any other call; a Swift global is initialised
/// exactly once, atomically, on first use. We never call `mosquitto_lib_cleanup`: other clients may still live.
/// Note `mosquitto_lib_init` calls `srand()` and `mosquitto_new` sets SIGPIPE to SIG_IGN, both process-wide.
private let mosquittoLibraryInitialised: Int32 = mosquitto_lib_init()

/// Owns the `struct mosquitto *` and frees it exactly once.
///
/// `@unchecked Sendable` (the only such type in this module) because:
/// * the pointer is immutable from `init` to `deinit`, and `mosquitto_destroy` runs only in `deinit`, i.e. when no
///   thread can hold a reference any more (the network thread keeps its owner alive while it runs);
/// * libmosquitto 2.0.11 guards its own state with internal mutexes, so publish/subscribe/unsubscribe/disconnect
///   may be called from any thread while the network thread runs `mosquitto_loop`;
/// * the calls that are not safe to overlap with each other (`mosquitto_loop`, `connect*`/`reconnect*`) are made only
///   by `MQTTClientCore`'s single network thread, and a connect that re-creates libmosquitto's wake-up socket pair
///   (`mosquitto_connect_bind_v5`) is made while holding the core's state lock, which every publish/subscribe holds.
final class MosquittoHandle: @unchecked Sendable {
    let pointer: OpaquePointer

    /// nil when `mosquitto_new` fails (out of memory or invalid id).
    init?(clientID: String, cleanSession: Bool) {
        _ = mosquittoLibraryInitialised
        guard let created = mosquitto_new(clientID.isEmpty ? nil : clientID, cleanSession, nil) else { return nil }
        pointer = created
    }

    deinit {
        mosquitto_destroy(pointer)
    }
}
