#!/usr/bin/env python3
"""Tether side by side with bare runc, crun, containerd (+ runc v2 shim) and
conmon (+ runc, driven the way Podman drives it), on one machine, in one run.

Run through scripts/bench, which installs what is missing and builds Tether.
Prints one table (median, min, max per figure and system; the ratio of
Tether to the best of the others) and writes it with every raw sample to the
results directory.

Everything lives under --work (default /tmp/tether-bench): private runc,
crun, containerd, conmon and tetherd state, private cgroups (/tbench/...),
containerd in a private mount namespace. Nothing outside is touched, and
everything is stopped at the end.
"""
import argparse
import copy
import contextlib
import ctypes
import fcntl
import http.client
import json
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNC = shutil.which("runc")
CRUN = shutil.which("crun")
CTR = shutil.which("ctr")
CONTAINERD = shutil.which("containerd")
CONMON = shutil.which("conmon")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def now():
    return time.monotonic()


def run(cmd, check=True, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.PIPE)
    r = subprocess.run(cmd, **kw)
    if check and r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip() if r.stderr else ""
        raise RuntimeError("%s: exit %d: %s" % (" ".join(cmd), r.returncode, err))
    return r


def timed(cmd, **kw):
    t = now()
    run(cmd, **kw)
    return (now() - t) * 1000


def smaps(pid):
    """RSS, PSS and USS (Private_Clean + Private_Dirty) of a process, in KiB."""
    v = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":"):
                v[parts[0][:-1]] = int(parts[1])
    return v.get("Rss", 0), v.get("Pss", 0), v.get("Private_Clean", 0) + v.get("Private_Dirty", 0)


def ppid(pid):
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    return int(s[s.rindex(")") + 2:].split()[1])


def readable(f, timeout=30):
    """Waits until `f` (a file or fd) has something to read; raises after `timeout` s."""
    if not select.select([f], [], [], timeout)[0]:
        raise TimeoutError("nothing to read within %d s" % timeout)


def readline(f, timeout=30):
    readable(f, timeout)
    return f.readline()


def delete_all(runtime, root):
    """`runtime delete --force` of every container under `root`."""
    if not runtime or not os.path.isdir(root):
        return
    out = run([runtime, "--root", root, "list", "-q"], check=False, stdout=subprocess.PIPE).stdout
    for c in out.decode().split():
        run([runtime, "--root", root, "delete", "--force", c], check=False)


def wait_file(path, timeout=30):
    """Waits for a path to exist, with inotify on its directory (no polling)."""
    d, name = os.path.split(path)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    try:
        libc.inotify_add_watch(fd, d.encode(), 0x100 | 0x80)  # IN_CREATE | IN_MOVED_TO
        deadline = now() + timeout
        while not os.path.exists(path):
            left = deadline - now()
            if left <= 0:
                raise TimeoutError(path)
            r, _, _ = select.select([fd], [], [], left)
            if r:
                os.read(fd, 65536)
        return now()
    finally:
        os.close(fd)


class Stats:
    """Samples per (figure, system)."""

    def __init__(self):
        self.samples = {}
        self.units = {}

    def add(self, figure, system, value, unit):
        self.samples.setdefault(figure, {}).setdefault(system, []).append(value)
        self.units[figure] = unit

    def summary(self, figure, system):
        s = self.samples.get(figure, {}).get(system)
        if not s:
            return None
        return statistics.median(s), min(s), max(s), len(s)


# ---------------------------------------------------------------------------
# The systems.
# ---------------------------------------------------------------------------

class Env:
    def __init__(self, a):
        self.a = a
        self.work = a.work
        self.rootfs = os.path.join(self.work, "rootfs")
        self.cg = "tbench"

    def bundle(self, name, args, readonly=True, cgroup=True, rootfs=None):
        """An OCI bundle from `runc spec`, with our args and rootfs."""
        b = os.path.join(self.work, "bundles", name)
        os.makedirs(b, exist_ok=True)
        if not os.path.exists(os.path.join(b, "config.json")):
            run([RUNC, "spec", "--bundle", b])
        with open(os.path.join(b, "config.json")) as f:
            spec = json.load(f)
        spec["process"]["terminal"] = False
        spec["process"]["args"] = args
        spec["root"] = {"path": rootfs or self.rootfs, "readonly": readonly}
        if cgroup:
            spec["linux"]["cgroupsPath"] = "/%s/%s" % (self.cg, name)
        else:
            spec["linux"].pop("cgroupsPath", None)
        with open(os.path.join(b, "config.json"), "w") as f:
            json.dump(spec, f)
        return b


class Runc:
    name = "runc"

    def __init__(self, env):
        self.env = env
        self.root = os.path.join(env.work, "runc-root")

    def run_true(self, i):
        b = self.env.bundle("runc-true", ["/bin/true"])
        return timed([RUNC, "--root", self.root, "run", "--bundle", b, "rt%d" % i])


class Crun:
    """crun refuses a hybrid cgroup host whose cgroup2 mount still has
    controllers; in a private mount namespace without that mount it works."""
    name = "crun"

    def __init__(self, env):
        self.env = env
        self.root = os.path.join(env.work, "crun-root")
        self.prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                       "umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$0\" \"$@\""]

    def works(self):
        b = self.env.bundle("crun-probe", ["/bin/true"])
        return run(self.prefix + [CRUN, "--root", self.root, "run", "--bundle", b, "probe"], check=False).returncode == 0

    def run_true(self, i):
        b = self.env.bundle("crun-true", ["/bin/true"])
        return timed(self.prefix + [CRUN, "--root", self.root, "run", "--bundle", b, "ct%d" % i])


class Containerd:
    """containerd 1.6 hard-wires /run/containerd for shim sockets: it runs in
    a private mount namespace with our own directory bound over /run."""
    name = "containerd"
    runtime = []  # ctr's default: io.containerd.runc.v2
    prefix = "c"

    def __init__(self, env):
        self.env = env
        self.dir = os.path.join(env.work, "ctrd")
        self.sock = os.path.join(self.dir, "containerd.sock")
        self.fifo = os.path.join(self.dir, "run", "fifo")
        self.proc = None

    def start(self):
        d = self.dir
        for sub in ("run/fifo", "root", "state", "opt"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "config.toml"), "w") as f:
            f.write("""version = 2
root = "%s/root"
state = "%s/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "%s"
[ttrpc]
  address = "%s.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "%s/opt"
""" % (d, d, self.sock, self.sock, d))
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             "mount --bind %s/run /run && exec %s --config %s/config.toml" % (d, CONTAINERD, d)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(d, "containerd.log"), "ab"), start_new_session=True,
            # containerd-shim-tether-v1 from the build under test, first on its PATH
            env=dict(os.environ, PATH=self.env.a.bin + ":" + os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")))
        deadline = now() + 30
        while run([CTR, "-a", self.sock, "version"], check=False).returncode != 0:
            if now() > deadline:
                raise RuntimeError("containerd did not start; see %s/containerd.log" % d)
            time.sleep(0.05)

    def pid(self):
        # unshare and sh exec into containerd: the pid stays the same.
        return self.proc.pid

    def ctr(self, *args, **kw):
        return [CTR, "-a", self.sock, "-n", "tbench"] + list(args)

    def run_true(self, i):
        return timed(self.ctr("run", "--rm", *self.runtime, "--fifo-dir", self.fifo, "--rootfs", self.env.rootfs,
                              "%sr%d" % (self.prefix, i), "/bin/true"))

    def start_sleeper(self, cid):
        cid = self.prefix + cid
        pidfile = os.path.join(self.dir, cid + ".pid")
        run(self.ctr("run", "-d", *self.runtime, "--fifo-dir", self.fifo, "--pid-file", pidfile,
                     "--rootfs", self.env.rootfs, cid, "/bin/sleep", "100000"))
        with open(pidfile) as f:
            return int(f.read())

    def remove(self, cid):
        run(self.ctr("task", "rm", "-f", self.prefix + cid), check=False)
        run(self.ctr("container", "rm", self.prefix + cid), check=False)

    def with_runtime(self, name, runtime, prefix):
        """The same daemon driving another shim (ctr run --runtime RUNTIME)."""
        other = copy.copy(self)
        other.name, other.runtime, other.prefix = name, ["--runtime", runtime], prefix
        return other

    def stop(self):
        if not self.proc:
            return
        for line in run(self.ctr("task", "ls", "-q"), check=False, stdout=subprocess.PIPE).stdout.decode().split():
            self.remove(line)
        for line in run(self.ctr("container", "ls", "-q"), check=False, stdout=subprocess.PIPE).stdout.decode().split():
            run(self.ctr("container", "rm", line), check=False)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait()
        self.proc = None


class Conmon:
    """conmon + runc, driven the way Podman drives it: conmon's launcher is
    given a sync pipe and a start pipe; it runs `runc create`, reports the
    container's pid, we `runc start`; the exit shows up as a file."""
    name = "conmon"

    def __init__(self, env):
        self.env = env
        self.dir = os.path.join(env.work, "conmon")
        self.exits = os.path.join(self.dir, "exits")
        self.sock = os.path.join(self.dir, "sock")
        self.root = os.path.join(self.dir, "runc")
        for d in (self.exits, self.sock, self.root):
            os.makedirs(d, exist_ok=True)

    def runc(self, *args, check=True):
        return run([RUNC, "--root", self.root] + list(args), check=check)

    def launch(self, cid, args, log_path=None):
        """runc create under a new conmon; returns (conmon pid, container pid)."""
        b = self.env.bundle("conmon-" + cid, args)
        for f in ("pidfile", "conmon.pid"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(b, f))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.exits, cid))
        sync_r, sync_w = os.pipe()
        start_r, start_w = os.pipe()
        cmd = [CONMON, "--api-version", "1", "-c", cid, "-u", cid, "-n", cid, "-r", RUNC, "-b", b,
               "-p", os.path.join(b, "pidfile"), "-P", os.path.join(b, "conmon.pid"), "--persist-dir", b,
               "--exit-dir", self.exits, "--socket-dir-path", self.sock,
               "-l", "k8s-file:" + (log_path or os.path.join(b, "ctr.log")), "--log-level", "warning",
               "--runtime-arg", "--root=" + self.root,
               # Tether does not fsync its logs either: compare like with like.
               "--no-sync-log"]
        env = dict(os.environ, _OCI_SYNCPIPE=str(sync_w), _OCI_STARTPIPE=str(start_r))
        p = subprocess.Popen(cmd, pass_fds=(sync_w, start_r), env=env, cwd=b, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(sync_w)
        os.close(start_r)
        os.write(start_w, b"0")
        os.close(start_w)
        if p.wait(timeout=60) != 0:
            os.close(sync_r)
            raise RuntimeError("conmon launcher failed for %s" % cid)
        buf = b""
        while b"\n" not in buf:
            readable(sync_r, 60)
            chunk = os.read(sync_r, 4096)
            if not chunk:
                break
            buf += chunk
        os.close(sync_r)
        pid = json.loads(buf.split(b"\n")[0]).get("data", -1)
        if pid <= 0:
            raise RuntimeError("conmon: runc create failed: %r" % buf)
        with open(os.path.join(b, "conmon.pid")) as f:
            return int(f.read()), pid

    def run_true(self, i):
        cid = "cm%d" % i
        t = now()
        self.launch(cid, ["/bin/true"])
        self.runc("start", cid)
        wait_file(os.path.join(self.exits, cid))
        self.runc("delete", cid)
        return (now() - t) * 1000

    def remove(self, cid):
        self.runc("delete", "--force", cid, check=False)

    def stop(self):
        delete_all(RUNC, self.root)


class Tether:
    """tetherd (release build) on a private root and state."""

    def __init__(self, env, name="tether", runtime=None, private_mounts=False):
        self.env = env
        self.name = name
        self.dir = os.path.join(env.work, name)
        self.addr = os.path.join(self.dir, "state", "tetherd.sock")
        self.bin = env.a.bin
        self.runtime = runtime
        self.private_mounts = private_mounts
        self.proc = None
        self.logf = os.path.join(self.dir, "tetherd.log")

    def start(self):
        os.makedirs(os.path.join(self.dir, "root", "rootfs"), exist_ok=True)
        link = os.path.join(self.dir, "root", "rootfs", "busybox")
        if not os.path.exists(link):
            os.symlink(self.env.rootfs, link)
        cmd = [os.path.join(self.bin, "tetherd"), "--root", os.path.join(self.dir, "root"),
               "--state", os.path.join(self.dir, "state"), "--log-level", "info"]
        if self.runtime:
            cmd += ["--runtime", self.runtime]
        if self.private_mounts:
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   "umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$0\" \"$@\""] + cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.logf, "ab"), start_new_session=True)
        deadline = now() + 30
        while run(self.cli("version"), check=False).returncode != 0:
            if now() > deadline:
                raise RuntimeError("tetherd did not start; see " + self.logf)
            time.sleep(0.02)

    def pid(self):
        # Under unshare the daemon is sh's exec'd child... exec keeps the pid.
        return self.proc.pid

    def cli(self, *args):
        return [os.path.join(self.bin, "tether"), "--address", self.addr] + list(args)

    def run_true(self, i):
        return timed(self.cli("run", "--rm", "%s%d" % (self.name[:2], i), "--", "/bin/true"))

    def start_sleeper(self, cid):
        run(self.cli("run", "-d", cid, "--", "/bin/sleep", "100000"))
        st = json.loads(run(self.cli("state", cid), stdout=subprocess.PIPE).stdout)
        return st["pid"]

    def remove(self, cid):
        run(self.cli("kill", "-s", "KILL", cid), check=False)
        run(self.cli("wait", cid), check=False)
        run(self.cli("delete", cid), check=False)

    def kill9(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self):
        if not self.proc:
            self.start()
        for line in run(self.cli("ls", "-q"), check=False, stdout=subprocess.PIPE).stdout.decode().split():
            self.remove(line)
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait()
        self.proc = None


# ---------------------------------------------------------------------------
# The figures.
# ---------------------------------------------------------------------------

def bench_latency(st, systems, n):
    for s in systems:
        log("latency: %s x %d" % (s.name, n))
        s.run_true(10_000)  # warm-up, discarded
        for i in range(n):
            st.add("start_to_exit_true", s.name, s.run_true(i), "ms")


def bench_memory(st, tether, ctrd, conmon, counts, ctrd_tether=None):
    """Per-shim memory with 1..N sleeping tasks, and the managers'."""
    def shim_of_tether(cid):
        with open(os.path.join(tether.dir, "state", "tasks", "default", cid, "shim.pid")) as f:
            return int(f.read())

    st.add("manager_rss_0_tasks", "tether", smaps(tether.pid())[0], "KiB")
    st.add("manager_rss_0_tasks", "containerd", smaps(ctrd.pid())[0], "KiB")
    top = max(counts)
    series = {"tether": [], "containerd": [], "conmon": []}
    if ctrd_tether:
        series[ctrd_tether.name] = []
    for i in range(top):
        t = now()
        tether.start_sleeper("m%d" % i)
        st.add("start_latency_with_tasks_running", "tether", (now() - t) * 1000, "ms")
        t = now()
        tpid = ctrd.start_sleeper("m%d" % i)
        st.add("start_latency_with_tasks_running", "containerd", (now() - t) * 1000, "ms")
        series["containerd"].append(ppid(tpid))
        if ctrd_tether:
            t = now()
            tpid = ctrd_tether.start_sleeper("m%d" % i)
            st.add("start_latency_with_tasks_running", ctrd_tether.name, (now() - t) * 1000, "ms")
            series[ctrd_tether.name].append(ppid(tpid))  # the shim, the init's subreaper
        t = now()
        cpid, _ = conmon.launch("m%d" % i, ["/bin/sleep", "100000"])
        conmon.runc("start", "m%d" % i)
        st.add("start_latency_with_tasks_running", "conmon", (now() - t) * 1000, "ms")
        series["conmon"].append(cpid)
        series["tether"].append(shim_of_tether("m%d" % i))
        k = i + 1
        if k in counts:
            time.sleep(0.5)  # let the new processes settle before reading their memory
            for system, pids in series.items():
                rss = pss = uss = 0
                for p in pids:
                    r, ps, u = smaps(p)
                    rss, pss, uss = rss + r, pss + ps, uss + u
                if k == 1:
                    st.add("shim_rss_1_task", system, rss, "KiB")
                    st.add("shim_pss_1_task", system, pss, "KiB")
                    st.add("shim_uss_1_task", system, uss, "KiB")
                st.add("shim_pss_per_task_at_%d" % k, system, pss / k, "KiB")
                st.add("shim_uss_per_task_at_%d" % k, system, uss / k, "KiB")
                if k == top:
                    st.add("shim_rss_total_%d_tasks" % k, system, rss, "KiB")
                    st.add("shim_pss_total_%d_tasks" % k, system, pss, "KiB")
                    st.add("shim_uss_total_%d_tasks" % k, system, uss, "KiB")
    st.add("manager_rss_%d_tasks" % top, "tether", smaps(tether.pid())[0], "KiB")
    st.add("manager_rss_%d_tasks" % top, "containerd", smaps(ctrd.pid())[0], "KiB")
    for i in range(top):
        tether.remove("m%d" % i)
        ctrd.remove("m%d" % i)
        if ctrd_tether:
            ctrd_tether.remove("m%d" % i)
        conmon.remove("m%d" % i)


def bench_scale(st, tether, ctrd, conmon, n, tether_n):
    def each(fn, ids, parallel):
        """ms to call fn on every id: one after another, or a thread each."""
        t = now()
        if parallel:
            threads = [threading.Thread(target=fn, args=(i,)) for i in ids]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        else:
            for i in ids:
                fn(i)
        return (now() - t) * 1000

    def scale(system, start, remove, k, parallel):
        how = "parallel" if parallel else "sequential"
        ids = ["%s%d" % (how[0], i) for i in range(k)]
        st.add("start_%d_%s" % (k, how), system, each(start, ids, parallel), "ms")
        st.add("delete_%d_%s" % (k, how), system, each(remove, ids, parallel), "ms")

    def seq(system, start, remove, k):
        scale(system, start, remove, k, parallel=False)

    def par(system, start, remove, k):
        scale(system, start, remove, k, parallel=True)

    def conmon_start(cid):
        conmon.launch(cid, ["/bin/sleep", "100000"])
        conmon.runc("start", cid)

    log("scale: %d tasks each" % n)
    seq("tether", tether.start_sleeper, tether.remove, n)
    seq("containerd", ctrd.start_sleeper, ctrd.remove, n)
    seq("conmon", conmon_start, conmon.remove, n)
    par("tether", tether.start_sleeper, tether.remove, n)
    par("containerd", ctrd.start_sleeper, ctrd.remove, n)
    par("conmon", conmon_start, conmon.remove, n)
    if tether_n:
        log("scale: %d tether tasks" % tether_n)
        seq("tether", tether.start_sleeper, tether.remove, tether_n)
        par("tether", tether.start_sleeper, tether.remove, tether_n)


def api_call(sock, method, path, body=None, timeout=60):
    """One request to tetherd's HTTP API on its unix socket; ms taken."""
    class Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(timeout)
            self.sock.connect(sock)

    c = Conn("tetherd")
    t = now()
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 300:
        raise RuntimeError("%s %s: %d %s" % (method, path, r.status, data.decode(errors="replace")))
    return (now() - t) * 1000


def bench_steps(st, tether, runc, n):
    """Where start-to-exit goes: each API step of a /bin/true task through
    tetherd, next to the runc invocations a shim makes for it."""
    base = "/v1/namespaces/default/tasks"
    for i in range(n):
        cid = "st%d" % i
        st.add("step_create", "tether", api_call(tether.addr, "POST", base, {"id": cid, "args": ["/bin/true"]}), "ms")
        st.add("step_start", "tether", api_call(tether.addr, "POST", "%s/%s/start" % (base, cid)), "ms")
        st.add("step_wait", "tether", api_call(tether.addr, "POST", "%s/%s/wait" % (base, cid)), "ms")
        st.add("step_delete", "tether", api_call(tether.addr, "DELETE", "%s/%s" % (base, cid)), "ms")
        st.add("step_cli_round_trip", "tether", timed(tether.cli("version")), "ms")
    b = runc.env.bundle("runc-steps", ["/bin/true"])
    for i in range(n):
        cid = "rs%d" % i
        # The container keeps runc's stdio until it runs: nothing of ours to wait on.
        st.add("step_create", "runc", timed([RUNC, "--root", runc.root, "create", "--bundle", b, cid],
                                            stderr=subprocess.DEVNULL), "ms")
        st.add("step_start", "runc", timed([RUNC, "--root", runc.root, "start", cid]), "ms")
        deadline = now() + 10
        while b'"stopped"' not in run([RUNC, "--root", runc.root, "state", cid], stdout=subprocess.PIPE).stdout:
            if now() > deadline:
                raise RuntimeError("runc container %s did not stop" % cid)
            time.sleep(0.005)  # outside the measured steps
        st.add("step_delete", "runc", timed([RUNC, "--root", runc.root, "delete", cid]), "ms")


def exit_clock(proc):
    """Notes when `proc` exits, on a thread of its own; call the result for the time."""
    seen = []
    th = threading.Thread(target=lambda: (proc.wait(), seen.append(now())))
    th.start()

    def when():
        th.join(60)
        if not seen:
            raise RuntimeError("%s did not exit" % " ".join(proc.args[:3]))
        return seen[0]
    return when


def bench_exit(st, tether, ctrds, conmon, n):
    """kill -9 of the container's init until the exit is seen."""
    for i in range(n):
        # tether: a waiting CLI, and an event subscriber
        pid = tether.start_sleeper("x%d" % i)
        events = subprocess.Popen(tether.cli("events", "--task", "x%d" % i, "--topic", "/tasks/exit"),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        waiter = subprocess.Popen(tether.cli("wait", "x%d" % i), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        waited = exit_clock(waiter)
        time.sleep(0.2)  # both are connected and waiting
        t = now()
        os.kill(pid, signal.SIGKILL)
        readline(events.stdout)
        t_event = now()
        t_wait = waited()
        events.kill()
        events.wait()
        st.add("exit_to_event", "tether", (t_event - t) * 1000, "ms")
        st.add("exit_to_wait_cli", "tether", (t_wait - t) * 1000, "ms")
        tether.remove("x%d" % i)

        # containerd, with its runc shim and with Tether's: a ctr events
        # subscriber (ctr 1.6 has no `task wait`)
        for c in ctrds:
            pid = c.start_sleeper("x%d" % i)
            ev = subprocess.Popen(c.ctr("events"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            time.sleep(0.2)  # it is connected and waiting
            t = now()
            os.kill(pid, signal.SIGKILL)
            while True:
                line = readline(ev.stdout)
                if not line or (b"/tasks/exit" in line and (b"%sx%d" % (c.prefix.encode(), i)) in line):
                    break
            st.add("exit_to_event", c.name, (now() - t) * 1000, "ms")
            ev.kill()
            ev.wait()
            c.remove("x%d" % i)

        # conmon: its exit file
        cid = "x%d" % i
        _, pid = conmon.launch(cid, ["/bin/sleep", "100000"])
        conmon.runc("start", cid)
        t = now()
        os.kill(pid, signal.SIGKILL)
        wait_file(os.path.join(conmon.exits, cid))
        st.add("exit_to_event", "conmon", (now() - t) * 1000, "ms")
        conmon.remove(cid)


def bench_stdio(st, tether, ctrd, conmon, mib, n):
    """MiB written by the container to stdout, received by the client; byte count checked."""
    size = mib << 20
    dd = ["/bin/dd", "if=/dev/zero", "bs=1M", "count=%d" % mib, "status=none"]

    def count(cmd, pipe_size=0, **kw):
        t = now()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, bufsize=0, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        if pipe_size:  # set before the writer can have filled much of it
            fcntl.fcntl(p.stdout.fileno(), 1031, pipe_size)  # F_SETPIPE_SZ
        got = 0
        buf = bytearray(1 << 20)  # one buffer, reused: the reader must not be the bottleneck
        while True:
            k = p.stdout.readinto(buf)
            if not k:
                break
            got += k
        p.wait()
        ms = (now() - t) * 1000
        if got != size:
            raise RuntimeError("%s: %d bytes of %d" % (" ".join(cmd[:3]), got, size))
        return ms

    bb = os.path.join(tether.env.rootfs, "bin", "busybox")
    for i in range(n):
        st.add("stdio_%dMiB" % mib, "host pipe", count([bb, "dd", "if=/dev/zero", "bs=1M", "count=%d" % mib]), "ms")
        st.add("stdio_%dMiB" % mib, "host pipe 1MiB", count([bb, "dd", "if=/dev/zero", "bs=1M", "count=%d" % mib], pipe_size=1 << 20), "ms")
        st.add("stdio_%dMiB" % mib, "tether", count(tether.cli("run", "--rm", "io%d" % i, "--") + dd), "ms")
        st.add("stdio_%dMiB" % mib, "containerd",
               count(ctrd.ctr("run", "--rm", "--fifo-dir", ctrd.fifo, "--rootfs", tether.env.rootfs, "io%d" % i) + dd), "ms")
        # conmon writes a k8s log file: time until its exit file, with the log complete
        cid = "io%d" % i
        logp = os.path.join(conmon.dir, cid + ".log")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(logp)
        t = now()
        conmon.launch(cid, dd, log_path=logp)
        conmon.runc("start", cid)
        wait_file(os.path.join(conmon.exits, cid), timeout=300)
        st.add("stdio_%dMiB" % mib, "conmon", (now() - t) * 1000, "ms")
        conmon.runc("delete", cid)
        os.unlink(logp)


def bench_reload(st, tether, ctrd, n, reps):
    for i in range(n):
        tether.start_sleeper("r%d" % i)
    for _ in range(reps):
        tether.kill9()
        t = now()
        tether.start()
        st.add("reload_%d_tasks_until_api" % n, "tether", (now() - t) * 1000, "ms")
        with open(tether.logf) as f:
            ms = [l.split("ms=")[1].split()[0] for l in f if "reloaded tasks" in l and "ms=" in l]
        if ms:
            st.add("reload_%d_tasks_reported" % n, "tether", float(ms[-1]), "ms")
        out = run(tether.cli("ls", "-q"), stdout=subprocess.PIPE).stdout.decode().split()
        if len(out) != n:
            raise RuntimeError("reload found %d of %d tasks" % (len(out), n))
    for i in range(n):
        tether.remove("r%d" % i)
    if ctrd:
        for i in range(n):
            ctrd.start_sleeper("r%d" % i)
        for _ in range(reps):
            os.killpg(ctrd.proc.pid, signal.SIGKILL)
            ctrd.proc.wait()
            t = now()
            ctrd.start()
            while len(run(ctrd.ctr("task", "ls", "-q"), stdout=subprocess.PIPE).stdout.split()) < n:
                time.sleep(0.01)
            st.add("reload_%d_tasks_until_api" % n, "containerd", (now() - t) * 1000, "ms")
        for i in range(n):
            ctrd.remove("r%d" % i)


# ---------------------------------------------------------------------------

# figure (or figure prefix) -> (what the issue asks, test on the medians of every system)
TARGETS = {
    "start_to_exit_true": ("within 10% of the bare runtime (tether vs runc; tether-crun vs crun)",
                           lambda m: m["tether"] <= 1.10 * m.get("runc", 0)
                           and ("tether-crun" not in m or m["tether-crun"] <= 1.10 * m.get("crun", 0))),
    "shim_uss_per_task_at_50": ("no more than conmon's", lambda m: m["tether"] <= m.get("conmon", 0)),
    "exit_to_event": ("no more than conmon's", lambda m: m["tether"] <= m.get("conmon", 0)),
    "stdio_": ("within 10% of a bare pipe (the faster of a default and a 1 MiB one)",
               lambda m: m["tether"] <= 1.10 * min(m.get("host pipe", 0), m.get("host pipe 1MiB", 1e9))),
    "reload_100_tasks_reported": ("under 200 ms", lambda m: m["tether"] < 200),
}


def target_for(figure):
    for key, t in TARGETS.items():
        if figure == key or (key.endswith("_") and figure.startswith(key)):
            return t
    return None


def report(st, out_dir, systems_order):
    lines = []
    header = "| figure | unit | " + " | ".join(systems_order) + " | Tether / best other | target |"
    lines.append(header)
    lines.append("|" + "---|" * (len(systems_order) + 4))
    table = {}
    for figure in st.samples:
        row = ["`%s`" % figure, st.units[figure]]
        meds = {}
        for s in systems_order:
            m = st.summary(figure, s)
            if m:
                meds[s] = m[0]
                row.append("%.1f (%.1f–%.1f, n=%d)" % m if m[3] > 1 else "%.1f" % m[0])
            else:
                row.append("–")
        others = {k: v for k, v in meds.items() if not k.startswith("tether") and k != "containerd-tether"}
        if "tether" in meds and others:
            best = min(others.values())
            row.append("%.2f" % (meds["tether"] / best) if best else "–")
        else:
            row.append("–")
        target = target_for(figure)
        if target and "tether" in meds:
            what, ok = target
            row.append("%s: %s" % (what, "met" if ok(meds) else "**not met**"))
        else:
            row.append("")
        table[figure] = meds
        lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out_dir, "samples.json"), "w") as f:
        json.dump({"units": st.units, "samples": st.samples}, f, indent=1)
    return table


def tether_cgroup_parent(state):
    """Layout.cgroupParent: tether-FNV1a32(state dir)."""
    h = 2166136261
    for b in state.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return "tether-%x" % h


def machine_facts():
    def cmd(c):
        return subprocess.run(c, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout.decode().strip()
    return {
        "kernel": cmd("uname -r"),
        "cpus": os.cpu_count(),
        "memory": cmd("free -h | awk '/Mem:/ {print $2}'"),
        "runc": cmd("runc --version | head -1"),
        "crun": cmd("crun --version | head -1"),
        "containerd": cmd("containerd --version"),
        "conmon": cmd("conmon --version | head -1"),
        "load": cmd("cat /proc/loadavg"),
        "date": cmd("date -u +%Y-%m-%dT%H:%M:%SZ"),
    }


def clear_leftovers(work):
    """What an interrupted run left under `work`: its runc containers, then
    its mounts (deepest first, so rmtree never walks into a rootfs), then
    the directory itself."""
    for runtime, root in ((RUNC, "runc-root"), (CRUN, "crun-root")):
        delete_all(runtime, os.path.join(work, root))
    prefix = os.path.realpath(work) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for m in sorted((m for m in points if m.startswith(prefix)), key=len, reverse=True):
        run(["umount", "-l", m], check=False)
    shutil.rmtree(work)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run in under two minutes")
    p.add_argument("--work", default="/tmp/tether-bench")
    p.add_argument("--out", default=os.path.join(TOP, "bench-results", time.strftime("%Y%m%d-%H%M%S")))
    p.add_argument("--bin", required=True, help="where tetherd, tether and tether-shim are")
    p.add_argument("--sections", default="latency,steps,memory,scale,exit,stdio,reload")
    a = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("scripts/bench must run as root")
    # SIGTERM (a timeout, a kill) still runs the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    q = a.quick
    n_lat = 5 if q else 20
    counts = [1, 5, 10] if q else [1, 10, 25, 50]
    scale_n, scale_tether = (10, 0) if q else (50, 500)
    exit_n = 3 if q else 20
    stdio_mib, stdio_n = (64, 2) if q else (1024, 5)
    reload_n, reload_reps = (20, 2) if q else (100, 5)

    if os.path.exists(a.work):
        clear_leftovers(a.work)
    os.makedirs(a.work)
    os.makedirs(a.out, exist_ok=True)
    env = Env(a)
    run([os.path.join(TOP, "scripts", "make-rootfs"), env.rootfs])

    facts = machine_facts()  # the load before we add any
    st = Stats()
    sections = set(a.sections.split(","))
    runc, crun = Runc(env), Crun(env)
    ctrd, conmon = Containerd(env), Conmon(env)
    # containerd driving Tether's shim (containerd-shim-tether-v1): same daemon
    ctrdt = ctrd.with_runtime("containerd-tether", "io.containerd.tether.v1", "t")
    tether = Tether(env)
    crun_ok = crun.works()
    tcrun = None
    started = []
    try:
        ctrd.start()
        started.append(ctrd)
        tether.start()
        started.append(tether)
        if crun_ok:
            tcrun = Tether(env, name="tether-crun", runtime=CRUN, private_mounts=True)
            tcrun.start()
            started.append(tcrun)
        else:
            log("crun does not work here: its figures are left out")
        if "latency" in sections:
            bench_latency(st, [s for s in (runc, crun if crun_ok else None, ctrd, ctrdt, conmon, tether, tcrun) if s], n_lat)
        if "steps" in sections:
            log("steps: %d each" % n_lat)
            bench_steps(st, tether, runc, n_lat)
        if "exit" in sections:
            bench_exit(st, tether, [ctrd, ctrdt], conmon, exit_n)
        if "memory" in sections:
            bench_memory(st, tether, ctrd, conmon, counts, ctrdt)
        if "scale" in sections:
            bench_scale(st, tether, ctrd, conmon, scale_n, scale_tether)
        if "stdio" in sections:
            bench_stdio(st, tether, ctrd, conmon, stdio_mib, stdio_n)
        if "reload" in sections:
            bench_reload(st, tether, ctrd, reload_n, reload_reps)
    finally:
        for s in reversed(started):
            with contextlib.suppress(Exception):
                s.stop()
        conmon.stop()
        delete_all(RUNC, runc.root)
        delete_all(CRUN, crun.root)
        parents = [env.cg] + [tether_cgroup_parent(os.path.join(t.dir, "state")) for t in (tether, tcrun) if t]
        for ctl in os.listdir("/sys/fs/cgroup"):
            for parent in parents:
                path = "/sys/fs/cgroup/%s/%s" % (ctl, parent)
                if os.path.isdir(path):
                    for d in sorted((r for r, _, _ in os.walk(path)), key=len, reverse=True):
                        with contextlib.suppress(OSError):
                            os.rmdir(d)
        # Everything is stopped: what is left under the work directory (the
        # tetherds' self-bind of their tasks directory) goes with it.
        clear_leftovers(a.work)
    with open("/proc/loadavg") as f:
        facts["load_at_end"] = f.read().strip()
    with open(os.path.join(a.out, "machine.json"), "w") as f:
        json.dump(facts, f, indent=1)
    log("machine: %s" % json.dumps(facts))
    report(st, a.out, ["tether", "tether-crun", "containerd-tether", "runc", "crun", "containerd", "conmon", "host pipe", "host pipe 1MiB"])
    log("results in %s" % a.out)


if __name__ == "__main__":
    main()
