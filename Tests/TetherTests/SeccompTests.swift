#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TetherAPI
import TetherClient
import TetherOCI
import TetherRuntime
import TetherSeccomp
import TetherSys

/// The default profile as derived: Docker's (moby's) default allowlist,
/// written out flat, one name per entry, with its conditions. The profile
/// in SeccompDefault is grouped differently; this is what it must equal.
enum SeccompReference {
    static let unconditional: Set<String> = Set("""
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
    clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
    clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old
    eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate
    fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync
    fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync
    ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
    get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32
    getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
    getrandom getresgid getresgid32 getresuid getresuid32 getrlimit getrusage getsid getsockname getsockopt
    gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1
    inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup
    io_submit ioctl ioprio_get ioprio_set ipc kill landlock_add_rule landlock_create_ruleset
    landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr llistxattr _llseek
    lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret
    mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify
    mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap
    msgctl msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat
    _newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free
    pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
    pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv recvfrom
    recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat renameat2 restart_syscall
    rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
    rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_get_priority_max sched_get_priority_min
    sched_getaffinity sched_getattr sched_getparam sched_getscheduler sched_rr_get_interval
    sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam sched_setscheduler
    sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64
    sendmmsg sendmsg sendto set_robust_list set_thread_area set_tid_address setfsgid setfsgid32 setfsuid
    setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32
    setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit setsid setsockopt setuid
    setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask
    sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync
    sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
    timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
    timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask
    uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid
    write writev
    """.split(whereSeparator: \.isWhitespace).map(String.init))

    static let kernel48: Set<String> = ["process_vm_readv", "process_vm_writev", "ptrace"]

    static let byCapability: [String: Set<String>] = [
        "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
        "CAP_SYS_ADMIN": ["bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie",
                          "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
                          "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare"],
        "CAP_SYS_BOOT": ["reboot"], "CAP_SYS_CHROOT": ["chroot"],
        "CAP_SYS_MODULE": ["delete_module", "init_module", "finit_module"], "CAP_SYS_PACCT": ["acct"],
        "CAP_SYS_PTRACE": ["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
        "CAP_SYS_RAWIO": ["iopl", "ioperm"], "CAP_SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_settime64"],
        "CAP_SYS_TTY_CONFIG": ["vhangup"], "CAP_SYS_NICE": ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
        "CAP_SYSLOG": ["syslog"], "CAP_BPF": ["bpf"], "CAP_PERFMON": ["perf_event_open"],
    ]

    /// Never allowed by default, whatever the capabilities (the calls the issue names among them).
    static let refused = ["keyctl", "add_key", "request_key", "userfaultfd", "kexec_load", "kexec_file_load", "io_uring_setup",
                          "nfsservctl", "uselib", "swapon", "swapoff", "pivot_root", "name_to_handle_at_x"]
}

@Suite("seccomp: the default profile and profile checks")
struct SeccompProfileTests {
    let host = SeccompProfile.Host.current

    func allowed(_ s: OCI.Seccomp) -> Set<String> {
        Set((s.syscalls ?? []).filter { $0.action == "SCMP_ACT_ALLOW" && ($0.args ?? []).isEmpty }.flatMap(\.names))
    }

    @Test("the default profile is the reference list, with its conditions, for every capability")
    func defaultProfileMatchesReference() throws {
        let base = SeccompDefault.profile.resolved(capabilities: [], host: host)
        #expect(base.defaultAction == "SCMP_ACT_ERRNO" && base.defaultErrnoRet == 1)
        #expect(base.architectures == host.scmpArches)
        var expected = SeccompReference.unconditional.union(SeccompReference.kernel48)
        #if arch(x86_64)
        expected.formUnion(["arch_prctl", "modify_ldt"])
        #elseif arch(arm64)
        expected.formUnion(["arm_fadvise64_64", "arm_sync_file_range", "breakpoint", "cacheflush", "set_tls", "sync_file_range2"])
        #endif
        #expect(allowed(base) == expected, "extra \(allowed(base).subtracting(expected).sorted()), missing \(expected.subtracting(allowed(base)).sorted())")
        for name in SeccompReference.refused { #expect(!allowed(base).contains(name), "\(name) is allowed") }
        // The conditions.
        let rules = base.syscalls ?? []
        let clone = rules.filter { $0.names == ["clone"] }
        #expect(clone.count == 1 && clone[0].args == [.init(index: 0, value: 0x7E02_0000, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ")])
        #expect(rules.contains { $0.names == ["clone3"] && $0.action == "SCMP_ACT_ERRNO" && $0.errnoRet == 38 })
        #expect(rules.contains { $0.names == ["socket"] && $0.args == [.init(index: 0, value: 40, op: "SCMP_CMP_NE")] })
        let personalities = Set(rules.filter { $0.names == ["personality"] }.compactMap { $0.args?.first?.value })
        #expect(personalities == [0, 8, 0x20000, 0x20008, 0xffff_ffff])
        // Each capability adds exactly its calls.
        for (cap, names) in SeccompReference.byCapability {
            let with = SeccompDefault.profile.resolved(capabilities: [cap], host: host)
            #expect(allowed(with).subtracting(allowed(base)) == names.subtracting(expected), "\(cap)")
            if cap == "CAP_SYS_ADMIN" {
                #expect(!(with.syscalls ?? []).contains { $0.names == ["clone3"] || ($0.names == ["clone"] && $0.args != nil) })
            }
        }
    }

    @Test("every name of the default profile resolves with this host's libseccomp, but for calls newer than it")
    func defaultNamesResolve() throws {
        let all = SeccompDefault.profile.resolved(capabilities: Set(SeccompReference.byCapability.keys), host: host)
        let kept = SeccompCheck.keepingKnown(all)
        let dropped = Set((all.syscalls ?? []).flatMap(\.names)).subtracting((kept.syscalls ?? []).flatMap(\.names))
        // Only calls added to Linux after libseccomp 2.5.4 may be unknown to it.
        let newer: Set<String> = ["cachestat", "fchmodat2", "map_shadow_stack", "futex_wake", "futex_wait", "futex_requeue",
                                  "set_mempolicy_home_node", "memfd_secret", "process_mrelease", "landlock_add_rule",
                                  "landlock_create_ruleset", "landlock_restrict_self", "futex_waitv", "quotactl_fd", "epoll_pwait2",
                                  "mount_setattr", "process_madvise", "faccessat2", "close_range", "pidfd_getfd", "openat2"]
        #expect(dropped.isSubset(of: newer), "unknown to libseccomp \(SeccompCheck.version): \(dropped.subtracting(newer).sorted())")
        try SeccompCheck.check(kept, source: "default")
    }

    func expectRefused(_ json: String, _ needle: String) {
        do {
            let p = try JSONDecoder().decode(SeccompProfile.self, from: Data(json.utf8))
            try SeccompCheck.check(p.resolved(capabilities: [], host: host), source: "p.json")
            Issue.record("accepted: \(json)")
        } catch {
            #expect("\(error)".contains(needle) && "\(error)".contains("p.json"), "\(error)")
            #expect(!"\(error)".contains("\n"))
        }
    }

    @Test("a typo in a syscall, an unknown action, operator or architecture, a foreign architecture: one line naming it")
    func badProfiles() {
        expectRefused(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "mkdirr"], "action": "SCMP_ACT_ALLOW"}]}"#,
                      "unknown syscall \"mkdirr\"")
        expectRefused(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALOW"}]}"#,
                      "unknown action SCMP_ACT_ALOW")
        expectRefused(#"{"defaultAction": "SCMP_ACT_DENY"}"#, "unknown defaultAction SCMP_ACT_DENY")
        expectRefused(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQQ"}]}]}"#,
                      "unknown operator SCMP_CMP_EQQ")
        expectRefused(#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_VAX"]}"#, "unknown architecture SCMP_ARCH_VAX")
        #if arch(x86_64)
        expectRefused(#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_AARCH64"]}"#, "is not one this host runs")
        #endif
        expectRefused(#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#, "cannot be the defaultAction")
        expectRefused(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}"#, "listenerPath")
    }
}

/// Real containers through runc with the default profile, without it, and with a profile file.
@Suite("seccomp: containers", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(3)))
struct SeccompContainerTests {
    /// A copy of the test rootfs with syscall-probe in it (built static with the host's cc).
    static func rootfsWithProbe(in dir: String) async throws -> String {
        let rootfs = "\(dir)/probe-rootfs"
        let cp = try await runProgram("/bin/cp", ["-a", Prerequisites.rootfs, rootfs])
        try #require(cp.status == 0, "\(cp)")
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/syscall-probe.c").path
        let cc = try #require(Spawn.lookPath("cc"), "a C compiler (cc) is needed to build the syscall probe")
        let built = try await runProgram(cc, ["-static", "-O1", "-o", "\(rootfs)/bin/syscall-probe", source])
        try #require(built.status == 0, "\(built)")
        return rootfs
    }

    @Test("by default keyctl, add_key, unshare and userfaultfd get EPERM while a shell's work goes on; unconfined, they do not")
    func defaultProfileRefuses() async throws {
        try await withDaemon { d in
            let rootfs = try await Self.rootfsWithProbe(in: d.dir)
            let probes = "for c in keyctl add_key unshare userfaultfd getpid; do syscall-probe $c; done"
            let confined = try await d.tether("run", "--rm", "--rootfs", rootfs, "s1", "--", "sh", "-c", probes)
            #expect(confined.status == 0, "\(confined)")
            for c in ["keyctl", "add_key", "unshare", "userfaultfd"] {
                #expect(confined.out.contains("\(c): errno 1 (Operation not permitted)"), "\(c): \(confined.out)")
            }
            #expect(confined.out.contains("getpid: ok"))
            let tools = try await d.tether("run", "--rm", "--rootfs", rootfs, "s2", "--", "sh", "-c",
                                           "unshare -r true; echo unshare=$?; mount -t tmpfs none /mnt; echo mount=$?")
            #expect(tools.out.contains("unshare=1") && (tools.out.contains("mount=255") || tools.out.contains("mount=1")), "\(tools)")
            #expect(tools.err.contains("Operation not permitted"), "\(tools)")
            let work = try await d.tether("run", "--rm", "--rootfs", rootfs, "s3", "--", "sh", "-c",
                                          "ls / >/dev/null && ps >/dev/null && dd if=/dev/zero of=/tmp/z bs=4k count=16 2>/dev/null && sha256sum /tmp/z && sleep 0.1"
                                          + " && mkdir /tmp/www && echo served > /tmp/www/x && httpd -p 127.0.0.1:8080 -h /tmp/www"
                                          + " && wget -q -O - http://127.0.0.1:8080/x && echo done")
            #expect(work.status == 0 && work.out.hasSuffix("served\ndone\n"), "\(work)")
            let open = try await d.tether("run", "--rm", "--rootfs", rootfs, "--security-opt", "seccomp=unconfined", "s4", "--", "sh", "-c", probes)
            #expect(open.status == 0, "\(open)")
            // (userfaultfd needs CAP_SYS_PTRACE on the host too, and unshare may: only these two are seccomp's alone.)
            for c in ["keyctl", "add_key"] {
                #expect(!open.out.contains("\(c): errno 1 "), "\(c) still refused unconfined: \(open.out)")
            }
        }
    }

    @Test("a profile file: used when good; a typo, a bad action or bad JSON is one line and nothing is created")
    func profileFiles() async throws {
        try await withDaemon { d in
            let rootfs = try await Self.rootfsWithProbe(in: d.dir)
            // The default, plus keyctl: allowed in that container only.
            var p = SeccompDefault.profile
            p.syscalls?.append(.init(names: ["keyctl"], action: "SCMP_ACT_ALLOW"))
            let good = "\(d.dir)/good.json"
            try Files.writeAtomically(good, Array(try JSONEncoder().encode(p)))
            let check = try await d.tether("seccomp", "check", good)
            #expect(check.status == 0 && check.out.contains("ok"), "\(check)")
            let r = try await d.tether("run", "--rm", "--rootfs", rootfs, "--security-opt", "seccomp=\(good)", "f1", "--", "syscall-probe", "keyctl")
            #expect(r.out == "keyctl: ok\n", "\(r)")
            let bad: [(String, String)] = [
                (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["keyctll"], "action": "SCMP_ACT_ALLOW"}]}"#, "unknown syscall \"keyctll\""),
                (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_PERMIT"}]}"#, "unknown action SCMP_ACT_PERMIT"),
                (#"{"defaultAction": "SCMP_ACT_ERRNO", "#, "is not a profile"),
            ]
            for (i, (text, needle)) in bad.enumerated() {
                let file = "\(d.dir)/bad\(i).json"
                try Files.writeAtomically(file, Array(text.utf8))
                for args in [["seccomp", "check", file], ["run", "--rm", "--security-opt", "seccomp=\(file)", "b\(i)", "--", "true"]] {
                    let r = try await d.tether(args)
                    #expect(r.status != 0 && r.err.contains(needle) && r.err.contains(file), "\(args): \(r)")
                    #expect(r.err.split(separator: "\n").count == 1, "\(r)")
                }
            }
            #expect(try await d.tether("ls", "-q").out == "")
        }
    }
}

/// --cap-add, --cap-drop, --privileged, --read-only, --user, and what state shows.
@Suite("confinement flags", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(3)))
struct ConfinementTests {
    @Test("capabilities added and dropped, read-only rootfs, a user, privileged; state shows each; a bad name is one line")
    func flags() async throws {
        try await withDaemon { d in
            // Without CAP_SYS_ADMIN mount is refused; with it, seccomp lets it through too.
            let plain = try await d.tether("run", "--rm", "c1", "--", "sh", "-c", "mkdir -p /mnt && mount -t tmpfs none /mnt && echo mounted")
            #expect(!plain.out.contains("mounted"), "\(plain)")
            let admin = try await d.tether("run", "--rm", "--cap-add", "sys_admin", "c2", "--", "sh", "-c", "mkdir -p /mnt && mount -t tmpfs none /mnt && echo mounted")
            #expect(admin.out == "mounted\n", "\(admin)")
            let dropped = try await d.tether("run", "--rm", "--cap-drop", "ALL", "c3", "--", "sh", "-c", "touch /tmp/f && chown 1 /tmp/f; echo $?")
            #expect(dropped.out == "1\n" && dropped.err.contains("Operation not permitted"), "\(dropped)")
            let ro = try await d.tether("run", "--rm", "--read-only", "c4", "--", "sh", "-c", "touch /x; echo $?")
            #expect(ro.out == "1\n" && ro.err.contains("Read-only file system"), "\(ro)")
            let user = try await d.tether("run", "--rm", "-u", "1000:1001", "c5", "--", "sh", "-c", "echo $(id -u):$(id -g)")
            #expect(user.out == "1000:1001\n", "\(user)")
            // A host device runc does not make by itself: there when privileged, not otherwise.
            let hostDevice = try #require(["kmsg", "loop-control", "fuse", "loop0"].first { Files.exists("/dev/\($0)") })
            let devPriv = try await d.tether("run", "--rm", "--privileged", "c6d", "--", "sh", "-c", "test -c /dev/\(hostDevice) -o -b /dev/\(hostDevice) && echo present")
            #expect(devPriv.out == "present\n", "\(devPriv)")
            let devPlain = try await d.tether("run", "--rm", "c6p", "--", "sh", "-c", "test -e /dev/\(hostDevice) || echo absent")
            #expect(devPlain.out == "absent\n", "\(devPlain)")
            let priv = try await d.tether("run", "--rm", "--privileged", "c6", "--", "sh", "-c", "grep CapEff /proc/self/status")
            // Every capability tetherd has (this machine's bounding set lacks CAP_SYS_RESOURCE, for one).
            let own = try Files.readString("/proc/self/status").split(separator: "\n").first { $0.hasPrefix("CapBnd:") }
            let mask = try #require(own?.split(separator: "\t").last)
            #expect(priv.out.contains("CapEff:\t\(mask)"), "\(priv), ours \(mask)")
            // state shows the confinement.
            #expect(try await d.tether("create", "--cap-drop", "NET_RAW", "--read-only", "c7", "--", "true").status == 0)
            let view = try await AsyncAPI(d).get("c7")
            let sec = try #require(view.security)
            #expect(!sec.capabilities.contains("CAP_NET_RAW") && sec.capabilities.contains("CAP_CHOWN") && sec.readOnlyRootfs && sec.noNewPrivileges)
            #expect(sec.seccomp?.defaultAction == "SCMP_ACT_ERRNO" && (sec.seccomp?.syscalls ?? 0) > 300, "\(sec)")
            _ = try await d.tether("delete", "c7")
            #expect(try await d.tether("create", "--privileged", "c8", "--", "true").status == 0)
            let p = try #require(try await AsyncAPI(d).get("c8").security)
            #expect(p.seccomp == nil && p.capabilities.count >= 38 && p.capabilities.contains("CAP_SYS_ADMIN") && p.maskedPaths == 0, "\(p)")
            _ = try await d.tether("delete", "c8")
            for (args, needle) in [(["--cap-add", "SYS_FOO"], "--cap-add SYS_FOO: no such capability"),
                                   (["--user", "bob"], "--user bob: give a numeric UID")] {
                let r = try await d.tether(["run", "--rm"] + args + ["c9", "--", "true"])
                #expect(r.status != 0 && r.err.contains(needle) && r.err.split(separator: "\n").count == 1, "\(r)")
            }
            #expect(try await d.tether("ls", "-q").out == "")
        }
    }
}

/// The shim as seccomp agent: audit refuses and counts, learn allows and
/// records a profile, and a dead agent never leaves a container hung.
@Suite("seccomp agent", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(3)))
struct SeccompAgentTests {
    func report(_ d: TestDaemon, _ id: String) async throws -> SeccompReport? {
        let r = try await d.tether("seccomp", "show", id)
        guard r.status == 0 else { return nil }
        let body = try await offPool { try APIClient(address: d.address, namespace: "default").seccomp(id, profile: false) }
        return try JSONDecoder().decode(SeccompReport.self, from: body)
    }

    @Test("audit: a refused call 1000 times gets EPERM each time, the task answers, the report counts 1000 with pid and exec; learn: its profile then runs the same work with no refusal")
    func auditAndLearn() async throws {
        try await withDaemon { d in
            let rootfs = try await SeccompContainerTests.rootfsWithProbe(in: d.dir)
            let log = "\(d.dir)/a1.log"
            let events = EventCollector(address: d.address, topics: ["/tasks/seccomp"])
            try #require(events.ready.wait(timeout: .now() + 20) == .success, "the event subscriber did not start")
            #expect(try await d.tether("run", "-d", "--rootfs", rootfs, "--log", log, "--security-opt", "seccomp-audit", "a1", "--",
                                       "sh", "-c", "syscall-probe keyctl 1000; sleep 1000").status == 0)
            #expect(await eventually(20) { ((try? Files.readString(log)) ?? "").contains("keyctl: errno 1 (Operation not permitted), 1000 of 1000") },
                    "\((try? Files.readString(log)) ?? "")")
            #expect(try await d.tether("state", "a1").status == 0)
            let ex = try await d.tether("exec", "--exec-id", "probe", "a1", "--", "syscall-probe", "add_key")
            #expect(ex.out == "add_key: errno 1 (Operation not permitted), 1 of 1\n", "\(ex)")
            var seen: SeccompReport?
            let counted = await eventuallyAsync(10) {
                seen = try await report(d, "a1")
                return seen?.syscalls.first { $0.name == "keyctl" }?.count == 1000 && seen?.syscalls.contains { $0.name == "add_key" } == true
            }
            #expect(counted, "\(String(describing: seen))")
            let keyctl = seen?.syscalls.first { $0.name == "keyctl" }
            #expect(seen?.mode == "audit" && keyctl?.execID == "" && (keyctl?.firstPid ?? 0) > 1)
            #expect(seen?.syscalls.first { $0.name == "add_key" }?.execID == "probe", "\(String(describing: seen))")
            // /tasks/seccomp: once per syscall, not once per call.
            #expect(await eventually(10) { events.all.contains { $0.event.syscall == "add_key" } }, "\(events.all)")
            let seenEvents = events.all.filter { $0.event.containerID == "a1" }
            #expect(seenEvents.map { $0.event.syscall } == ["keyctl", "add_key"], "\(seenEvents)")
            #expect(seenEvents.last?.event.execID == "probe" && seenEvents.first?.event.reason == "refused", "\(seenEvents)")
            let shown = try await d.tether("seccomp", "show", "a1")
            #expect(shown.out.contains("keyctl") && shown.out.contains("1000"), "\(shown)")
            try await d.killAndDelete("a1")

            // Learn: the calls go through and are recorded; the profile then allows them.
            #expect(try await d.tether("run", "-d", "--rootfs", rootfs, "--security-opt", "seccomp-learn", "l1", "--",
                                       "sh", "-c", "syscall-probe keyctl 3; syscall-probe add_key").status == 0)
            #expect(try await d.tether("wait", "l1").status == 0)
            let learned = try await d.tether("seccomp", "show", "--profile", "l1")
            #expect(learned.status == 0 && learned.out.contains("\"keyctl\"") && learned.out.contains("\"add_key\""), "\(learned)")
            let profile = "\(d.dir)/learned.json"
            try Files.writeAtomically(profile, Array(learned.out.utf8))
            #expect(try await d.tether("delete", "l1").status == 0)
            let enforced = try await d.tether("run", "--rm", "--rootfs", rootfs, "--security-opt", "seccomp=\(profile)", "e1", "--",
                                              "sh", "-c", "syscall-probe keyctl 3; syscall-probe add_key")
            #expect(enforced.out == "keyctl: ok\nadd_key: ok\n", "\(enforced)")
            let missing = try await d.tether("seccomp", "show", "nosuch")
            #expect(missing.status != 0)
        }
    }

    @Test("a shim killed while a notification is pending: the container's call returns and it goes on")
    func agentKilledWhilePending() async throws {
        try await withDaemon { d in
            let rootfs = try await SeccompContainerTests.rootfsWithProbe(in: d.dir)
            #expect(try await d.tether("run", "-d", "--rootfs", rootfs, "--security-opt", "seccomp-audit", "k1", "--",
                                       "sh", "-c", "while [ ! -e /tmp/go ]; do usleep 20000; done; syscall-probe keyctl; sleep 1000").status == 0)
            let shim = try #require(d.shimPid("k1"))
            kill(shim, SIGSTOP)
            // Written from the host into the container's rootfs: nothing asks the stopped shim.
            try Files.writeAtomically("\(d.bundle("k1"))/rootfs/tmp/go", [])
            #if arch(x86_64)
            let keyctl = "250"
            #else
            let keyctl = "219"
            #endif
            var probe: Int32 = 0
            let blocked = await eventually(10) {
                probe = processes { $0.hasPrefix("syscall-probe keyctl") }.first ?? 0
                return probe > 0 && ((try? Files.readString("/proc/\(probe)/syscall")) ?? "").hasPrefix("\(keyctl) ")
            }
            #expect(blocked, "the probe (pid \(probe)) never waited on the agent")
            kill(shim, SIGKILL)
            kill(shim, SIGCONT)
            #expect(await eventually(10) { kill(probe, 0) != 0 || procStat(probe, field: 3) == "Z" }, "the probe \(probe) is still blocked")
            // The manager saw its shim die: the task is stopped, with a reason, and deletes.
            #expect(await eventuallyAsync(10) { try await d.tether("state", "k1").out.contains("\"stopped\"") })
            #expect(try await d.tether("rm", "k1").status == 0)
        }
    }
}

/// `eventually` for a condition that must await (an API call): polled every 50 ms.
func eventuallyAsync(_ seconds: Double, _ condition: () async throws -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if (try? await condition()) == true { return true }
        try? await Task.sleep(nanoseconds: 50_000_000)
    }
    return (try? await condition()) == true
}

/// Events of some topics, as they come, from a subscription made before the test acts.
final class EventCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [TaskEvent] = []
    let ready = DispatchSemaphore(value: 0)

    init(address: String, topics: [String]) {
        let client = APIClient(address: address, namespace: "default", timeout: 300)
        Thread.detachNewThread { [self] in
            try? client.events(namespace: nil, task: nil, topics: topics, onReady: { self.ready.signal() }) { e in
                self.lock.lock()
                self.list.append(e)
                self.lock.unlock()
            }
        }
    }

    var all: [TaskEvent] { lock.lock(); defer { lock.unlock() }; return list }
}

@Suite("seccomp event shape")
struct SeccompEventShapeTests {
    @Test("a /tasks/seccomp line decodes with its syscall")
    func decodes() throws {
        let line = #"{"event":{"containerID":"x1","pid":30884,"reason":"refused","syscall":"unshare"},"namespace":"default","timestamp":"2026-12-01T05:16:51.127026320Z","topic":"/tasks/seccomp"}"#
        let e = try APIJSON.decoder.decode(TaskEvent.self, from: Data(line.utf8))
        #expect(e.event.syscall == "unshare" && e.event.reason == "refused" && e.event.pid == 30884)
    }
}
