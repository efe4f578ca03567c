import TetherFuzz

/// A request body tetherd's HTTP API could get (FuzzTargets.api).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAPI(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    FuzzTargets.api(start.map { Array(UnsafeRawBufferPointer(start: $0, count: count)) } ?? [])
    return 0
}
