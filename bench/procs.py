"""Processes, namespaces and clients of one benchmark run, and the cleanup of all of them.

Everything the run starts is recorded in an `Env` and removed by `Env.cleanup()`: child processes
(killed by PID), network namespaces (deleted by name), the work directory. Clients run in a private
mount namespace whose /etc/hosts maps `bench.test` to the reference under test, so every tool
(curl, wrk, h2load) sends the right Host header and TLS SNI without flags of its own.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HOST = "bench.test"


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


class Env:
    def __init__(self, keep=False):
        self.work = tempfile.mkdtemp(prefix="kakuremichi-bench-")
        self.keep = keep
        self.procs = []  # (name, Popen)
        self.netns = []
        self.links = []
        self._hosts = {}

    # -- processes ---------------------------------------------------------------------------
    def spawn(self, name, argv, env=None, netns=None):
        """Starts a long-running process, its output in WORK/NAME.log, as the leader of a process
        group of its own (Ctrl-C reaches the bench, which cleans up, not the process; the workers a
        proxy forks share the group, for `group_cpu_seconds`). It stays in the bench's session:
        with the kernel's autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled`, on by
        default) each session shares the CPUs as one, so a session per process gave a reference
        split over more processes more CPU under load (separate Gateway and Agent two shares,
        `up` one, nginx with both its workers one). In one session every thread competes alike."""
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(os.path.join(self.work, f"{name}.log"), "ab") as logf:
            p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=full_env,
                                 stdin=subprocess.DEVNULL, process_group=0)
        self.procs.append((name, p))
        return p

    def check_alive(self):
        for name, p in self.procs:
            if p.poll() is not None:
                raise BenchError(f"{name} exited with status {p.returncode}; see {self.tail(name)}")
        panic = self.panic()
        if panic:
            raise BenchError(panic)

    def panic(self):
        """The first panic in the log of a kakuremichi process: a panicking task may leave the
        process alive with part of it dead (a tunnel peer, say), which must not pass for slow."""
        for name, _ in self.procs:
            if name not in ("control", "gateway", "agent", "origin", "control-scale", "up", "control-peers",
                            "gateway-peers", "gateway-idle"):
                continue
            try:
                with open(os.path.join(self.work, f"{name}.log"), errors="replace") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            for i, line in enumerate(lines):
                if "panicked at" in line:
                    return f"{name} panicked: " + " ".join(lines[i:i + 2]) + f" (log: {self.work}/{name}.log)"
        return None

    def tail(self, name, lines=15):
        path = os.path.join(self.work, f"{name}.log")
        try:
            with open(path, errors="replace") as f:
                text = f.read().splitlines()[-lines:]
        except OSError:
            return path
        return path + ":\n    " + "\n    ".join(text)

    def stop(self, proc):
        for i, (_name, p) in enumerate(self.procs):
            if p is proc:
                _terminate(p)
                del self.procs[i]
                return

    def cleanup(self):
        for _, p in reversed(self.procs):
            _terminate(p)
        self.procs.clear()
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        for ns in reversed(self.netns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.netns.clear()
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            log(f"kept logs and files in {self.work}")

    # -- namespaces ----------------------------------------------------------------------------
    def add_netns(self, name):
        run(["ip", "netns", "add", name])
        self.netns.append(name)

    # -- clients -------------------------------------------------------------------------------
    def hosts_file(self, ip):
        if ip not in self._hosts:
            path = os.path.join(self.work, f"hosts-{ip}")
            with open(path, "w") as f:
                f.write(f"127.0.0.1 localhost\n{ip} {HOST}\n")
            self._hosts[ip] = path
        return self._hosts[ip]

    def client_argv(self, ref, argv):
        """`argv` run where `ref`'s clients live, with bench.test resolving to `ref`."""
        inner = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                 'mount --bind "$0" /etc/hosts && exec "$@"', self.hosts_file(ref.ip)] + argv
        if ref.netns:
            return ["ip", "netns", "exec", ref.netns] + inner
        return inner

    def client(self, ref, argv, timeout):
        """Runs a client to completion; returns its stdout (raises with stderr on failure)."""
        try:
            r = subprocess.run(self.client_argv(ref, argv), capture_output=True, text=True,
                               timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{argv[0]} against {ref.name} took longer than {timeout}s") from None
        if r.returncode != 0:
            self.check_alive()  # a crashed or panicked process explains the failure best
            raise BenchError(f"{' '.join(argv[:3])}… against {ref.name} failed "
                             f"({r.returncode}): {r.stderr.strip()[-500:]}")
        return r.stdout

    def client_popen(self, ref, argv):
        return subprocess.Popen(self.client_argv(ref, argv), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _terminate(p):
    if p.poll() is not None:
        return
    try:
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:
        pass


def run(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    if r.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


def wait_until(what, check, timeout, interval=0.1, env=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if env:
            env.check_alive()
        try:
            if check():
                return
        except Exception as e:  # report the last reason on timeout
            last = e
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout}s waiting for {what}" + (f": {last}" if last else ""))


# -- /proc -------------------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _stat(pid):
    """/proc/PID/stat from field 3 (state) on: rest[2] is the process group (field 5), rest[11] and
    rest[12] utime and stime (fields 14, 15), every thread's included."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def group_cpu_seconds(groups):
    """CPU-seconds of every live process in the process `groups`. `Env.spawn` makes each process
    it starts the leader of a group of its own, so its PID names the group, and the workers a
    proxy forks (nginx's) count with it."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            rest = _stat(entry)
        except OSError:  # gone meanwhile
            continue
        if int(rest[2]) in groups:
            ticks += int(rest[11]) + int(rest[12])
    return ticks / CLK_TCK


def machine_cpu_seconds():
    """(busy, idle) CPU-seconds of the whole machine since boot, every CPU summed (/proc/stat)."""
    with open("/proc/stat") as f:
        # user nice system idle iowait irq softirq steal (guest time is already in user and nice)
        ticks = [int(x) for x in f.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / CLK_TCK, idle / CLK_TCK
