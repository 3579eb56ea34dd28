import Testing

@Test func placeholderOpsBusRedisTests() { #expect(Bool(true)) }
