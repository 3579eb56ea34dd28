import Testing
@testable import OpsBusSpool
