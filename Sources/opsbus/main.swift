import OpsBusCLI

await OpsBusCommand.main()
