// CTether: the Linux calls Swift cannot make directly (variadic, macros,
// packed structs, raw syscalls). Every function returns -errno on failure
// unless it says otherwise, so the Swift side can name the syscall and errno.
#ifndef CTETHER_H
#define CTETHER_H

#include <stdint.h>
#include <sys/types.h>

// --- processes ----------------------------------------------------------

#define TETHER_SPAWN_SETSID 0x1

// posix_spawn(3) with the child's fds 0..nfds-1 taken from fds[i] (-1 means
// /dev/null), every other fd closed, all signal dispositions reset to the
// default, an empty signal mask, optional setsid and working directory.
// Returns 0 and sets *pid, or a positive errno (exec failures included).
int tether_spawn(const char *path, char *const argv[], char *const envp[],
                 const int *fds, int nfds, int flags, const char *cwd,
                 pid_t *pid);

// mallopt(M_ARENA_MAX, n): at most n malloc arenas (one per thread by
// default, each a few dozen KiB of dirty memory in a small process).
int tether_limit_malloc_arenas(int n);

// prctl(PR_SET_CHILD_SUBREAPER, 1).
int tether_set_child_subreaper(void);
// prctl(PR_SET_NAME, name): the thread's name in /proc (15 chars).
int tether_set_thread_name(const char *name);

// waitid(P_ALL, WEXITED|WNOHANG|WNOWAIT): the pid of a child that has
// exited, without reaping it; 0 when none has, -ECHILD when there are no
// children.
pid_t tether_peek_exited(void);
// waitpid(pid, WNOHANG): reaps that child. Returns pid, 0 if it has not
// exited, or -errno. *status gets the raw wait status.
pid_t tether_reap_pid(pid_t pid, int *status);
// waitpid(pid, 0) for one child, retrying EINTR. Returns pid or -errno.
pid_t tether_wait_pid(pid_t pid, int *status);
// Exit code of a raw wait status: the code for a normal exit, 128+signal for
// a death by signal, -1 for anything else (stopped, continued).
int tether_exit_code(int status);

int tether_pidfd_open(pid_t pid);
int tether_pidfd_send_signal(int pidfd, int sig);
// waitid(P_PIDFD, pidfd, WEXITED|WNOHANG): 1 if reaped (status in *code as
// tether_exit_code would give), 0 if still running, -errno otherwise.
int tether_pidfd_reap(int pidfd, int *code);

// --- signals --------------------------------------------------------------

// Block sig in the calling thread (threads created later inherit the mask).
int tether_block_signal(int sig);
// signalfd for the signals in sigs[0..n) (blocking reads, close-on-exec).
int tether_signalfd(const int *sigs, int n);
// Read one signalfd record; returns the signal number, 0 on EAGAIN, -errno.
int tether_signalfd_read(int fd);
// Ignore sig (SIGPIPE).
int tether_ignore_signal(int sig);

// --- files and descriptors -----------------------------------------------

int tether_set_nonblock(int fd, int on);
// open(path, O_PATH|O_DIRECTORY|O_CLOEXEC): a handle for *at() and /proc/self/fd.
int tether_open_path(const char *path);
// openat2(path, O_PATH|O_CLOEXEC, RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS):
// a handle on exactly the path given, with no symlink followed anywhere on
// the way (a component swapped for a symlink makes it fail with -ELOOP).
int tether_open_path_nofollow(const char *path);
// An eventfd, close-on-exec; nonblocking when asked.
int tether_eventfd(int nonblock);
int tether_pipe(int fds[2], int cloexec_nonblock);
// splice(2) between two fds (one must be a pipe), SPLICE_F_MOVE|NONBLOCK.
ssize_t tether_splice(int in, int out, size_t len);
// F_SETPIPE_SZ; returns the new size or -errno.
int tether_set_pipe_size(int fd, int size);
int tether_pipe_size(int fd);

// epoll with the event's data as a plain u64 (struct epoll_event is packed).
enum {
    TETHER_EPOLLIN = 0x001, TETHER_EPOLLOUT = 0x004, TETHER_EPOLLERR = 0x008, TETHER_EPOLLHUP = 0x010,
    TETHER_EPOLL_ADD = 1, TETHER_EPOLL_DEL = 2, TETHER_EPOLL_MOD = 3,
};
int tether_epoll_create(void);
int tether_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
int tether_epoll_wait(int epfd, uint64_t *datas, uint32_t *events, int max, int timeout_ms);

// inotify (close-on-exec, nonblocking) and one watch on it.
int tether_inotify_init(void);
int tether_inotify_watch(int fd, const char *path, uint32_t mask);
enum { TETHER_IN_MODIFY = 0x2 };

// --- sockets ---------------------------------------------------------------

// socket+bind+listen on a unix socket path (SOCK_STREAM, close-on-exec).
// Returns the fd or -errno; -ENAMETOOLONG when path does not fit sun_path.
int tether_unix_listen(const char *path, int backlog);
// connect(2) to a unix socket path. With timeout_ms > 0, a connect that
// would wait longer (a listener that stopped accepting, its backlog full)
// fails with -EAGAIN, and so do later reads and writes that wait that long.
int tether_unix_connect(const char *path, int timeout_ms);
int tether_accept(int fd);
// SO_PEERCRED of a connected unix socket.
int tether_peer_cred(int fd, pid_t *pid, uid_t *uid, gid_t *gid);

// setresuid(2) for the calling thread only (the raw syscall; glibc's wrapper
// changes every thread). For tests that need a peer of another uid.
int tether_thread_setresuid(uid_t r, uid_t e, uid_t s);
// The calling thread only becomes uid/gid with no supplementary groups
// (raw setgroups, setresgid, setresuid: glibc's wrappers change every
// thread). There is no way back: for a test thread that acts as another user.
int tether_thread_become(uid_t uid, gid_t gid);
// Receive up to len bytes and at most one fd sent with SCM_RIGHTS.
// Returns bytes read (>=0) and *fd (-1 when none), or -errno.
ssize_t tether_recv_fd(int sock, void *buf, size_t len, int *fd);

// --- terminals and mounts ---------------------------------------------------

// Seccomp user notifications (the shim as seccomp agent). recv fills one
// notification: its id, the pid that made the call (in our pid namespace),
// the syscall number and its AUDIT_ARCH; -errno on failure (ENOENT: the
// caller died meanwhile). respond answers it: `error` is a negative errno
// to fail the call with, or 0 with `cont` set to let the kernel run it.
int tether_seccomp_recv(int fd, uint64_t *id, uint32_t *pid, int32_t *nr, uint32_t *arch);
int tether_seccomp_respond(int fd, uint64_t id, int32_t error, int cont);

int tether_set_winsize(int fd, unsigned short rows, unsigned short cols);
int tether_get_winsize(int fd, unsigned short *rows, unsigned short *cols);
int tether_mount(const char *source, const char *target, const char *fstype,
                 unsigned long flags, const char *data);
int tether_umount(const char *target, int flags);
// Is path (not followed if a symlink) the root of a mount? 1 yes, 0 no,
// -errno on failure (statx's STATX_ATTR_MOUNT_ROOT, Linux 5.8 and later:
// right even for a directory bind-mounted onto itself, and for a path
// whose earlier mount is hidden under a later one).
int tether_is_mount_root(const char *path);

// --- time -------------------------------------------------------------------

// CLOCK_REALTIME as seconds and nanoseconds.
void tether_realtime(int64_t *sec, int32_t *nsec);
// CLOCK_MONOTONIC in nanoseconds.
uint64_t tether_monotonic_ns(void);

#endif
