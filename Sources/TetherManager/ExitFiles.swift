import Foundation
import SwiftProtobuf
import TetherProto
import TetherSys

/// Reads the exit records a shim left in its exits/ directory.
enum ExitFiles {
    static func read(_ dir: String) -> [Tether_Shim_V1_ExitRecord] {
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = true
        return ((try? Files.listDirectory(dir)) ?? []).filter { $0.hasSuffix(".json") }.compactMap { name in
            guard let bytes = try? Files.read("\(dir)/\(name)") else { return nil }
            return try? Tether_Shim_V1_ExitRecord(jsonUTF8Bytes: bytes, options: options)
        }.sorted { $0.seq < $1.seq }
    }
}

extension Google_Protobuf_Timestamp {
    var date: Date { Date(timeIntervalSince1970: Double(seconds) + Double(nanos) / 1e9) }
}
