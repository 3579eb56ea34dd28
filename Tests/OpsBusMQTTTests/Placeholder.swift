import Testing

@Test func placeholderOpsBusMQTTTests() { #expect(Bool(true)) }
