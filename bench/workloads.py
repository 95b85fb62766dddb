"""One measurement of one workload against one reference. Each function returns numbers and raises
`BenchError` when the answer is wrong (bad status, short body, failed requests), so a broken path is
never reported as a fast one."""

import json
import os
import re
import selectors
import socket
import ssl
import subprocess
import time

from procs import HOST, BenchError, log, machine_cpu_seconds, rss_mib, group_cpu_seconds

GIB = 1 << 30
# A transfer that moves nothing for 30 s has stalled: fail then, not after the 30-minute cap.
CURL = ["curl", "-sS", "-k", "--http1.1", "--max-time", "1800", "--speed-time", "30", "--speed-limit", "1"]


def _cpu(ref):
    """CPU-seconds of ref's processes (and the workers they forked) so far."""
    return group_cpu_seconds(set(ref.pids.values()))


def bulk_down(env, ref, size):
    """One stream: `size` bytes downloaded to /dev/null. Returns (Gbit/s, CPU-s of ref's processes)."""
    cpu0 = _cpu(ref)
    out = env.client(ref, CURL + ["-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
                                  ref.url(f"/bytes?n={size}")], timeout=1900)
    cpu = _cpu(ref) - cpu0
    code, got, took = out.split()
    if code != "200" or int(got) != size:
        raise BenchError(f"download through {ref.name}: HTTP {code}, {got} of {size} bytes")
    return size * 8 / float(took) / 1e9, cpu


def _upload_argv(ref, size):
    cmd = (f"head -c {size} /dev/zero | exec {' '.join(CURL)} -X POST -T - -H 'Expect:' "
           f"-H 'Content-Type: application/octet-stream' -w '\\n%{{http_code}} %{{time_total}}' "
           f"'{ref.url('/upload')}'")
    return ["sh", "-c", cmd]


def bulk_up(env, ref, size):
    """One stream: `size` bytes from a generator uploaded to the origin, which counts them."""
    cpu0 = _cpu(ref)
    out = env.client(ref, _upload_argv(ref, size), timeout=1900)
    cpu = _cpu(ref) - cpu0
    body, _, last = out.rstrip("\n").rpartition("\n")
    code, took = last.split()
    try:
        got = json.loads(body)["bytes"]
    except (ValueError, KeyError):
        got = None
    if code != "200" or got != size:
        raise BenchError(f"upload through {ref.name}: HTTP {code}, origin counted {got} of {size} bytes")
    return size * 8 / float(took) / 1e9, cpu


def bulk_parallel(env, ref, size_each, streams=4):
    """`streams` concurrent downloads of `size_each` bytes; aggregate Gbit/s over the wall time."""
    argv = CURL + ["-o", "/dev/null", "-w", "%{http_code} %{size_download}", ref.url(f"/bytes?n={size_each}")]
    started = time.monotonic()
    procs = [env.client_popen(ref, argv) for _ in range(streams)]
    outs = [p.communicate(timeout=1900) for p in procs]
    took = time.monotonic() - started
    for p, (out, err) in zip(procs, outs, strict=True):
        parts = out.split()
        if p.returncode != 0 or parts != ["200", str(size_each)]:
            env.check_alive()
            raise BenchError(f"parallel download through {ref.name}: {out.strip()} {err.strip()[-300:]}")
    return streams * size_each * 8 / took / 1e9


def rps_h1(env, ref, duration, conns=64):
    """wrk, HTTP/1.1 keep-alive, `conns` connections, 1 KiB responses: (requests/s, costs), the
    costs being what the requests took of the CPU, per request: `proxy_us` µs in ref's processes
    (0 for `direct`), `machine_us` µs of the whole machine (wrk, the origin and the kernel's
    loopback work included), and `idle`, the share of the machine's CPU time left idle. When the
    machine is saturated, requests/s is about (number of CPUs) ÷ `machine_us`: the reference that
    costs less per request answers more."""
    rps, total, _, cpu, (busy, idle) = rps_h1_cpu(env, ref, duration, conns)
    n = max(total, 1)
    return rps, {"proxy_us": cpu / n * 1e6, "machine_us": busy / n * 1e6, "idle": idle / max(busy + idle, 1e-9)}


def rps_h1_cpu(env, ref, duration, conns, timeout=5, max_failed=0.01):
    """`rps_h1` at `conns` connections: (requests/s, requests answered, failed requests,
    CPU-seconds of ref's processes meanwhile (the Gateway and the Agent for kakuremichi, nginx's
    workers for nginx, 0 for `direct`), (busy, idle) CPU-seconds of the whole machine meanwhile).
    `timeout`: seconds after which wrk counts a request as failed; more than `max_failed` of
    them failed is an error."""
    cpu0, (busy0, idle0) = _cpu(ref), machine_cpu_seconds()
    rps, total, failed = _wrk(env, ref, duration, conns, timeout, max_failed)
    (busy1, idle1) = machine_cpu_seconds()
    return rps, total, failed, _cpu(ref) - cpu0, (busy1 - busy0, idle1 - idle0)


def _wrk(env, ref, duration, conns, timeout=5, max_failed=0.01):
    """(requests/s, requests, failed requests) of one wrk run."""
    out = env.client(ref, ["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{duration}s", "--timeout", f"{timeout}s",
                           ref.url("/bytes?n=1024")], timeout=duration + 60)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not m or not total:
        raise BenchError(f"unreadable wrk output for {ref.name}:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    if failed > max_failed * int(total.group(1)):
        raise BenchError(f"wrk through {ref.name}: {failed} failed of {total.group(1)}:\n{out}")
    if failed:
        log(f"wrk through {ref.name}: {failed} failed requests of {total.group(1)}")
    return float(m.group(1)), int(total.group(1)), failed


def _h2load_counts(ref, out):
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored", out)
    if not m:
        raise BenchError(f"unreadable h2load output for {ref.name}:\n{out}")
    total, _, done, ok, failed, errored = map(int, m.groups())
    status = re.search(r"status codes: (\d+) 2xx", out)
    ok2xx = int(status.group(1)) if status else 0
    if ok2xx < 0.99 * max(done, 1) or done == 0:
        raise BenchError(f"h2load through {ref.name}: {ok2xx} 2xx of {done} done "
                         f"({failed} failed, {errored} errored):\n{out[-1500:]}")
    return ok2xx


def rps_h2(env, ref, duration, conns=64):
    """h2load, HTTP/2 (TLS+ALPN for https, prior knowledge h2c for http), `conns` connections with
    one stream in flight each, 1 KiB responses: requests/s."""
    out = env.client(ref, ["h2load", f"-c{conns}", "-t2", "-m1", "-D", str(duration),
                           "--warm-up-time", "1", ref.url("/bytes?n=1024")], timeout=duration + 60)
    _h2load_counts(ref, out)
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if not m:
        raise BenchError(f"unreadable h2load output for {ref.name}:\n{out}")
    if re.search(r"Application protocol: (\S+)", out).group(1) not in ("h2", "h2c"):
        raise BenchError(f"h2load through {ref.name} did not speak HTTP/2:\n{out}")
    return float(m.group(1))


def latency(env, ref, rate, duration, conns=64):
    """HTTP/1.1 at a fixed total `rate` (h2load --h1 --rps, spread over `conns` connections):
    p50 and p99 of the per-request latencies from h2load's log, in ms, and the achieved rate."""
    path = os.path.join(env.work, f"latency-{ref.name}.log")
    if os.path.exists(path):
        os.unlink(path)
    out = env.client(ref, ["h2load", "--h1", f"-c{conns}", "-t2", "--rps", f"{rate / conns:.3f}",
                           "-D", str(duration), "--log-file", path, ref.url("/bytes?n=1024")],
                     timeout=duration + 60)
    _h2load_counts(ref, out)
    lat = []
    with open(path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "200":
                lat.append(int(parts[2]) / 1000.0)
    if not lat:
        raise BenchError(f"no latencies logged for {ref.name}")
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, max(0, int(round(p * len(lat))) - 1))]  # noqa: E731
    return q(0.50), q(0.99), len(lat) / duration


def streams(env, bins, ref, n, hold):
    """`n` concurrent server-sent-event streams through the Gateway, held `hold` seconds; the peak
    RSS of the Gateway and the Agent meanwhile (sampled by the load tool)."""
    argv = [bins["loadgen"], "streams", "--connect", f"{ref.ip}:{ref.port}", "--host", HOST,
            "-n", str(n), "--hold-secs", str(hold), "--timeout-secs", "120"]
    if ref.tls:
        argv.append("--https")
    for role, pid in ref.pids.items():
        argv += ["--pid", f"{role}={pid}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0:
        env.check_alive()
        raise BenchError(f"{n} streams through {ref.name}: {r.stderr.strip()[-800:]}")
    result = json.loads(r.stdout)
    if result["still_open_at_end"] != n:
        raise BenchError(f"only {result['still_open_at_end']} of {n} streams lasted the hold")
    return result


def control_scale(env, bins, pid, url, agents, gateways, changes, email, password, timeout):
    out, stderr = _loadgen_control(bins, url, email, password, timeout, "control scale",
                                   agents=agents, gateways=gateways, changes=changes, control_pid=pid)
    for line in stderr.splitlines():
        log(line.removeprefix("loadgen: "))
    return out


def _loadgen_control(bins, url, email, password, timeout, what, **counts):
    """`kakuremichi-loadgen control` against the Control at `url` with `--<name> <value>` for each
    of `counts`: its JSON result and its progress (stderr)."""
    argv = [bins["loadgen"], "control", "--url", url, "--email", email, "--timeout-secs", str(timeout)]
    for name, value in counts.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * 4 + 600,
                       env={**os.environ, "LOADGEN_PASSWORD": password}, check=False)
    if r.returncode != 0:
        raise BenchError(f"{what}: {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout), r.stderr


def iperf3(env, ref, seconds):
    """Raw TCP through `ref` (one iperf3 stream to a server next to its origin), Gbit/s: shows how
    much of the reference's bulk figure HTTP and the origin cost."""
    server = env.spawn(f"iperf3-{ref.name}", ["iperf3", "-s", "-1", "-B", ref.ip, "-p", "5201"],
                       netns=_server_netns(ref))
    try:
        return iperf3_client(env, ref, 5201, seconds)
    finally:
        env.stop(server)


def iperf3_client(env, ref, port, seconds):
    """One iperf3 TCP stream from `ref`'s client side to `ref.ip:port` for `seconds`: Gbit/s
    received. Retries while the server is not there yet (iperf3 reports a connect error)."""
    for _ in range(50):
        client = env.client_popen(ref, ["iperf3", "-c", ref.ip, "-p", str(port), "-t", str(seconds), "-J"])
        out, err = client.communicate(timeout=seconds + 30)
        out = out or err
        try:
            result = json.loads(out)
        except ValueError:
            result = {"error": out}
        if "error" not in result:
            return result["end"]["sum_received"]["bits_per_second"] / 1e9
        if "connect" not in result["error"] and "busy" not in result["error"]:
            raise BenchError(f"iperf3 through {ref.name}: {result['error']}")
        time.sleep(0.1)
    raise BenchError(f"iperf3 through {ref.name}: {result['error']}")


def _server_netns(ref):
    # wggo's clients live in namespace `a`; its origin side is the namespace `b` next to it.
    return ref.netns[:-1] + "b" if ref.netns else None


def idle_connections(env, ref, n, pid, window, timeout):
    """`n` HTTP/1.1 keep-alive connections to `ref` (HTTPS when it is), each after one 1 KiB
    request and then idle, all held at once: the growth of process `pid`'s settled RSS (KiB per
    connection), and its RSS before and while they are held (MiB)."""
    before = settled_rss(env, pid, window, timeout)
    ctx = None
    if ref.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # as wrk and h2load: load, not trust
        ctx.set_alpn_protocols(["http/1.1"])
    socks = []
    try:
        started = time.monotonic()
        for i in range(n):
            try:
                socks.append(_keepalive_request(ref, ctx))
            except (OSError, ValueError) as e:
                env.check_alive()
                raise BenchError(f"idle connection {i + 1} of {n} to {ref.name}: {e}") from None
        log(f"{n} idle keep-alive connections open in {time.monotonic() - started:.1f}s")
        held = settled_rss(env, pid, window, timeout)
        closed = _closed(socks)
        if closed:
            raise BenchError(f"{closed} of {n} idle connections to {ref.name} were closed while held")
    finally:
        for s in socks:
            s.close()
    return (held - before) * 1024 / n, before, held


def _keepalive_request(ref, ctx):
    """A connection to `ref` that has answered one GET /bytes?n=1024 and stays open."""
    s = socket.create_connection((ref.ip, ref.port), timeout=30)
    if ctx:
        s = ctx.wrap_socket(s, server_hostname=HOST)
    s.sendall(f"GET /bytes?n=1024 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ValueError(f"closed before the response headers: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if lines[0].split()[1:2] != ["200"]:
        raise ValueError(f"answered {lines[0]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "content-length" in headers:
        done = lambda b: len(b) >= int(headers["content-length"])  # noqa: E731
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        done = lambda b: b.endswith(b"0\r\n\r\n")  # noqa: E731
    else:
        raise ValueError(f"a response without a length: {head!r}")
    while not done(body):
        chunk = s.recv(65536)
        if not chunk:
            raise ValueError("closed during the response body")
        body += chunk
    if headers.get("connection", "").lower() == "close":
        raise ValueError("the server closes the connection after the response")
    return s


def _closed(socks):
    """How many of the idle connections the server has closed (readable: EOF or unasked data)."""
    sel = selectors.DefaultSelector()  # epoll: more descriptors than select() takes
    try:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        return len(sel.select(timeout=0))
    finally:
        sel.close()


def settled_rss(env, pid, window, timeout):
    """Process `pid`'s RSS in MiB once it has stayed within 0.3 % (at least 128 KiB) for `window`
    seconds: longer than the 1 s between the Gateway's memory-trim passes, so a reading
    is never one taken just before freed memory is given back. After `timeout` s without such a
    window, the median of the last one, with a note in the log."""
    samples = []  # (time, MiB)
    deadline = time.monotonic() + timeout
    while True:
        env.check_alive()
        now = time.monotonic()
        samples.append((now, rss_mib(pid)))
        recent = [v for t, v in samples if t >= now - window]
        if samples[0][0] <= now - window and max(recent) - min(recent) <= max(0.003 * recent[-1], 0.125):
            return recent[-1]
        if now >= deadline:
            recent.sort()
            log(f"RSS of pid {pid} did not settle within {timeout}s (last {window}s: "
                f"{recent[0]:.2f}–{recent[-1]:.2f} MiB); taking the median")
            return recent[len(recent) // 2]
        time.sleep(0.25)


def add_agents(bins, url, n, email, password, timeout):
    """`kakuremichi-loadgen control --gateways 0 --changes 0`: `n` more Agents created on the
    Control at `url`, each holding a simulated session until it has its config (so Control has its
    WireGuard key and every Gateway's config names it as a peer), then the sessions end. The
    Agents stay configured."""
    return _loadgen_control(bins, url, email, password, timeout, f"adding {n} simulated Agents",
                            agents=n, gateways=0, changes=0)[0]
