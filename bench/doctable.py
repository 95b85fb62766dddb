"""The table of docs/performance.md, rendered from the JSON of a run (`scripts/bench --markdown`).

The table is never typed: a full run writes its JSON (`--json`), this module turns it into
Markdown, and `--update DOC` puts it between the markers in the doc (`--check DOC` fails when the
doc differs, so a hand edit of the table does not survive). The targets are those of issues 6 and 23.
"""

BEGIN = "<!-- BEGIN scripts/bench --markdown (generated: do not edit) -->"
END = "<!-- END scripts/bench --markdown -->"

REFS = ["direct", "nginx", "wggo", "nginx_rathole", "caddy", "kakuremichi"]
OTHERS = REFS[:-1]  # the reference columns before kakuremichi's


def _num(f, key):
    v = f.get(key)
    return v if isinstance(v, (int, float)) and v == v else None  # NaN: not measured


def _fmt(v, kind):
    if v is None:
        return ""
    if kind == "n":
        return f"{v:,.0f}"
    if kind == "mib":
        return f"{v:.1f}"
    return f"{v:.2f}"


def _with_range(f, key, lo_key, hi_key, kind):
    """Median, with the (min–max) of the runs when the JSON has them and they differ."""
    v = _num(f, key)
    lo, hi = _num(f, lo_key), _num(f, hi_key)
    if v is None or lo is None or hi is None or lo == hi:
        return _fmt(v, kind)
    return f"{_fmt(v, kind)} ({_fmt(lo, kind)}–{_fmt(hi, kind)})"


def _met(ok):
    if ok is None:
        return ""
    return "met" if ok else "not met"


def _all(*xs):
    return None if any(x is None for x in xs) else all(xs)


def _ref_value(f, w, ref):
    """A reference's median of workload `w`: the contract's keys of issue 6 where they exist."""
    named = {("bulk_down", "direct"): "bulk_down_direct_gbps", ("bulk_down", "nginx"): "bulk_down_nginx_gbps",
             ("bulk_down", "wggo"): "bulk_down_wggo_gbps", ("rps_h1", "nginx"): "rps_h1_nginx"}
    return _num(f, named.get((w, ref), f"x_{w}_{ref}"))


def _ratio_cell(f, key, base, lo_hi=True):
    r = _num(f, key)
    if r is None:
        return None, ""
    cell = _with_range(f, key, f"x_{key.removeprefix('x_')}_min", f"x_{key.removeprefix('x_')}_max", "g") \
        if lo_hi else _fmt(r, "g")
    return r, f"{cell}× {base.replace('_', '+')}"


def _verdict(f, goals):
    """goals: (ratio key, base, minimum); the cells for the target and the verdict columns."""
    target = ", ".join(f"≥ {lo}× {base.replace('_', '+')}" for _, base, lo in goals if lo is not None)
    parts, oks = [], []
    for key, base, lo in goals:
        r, cell = _ratio_cell(f, key, base)
        if cell:
            parts.append(cell)
        if lo is not None:
            oks.append(None if r is None else r >= lo)
    shown = "; ".join(parts)
    verdict = _met(_all(*oks)) if oks else ""
    return target, f"{shown} — {verdict}" if shown and verdict else shown


def _workload_row(f, label, w, kind, kmi_key, goals):
    cells = [label] + [_fmt(_ref_value(f, w, ref), kind) for ref in OTHERS]
    cells.append(_with_range(f, kmi_key, f"x_{w}_kakuremichi_min", f"x_{w}_kakuremichi_max", kind))
    return cells + list(_verdict(f, goals))


def _throughput_rows(f):
    return [
        _workload_row(f, "download, 1 stream, Gbit/s", "bulk_down", "g", "bulk_down_gbps",
                      [("bulk_ratio_vs_nginx_rathole", "nginx_rathole", 1.0), ("bulk_ratio_vs_wggo", "wggo", 1.0)]),
        _workload_row(f, "upload, 1 stream, Gbit/s", "bulk_up", "g", "bulk_up_gbps",
                      [("x_bulk_up_ratio_vs_nginx_rathole", "nginx_rathole", None),
                       ("x_bulk_up_ratio_vs_wggo", "wggo", None)]),
        _workload_row(f, "download, 4 streams, Gbit/s", "bulk_par4", "g", "x_bulk_par4_kakuremichi",
                      [("x_bulk_par4_ratio_vs_nginx_rathole", "nginx_rathole", None),
                       ("x_bulk_par4_ratio_vs_wggo", "wggo", None)]),
    ]


def _request_rows(f):
    rows = [
        _workload_row(f, "HTTP/1.1 1 KiB, 64 conns, req/s", "rps_h1", "n", "rps_h1",
                      [("rps_ratio_vs_nginx", "nginx", 0.8), ("rps_ratio_vs_nginx_rathole", "nginx_rathole", 1.0)]),
        _workload_row(f, "HTTP/2 1 KiB, 64 conns, req/s", "rps_h2", "n", "rps_h2",
                      [("x_rps_h2_ratio_vs_nginx", "nginx", 0.9)]),
    ]
    costs = _cost_row(f)
    if costs:
        rows.append(costs)
    blank = [""] * len(OTHERS)
    for proto, w in (("HTTP/1.1", "rps_h1"), ("HTTP/2", "rps_h2")):
        m = _num(f, f"x_{w}_metrics_ratio")
        if m is None:
            continue
        cell = _with_range(f, f"x_{w}_metrics_ratio", f"x_{w}_metrics_ratio_min", f"x_{w}_metrics_ratio_max", "g")
        rows.append([f"{proto} req/s, metrics on ÷ off (`--request-metrics`)", *blank,
                     f"{_fmt(_num(f, f'x_{w}_no_metrics'), 'n')} req/s off", "≥ 0.97",
                     f"{cell} — {_met(m >= 0.97)}"])
    ups = [(w, _num(f, f"x_{w}_up_ratio_vs_separate")) for w in ("bulk_down", "rps_h1")]
    if all(v is not None for _, v in ups):
        rows.append(["`kakuremichi up` ÷ separate processes (download, HTTP/1.1)", *blank,
                     f"{_fmt(_num(f, 'x_bulk_down_up'), 'g')} Gbit/s, {_fmt(_num(f, 'x_rps_h1_up'), 'n')} req/s",
                     "≥ 0.9×", " / ".join(f"{_fmt(v, 'g')}×" for _, v in ups)
                     + f" — {_met(all(v >= 0.9 for _, v in ups))}"])
    added = _num(f, "p99_added_ms")
    p99 = _num(f, "x_lat_p99_kakuremichi")
    rate = _num(f, "x_latency_rate_rps")
    kmi = "" if p99 is None or added is None else f"{_fmt(p99, 'g')}, {added:+.2f} vs direct"
    lo, hi = _num(f, "x_p99_added_ms_min"), _num(f, "x_p99_added_ms_max")
    verdict = _met(None if added is None else added <= 1.5)
    if verdict and lo is not None and hi is not None and lo != hi:
        verdict += f" (added per run: {lo:+.2f} to {hi:+.2f} ms)"
    rows.append([f"p99 at half peak ({_fmt(rate, 'n')} req/s), ms"]
                + [_fmt(_num(f, f"x_lat_p99_{ref}"), "g") for ref in OTHERS] + [kmi, "≤ +1.5 ms", verdict])
    return rows


def _cost_row(f):
    """What an HTTP/1.1 request of the row above cost each reference: CPU µs in its own processes
    / in the whole machine (client and origin included), and the machine's idle share. Two cores
    that are nearly never idle answer about 2 s ÷ (machine µs) requests per second, so nginx's
    machine µs ÷ kakuremichi's is the requests/s ratio the CPU allows. None for a run from before
    these figures existed."""
    def cell(ref):
        proxy, machine = _num(f, f"x_rps_h1_proxy_us_{ref}"), _num(f, f"x_rps_h1_machine_us_{ref}")
        idle = _num(f, f"x_rps_h1_idle_{ref}")
        if None in (proxy, machine, idle):
            return ""
        own = "—" if ref == "direct" else f"{proxy:.1f}"  # no process between wrk and the origin
        return f"{own} / {machine:.1f}, {idle * 100:.0f} % idle"
    cells = [cell(ref) for ref in REFS]
    nginx, kmi = _num(f, "x_rps_h1_machine_us_nginx"), _num(f, "x_rps_h1_machine_us_kakuremichi")
    if nginx is None or kmi is None:
        return None
    return ["HTTP/1.1 above, CPU µs per request: its processes / whole machine", *cells, "",
            f"nginx's machine µs ÷ kakuremichi's: {nginx / kmi:.2f}"]


def _resource_rows(f):
    cpu = _num(f, "cpu_s_per_gib")
    streams = _num(f, "x_streams")
    n = f"{streams:,.0f}" if streams is not None else "N"
    a_idle, a_1k = _num(f, "agent_rss_idle_mib"), _num(f, "agent_rss_1k_mib")
    g_idle, g_1k = _num(f, "gateway_rss_idle_mib"), _num(f, "gateway_rss_1k_mib")
    after = _num(f, "rss_after_load_ratio")
    a_after, g_after = _num(f, "x_agent_rss_after_mib"), _num(f, "x_gateway_rss_after_mib")
    after_cell = ""
    if None not in (a_after, a_idle, g_after, g_idle):
        after_cell = f"Agent {a_after / a_idle:.2f}×, Gateway {g_after / g_idle:.2f}×"
    p99, rss = _num(f, "control_propagation_p99_ms"), _num(f, "control_rss_mib")
    gws, agents = _num(f, "x_control_gateways"), _num(f, "x_control_agents")
    control = "" if p99 is None else f"{p99:,.0f} ms" + ("" if rss is None else f" (Control RSS {rss:,.0f} MiB)")
    scale = "" if gws is None or agents is None else f"all of {gws:,.0f} Gateways ({agents:,.0f} Agents)"
    blank = [""] * len(OTHERS)
    first, peak = _num(f, "x_gateway_rss_1k_first_mib"), _num(f, "x_gateway_rss_1k_max_mib")
    rounds = _num(f, "x_streams_rounds")
    growth = ["", "", ""]
    if first is not None and peak is not None:
        label = f"Gateway peak RSS, {n} streams, first / highest of {rounds or 0:.0f} rounds, MiB"
        growth = [label, f"{_fmt(first, 'mib')} / {_fmt(peak, 'mib')}", "≤ 1.1×",
                  f"{peak / first:.2f}× — {_met(peak <= 1.1 * first)}"]
    return [
        ["CPU-s per GiB, Gateway + Agent", *blank,
         _with_range(f, "cpu_s_per_gib", "x_cpu_s_per_gib_min", "x_cpu_s_per_gib_max", "g"),
         "≤ 3", _met(None if cpu is None else cpu <= 3)],
        [f"Agent RSS idle / {n} streams, MiB", *blank, f"{_fmt(a_idle, 'mib')} / {_fmt(a_1k, 'mib')}",
         "≤ 30 / ≤ 100", _met(_all(a_idle is not None and a_idle <= 30, a_1k is not None and a_1k <= 100))],
        [f"Gateway RSS idle / {n} streams, MiB", *blank, f"{_fmt(g_idle, 'mib')} / {_fmt(g_1k, 'mib')}", "", ""],
        ["RSS after load vs idle", *blank, after_cell, "≤ 1.2×", _met(None if after is None else after <= 1.2)],
        *([[growth[0], *blank, *growth[1:]]] if growth[0] else []),
        [f"Control: change on {scale}, p99", *blank, control, "≤ 1 s",
         _met(None if p99 is None else p99 <= 1000)],
    ]


def caption(f):
    runs = _num(f, "x_runs")
    quick = _num(f, "x_quick")
    release = _num(f, "x_release")
    build = {None: "build not recorded", 1: "release build", 0: "debug build"}[release]
    kind = "quick run (`--quick`: small sizes, figures only show that every path works)" if quick else "full run"
    runs_text = {None: "runs not recorded", 1: "1 run"}.get(runs) or f"{runs:.0f} runs, median (min–max)"
    scheme = "kakuremichi and the proxies all over HTTPS" if _num(f, "x_https") else \
        "kakuremichi over plain HTTP, nginx over HTTPS"
    return f"A {kind}: {runs_text}, {build}; {scheme}."


def _line(cells):
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def table(f):
    """The Markdown of the figures `f` (the dict `--json` writes): the main table, then the
    scaling table."""
    head = ["workload", *(ref.replace("_", "+") for ref in REFS), "target", ""]
    rows = _throughput_rows(f) + _request_rows(f) + _resource_rows(f)
    lines = [caption(f), "", _line(head), "|" + " --- |" * len(head)] + [_line(row) for row in rows]
    return "\n".join(lines) + "\n\n" + scale_table(f)


def _count(f, key, default):
    v = _num(f, key)
    return f"{v if v is not None else default:,.0f}"


def scale_table(f):
    """The scaling shape (`--only scale`, issue 23): one pass of each; "—" for what the JSON lacks
    (a run from before the group existed, or one without it)."""
    def cells(keys, kind):
        out = []
        for key in keys:
            v = _num(f, key)
            out.append("—" if v is None else f"{v:.1f}" if kind == "1" else _fmt(v, kind))
        return out
    conns = ["64", "1,000", _count(f, "x_scale_conns_max", 10000)]
    small, large = _count(f, "x_scale_peers_small", 100), _count(f, "x_scale_peers_large", 1000)
    idle = _count(f, "x_scale_idle_conns", 1000)
    total = _num(f, "x_scale_bulk_total_mib")
    size = "" if total is None else f", {total / 1024:g} GiB in all" if total >= 1024 else f", {total:g} MiB in all"
    c = ("c64", "c1000", "c10000")
    rows = [
        [f"HTTP/1.1 1 KiB, kakuremichi, req/s at {' / '.join(conns)} connections",
         *cells([f"scale_rps_h1_{x}" for x in c], "n")],
        ["HTTP/1.1 1 KiB, nginx, req/s (same)", *cells([f"scale_rps_h1_nginx_{x}" for x in c], "n")],
        ["CPU µs per request, Gateway + Agent (same)", *cells([f"scale_cpu_us_per_req_{x}" for x in c], "1")],
        ["CPU µs per request, nginx (same)", *cells([f"x_scale_cpu_us_per_req_nginx_{x}" for x in c], "1")],
        [f"download, kakuremichi, Gbit/s in 1 / 4 / 16 streams{size}",
         *cells([f"scale_bulk_gbps_s{n}" for n in (1, 4, 16)], "g")],
        [f"Gateway KiB per Agent peer, at {small} / {large} peers",
         *cells(["scale_gateway_kib_per_peer_100", "scale_gateway_kib_per_peer_1000"], "1"), ""],
        [f"Gateway KiB per idle HTTPS keep-alive connection ({idle} held)",
         *cells(["scale_gateway_kib_per_idle_conn"], "1"), "", ""],
    ]
    head = ["scaling shape (`scale`, one pass)", "small", "medium", "large"]
    lines = [_line(head), "|" + " --- |" * len(head)] + [_line(row) for row in rows]
    return "\n".join(lines) + "\n"


def block(f, source):
    """The table between the markers, naming the JSON it came from."""
    return f"{BEGIN}\n<!-- from {source} -->\n{table(f)}{END}\n"


def splice(doc, new_block):
    """`doc` with its generated block replaced by `new_block`; ValueError if it has no markers."""
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no '{BEGIN}' ... '{END}' block")
    return doc[:start] + new_block + doc[end + len(END) + 1:]
