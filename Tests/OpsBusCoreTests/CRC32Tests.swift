import OpsBusCore
import Testing

@Suite("CRC-32 (journal and spool records)")
struct CRC32Tests {
    /// The byte-at-a-time definition the sliced tables must agree with.
    static func reference(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 == 1 ? 0xEDB8_8320 ^ (crc >> 1) : crc >> 1 }
        }
        return crc ^ 0xFFFF_FFFF
    }

    @Test("known check values (zlib's crc32)")
    func knownValues() {
        #expect(CRC32.checksum([UInt8]()) == 0)
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum(Array("The quick brown fox jumps over the lazy dog".utf8)) == 0x414F_A339)
    }

    @Test("every length 0–300 at every alignment agrees with the byte-at-a-time definition")
    func agreesWithReference() {
        var generator = SystemRandomNumberGenerator()
        let data = (0..<320).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for start in 0..<8 {
            for length in 0...300 {
                let slice = data[start..<start + length]  // unaligned starts exercise the 8-byte loads
                #expect(CRC32.checksum(slice) == Self.reference(Array(slice)), "start \(start), length \(length)")
            }
        }
    }
}
