import ArgumentParser
import OpsBusCLI

/// The executable's entry point. The commands live in `OpsBusCLI` (so tests can reach them); `@main` on an
/// `AsyncParsableCommand` is what makes ArgumentParser run the async `run()` of the chosen subcommand.
@main
struct OpsBusMain: AsyncParsableCommand {
    static let configuration = OpsBusCommand.configuration
}
