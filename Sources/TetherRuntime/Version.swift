/// Tether's version, shared by the manager, the shim and the CLI.
public enum TetherVersion {
    public static let string = "0.1.0"
}
