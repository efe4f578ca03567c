#define _GNU_SOURCE
#include "ctether.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

// ---------------------------------------------------------------------------
// Spawning. posix_spawn uses clone(CLONE_VM|CLONE_VFORK) in glibc, so it is
// safe in a threaded process and cheap in a large one. The fd map is applied
// in two steps so that sources and destinations may overlap: every source is
// first duplicated above every destination, then dup2'ed into place.
// ---------------------------------------------------------------------------

#define SPAWN_MAX_FDS 16

int tether_spawn(const char *path, char *const argv[], char *const envp[],
                 const int *fds, int nfds, int flags, const char *cwd,
                 pid_t *pid) {
    if (nfds < 0 || nfds > SPAWN_MAX_FDS) return EINVAL;
    int high[SPAWN_MAX_FDS];
    int devnull = -1;
    int rc = 0;
    for (int i = 0; i < nfds; i++) high[i] = -1;

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    if ((rc = posix_spawn_file_actions_init(&fa)) != 0) return rc;
    if ((rc = posix_spawnattr_init(&attr)) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        return rc;
    }

    for (int i = 0; i < nfds; i++) {
        int src = fds[i];
        if (src < 0) {
            if (devnull < 0) {
                devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
                if (devnull < 0) { rc = errno; goto out; }
            }
            src = devnull;
        }
        high[i] = fcntl(src, F_DUPFD_CLOEXEC, SPAWN_MAX_FDS + 3);
        if (high[i] < 0) { rc = errno; goto out; }
        if ((rc = posix_spawn_file_actions_adddup2(&fa, high[i], i)) != 0) goto out;
    }
    if ((rc = posix_spawn_file_actions_addclosefrom_np(&fa, nfds)) != 0) goto out;
    if (cwd && (rc = posix_spawn_file_actions_addchdir_np(&fa, cwd)) != 0) goto out;

    sigset_t all, none;
    sigfillset(&all);
    sigdelset(&all, SIGKILL);
    sigdelset(&all, SIGSTOP);
    sigemptyset(&none);
    short sflags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
    if (flags & TETHER_SPAWN_SETSID) sflags |= POSIX_SPAWN_SETSID;
    if ((rc = posix_spawnattr_setsigdefault(&attr, &all)) != 0) goto out;
    if ((rc = posix_spawnattr_setsigmask(&attr, &none)) != 0) goto out;
    if ((rc = posix_spawnattr_setflags(&attr, sflags)) != 0) goto out;

    rc = posix_spawn(pid, path, &fa, &attr, argv, envp);

out:
    for (int i = 0; i < nfds; i++) if (high[i] >= 0) close(high[i]);
    if (devnull >= 0) close(devnull);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    return rc;
}

int tether_limit_malloc_arenas(int n) {
    return mallopt(M_ARENA_MAX, n) == 1 ? 0 : -EINVAL;
}

int tether_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 ? 0 : -errno;
}

int tether_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, name, 0, 0, 0) == 0 ? 0 : -errno;
}

pid_t tether_peek_exited(void) {
    siginfo_t info;
    for (;;) {
        memset(&info, 0, sizeof info);
        if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0) return info.si_pid;
        if (errno != EINTR) return -errno;
    }
}

pid_t tether_reap_pid(pid_t pid, int *status) {
    for (;;) {
        pid_t p = waitpid(pid, status, WNOHANG);
        if (p >= 0) return p;
        if (errno != EINTR) return -errno;
    }
}

pid_t tether_wait_pid(pid_t pid, int *status) {
    for (;;) {
        pid_t p = waitpid(pid, status, 0);
        if (p >= 0) return p;
        if (errno != EINTR) return -errno;
    }
}

int tether_exit_code(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

int tether_pidfd_open(pid_t pid) {
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0) return -errno;
    return fd;
}

int tether_pidfd_send_signal(int pidfd, int sig) {
    return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) == 0 ? 0 : -errno;
}

int tether_pidfd_reap(int pidfd, int *code) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    for (;;) {
        if (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED | WNOHANG) == 0) break;
        if (errno != EINTR) return -errno;
    }
    if (info.si_pid == 0) return 0;
    if (info.si_code == CLD_EXITED) *code = info.si_status;
    else *code = 128 + info.si_status;
    return 1;
}

// ---------------------------------------------------------------------------
// Signals.
// ---------------------------------------------------------------------------

int tether_block_signal(int sig) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    int rc = pthread_sigmask(SIG_BLOCK, &set, NULL);
    return rc == 0 ? 0 : -rc;
}

int tether_signalfd(const int *sigs, int n) {
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < n; i++) sigaddset(&set, sigs[i]);
    int fd = signalfd(-1, &set, SFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int tether_signalfd_read(int fd) {
    struct signalfd_siginfo si;
    for (;;) {
        ssize_t n = read(fd, &si, sizeof si);
        if (n == (ssize_t)sizeof si) return (int)si.ssi_signo;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 0;
        return n < 0 ? -errno : -EIO;
    }
}

int tether_ignore_signal(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    return sigaction(sig, &sa, NULL) == 0 ? 0 : -errno;
}

// ---------------------------------------------------------------------------
// Files and descriptors.
// ---------------------------------------------------------------------------

int tether_set_nonblock(int fd, int on) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return -errno;
    fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, fl) == 0 ? 0 : -errno;
}

int tether_open_path(const char *path) {
    int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}


int tether_open_path_nofollow(const char *path) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    return fd < 0 ? -errno : fd;
}

int tether_eventfd(int nonblock) {
    int fd = eventfd(0, EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0));
    return fd < 0 ? -errno : fd;
}

int tether_pipe(int fds[2], int cloexec_nonblock) {
    int fl = O_CLOEXEC;
    if (cloexec_nonblock) fl |= O_NONBLOCK;
    return pipe2(fds, fl) == 0 ? 0 : -errno;
}

ssize_t tether_splice(int in, int out, size_t len) {
    for (;;) {
        ssize_t n = splice(in, NULL, out, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n >= 0) return n;
        if (errno != EINTR) return -errno;
    }
}

int tether_set_pipe_size(int fd, int size) {
    int n = fcntl(fd, F_SETPIPE_SZ, size);
    return n < 0 ? -errno : n;
}

int tether_pipe_size(int fd) {
    int n = fcntl(fd, F_GETPIPE_SZ);
    return n < 0 ? -errno : n;
}

int tether_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int tether_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev) == 0 ? 0 : -errno;
}

int tether_epoll_wait(int epfd, uint64_t *datas, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event evs[64];
    if (max > 64) max = 64;
    for (;;) {
        int n = epoll_wait(epfd, evs, max, timeout_ms);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -errno;
        for (int i = 0; i < n; i++) {
            datas[i] = evs[i].data.u64;
            events[i] = evs[i].events;
        }
        return n;
    }
}

int tether_inotify_init(void) {
    int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int tether_inotify_watch(int fd, const char *path, uint32_t mask) {
    int wd = inotify_add_watch(fd, path, mask);
    return wd < 0 ? -errno : wd;
}

// ---------------------------------------------------------------------------
// Sockets.
// ---------------------------------------------------------------------------

static int fill_sockaddr(struct sockaddr_un *sa, const char *path) {
    size_t len = strlen(path);
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (len == 0) return -EINVAL;                       // never abstract
    if (len >= sizeof sa->sun_path) return -ENAMETOOLONG;
    memcpy(sa->sun_path, path, len + 1);
    return 0;
}

int tether_unix_listen(const char *path, int backlog) {
    struct sockaddr_un sa;
    int rc = fill_sockaddr(&sa, path);
    if (rc < 0) return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, backlog) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

int tether_unix_connect(const char *path, int timeout_ms) {
    struct sockaddr_un sa;
    int rc = fill_sockaddr(&sa, path);
    if (rc < 0) return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (timeout_ms > 0) {
        struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
        if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) {
            rc = -errno;
            close(fd);
            return rc;
        }
    }
    for (;;) {
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
        if (errno == EINTR) continue;
        rc = -errno;
        close(fd);
        return rc;
    }
}

int tether_accept(int fd) {
    for (;;) {
        int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) return c;
        if (errno != EINTR) return -errno;
    }
}

int tether_peer_cred(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return -errno;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

ssize_t tether_recv_fd(int sock, void *buf, size_t len, int *fd) {
    char control[CMSG_SPACE(sizeof(int) * 4)];
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    *fd = -1;
    ssize_t n;
    for (;;) {
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n >= 0) break;
        if (errno != EINTR) return -errno;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *fds = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            if (*fd < 0) *fd = fds[i];
            else close(fds[i]);                         // one fd a message, no leaks
        }
    }
    return n;
}

// ---------------------------------------------------------------------------
// Seccomp user notifications.
// ---------------------------------------------------------------------------

int tether_seccomp_recv(int fd, uint64_t *id, uint32_t *pid, int32_t *nr, uint32_t *arch) {
    // The kernel's struct may be larger than our header's: ask, and give it room.
    static size_t size;
    if (size == 0) {
        struct seccomp_notif_sizes sizes;
        if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) return -errno;
        size = sizes.seccomp_notif > sizeof(struct seccomp_notif) ? sizes.seccomp_notif : sizeof(struct seccomp_notif);
    }
    char buf[512];
    if (size > sizeof buf) return -EOVERFLOW;
    memset(buf, 0, size);  // the kernel requires a zeroed buffer
    struct seccomp_notif *n = (struct seccomp_notif *)buf;
    for (;;) {
        if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, n) == 0) break;
        if (errno != EINTR) return -errno;
    }
    *id = n->id;
    *pid = n->pid;
    *nr = n->data.nr;
    *arch = n->data.arch;
    return 0;
}

int tether_seccomp_respond(int fd, uint64_t id, int32_t error, int cont) {
    struct seccomp_notif_resp r;
    memset(&r, 0, sizeof r);
    r.id = id;
    r.error = cont ? 0 : error;
    r.val = 0;
    r.flags = cont ? SECCOMP_USER_NOTIF_FLAG_CONTINUE : 0;
    for (;;) {
        if (ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &r) == 0) return 0;
        if (errno != EINTR) return -errno;
    }
}

// ---------------------------------------------------------------------------
// Terminals, mounts, time.
// ---------------------------------------------------------------------------

int tether_set_winsize(int fd, unsigned short rows, unsigned short cols) {
    struct winsize ws;
    memset(&ws, 0, sizeof ws);
    ws.ws_row = rows;
    ws.ws_col = cols;
    return ioctl(fd, TIOCSWINSZ, &ws) == 0 ? 0 : -errno;
}

int tether_get_winsize(int fd, unsigned short *rows, unsigned short *cols) {
    struct winsize ws;
    if (ioctl(fd, TIOCGWINSZ, &ws) != 0) return -errno;
    *rows = ws.ws_row;
    *cols = ws.ws_col;
    return 0;
}

int tether_mount(const char *source, const char *target, const char *fstype,
                 unsigned long flags, const char *data) {
    return mount(source, target, fstype, flags, data) == 0 ? 0 : -errno;
}

int tether_umount(const char *target, int flags) {
    return umount2(target, flags) == 0 ? 0 : -errno;
}

int tether_is_mount_root(const char *path) {
#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x00002000
#endif
    struct statx stx;
    memset(&stx, 0, sizeof stx);
    if (statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &stx) != 0) return -errno;
    if (!(stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT)) return -ENOSYS;
    return (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) ? 1 : 0;
}

void tether_realtime(int64_t *sec, int32_t *nsec) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *sec = ts.tv_sec;
    *nsec = (int32_t)ts.tv_nsec;
}

uint64_t tether_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int tether_thread_setresuid(uid_t r, uid_t e, uid_t s) {
    return syscall(SYS_setresuid, r, e, s) < 0 ? -errno : 0;
}

int tether_thread_become(uid_t uid, gid_t gid) {
    if (syscall(SYS_setgroups, 0, NULL) < 0) return -errno;
    if (syscall(SYS_setresgid, gid, gid, gid) < 0) return -errno;
    if (syscall(SYS_setresuid, uid, uid, uid) < 0) return -errno;
    return 0;
}
