/// Tether's default seccomp profile: an allowlist that refuses everything
/// else with EPERM, equal in effect to Docker's (moby's) and containerd's
/// defaults. Grouped by what the calls are for; the test
/// (SeccompTests.defaultProfileMatchesReference) compares it with the flat
/// list and conditions it was derived from. Capability-dependent rules use
/// the task's bounding set: a task given CAP_SYS_ADMIN may mount, one given
/// CAP_SYS_TIME may set the clock, and so on.
public enum SeccompDefault {
    static let files = [
        "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range", "creat",
        "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark",
        "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64",
        "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat", "fstat64",
        "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd",
        "getdents", "getdents64", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
        "inotify_rm_watch", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listxattr", "llistxattr",
        "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "mkdir", "mkdirat", "mknod",
        "mknodat", "name_to_handle_at", "newfstatat", "open", "openat", "openat2", "pread64", "preadv",
        "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv",
        "removexattr", "rename", "renameat", "renameat2", "rmdir", "sendfile", "sendfile64", "setxattr",
        "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
        "sync_file_range", "syncfs", "tee", "truncate", "truncate64", "umask", "unlink", "unlinkat", "utime",
        "utimensat", "utimensat_time64", "utimes", "vmsplice", "write", "writev",
    ]

    static let memory = [
        "brk", "cachestat", "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore",
        "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mremap", "msync", "munlock", "munlockall",
        "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect", "remap_file_pages",
    ]

    static let processes = [
        "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "get_robust_list",
        "get_thread_area", "getcpu", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
        "getgroups", "getgroups32", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid",
        "getresgid32", "getresuid", "getresuid32", "getrlimit", "getrusage", "getsid", "gettid", "getuid",
        "getuid32", "ioprio_get", "ioprio_set", "landlock_add_rule", "landlock_create_ruleset",
        "landlock_restrict_self", "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "process_mrelease",
        "restart_syscall", "rseq", "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity",
        "sched_getattr", "sched_getparam", "sched_getscheduler", "sched_rr_get_interval",
        "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
        "sched_setscheduler", "sched_yield", "seccomp", "set_robust_list", "set_thread_area", "set_tid_address",
        "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32",
        "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
        "setresuid32", "setreuid", "setreuid32", "setrlimit", "setsid", "setuid", "setuid32", "ugetrlimit",
        "uname", "vfork", "wait4", "waitid", "waitpid",
    ]

    static let signals = [
        "kill", "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
        "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sigaltstack",
        "signalfd", "signalfd4", "sigprocmask", "sigreturn", "tgkill", "tkill",
    ]

    static let time = [
        "adjtimex", "alarm", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64",
        "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "getitimer",
        "gettimeofday", "nanosleep", "setitimer", "sysinfo", "time", "timer_create", "timer_delete",
        "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
        "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times",
    ]

    /// Waiting, polling, async I/O and futexes.
    static let waiting = [
        "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
        "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "futex", "futex_requeue", "futex_time64",
        "futex_wait", "futex_waitv", "futex_wake", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents",
        "io_pgetevents_time64", "io_setup", "io_submit", "ioctl", "_newselect", "pipe", "pipe2", "poll", "ppoll",
        "ppoll_time64", "pselect6", "pselect6_time64", "select",
    ]

    static let network = [
        "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen", "recv",
        "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg", "sendmsg", "sendto",
        "setsockopt", "shutdown", "socketcall", "socketpair",
    ]

    /// System V and POSIX IPC (the task has an IPC namespace of its own).
    static let ipc = [
        "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
        "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd", "semctl",
        "semget", "semop", "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    ]

    /// Safe since Linux 4.8, where ptrace can no longer be used to step around seccomp.
    static let tracing = ["process_vm_readv", "process_vm_writev", "ptrace"]

    /// What only a task with a capability may call.
    static let byCapability: [(String, [String])] = [
        ("CAP_DAC_READ_SEARCH", ["open_by_handle_at"]),
        ("CAP_SYS_ADMIN", ["bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
                           "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open",
                           "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount",
                           "umount2", "unshare"]),
        ("CAP_SYS_BOOT", ["reboot"]),
        ("CAP_SYS_CHROOT", ["chroot"]),
        ("CAP_SYS_MODULE", ["delete_module", "finit_module", "init_module"]),
        ("CAP_SYS_PACCT", ["acct"]),
        ("CAP_SYS_PTRACE", ["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]),
        ("CAP_SYS_RAWIO", ["ioperm", "iopl"]),
        ("CAP_SYS_TIME", ["clock_settime", "clock_settime64", "settimeofday", "stime"]),
        ("CAP_SYS_TTY_CONFIG", ["vhangup"]),
        ("CAP_SYS_NICE", ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
        ("CAP_SYSLOG", ["syslog"]),
        ("CAP_BPF", ["bpf"]),
        ("CAP_PERFMON", ["perf_event_open"]),
    ]

    /// The new-namespace flags of clone(2): CLONE_NEWNS, NEWCGROUP, NEWUTS,
    /// NEWIPC, NEWUSER, NEWPID and NEWNET. Without CAP_SYS_ADMIN a task may
    /// clone only with none of them set.
    public static let cloneNamespaceFlags: UInt64 = 0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000
        | 0x1000_0000 | 0x2000_0000 | 0x4000_0000

    /// personality(2) values allowed: PER_LINUX, PER_LINUX32, UNAME26,
    /// PER_LINUX32|UNAME26, and 0xffffffff (which only asks).
    public static let personalities: [UInt64] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff]

    public static let errnoEPERM: UInt32 = 1
    public static let errnoENOSYS: UInt32 = 38
    /// AF_VSOCK: refused (containers have no business with the host's vsock).
    public static let afVsock: UInt64 = 40

    /// The profile, in Docker's format (rules with includes and excludes).
    public static var profile: SeccompProfile {
        let allow = "SCMP_ACT_ALLOW"
        var rules: [SeccompProfile.Rule] = [
            .init(names: (files + memory + processes + signals + time + waiting + network + ipc).sorted(), action: allow),
            .init(names: tracing, action: allow, includes: .init(minKernel: "4.8")),
            .init(names: ["socket"], action: allow, args: [.init(index: 0, value: afVsock, op: "SCMP_CMP_NE")]),
        ]
        for p in personalities {
            rules.append(.init(names: ["personality"], action: allow, args: [.init(index: 0, value: p, op: "SCMP_CMP_EQ")]))
        }
        rules.append(.init(names: ["arch_prctl", "modify_ldt"], action: allow, includes: .init(arches: ["amd64", "x32", "386"])))
        rules.append(.init(names: ["arm_fadvise64_64", "arm_sync_file_range", "breakpoint", "cacheflush", "set_tls", "sync_file_range2"],
                           action: allow, includes: .init(arches: ["arm", "arm64"])))
        rules.append(.init(names: ["clone"], action: allow,
                           args: [.init(index: 0, value: cloneNamespaceFlags, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ")],
                           excludes: .init(caps: ["CAP_SYS_ADMIN"])))
        // clone3's flags are in memory seccomp cannot read: ENOSYS makes libc fall back to clone.
        rules.append(.init(names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: errnoENOSYS, excludes: .init(caps: ["CAP_SYS_ADMIN"])))
        for (cap, names) in byCapability {
            rules.append(.init(names: names, action: allow, includes: .init(caps: [cap])))
        }
        return SeccompProfile(defaultAction: "SCMP_ACT_ERRNO", defaultErrnoRet: errnoEPERM,
                              archMap: [
                                  .init(architecture: "SCMP_ARCH_X86_64", subArchitectures: ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
                                  .init(architecture: "SCMP_ARCH_AARCH64", subArchitectures: ["SCMP_ARCH_ARM"]),
                              ],
                              syscalls: rules)
    }
}
