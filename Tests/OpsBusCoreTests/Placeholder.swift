import Testing

@Test func placeholderOpsBusCoreTests() { #expect(Bool(true)) }
