"""Starting the references: `direct`, `nginx`, `wggo`, `nginx_rathole`, `caddy`, `up`, `kakuremichi`,
and for raw TCP `rathole` and `bore`.

Each is a `Ref`: where its clients connect (`scheme://bench.test:port`, bench.test resolving to
`ip` inside the client's namespace `netns`). All of them end at a `kakuremichi hello` origin.
"""

import json
import os
import random
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from procs import HOST, BenchError, log, run, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
ADMIN_EMAIL = "bench@example.com"
ADMIN_PASSWORD = f"bench-{random.getrandbits(64):016x}"
ORIGIN_PORT, NGINX_PORT, CONTROL_PORT, SCALE_CONTROL_PORT = 8000, 8444, 8780, 8781
GW_HTTP_PORT, GW_HTTPS_PORT, GW_WG_PORT, GW_ADMIN_PORT = 8080, 8443, 51820, 9090
# Raw TCP: iperf3's server, a kakuremichi `tcp` tunnel's public port, rathole's (and its control),
# bore's (its control port is fixed: 7835).
IPERF_PORT, KMI_TCP_PORT, RATHOLE_PORT, RATHOLE_CONTROL_PORT, BORE_PORT = 5201, 5202, 5203, 2333, 5204
# nginx in front of rathole, and rathole's port and control for it; Caddy; `up`'s demo app.
NGINX_RATHOLE_PORT, RATHOLE_HTTP_PORT, RATHOLE_HTTP_CONTROL_PORT = 8445, 8001, 2334
CADDY_PORT, UP_HELLO_PORT = 8446, 8782


@dataclass
class Ref:
    name: str
    scheme: str
    ip: str
    port: int
    netns: str = None
    # role -> PID of each process on the path between the client and the origin (the proxy, the
    # tunnel's ends), each the leader of a process group its forked workers share (procs.Env.spawn).
    pids: dict = field(default_factory=dict)
    tcp_port: int = None  # kakuremichi: its `tcp` tunnel to iperf3's server, if the Gateway has one

    def url(self, path):
        return f"{self.scheme}://{HOST}:{self.port}{path}"

    @property
    def tls(self):
        return self.scheme == "https"


def private_loopback():
    """A loopback address no other run is likely to use, so fixed port numbers are safe."""
    return f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.{random.randint(1, 250)}"


def http_ok(env, ref, path="/healthz"):
    out = env.client(ref, ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                           ref.url(path)], timeout=10)
    return out.strip() == "200"


def start_origin(env, bins, ip, netns=None, name="origin"):
    env.spawn(name, [bins["kakuremichi"], "hello", "--listen", f"{ip}:{ORIGIN_PORT}"], netns=netns)
    ref = Ref("direct", "http", ip, ORIGIN_PORT, netns)
    wait_until(f"{name} on {ip}:{ORIGIN_PORT}", lambda: http_ok(env, ref), 20, env=env)
    return ref


def start_nginx(env, ip, name="nginx", port=NGINX_PORT, upstream=None, behind=None):
    """nginx terminating TLS (HTTP/1.1 and h2) in front of `upstream` (default: the origin);
    `behind`: the pids of what `upstream` is (a tunnel), counted with nginx's."""
    w = env.work
    if not os.path.exists(f"{w}/nginx.crt"):
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
             "-keyout", f"{w}/nginx.key", "-out", f"{w}/nginx.crt"])
    os.makedirs(f"{w}/{name}-tmp", exist_ok=True)
    with open(os.path.join(HERE, "nginx.conf.in")) as f:
        conf = f.read()
    conf = conf.replace("@WORK@", w).replace("@NAME@", name).replace("@LISTEN@", f"{ip}:{port}") \
        .replace("@ORIGIN@", upstream or f"{ip}:{ORIGIN_PORT}") \
        .replace("@USER@", "user root;" if os.geteuid() == 0 else "")
    with open(f"{w}/{name}.conf", "w") as f:
        f.write(conf)
    proc = env.spawn(name, ["nginx", "-p", f"{w}/", "-e", f"{w}/{name}-error.log", "-c", f"{w}/{name}.conf"])
    ref = Ref(name, "https", ip, port, pids={"nginx": proc.pid, **(behind or {})})
    wait_until(name, lambda: http_ok(env, ref), 20, env=env)
    return ref


def start_nginx_rathole(env, ip):
    """`nginx_rathole`, what people assemble instead of a tunnel product: nginx on the public side
    terminates TLS and proxies to a rathole server's port; the rathole client, next to the app,
    forwards to the origin (Noise transport, encrypted as WireGuard is)."""
    service = start_rathole(env, ip, RATHOLE_HTTP_PORT, f"{ip}:{ORIGIN_PORT}",
                            RATHOLE_HTTP_CONTROL_PORT, "rathole-http")
    return start_nginx(env, ip, "nginx_rathole", NGINX_RATHOLE_PORT, f"{service.ip}:{service.port}",
                       behind=service.pids)


def start_caddy(env, ip):
    """`caddy`: Debian's Caddy as the TLS reverse proxy (`tls internal`, HTTP/1.1 and h2) in front
    of the origin, streaming both ways like the others."""
    w = env.work
    os.makedirs(f"{w}/caddy-home", exist_ok=True)
    with open(f"{w}/Caddyfile", "w") as f:
        f.write(f"""{{
    admin off
    skip_install_trust
    auto_https disable_redirects
    servers {{
        protocols h1 h2
    }}
}}
https://{HOST}:{CADDY_PORT} {{
    bind {ip}
    tls internal
    reverse_proxy {ip}:{ORIGIN_PORT} {{
        flush_interval -1
    }}
}}
""")
    home = f"{w}/caddy-home"
    proc = env.spawn("caddy", ["caddy", "run", "--adapter", "caddyfile", "--config", f"{w}/Caddyfile"],
                     env={"HOME": home, "XDG_DATA_HOME": home, "XDG_CONFIG_HOME": home})
    ref = Ref("caddy", "https", ip, CADDY_PORT, pids={"caddy": proc.pid})
    wait_until("caddy", lambda: http_ok(env, ref), 30, env=env)
    return ref


def start_up(env, bins, ip, origin):
    """`up`: `kakuremichi up` (Control, Gateway and Agent in one process) on an address of its own
    (`ip`), with a tunnel bench.test → the shared `origin` added through its API: what a newcomer
    measures first."""
    w = f"{env.work}/up"
    ports = {"--control-listen": CONTROL_PORT, "--http-listen": GW_HTTP_PORT,
             "--https-listen": GW_HTTPS_PORT, "--wg-listen": GW_WG_PORT, "--admin-listen": GW_ADMIN_PORT,
             "--hello-listen": UP_HELLO_PORT}
    argv = [bins["kakuremichi"], "up", "--data-dir", w]
    for flag, port in ports.items():
        argv += [flag, f"{ip}:{port}"]
    proc = env.spawn("up", argv, env={"KAKUREMICHI_LOG": "warn"})
    wait_until("kakuremichi up's credentials", lambda: os.path.exists(f"{w}/up.json"), 60, env=env)
    with open(f"{w}/up.json") as f:
        state = json.load(f)
    api = Api(f"http://{ip}:{CONTROL_PORT}", token=state["api_token"])
    api.post("tunnels", {"hostname": HOST, "agent_id": state["agent_id"], "target": f"{origin.ip}:{origin.port}",
                         "tls": "internal", "https_redirect": False})
    ref = Ref("up", "https", ip, GW_HTTPS_PORT, pids={"up": proc.pid})
    wait_until("the tunnel through kakuremichi up", lambda: http_ok(env, ref), 60, interval=0.25, env=env)
    return ref


def start_wggo(env, bins):
    """Two namespaces joined by a veth pair, with wireguard-go on each end; the origin in `b`."""
    tag = f"{random.getrandbits(16):04x}"
    ns_a, ns_b = f"kmb{tag}a", f"kmb{tag}b"
    env.add_netns(ns_a)
    env.add_netns(ns_b)
    va, vb = f"kmb{tag}va", f"kmb{tag}vb"
    run(["ip", "link", "add", va, "type", "veth", "peer", "name", vb])
    run(["ip", "link", "set", va, "netns", ns_a])
    run(["ip", "link", "set", vb, "netns", ns_b])
    keys, pids = {}, {}
    for side in "ab":
        priv = run(["wg", "genkey"]).strip()
        pub = run(["wg", "pubkey"], input=priv).strip()
        path = f"{env.work}/wg-{side}.key"
        with open(path, "w") as f:
            f.write(priv + "\n")
        os.chmod(path, 0o600)
        keys[side] = (path, pub)
    sides = {"a": (ns_a, va, "192.0.2.1", "10.99.0.1"), "b": (ns_b, vb, "192.0.2.2", "10.99.0.2")}
    for side, (ns, veth, under, over) in sides.items():
        other = "b" if side == "a" else "a"
        run(["ip", "-n", ns, "addr", "add", f"{under}/30", "dev", veth])
        run(["ip", "-n", ns, "link", "set", veth, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        dev = f"kmw{tag}{side}"
        pids[f"wireguard-go-{side}"] = env.spawn(
            f"wireguard-go-{side}", ["wireguard-go", "-f", dev], netns=ns,
            env={"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"}).pid
        wait_until(f"wireguard-go {dev}", lambda d=dev: os.path.exists(f"/var/run/wireguard/{d}.sock"),
                   10, env=env)
        run(["ip", "netns", "exec", ns, "wg", "set", dev, "private-key", keys[side][0],
             "listen-port", "51820", "peer", keys[other][1], "allowed-ips",
             sides[other][3] + "/32", "endpoint", f"{sides[other][2]}:51820"])
        run(["ip", "-n", ns, "addr", "add", f"{over}/24", "dev", dev])
        run(["ip", "-n", ns, "link", "set", dev, "up"])
    origin = start_origin(env, bins, "10.99.0.2", netns=ns_b, name="origin-wggo")
    # Clients live in `a` and reach the origin in `b` through the tunnel.
    ref = Ref("wggo", "http", "10.99.0.2", ORIGIN_PORT, ns_a, pids=pids)
    wait_until("origin through wireguard-go", lambda: http_ok(env, ref), 20, env=env)
    del origin
    return ref


class Api:
    """Control's REST API with a personal token (stdlib only)."""

    def __init__(self, base, token=None):
        self.base = base
        if token:
            self.token = token
            return
        status, login, headers = self._req("POST", "/api/v1/auth/login",
                                           {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        cookie = "; ".join(v.split(";")[0] for k, v in headers if k.lower() == "set-cookie")
        # A cookie-authenticated write needs the session's CSRF token.
        _, body, _ = self._req("POST", "/api/v1/tokens", {"name": "bench"},
                               {"Cookie": cookie, "X-CSRF-Token": login["csrf_token"]})
        self.token = body["token"]

    def _req(self, method, path, body=None, headers=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read().decode()
                return r.status, (json.loads(text) if text else None), r.getheaders()
        except urllib.error.HTTPError as e:
            raise BenchError(f"{method} {path}: HTTP {e.code} {e.read().decode(errors='replace')}") from e

    def post(self, what, body):
        return self._req("POST", f"/api/v1/{what}", body, {"Authorization": f"Bearer {self.token}"})[1]

    def get(self, what):
        return self._req("GET", f"/api/v1/{what}", None, {"Authorization": f"Bearer {self.token}"})[1]


def start_control(env, bins, ip, port, name):
    listen = f"{ip}:{port}"
    p = env.spawn(name, [bins["kakuremichi"], "control", "--listen", listen], env={
        "KAKUREMICHI_DATA_DIR": f"{env.work}/{name}",
        "KAKUREMICHI_ADMIN_EMAIL": ADMIN_EMAIL,
        "KAKUREMICHI_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "KAKUREMICHI_LOG": "warn",
    })

    def ready():
        with urllib.request.urlopen(f"http://{listen}/healthz", timeout=2) as r:
            return r.status == 200
    wait_until(name, ready, 30, env=env)
    return p, f"http://{listen}"


def gateway_has_https(bins):
    out = subprocess.run([bins["kakuremichi"], "gateway", "--help"], capture_output=True, text=True,
                         check=False)
    return "--https-listen" in out.stdout


def start_kakuremichi(env, bins, ip):
    """Control, a Gateway and an Agent as separate processes; one tunnel bench.test → origin.
    Returns the Gateway's reference and, when the Gateway has `--request-metrics`, that of a
    second Gateway on its own address with it off (the cost of the metrics, measured apart)."""
    _, control_url = start_control(env, bins, ip, CONTROL_PORT, "control")
    api = Api(control_url)
    https = gateway_has_https(bins)
    gw = api.post("gateways", {"name": "bench", "public_endpoint": f"{ip}:{GW_WG_PORT}"})
    agent = api.post("agents", {"name": "bench"})
    base = {"hostname": HOST, "agent_id": agent["id"], "target": f"{ip}:{ORIGIN_PORT}"}
    extra = {"tls": "internal", "https_redirect": False} if https else {"tls": "off"}
    try:
        api.post("tunnels", {**base, **extra})
    except BenchError as e:
        if "400" not in str(e):
            raise
        api.post("tunnels", base)  # a Control without per-tunnel TLS settings
    help_text = run([bins["kakuremichi"], "gateway", "--help"])
    tcp = "--ports-listen-ip" in help_text
    if tcp:  # raw TCP to iperf3's server, on the Gateway's address
        api.post("tunnels", {"hostname": f"iperf.{HOST}", "agent_id": agent["id"],
                             "target": f"{ip}:{IPERF_PORT}", "protocol": "tcp",
                             "public_port": KMI_TCP_PORT})
    args = [bins["kakuremichi"], "gateway", "--http-listen", f"{ip}:{GW_HTTP_PORT}",
            "--wg-listen", f"{ip}:{GW_WG_PORT}", "--admin-listen", f"{ip}:{GW_ADMIN_PORT}",
            "--data-dir", f"{env.work}/gateway"]
    if https:
        args += ["--https-listen", f"{ip}:{GW_HTTPS_PORT}"]
    if tcp:
        args += ["--ports-listen-ip", ip]
    common = {"CONTROL_URL": control_url, "KAKUREMICHI_LOG": "warn"}
    # The load generators are one client address opening up to 10,000 connections (`scale`): lift
    # the per-client cap, a defence against one attacker, which is not what the bench measures,
    # and the per-listener one (10,000, which wrk -c10000 would reach exactly).
    gw_env = {**common, "GATEWAY_TOKEN": gw["token"], "KAKUREMICHI_MAX_CONNS_PER_IP": "100000",
              "KAKUREMICHI_MAX_CONNS": "100000"}
    gwp = env.spawn("gateway", args, env=gw_env)
    agp = env.spawn("agent", [bins["kakuremichi"], "agent", "--data-dir", f"{env.work}/agent"],
                    env={**common, "API_KEY": agent["api_key"]})
    pids = {"gateway": gwp.pid, "agent": agp.pid}
    plain = Ref("kakuremichi", "http", ip, GW_HTTP_PORT, pids=pids, tcp_port=KMI_TCP_PORT if tcp else None)
    wait_until("the tunnel (bench.test through the Gateway)", lambda: http_ok(env, plain), 60,
               interval=0.25, env=env)
    without = None
    if "--request-metrics" in help_text:
        ip2 = private_loopback()
        gw2 = api.post("gateways", {"name": "bench-no-metrics", "public_endpoint": f"{ip2}:{GW_WG_PORT}"})
        args2 = [a.replace(ip, ip2) for a in args] + ["--request-metrics", "off"]
        args2[args2.index("--data-dir") + 1] = f"{env.work}/gateway-no-metrics"
        gw2p = env.spawn("gateway-no-metrics", args2, env={**gw_env, "GATEWAY_TOKEN": gw2["token"]})
        without = Ref("no-metrics", "http", ip2, GW_HTTP_PORT, pids={"gateway": gw2p.pid})
        wait_until("the tunnel through the Gateway without metrics", lambda: http_ok(env, without), 60,
                   interval=0.25, env=env)
    if not https:
        log("the Gateway has no --https-listen yet: kakuremichi is measured over plain HTTP")
        return plain, without
    tls = Ref("kakuremichi", "https", ip, GW_HTTPS_PORT, pids=pids, tcp_port=plain.tcp_port)
    try:
        wait_until("HTTPS on the Gateway", lambda: http_ok(env, tls), 30, interval=0.25, env=env)
    except BenchError as e:
        log(f"{e}; kakuremichi is measured over plain HTTP")
        return plain, without
    if without:
        without = Ref("no-metrics", "https", without.ip, GW_HTTPS_PORT, pids=without.pids)
        wait_until("HTTPS on the Gateway without metrics", lambda: http_ok(env, without), 30,
                   interval=0.25, env=env)
    return tls, without


def start_gateway(env, bins, control_url, ip, name):
    """One more Gateway process on `ip`, attached to the Control at `control_url` (created there
    through the API, as `start_kakuremichi` does), with the load generators' caps lifted. Returns
    (its process, its Ref over HTTPS when it has --https-listen, its admin URL) once Control sees
    it online; it serves every tunnel of that Control."""
    api = Api(control_url)
    gw = api.post("gateways", {"name": name, "public_endpoint": f"{ip}:{GW_WG_PORT}"})
    https = gateway_has_https(bins)
    args = [bins["kakuremichi"], "gateway", "--http-listen", f"{ip}:{GW_HTTP_PORT}",
            "--wg-listen", f"{ip}:{GW_WG_PORT}", "--admin-listen", f"{ip}:{GW_ADMIN_PORT}",
            "--data-dir", f"{env.work}/{name}"]
    if https:
        args += ["--https-listen", f"{ip}:{GW_HTTPS_PORT}"]
    proc = env.spawn(name, args, env={
        "CONTROL_URL": control_url, "GATEWAY_TOKEN": gw["token"], "KAKUREMICHI_LOG": "warn",
        "KAKUREMICHI_MAX_CONNS_PER_IP": "100000", "KAKUREMICHI_MAX_CONNS": "100000"})
    wait_until(f"{name} online at Control", lambda: api.get(f"gateways/{gw['id']}")["status"] == "online",
               30, interval=0.25, env=env)
    ref = Ref("kakuremichi", "https" if https else "http", ip, GW_HTTPS_PORT if https else GW_HTTP_PORT,
              pids={"gateway": proc.pid})
    return proc, ref, f"http://{ip}:{GW_ADMIN_PORT}"


def wireguard_peers(admin_url):
    """How many WireGuard peers (up and down) a Gateway has, from its /metrics; None before its
    device reports any."""
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    counts = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("kakuremichi_wireguard_peers{")]
    return int(sum(counts)) if counts else None


def start_iperf3(env, ip):
    """iperf3's server, what every raw-TCP reference ends at."""
    env.spawn("iperf3-server", ["iperf3", "-s", "-B", ip, "-p", str(IPERF_PORT)])
    ref = Ref("direct", "tcp", ip, IPERF_PORT)
    wait_until("iperf3's server", lambda: tcp_open(ip, IPERF_PORT), 20, env=env)
    return ref


def tcp_open(ip, port):
    import socket
    try:
        socket.create_connection((ip, port), timeout=1).close()
        return True
    except OSError:
        return False


def cargo_binary(name):
    """A tool from `cargo install` (on PATH or in ~/.cargo/bin), or None."""
    import shutil
    return shutil.which(name) or next(
        (p for p in [os.path.expanduser(f"~/.cargo/bin/{name}")] if os.access(p, os.X_OK)), None)


def rathole_binary():
    return cargo_binary("rathole")


def start_rathole(env, ip, port=RATHOLE_PORT, local=None, control_port=RATHOLE_CONTROL_PORT, name="rathole"):
    """rathole's server and client on loopback, one service from `ip:port` to `local` (default
    iperf3's server), over its Noise transport (encrypted, as WireGuard is): the tunnel people pick
    for raw TCP, and behind nginx for HTTP."""
    exe = rathole_binary()
    local = local or f"{ip}:{IPERF_PORT}"
    keys = run([exe, "--genkey"])
    lines = [line.strip() for line in keys.splitlines() if line.strip()]
    private = lines[lines.index("Private Key:") + 1]
    public = lines[lines.index("Public Key:") + 1]
    w = env.work
    with open(f"{w}/{name}-server.toml", "w") as f:
        f.write(f'''[server]
bind_addr = "{ip}:{control_port}"
[server.transport]
type = "noise"
[server.transport.noise]
local_private_key = "{private}"
[server.services.bench]
token = "bench"
bind_addr = "{ip}:{port}"
''')
    with open(f"{w}/{name}-client.toml", "w") as f:
        f.write(f'''[client]
remote_addr = "{ip}:{control_port}"
[client.transport]
type = "noise"
[client.transport.noise]
remote_public_key = "{public}"
[client.services.bench]
token = "bench"
local_addr = "{local}"
''')
    pids = {side: env.spawn(f"{name}-{side}", [exe, f"--{side}", f"{w}/{name}-{side}.toml"]).pid
            for side in ("server", "client")}
    wait_until(f"{name}'s service port", lambda: tcp_open(ip, port), 20, env=env)
    return Ref("rathole", "tcp", ip, port, pids={f"rathole-{side}": pid for side, pid in pids.items()})


def start_bore(env, ip):
    """bore (`cargo install bore-cli`): its server and `bore local` on loopback, forwarding one
    port to iperf3's server. Plain TCP inside (bore does not encrypt)."""
    exe = cargo_binary("bore")
    env.spawn("bore-server", [exe, "server", "--bind-addr", ip, "--bind-tunnels", ip,
                              "--min-port", str(BORE_PORT), "--max-port", str(BORE_PORT)])
    wait_until("bore's server", lambda: tcp_open(ip, 7835), 20, env=env)
    env.spawn("bore-local", [exe, "local", str(IPERF_PORT), "--local-host", ip, "--to", ip,
                             "--port", str(BORE_PORT)])
    wait_until("bore's tunnel port", lambda: tcp_open(ip, BORE_PORT), 20, env=env)
    return Ref("bore", "tcp", ip, BORE_PORT)


def settle(seconds):
    time.sleep(seconds)
