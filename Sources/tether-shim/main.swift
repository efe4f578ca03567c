import TetherShim

ShimMain.run(Array(CommandLine.arguments.dropFirst()))
