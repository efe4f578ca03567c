import TetherShim

// containerd's runtime io.containerd.tether.v1: tether-shim's code, driven
// by containerd's shim protocol (start, delete, and the server they start).
ContainerdShim.run(Array(CommandLine.arguments.dropFirst()))
