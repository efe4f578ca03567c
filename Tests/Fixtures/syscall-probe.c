/* syscall-probe NAME [COUNT]: makes one syscall COUNT times (default 1)
 * with harmless arguments and prints "NAME: ok" or "NAME: errno N"; for
 * the seccomp tests, where busybox has no tool for the call. Built static
 * by the test with the host's cc. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long call(const char *name) {
    if (!strcmp(name, "keyctl")) return syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 0);
    if (!strcmp(name, "add_key")) return syscall(SYS_add_key, "user", "tether-probe", "x", 1, -2 /* process keyring */);
    if (!strcmp(name, "unshare")) return syscall(SYS_unshare, CLONE_NEWUSER);
    if (!strcmp(name, "userfaultfd")) return syscall(SYS_userfaultfd, 0);
    if (!strcmp(name, "getpid")) return syscall(SYS_getpid);
    fprintf(stderr, "syscall-probe: unknown call %s\n", name);
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: syscall-probe NAME [COUNT]\n"); return 2; }
    long count = argc > 2 ? atol(argv[2]) : 1, refused = 0;
    int last = 0;
    for (long i = 0; i < count; i++) {
        errno = 0;
        if (call(argv[1]) < 0) { refused++; last = errno; }
    }
    if (refused == 0) printf("%s: ok\n", argv[1]);
    else printf("%s: errno %d (%s), %ld of %ld\n", argv[1], last, strerror(last), refused, count);
    return 0;
}
