"""The table of docs/performance.md, rendered from the JSON of a run (`scripts/bench --markdown`).

The table is never typed: a full run writes its JSON (`--json`), this module turns it into
Markdown, and `--update DOC` puts it between the markers in the doc (`--check DOC` fails when the
doc differs, so a hand edit of the table does not survive). The targets are those of issue 6.
"""

BEGIN = "<!-- BEGIN scripts/bench --markdown (generated: do not edit) -->"
END = "<!-- END scripts/bench --markdown -->"

REFS = ["direct", "nginx", "wggo", "kakuremichi"]


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


def _throughput_rows(f):
    rows = []
    down = _num(f, "bulk_down_gbps")
    ratio = _num(f, "bulk_ratio_vs_wggo")
    ok = None if down is None or ratio is None else (ratio >= 1.0 and down >= 1.0)
    rows.append(["download, 1 stream, Gbit/s", _fmt(_num(f, "bulk_down_direct_gbps"), "g"),
                 _fmt(_num(f, "bulk_down_nginx_gbps"), "g"), _fmt(_num(f, "bulk_down_wggo_gbps"), "g"),
                 _with_range(f, "bulk_down_gbps", "x_bulk_down_kakuremichi_min", "x_bulk_down_kakuremichi_max", "g"),
                 "≥ 1.0× wggo, ≥ 1", f"{_fmt(ratio, 'g')}× wggo — {_met(ok)}" if ratio is not None else ""])
    for label, w, ratio_key in (("upload, 1 stream, Gbit/s", "bulk_up", "x_bulk_up_ratio_vs_wggo"),
                                ("download, 4 streams, Gbit/s", "bulk_par4", "x_bulk_par4_ratio_vs_wggo")):
        r = _num(f, ratio_key)
        rows.append([label] + [_fmt(_num(f, f"x_{w}_{ref}"), "g") for ref in REFS[:3]]
                    + [_with_range(f, f"x_{w}_kakuremichi", f"x_{w}_kakuremichi_min", f"x_{w}_kakuremichi_max", "g"),
                       "", f"{_fmt(r, 'g')}× wggo" if r is not None else ""])
    return rows


def _request_rows(f):
    rows = []
    r = _num(f, "rps_ratio_vs_nginx")
    rr = _with_range(f, "rps_ratio_vs_nginx", "x_rps_ratio_vs_nginx_min", "x_rps_ratio_vs_nginx_max", "g")
    rows.append(["HTTP/1.1 1 KiB, 64 conns, req/s", _fmt(_num(f, "x_rps_h1_direct"), "n"),
                 _fmt(_num(f, "rps_h1_nginx"), "n"), _fmt(_num(f, "x_rps_h1_wggo"), "n"),
                 _with_range(f, "rps_h1", "x_rps_h1_kakuremichi_min", "x_rps_h1_kakuremichi_max", "n"),
                 "≥ 0.7× nginx", f"{rr}× nginx — {_met(r >= 0.7)}" if r is not None else ""])
    r2 = _num(f, "x_rps_h2_ratio_vs_nginx")
    rows.append(["HTTP/2 1 KiB, 64 conns, req/s"] + [_fmt(_num(f, f"x_rps_h2_{ref}"), "n") for ref in REFS[:3]]
                + [_with_range(f, "rps_h2", "x_rps_h2_kakuremichi_min", "x_rps_h2_kakuremichi_max", "n"),
                   "", f"{_fmt(r2, 'g')}× nginx" if r2 is not None else ""])
    for proto, w in (("HTTP/1.1", "rps_h1"), ("HTTP/2", "rps_h2")):
        m = _num(f, f"x_{w}_metrics_ratio")
        if m is None:
            continue
        cell = _with_range(f, f"x_{w}_metrics_ratio", f"x_{w}_metrics_ratio_min", f"x_{w}_metrics_ratio_max", "g")
        rows.append([f"{proto} req/s, metrics on ÷ off (`--request-metrics`)", "", "", "",
                     f"{_fmt(_num(f, f'x_{w}_no_metrics'), 'n')} req/s off", "≥ 0.97",
                     f"{cell} — {_met(m >= 0.97)}"])
    added = _num(f, "p99_added_ms")
    p99 = _num(f, "x_lat_p99_kakuremichi")
    rate = _num(f, "x_latency_rate_rps")
    kmi = "" if p99 is None or added is None else f"{_fmt(p99, 'g')}, {added:+.2f} vs direct"
    lo, hi = _num(f, "x_p99_added_ms_min"), _num(f, "x_p99_added_ms_max")
    verdict = _met(None if added is None else added <= 2.0)
    if verdict and lo is not None and hi is not None and lo != hi:
        verdict += f" (added per run: {lo:+.2f} to {hi:+.2f} ms)"
    rows.append([f"p99 at half peak ({_fmt(rate, 'n')} req/s), ms"]
                + [_fmt(_num(f, f"x_lat_p99_{ref}"), "g") for ref in REFS[:3]] + [kmi, "≤ +2 ms", verdict])
    return rows


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
    blank = ["", "", ""]
    return [
        ["CPU-s per GiB, Gateway + Agent", *blank,
         _with_range(f, "cpu_s_per_gib", "x_cpu_s_per_gib_min", "x_cpu_s_per_gib_max", "g"),
         "≤ 10", _met(None if cpu is None else cpu <= 10)],
        [f"Agent RSS idle / {n} streams, MiB", *blank, f"{_fmt(a_idle, 'mib')} / {_fmt(a_1k, 'mib')}",
         "≤ 30 / ≤ 100", _met(_all(a_idle is not None and a_idle <= 30, a_1k is not None and a_1k <= 100))],
        [f"Gateway RSS idle / {n} streams, MiB", *blank, f"{_fmt(g_idle, 'mib')} / {_fmt(g_1k, 'mib')}", "", ""],
        ["RSS after load vs idle", *blank, after_cell, "≤ 1.2×", _met(None if after is None else after <= 1.2)],
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
    scheme = "kakuremichi and nginx both over HTTPS" if _num(f, "x_https") else \
        "kakuremichi over plain HTTP, nginx over HTTPS"
    return f"A {kind}: {runs_text}, {build}; {scheme}."


def table(f):
    """The Markdown of the figures `f` (the dict `--json` writes)."""
    head = ["workload", *REFS, "target", ""]
    rows = _throughput_rows(f) + _request_rows(f) + _resource_rows(f)
    def line(cells):
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
    lines = [caption(f), "", line(head), "|" + " --- |" * len(head)] + [line(row) for row in rows]
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
