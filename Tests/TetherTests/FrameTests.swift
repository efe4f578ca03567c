import Testing
import TTRPC

@Suite("ttrpc framing")
struct FrameTests {
    @Test("the header is 10 big-endian bytes: length, stream id, type, flags")
    func headerLayout() throws {
        let f = Frame(streamID: 0x0102_0304, type: .response, payload: [0xAA, 0xBB, 0xCC], flags: 0x05)
        let bytes = try f.encoded()
        #expect(bytes == [0, 0, 0, 3, 1, 2, 3, 4, 2, 5, 0xAA, 0xBB, 0xCC])
        #expect(FrameHeader.decode(bytes) == FrameHeader(length: 3, streamID: 0x0102_0304, type: 2, flags: 5))
    }

    @Test("frames fed one byte at a time come out whole, in order")
    func decoderReassembles() throws {
        let a = Frame(streamID: 1, type: .request, payload: Array(0..<200))
        let b = Frame(streamID: 3, type: .request, payload: [])
        let c = Frame(streamID: 5, type: .request, payload: [9, 9])
        var d = FrameDecoder()
        var out: [Frame] = []
        for byte in try a.encoded() + b.encoded() + c.encoded() {
            d.append([byte])
            while case .frame(let f)? = d.next() { out.append(f) }
        }
        #expect(out == [a, b, c])
        #expect(d.atBoundary)
    }

    @Test("a payload of exactly 4 MiB is accepted, one byte more is not")
    func lengthLimit() throws {
        #expect(FrameHeader.maxPayload == 4 << 20)
        let max = Frame(streamID: 1, type: .request, payload: [UInt8](repeating: 1, count: FrameHeader.maxPayload))
        var d = FrameDecoder()
        d.append(try max.encoded())
        guard case .frame(let f)? = d.next() else { Issue.record("4 MiB frame not decoded"); return }
        #expect(f.payload.count == FrameHeader.maxPayload)
        let over = Frame(streamID: 1, type: .request, payload: [UInt8](repeating: 1, count: FrameHeader.maxPayload + 1))
        #expect(throws: FrameError.tooLarge(streamID: 1, length: UInt32(FrameHeader.maxPayload + 1))) { try over.encoded() }
    }

    @Test("an oversized frame is skipped without buffering it, and the next frame still decodes")
    func oversizedIsSkipped() throws {
        var d = FrameDecoder()
        let huge = UInt32(FrameHeader.maxPayload + 100)
        d.append(FrameHeader(length: huge, streamID: 7, type: 1).encoded())
        #expect(d.next() == .oversized(FrameHeader(length: huge, streamID: 7, type: 1)))
        // Feed the skipped payload in chunks; none of it is kept.
        var left = Int(huge)
        while left > 0 {
            let n = min(left, 1 << 20)
            d.append([UInt8](repeating: 0xEE, count: n))
            left -= n
            #expect(d.next() == nil)
            #expect(d.buffered == left, "only the bytes still to skip count; none are held")
        }
        let next = Frame(streamID: 9, type: .request, payload: [1, 2, 3])
        d.append(try next.encoded())
        #expect(d.next() == .frame(next))
    }

    @Test("a lone header or half a payload is not a frame yet")
    func partialFrames() throws {
        var d = FrameDecoder()
        d.append([0, 0, 0])
        #expect(d.next() == nil)
        d.append([5, 0, 0, 0, 1, 1, 0, 1, 2])
        #expect(d.next() == nil)
        #expect(!d.atBoundary)
        d.append([3, 4, 5])
        #expect(d.next() == .frame(Frame(streamID: 1, type: .request, payload: [1, 2, 3, 4, 5])))
    }
}
