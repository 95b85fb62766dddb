"""Figures of a run: the table (median, min–max, ratios paired by run) and the JSON of issue 6."""

import statistics
from collections import defaultdict

REFS = ["direct", "nginx", "wggo", "nginx_rathole", "caddy", "up", "kakuremichi"]
# The references a user would assemble instead (issue 23), beside nginx and wireguard-go.
STACKS = ["nginx_rathole", "caddy"]

# The public contract of issue 6: every key, always a number.
KEYS = ["bulk_down_gbps", "bulk_up_gbps", "bulk_down_wggo_gbps", "bulk_down_nginx_gbps",
        "bulk_down_direct_gbps", "bulk_ratio_vs_wggo", "rps_h1", "rps_h1_nginx", "rps_ratio_vs_nginx",
        "rps_h2", "p99_added_ms", "agent_rss_idle_mib", "agent_rss_1k_mib", "gateway_rss_idle_mib",
        "gateway_rss_1k_mib", "rss_after_load_ratio", "cpu_s_per_gib", "control_propagation_p99_ms",
        "control_rss_mib"]
# Issue 23's: the stacks people would assemble instead, measured in the same run.
KEYS += ["bulk_down_nginx_rathole_gbps", "bulk_ratio_vs_nginx_rathole", "rps_h1_nginx_rathole",
         "rps_ratio_vs_nginx_rathole", "rps_h1_caddy", "rps_ratio_vs_caddy", "x_rps_h2_ratio_vs_nginx_rathole",
         "x_bulk_down_up_ratio_vs_separate", "x_tcp_bore_gbps", "x_tcp_ratio_vs_bore"]
# Issue 23's scaling shape (`scale`). In a quick run the counts are smaller: *_c10000 is then
# x_scale_conns_max connections, *_100 and *_1000 are x_scale_peers_small and _large Agents.
SCALE_CONNS = ["c64", "c1000", "c10000"]
SCALE_STREAMS = [1, 4, 16]
SCALE_PEERS = ["100", "1000"]
SCALE_KEYS = ([f"scale_rps_h1_{c}" for c in SCALE_CONNS] + [f"scale_cpu_us_per_req_{c}" for c in SCALE_CONNS]
              + [f"scale_rps_h1_nginx_{c}" for c in SCALE_CONNS] + [f"scale_bulk_gbps_s{n}" for n in SCALE_STREAMS]
              + ["scale_gateway_kib_per_idle_conn"] + [f"scale_gateway_kib_per_peer_{n}" for n in SCALE_PEERS])
KEYS += SCALE_KEYS


def median(xs):
    return statistics.median(xs) if xs else float("nan")


class Results:
    def __init__(self, runs, quick):
        self.data = defaultdict(lambda: defaultdict(list))  # workload -> ref -> [value per run]
        # A run with --only leaves some figures unmeasured: they read as NaN.
        nan = lambda: float("nan")  # noqa: E731
        self.resources = defaultdict(nan)
        self.cpu_per_gib = []
        self.control = defaultdict(nan)
        self.scale = {}  # SCALE_KEYS without their scale_ prefix, as measured
        self.meta = defaultdict(nan, {"runs": runs, "quick": 1 if quick else 0})

    def add(self, workload, ref, value):
        self.data[workload][ref].append(value)

    def med(self, workload, ref):
        return median(self.data[workload][ref])

    def per_run(self, workload, ref, base, op):
        """op(ref, base) of the values measured in the same run, for each run."""
        return [op(a, b) for a, b in zip(self.data[workload][ref], self.data[workload][base], strict=False)]

    def paired(self, workload, ref, base, op):
        """Per-run op(ref, base) of values measured in the same run, then the median."""
        return median(self.per_run(workload, ref, base, op))


def ratio(a, b):
    return a / b if b else float("nan")


def figures(r):
    k = "kakuremichi"
    rss_after = [r.resources[f"{role}_rss_after_mib"] / r.resources[f"{role}_rss_idle_mib"]
                 for role in ("gateway", "agent")]
    f = {
        "bulk_down_gbps": r.med("bulk_down", k),
        "bulk_up_gbps": r.med("bulk_up", k),
        "bulk_down_wggo_gbps": r.med("bulk_down", "wggo"),
        "bulk_down_nginx_gbps": r.med("bulk_down", "nginx"),
        "bulk_down_direct_gbps": r.med("bulk_down", "direct"),
        "bulk_ratio_vs_wggo": r.paired("bulk_down", k, "wggo", ratio),
        "rps_h1": r.med("rps_h1", k),
        "rps_h1_nginx": r.med("rps_h1", "nginx"),
        "rps_ratio_vs_nginx": r.paired("rps_h1", k, "nginx", ratio),
        "rps_h2": r.med("rps_h2", k),
        "p99_added_ms": r.paired("lat_p99", k, "direct", lambda a, b: a - b),
        "agent_rss_idle_mib": r.resources["agent_rss_idle_mib"],
        "agent_rss_1k_mib": r.med("agent_rss_streams", k),
        "gateway_rss_idle_mib": r.resources["gateway_rss_idle_mib"],
        "gateway_rss_1k_mib": r.med("gateway_rss_streams", k),
        "rss_after_load_ratio": max(rss_after),
        "cpu_s_per_gib": median(r.cpu_per_gib),
        "control_propagation_p99_ms": r.control["propagation_p99_ms"],
        "control_rss_mib": r.control["control_rss_mib"],
    }
    # Issue 23: nginx+rathole and Caddy, the stacks people assemble instead, and `up`.
    f["bulk_down_nginx_rathole_gbps"] = r.med("bulk_down", "nginx_rathole")
    f["bulk_ratio_vs_nginx_rathole"] = r.paired("bulk_down", k, "nginx_rathole", ratio)
    f["rps_h1_nginx_rathole"] = r.med("rps_h1", "nginx_rathole")
    f["rps_ratio_vs_nginx_rathole"] = r.paired("rps_h1", k, "nginx_rathole", ratio)
    f["rps_h1_caddy"] = r.med("rps_h1", "caddy")
    f["rps_ratio_vs_caddy"] = r.paired("rps_h1", k, "caddy", ratio)
    for w in ("bulk_up", "bulk_par4", "rps_h2"):
        for base in STACKS:
            f[f"x_{w}_ratio_vs_{base}"] = r.paired(w, k, base, ratio)
    f["x_bulk_down_ratio_vs_caddy"] = r.paired("bulk_down", k, "caddy", ratio)
    for base in STACKS:
        f[f"x_p99_added_ms_{base}"] = r.paired("lat_p99", base, "direct", lambda a, b: a - b)
    # `up` ÷ the same roles as separate processes.
    for w in ("bulk_down", "bulk_up", "bulk_par4", "rps_h1", "rps_h2"):
        f[f"x_{w}_up_ratio_vs_separate"] = r.paired(w, "up", k, ratio)
    # Beyond the contract: the other references and details, also numbers only.
    # ... and what a request cost each reference: CPU µs in its processes and in the whole
    # machine, and the machine's idle share (x_rps_h1_machine_us_nginx, ...).
    for w in ("bulk_down", "bulk_up", "bulk_par4", "rps_h1", "rps_h2", "lat_p50", "lat_p99",
              "rps_h1_proxy_us", "rps_h1_machine_us", "rps_h1_idle"):
        for ref in REFS:
            if r.data[w][ref]:
                f[f"x_{w}_{ref}"] = r.med(w, ref)
    f["x_bulk_up_ratio_vs_wggo"] = r.paired("bulk_up", k, "wggo", ratio)
    f["x_bulk_par4_ratio_vs_wggo"] = r.paired("bulk_par4", k, "wggo", ratio)
    f["x_rps_h2_ratio_vs_nginx"] = r.paired("rps_h2", k, "nginx", ratio)
    # What the per-request metrics cost: the same tunnel through a Gateway with them off.
    for w in ("rps_h1", "rps_h2"):
        if r.data[w]["no-metrics"]:
            f[f"x_{w}_no_metrics"] = r.med(w, "no-metrics")
            f[f"x_{w}_metrics_ratio"] = r.paired(w, k, "no-metrics", ratio)
            xs = r.per_run(w, k, "no-metrics", ratio)
            f[f"x_{w}_metrics_ratio_min"], f[f"x_{w}_metrics_ratio_max"] = min(xs), max(xs)
    # The spread of the runs, for the (min–max) of docs/performance.md (bench/markdown.py).
    spreads = {f"x_{w}_kakuremichi": r.data[w][k] for w in ("bulk_down", "bulk_up", "bulk_par4", "rps_h1", "rps_h2")}
    spreads["x_rps_ratio_vs_nginx"] = r.per_run("rps_h1", k, "nginx", ratio)
    spreads["x_rps_ratio_vs_nginx_rathole"] = r.per_run("rps_h1", k, "nginx_rathole", ratio)
    spreads["x_bulk_ratio_vs_nginx_rathole"] = r.per_run("bulk_down", k, "nginx_rathole", ratio)
    spreads["x_rps_h2_ratio_vs_nginx"] = r.per_run("rps_h2", k, "nginx", ratio)
    spreads["x_p99_added_ms"] = r.per_run("lat_p99", k, "direct", lambda a, b: a - b)
    spreads["x_cpu_s_per_gib"] = r.cpu_per_gib
    for key, xs in spreads.items():
        f[f"{key}_min"], f[f"{key}_max"] = (min(xs), max(xs)) if xs else (float("nan"), float("nan"))
    for role in ("gateway", "agent"):  # memory that grows from one round of streams to the next
        rounds = r.data[f"{role}_rss_streams"][k] or [float("nan")]
        f[f"x_{role}_rss_1k_first_mib"], f[f"x_{role}_rss_1k_max_mib"] = rounds[0], max(rounds)
    f["x_gateway_rss_after_mib"] = r.resources["gateway_rss_after_mib"]
    f["x_agent_rss_after_mib"] = r.resources["agent_rss_after_mib"]
    f["x_latency_rate_rps"] = r.meta["latency_rate"]
    f["x_streams"] = r.meta["streams"]
    f["x_streams_rounds"] = r.meta["streams_rounds"]
    for key in ("propagation_p50_ms", "propagation_max_ms", "control_cpu_s_changes",
                "control_cpu_s_sessions", "sessions_s", "create_s", "agents", "gateways", "changes"):
        f[f"x_control_{key.removeprefix('control_')}"] = r.control[key]
    f["x_iperf3_wggo_gbps"] = r.meta["iperf3_wggo_gbps"]
    # Raw TCP (one iperf3 stream) through a `tcp` tunnel, and the references of that workload.
    for ref in ("direct", "kakuremichi", "rathole", "bore"):
        f[f"x_tcp_{ref}_gbps"] = r.med("tcp_iperf3", ref)
    for ref in ("rathole", "bore"):
        f[f"x_tcp_ratio_vs_{ref}"] = r.paired("tcp_iperf3", k, ref, ratio)
    for key in SCALE_KEYS:
        f[key] = r.scale.get(key.removeprefix("scale_"), float("nan"))
    if "scale_seconds" in r.meta:  # measured: the counts behind the keys, and the RSS readings they come from
        m = r.meta
        f["x_scale_conns_max"] = m["scale_conns"][-1]
        f["x_scale_idle_conns"] = m["scale_idle"]
        f["x_scale_peers_small"], f["x_scale_peers_large"] = m["scale_peers"]
        f["x_scale_bulk_total_mib"] = m["bulk"] / (1 << 20)
        f["x_scale_gateway_rss_before_idle_mib"], f["x_scale_gateway_rss_idle_held_mib"] = m["scale_idle_rss"]
        (f["x_scale_gateway_rss_peers_0_mib"], f["x_scale_gateway_rss_peers_small_mib"],
         f["x_scale_gateway_rss_peers_large_mib"]) = m["scale_peers_rss"]
        f["x_scale_seconds"] = m["scale_seconds"]
        for c in SCALE_CONNS:  # the share of wrk's requests that failed (non-2xx, errors, > 30 s)
            f[f"x_scale_failed_{c}"] = m[f"scale_failed_{c}"]
            f[f"x_scale_failed_nginx_{c}"] = m[f"scale_failed_nginx_{c}"]
            f[f"x_scale_cpu_us_per_req_nginx_{c}"] = m[f"scale_cpu_us_per_req_nginx_{c}"]
    f["x_https"] = r.meta["https"]
    f["x_runs"] = r.meta["runs"]
    f["x_quick"] = r.meta["quick"]
    f["x_release"] = r.meta["release"]
    return f


def _cell(xs, fmt):
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt(xs[0])
    return f"{fmt(median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})"


def table(r):
    k = "kakuremichi"
    g = lambda v: f"{v:.2f}"  # noqa: E731
    n = lambda v: f"{v:,.0f}"  # noqa: E731
    ms = lambda v: f"{v:.2f}"  # noqa: E731
    rate = r.meta["latency_rate"]
    rows = [
        ("bulk download, 1 stream, Gbit/s", "bulk_down", g, ["nginx_rathole"]),
        ("bulk upload, 1 stream, Gbit/s", "bulk_up", g, ["nginx_rathole"]),
        ("bulk download, 4 streams, Gbit/s", "bulk_par4", g, ["nginx_rathole"]),
        ("HTTP/1.1 1 KiB, 64 conns, req/s", "rps_h1", n, ["nginx", "nginx_rathole"]),
        ("HTTP/2 1 KiB, 64 conns, req/s", "rps_h2", n, ["nginx"]),
        (f"p50 ms at {rate:,.0f} req/s (HTTP/1.1)", "lat_p50", ms, ["direct"]),
        (f"p99 ms at {rate:,.0f} req/s (HTTP/1.1)", "lat_p99", ms, ["direct"]),
    ]
    scheme = "HTTPS" if r.meta["https"] else "plain HTTP (Gateway had no --https-listen)"
    out = [f"kakuremichi benchmark: {r.meta['runs']} run(s){' (quick)' if r.meta['quick'] else ''}, "
           f"median (min–max); kakuremichi over {scheme}, the proxies over HTTPS", ""]
    head = ["workload"] + [ref.replace("_", "+") for ref in REFS] + ["kakuremichi vs"]
    body = []
    for label, w, fmt, bases in rows:
        if not r.data[w][k]:
            continue  # not measured in this run (--only)
        cells = [label] + [_cell(r.data[w][ref], fmt) for ref in REFS]
        if w.startswith("lat"):
            vs = [f"{r.paired(w, k, base, lambda a, b: a - b):+.2f} ms vs {base}" for base in bases]
        else:
            vs = [f"{r.paired(w, k, base, ratio):.2f}× {base.replace('_', '+')}" for base in bases]
        body.append(cells + [", ".join(vs)])
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    for row in [head] + body:
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    f = figures(r)
    streams, after = r.meta["streams"], r.meta["after"]
    out.append("")
    if r.data["gateway_rss_streams"][k]:
        out += [f"Gateway RSS MiB: idle {f['gateway_rss_idle_mib']:.1f}, {streams} streams "
                f"{_cell(r.data['gateway_rss_streams'][k], g)}, {after} s after load "
                f"{f['x_gateway_rss_after_mib']:.1f}",
                f"Agent RSS MiB:   idle {f['agent_rss_idle_mib']:.1f}, {streams} streams "
                f"{_cell(r.data['agent_rss_streams'][k], g)}, {after} s after load {f['x_agent_rss_after_mib']:.1f}",
                f"RSS after load vs idle (worse of the two): {f['rss_after_load_ratio']:.2f}×"]
    if r.data["rps_h1_machine_us"][k]:
        out.append("HTTP/1.1, CPU µs per request in the reference's processes / the whole machine (idle share): "
                   + ", ".join(f"{ref} {f[f'x_rps_h1_proxy_us_{ref}']:.1f} / {f[f'x_rps_h1_machine_us_{ref}']:.1f} "
                               f"({f[f'x_rps_h1_idle_{ref}'] * 100:.0f} %)"
                               for ref in REFS if r.data["rps_h1_machine_us"][ref]))
    if "x_rps_h1_metrics_ratio" in f:
        out.append("requests/s with the per-request metrics on ÷ off (a second Gateway with "
                   "--request-metrics off, same runs): " + ", ".join(
                       f"{proto} {f[f'x_{w}_metrics_ratio']:.3f}× "
                       f"({f[f'x_{w}_metrics_ratio_min']:.3f}–{f[f'x_{w}_metrics_ratio_max']:.3f})"
                       for proto, w in (("HTTP/1.1", "rps_h1"), ("HTTP/2", "rps_h2"))
                       if f"x_{w}_metrics_ratio" in f))
    out.append(f"wireguard-go, raw TCP (iperf3, 1 stream, context for the wggo column): "
               f"{r.meta['iperf3_wggo_gbps']:.2f} Gbit/s")
    tcp = r.data["tcp_iperf3"]
    if tcp[k]:
        out.append("raw TCP, iperf3 1 stream, Gbit/s: "
                   + ", ".join(f"{ref} {_cell(tcp[ref], g)}" for ref in ("direct", k, "rathole", "bore"))
                   + f"; kakuremichi {r.paired('tcp_iperf3', k, 'rathole', ratio):.2f}× rathole, "
                   f"{r.paired('tcp_iperf3', k, 'bore', ratio):.2f}× bore")
    if r.data["bulk_down"]["up"]:
        out.append("kakuremichi up (one process) ÷ separate processes: " + ", ".join(
            f"{w} {r.paired(w, 'up', k, ratio):.2f}×" for w in ("bulk_down", "bulk_up", "bulk_par4", "rps_h1", "rps_h2")
            if r.data[w]["up"]))
    if r.cpu_per_gib:
        out.append(f"CPU-seconds per GiB, Gateway + Agent, 1-stream bulk: {_cell(r.cpu_per_gib, g)}")
    if r.control["agents"] == r.control["agents"]:  # not NaN: measured
        out.append(f"Control, {r.control['agents']} agents + {r.control['gateways']} gateways, "
                   f"{r.control['changes']} changes: propagation to every Gateway p50 "
                   f"{r.control['propagation_p50_ms']:.1f} ms, p99 {r.control['propagation_p99_ms']:.1f} ms, "
                   f"max {r.control['propagation_max_ms']:.1f} ms; Control RSS {r.control['control_rss_mib']:.1f} MiB, "
                   f"CPU {r.control['control_cpu_s_sessions']:.1f} s for the sessions, "
                   f"{r.control['control_cpu_s_changes']:.1f} s for the changes "
                   f"(sessions up in {r.control['sessions_s']:.1f} s)")
    if "scale_seconds" in r.meta:
        f = figures(r)
        conns = ["64", "1,000", f"{f['x_scale_conns_max']:,}"]
        out.append("scaling, HTTP/1.1 1 KiB at " + " / ".join(conns) + " connections: kakuremichi "
                   + " / ".join(f"{f[f'scale_rps_h1_{c}']:,.0f}" for c in SCALE_CONNS) + " req/s ("
                   + " / ".join(f"{f[f'scale_cpu_us_per_req_{c}']:.1f}" for c in SCALE_CONNS)
                   + " µs CPU per request, Gateway + Agent), nginx "
                   + " / ".join(f"{f[f'scale_rps_h1_nginx_{c}']:,.0f}" for c in SCALE_CONNS) + " req/s")
        out.append(f"scaling, download of {f['x_scale_bulk_total_mib']:,.0f} MiB in 1 / 4 / 16 streams: "
                   + " / ".join(f"{f[f'scale_bulk_gbps_s{n}']:.2f}" for n in SCALE_STREAMS) + " Gbit/s")
        out.append(f"scaling, Gateway memory: {f['scale_gateway_kib_per_idle_conn']:.1f} KiB per idle HTTPS "
                   f"connection ({f['x_scale_idle_conns']:,} held), "
                   f"{f['scale_gateway_kib_per_peer_100']:.1f} / {f['scale_gateway_kib_per_peer_1000']:.1f} KiB "
                   f"per Agent peer at {f['x_scale_peers_small']:,} / {f['x_scale_peers_large']:,} peers "
                   f"({r.meta['scale_seconds']:.0f} s for the group)")
    out.append(f"({r.meta['seconds']:.0f} s in all)")
    return "\n".join(out)
