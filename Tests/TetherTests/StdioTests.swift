#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TetherAPI
import TetherClient
import TetherRuntime
import TetherSys

@Suite("stdio", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(5)))
struct StdioTests {
    @Test("stdin piped into run -i reaches the task, and its end is CloseIO")
    func interactiveStdin() async throws {
        try await withDaemon { d in
            let r = try await d.tether("run", "--rm", "-i", "c", "--", "cat", stdin: Data("a\nb\n".utf8))
            #expect(r.status == 0 && r.out == "a\nb\n", "\(r)")
            // Without -i the task's stdin is /dev/null.
            let n = try await d.tether("run", "--rm", "n", "--", "cat", stdin: Data("ignored\n".utf8))
            #expect(n.status == 0 && n.out.isEmpty, "\(n)")
        }
    }

    @Test("CloseIO of an exec closes only the exec's stdin")
    func closeExecStdin() async throws {
        try await withDaemon { d in
            let api = AsyncAPI(d)
            let t = try await api.create(CreateTaskRequest(id: "t", args: ["cat"], fifos: FifoRequest(stdin: true)))
            _ = try await api.start("t")
            let e = try await api.exec("t", ExecRequest(execID: "e", args: ["cat"], fifos: FifoRequest(stdin: true)))
            let out = try FD.open(e.io.stdout, O_RDONLY | O_NONBLOCK)
            _ = try await api.startExec("t", "e")
            let input = try FD.open(e.io.stdin, O_WRONLY)
            try input.writeAll(Array("to the exec\n".utf8))
            input.close()
            _ = try await api.closeIO("t", execID: "e")
            #expect(try await api.waitExec("t", "e").status == 0)
            try out.setNonBlocking(false)
            #expect(try await readAll(out) == "to the exec\n")
            #expect(try await api.get("t").status == .running, "the task's own cat still has its stdin")
            _ = try await api.closeIO("t")
            #expect(try await api.wait("t").status == 0)
            _ = t
            _ = try await api.delete("t")
        }
    }

    @Test("1 GiB of output reaches the CLI whole: byte count and checksum")
    func bulkOutput() async throws {
        try await withDaemon { d in
            let expected = try await runProgram("/bin/bash", ["-c", "yes abcdefghij | head -c 1073741824 | sha256sum"]).out
            let r = try await runProgram("/bin/bash", ["-c", """
                set -o pipefail
                \(Prerequisites.binDir)/tether run --rm big -- sh -c 'yes abcdefghij | head -c 1073741824' \
                  | tee >(wc -c >\(d.dir)/count) | sha256sum
                """], env: ["TETHER_ADDRESS": d.address], timeout: 240)
            #expect(r.status == 0, "\(r)")
            #expect(r.out == expected)
            #expect(await eventually { (try? Files.readString("\(d.dir)/count")) == "1073741824\n" })
        }
    }

    @Test("a task writing 100 MiB that nobody reads: State answers within 100 ms, the shim stays small, Kill works")
    func unreadOutput() async throws {
        try await withDaemon { d in
            let api = AsyncAPI(d)
            _ = try await api.create(CreateTaskRequest(id: "w", args: ["sh", "-c", "yes | head -c 104857600; echo done > /done"], fifos: FifoRequest()))
            _ = try await api.start("w")
            let shim = try #require(d.shimPid("w"))
            // Once the pipes are full the writer blocks: the FIFO fills and stays full.
            let fifo = try FD.open(try await api.get("w").io.stdout, O_RDONLY | O_NONBLOCK)
            #expect(await eventually(5) { fifoBytes(fifo) >= 1 << 19 }, "the FIFO holds \(fifoBytes(fifo)) bytes")
            for _ in 0..<5 {
                let start = monotonicNanos()
                let view = try await api.get("w")
                let ms = Double(monotonicNanos() - start) / 1e6
                #expect(view.status == .running)
                #expect(ms < 100, "State took \(ms) ms")
            }
            let rss = try #require(rssKiB(shim))
            #expect(rss < 20 * 1024, "shim RSS \(rss) KiB")
            // What waits is in the kernel: the container's stdout pipe and the FIFO, 1 MiB each.
            let task = try await api.get("w")
            let containerStdout = try FD.open("/proc/\(task.pid)/fd/1", O_RDONLY | O_NONBLOCK)
            #expect(try containerStdout.pipeSize() == 1 << 20)
            containerStdout.close()
            #expect(try fifo.pipeSize() == 1 << 20)
            fifo.close()
            #expect(!Files.exists("\(d.bundle("w"))/rootfs/done"))
            #expect(try await d.tether("kill", "-s", "KILL", "w").status == 0)
            #expect(try await api.wait("w").status == 137)
            #expect(try await d.tether("delete", "w").status == 0)
        }
    }

    @Test("a client detaches and another attaches: the task never sees EPIPE, later output reaches the new client")
    func detachAttach() async throws {
        try await withDaemon { d in
            let api = AsyncAPI(d)
            let view = try await api.create(CreateTaskRequest(id: "a", args: ["sh", "-c", "i=0; while [ ! -e /stop ]; do echo line$i; i=$((i+1)); sleep 0.01; done; echo bye"],
                                                 fifos: FifoRequest()))
            let first = try FD.open(view.io.stdout, O_RDONLY)
            _ = try await api.start("a")
            let one = try await readLinesAsync(first, count: 3)
            #expect(one.first == "line0")
            first.close()  // client 1 goes away; the task keeps writing
            let second = try FD.open(view.io.stdout, O_RDONLY)
            let two = try await readLinesAsync(second, count: 3)
            #expect(try await api.get("a").status == .running, "the task survived its reader leaving")
            let n = Int(two.last?.dropFirst(4) ?? "") ?? -1
            #expect(n > 2, "\(two)")
            try Files.writeAtomically("\(d.bundle("a"))/rootfs/stop", [])
            #expect(try await api.wait("a").status == 0)
            #expect(try await readLinesAsync(second, count: 1000).last == "bye")
            _ = try await api.delete("a")
        }
    }

    @Test("--log writes CRI records: stream names, F and P, the last partial line closed at exit; rotation by size")
    func logFile() async throws {
        try await withDaemon { d in
            let log = "\(d.dir)/task.log"
            let r = try await d.tether("run", "--rm", "--log", log, "l", "--", "sh", "-c", "echo out1; echo err1 >&2; printf part")
            #expect(r.status == 0 && r.out == "out1\npart", "\(r)")
            let lines = try Files.readString(log).split(separator: "\n", omittingEmptySubsequences: false).dropLast()
            let records = lines.map { $0.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false) }
            #expect(records.allSatisfy { $0.count == 4 && RFC3339.parse(String($0[0])) != nil }, "\(lines)")
            let body = records.map { "\($0[1]) \($0[2]) \($0[3])" }
            #expect(body.filter { $0.hasPrefix("stdout") } == ["stdout F out1", "stdout P part", "stdout F "], "\(body)")
            #expect(body.filter { $0.hasPrefix("stderr") } == ["stderr F err1"], "\(body)")

            let small = "\(d.dir)/small.log"
            #expect(try await d.tether("run", "--rm", "--log", small, "--log-max-size", "1K", "s", "--", "sh", "-c",
                                       "i=0; while [ $i -lt 100 ]; do echo line-$i; i=$((i+1)); done").status == 0)
            let current = try Files.read(small).count
            let rotated = try Files.readString(small + ".1")
            #expect(current <= 1024 && rotated.utf8.count <= 1024 && rotated.contains(" stdout F line-"))
            #expect(try Files.readString(small).hasSuffix("stdout F line-99\n"))

            // A reader that comes late, through the log's read/write path: the FIFO fills, the
            // relay holds what it could not write, and nothing is lost on either side.
            let big = "\(d.dir)/big.log"
            let api = AsyncAPI(d)
            let view = try await api.create(CreateTaskRequest(id: "b", args: ["sh", "-c", "yes 0123456789012345678901234567890123456789 | head -n 100000"],
                                                              fifos: FifoRequest(), log: LogRequest(path: big)))
            let out = try FD.open(view.io.stdout, O_RDONLY | O_NONBLOCK)
            _ = try await api.start("b")
            // The FIFO and then the container's own pipe fill (1 MiB each, to their last
            // 64 KiB): the relay has met a full FIFO and holds what it could not write.
            let containerOut = try FD.open("/proc/\(try await api.get("b").pid)/fd/1", O_RDONLY | O_NONBLOCK)
            let nearlyFull: Int32 = (1 << 20) - (64 << 10)
            #expect(await eventually(10) { fifoBytes(out) >= nearlyFull && fifoBytes(containerOut) >= nearlyFull },
                    "the FIFO holds \(fifoBytes(out)) bytes, the container's pipe \(fifoBytes(containerOut))")
            containerOut.close()
            let text = try await readAll(out)
            #expect(text.utf8.count == 100000 * 41)
            #expect(try await api.wait("b").status == 0)
            _ = try await api.delete("b")
            var rebuilt = ""  // P records continue a line, F records end one
            for line in try Files.readString(big).split(separator: "\n") {
                let f = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
                if f.count == 4 && f[1] == "stdout" { rebuilt += f[3] + (f[2] == "F" ? "\n" : "") }
            }
            #expect(rebuilt == text, "the log holds \(rebuilt.utf8.count) bytes of stdout")
        }
    }
}

/// Up to `count` lines from `fd` (fewer at end of file); fails after 60 s without them.
func readLines(_ fd: FD, count: Int) throws -> [String] {
    let deadline = monotonicNanos() + 60_000_000_000
    var lines: [String] = []
    var pending: [UInt8] = []
    while lines.count < count {
        try waitReadable(fd, until: deadline)
        let chunk = try fd.read(upTo: 1)
        if chunk.isEmpty { break }
        if chunk[0] == 0x0A {
            lines.append(String(decoding: pending, as: UTF8.self))
            pending = []
        } else {
            pending += chunk
        }
    }
    return lines
}

/// Bytes waiting in a pipe or FIFO (FIONREAD).
func fifoBytes(_ fd: FD) -> Int32 {
    var n: Int32 = 0
    return ioctl(fd.raw, UInt(FIONREAD), &n) == 0 ? n : -1
}

func rssKiB(_ pid: Int32) -> Int? {
    guard let status = try? Files.readString("/proc/\(pid)/status"),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return nil }
    return Int(line.split(separator: " ").dropFirst().first ?? "")
}
