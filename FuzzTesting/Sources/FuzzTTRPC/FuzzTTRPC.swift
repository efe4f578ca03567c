import TetherFuzz

/// Bytes a shim's ttrpc peer could send (FuzzTargets.ttrpc).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTTRPC(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    FuzzTargets.ttrpc(start.map { Array(UnsafeRawBufferPointer(start: $0, count: count)) } ?? [])
    return 0
}
