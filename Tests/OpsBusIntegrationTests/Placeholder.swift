import Testing

@Test func placeholderOpsBusIntegrationTests() { #expect(Bool(true)) }
