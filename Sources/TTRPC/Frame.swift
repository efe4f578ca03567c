/// ttrpc framing: a 10-byte big-endian header (payload length u32, stream id
/// u32, type u8, flags u8) and then `length` bytes of protobuf.
public enum MessageType: UInt8, Sendable {
    case request = 1
    case response = 2
    case data = 3
}

public struct FrameHeader: Sendable, Equatable {
    public static let size = 10
    /// The largest payload ttrpc allows (4 MiB).
    public static let maxPayload = 4 << 20

    public var length: UInt32
    public var streamID: UInt32
    public var type: UInt8
    public var flags: UInt8

    public init(length: UInt32, streamID: UInt32, type: UInt8, flags: UInt8 = 0) {
        self.length = length
        self.streamID = streamID
        self.type = type
        self.flags = flags
    }

    public func encoded() -> [UInt8] {
        [UInt8(truncatingIfNeeded: length >> 24), UInt8(truncatingIfNeeded: length >> 16),
         UInt8(truncatingIfNeeded: length >> 8), UInt8(truncatingIfNeeded: length),
         UInt8(truncatingIfNeeded: streamID >> 24), UInt8(truncatingIfNeeded: streamID >> 16),
         UInt8(truncatingIfNeeded: streamID >> 8), UInt8(truncatingIfNeeded: streamID),
         type, flags]
    }

    /// Decodes the first 10 bytes of `b` (which must hold at least 10).
    public static func decode<C: Collection<UInt8>>(_ b: C) -> FrameHeader where C.Index == Int {
        let s = b.startIndex
        func u32(_ i: Int) -> UInt32 {
            UInt32(b[s + i]) << 24 | UInt32(b[s + i + 1]) << 16 | UInt32(b[s + i + 2]) << 8 | UInt32(b[s + i + 3])
        }
        return FrameHeader(length: u32(0), streamID: u32(4), type: b[s + 8], flags: b[s + 9])
    }
}

public struct Frame: Sendable, Equatable {
    public var header: FrameHeader
    public var payload: [UInt8]

    public init(streamID: UInt32, type: MessageType, payload: [UInt8], flags: UInt8 = 0) {
        header = FrameHeader(length: UInt32(payload.count), streamID: streamID, type: type.rawValue, flags: flags)
        self.payload = payload
    }

    public init(header: FrameHeader, payload: [UInt8]) {
        self.header = header
        self.payload = payload
    }

    /// Header and payload, ready to write. Fails for payloads over the limit.
    public func encoded() throws(FrameError) -> [UInt8] {
        guard payload.count <= FrameHeader.maxPayload else { throw .tooLarge(streamID: header.streamID, length: UInt32(payload.count)) }
        return header.encoded() + payload
    }
}

public enum FrameError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A frame longer than 4 MiB: its payload is skipped, the stream can be answered.
    case tooLarge(streamID: UInt32, length: UInt32)
    /// The peer closed the connection inside a frame.
    case truncated

    public var description: String {
        switch self {
        case .tooLarge(let id, let n): "ttrpc frame on stream \(id) is \(n) bytes, over the \(FrameHeader.maxPayload)-byte limit"
        case .truncated: "ttrpc connection closed inside a frame"
        }
    }
}

/// An incremental frame decoder: feed it bytes as they arrive, take frames out.
/// A frame over the limit never buffers its payload: the decoder skips those
/// bytes and reports `.oversized` once, so one bad frame cannot exhaust memory
/// or desynchronise the stream.
public struct FrameDecoder: Sendable {
    public enum Event: Sendable, Equatable {
        case frame(Frame)
        case oversized(FrameHeader)
    }

    private var buffer: [UInt8] = []
    private var readIndex = 0
    private var skipping = 0

    public init() {}

    /// Bytes received but not yet part of a returned frame.
    public var buffered: Int { buffer.count - readIndex + skipping }

    public mutating func append<C: Collection<UInt8>>(_ bytes: C) {
        var slice = bytes[...]
        if skipping > 0 {
            let n = min(skipping, slice.count)
            skipping -= n
            slice = slice.dropFirst(n)
        }
        buffer.append(contentsOf: slice)
    }

    /// The next complete frame, or nil when more bytes are needed.
    public mutating func next() -> Event? {
        let available = buffer.count - readIndex
        guard skipping == 0, available >= FrameHeader.size else { return nil }
        let header = FrameHeader.decode(buffer[readIndex..<(readIndex + FrameHeader.size)])
        let length = Int(header.length)
        if length > FrameHeader.maxPayload {
            readIndex += FrameHeader.size
            let have = min(buffer.count - readIndex, length)
            readIndex += have
            skipping = length - have
            compact()
            return .oversized(header)
        }
        guard available >= FrameHeader.size + length else { return nil }
        let start = readIndex + FrameHeader.size
        let payload = Array(buffer[start..<(start + length)])
        readIndex = start + length
        compact()
        return .frame(Frame(header: header, payload: payload))
    }

    /// Is the decoder between frames (so an EOF now is a clean close)?
    public var atBoundary: Bool { skipping == 0 && buffer.count == readIndex }

    private mutating func compact() {
        if readIndex == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 1 << 16)
            readIndex = 0
        } else if readIndex > 1 << 16 {
            buffer.removeFirst(readIndex)
            readIndex = 0
        }
    }
}
