//! Real servers that `tcp` and `tls` tunnels carry to, each started in its own temporary
//! directory on a free loopback port, ready when it answers, killed when dropped: PostgreSQL
//! (with `psql` and `pgbench` as its clients), nginx's `stream` module reading the PROXY
//! protocol, an SMTP server with STARTTLS (Python's `aiosmtpd`) and a TLS server with its own
//! certificate (`openssl s_server`).

use crate::eventually;
use crate::peers::{can_run, find_in_path, is_root};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

const START: Duration = Duration::from_secs(30);

/// The directory of PostgreSQL's server programs (`initdb`, `postgres`: not on `PATH` on Debian).
fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("postgres").is_file() && d.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Returns false (after a loud SKIPPED line) when a program of `needs` is missing and peers are
/// optional. `postgres` stands for PostgreSQL's server programs, `aiosmtpd` for the module.
pub fn available(test: &str, needs: &[&str]) -> bool {
    let missing: Vec<&str> = needs
        .iter()
        .copied()
        .filter(|n| match *n {
            "postgres" => pg_bin().is_none(),
            "aiosmtpd" => !std::process::Command::new("python3")
                .args(["-c", "import aiosmtpd"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "nginx-stream" => !Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").is_file(),
            program => find_in_path(&[program]).is_none(),
        })
        .collect();
    let why = format!(
        "{} not installed (sudo apt-get install -y postgresql python3-aiosmtpd nginx \
         libnginx-mod-stream openssl)",
        missing.join(", ")
    );
    can_run(test, (!missing.is_empty()).then_some(why))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs `program args`; panics with its output unless it succeeds.
pub async fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Waits until something accepts TCP connections on `addr`.
async fn wait_listening(addr: SocketAddr, what: &str, log: &Path) {
    let what = format!("{what} listening on {addr} (log: {log:?})");
    eventually(START, &what, || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
}

/// A self-signed certificate for `name` (ECDSA P-256): `(cert.pem, key.pem)` in `dir`.
pub async fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    )
    .await;
    (cert, key)
}

/// PostgreSQL with trust authentication for `postgres` on `127.0.0.1:port`, run as the
/// unprivileged `postgres` user when the test runs as root (the server refuses root).
pub struct Postgres {
    pub addr: SocketAddr,
    child: Child,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub async fn start() -> Postgres {
        Self::start_inner(None).await
    }

    /// A server that also accepts TLS, with a certificate for `localhost` and 127.0.0.1 signed
    /// by a throwaway CA, whose PEM is written to `ca` (for `sslrootcert=`).
    pub async fn start_tls(ca: &Path) -> Postgres {
        let (cert, key, root) = crate::pebble::server_certificate();
        std::fs::write(ca, root).unwrap();
        Self::start_inner(Some((cert, key))).await
    }

    async fn start_inner(tls: Option<(String, String)>) -> Postgres {
        let bin = pg_bin().expect("PostgreSQL installed");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if is_root() {
            for d in [dir.path(), &data] {
                std::os::unix::fs::chown(d, Some(postgres_uid()), None).unwrap();
            }
        }
        let out = as_postgres(&bin.join("initdb"), dir.path())
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "-D"])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        if let Some((cert, key)) = tls {
            // The server reads them from its data directory; the key must be its own, 0600.
            use std::os::unix::fs::PermissionsExt;
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
                if is_root() {
                    std::os::unix::fs::chown(&path, Some(postgres_uid()), None).unwrap();
                }
            }
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Self::server(&bin, dir.path(), addr).await;
        Postgres {
            addr,
            child,
            bin,
            _dir: dir,
        }
    }

    /// The server on `addr` over the cluster in `dir`, once it answers.
    async fn server(bin: &Path, dir: &Path, addr: SocketAddr) -> Child {
        let data = dir.join("data");
        let log = dir.join("postgres.log");
        let child = spawn(
            as_postgres(&bin.join("postgres"), dir)
                .arg("-D")
                .arg(&data)
                .args(["-k", data.to_str().unwrap(), "-p", &addr.port().to_string()])
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .args(["-c", "max_connections=50"])
                .args(if data.join("server.key").exists() {
                    &["-c", "ssl=on"][..]
                } else {
                    &[]
                }),
            &log,
        );
        let what = format!("PostgreSQL on {addr} (log: {log:?})");
        eventually(START, &what, || async move {
            psql(addr, "SELECT 1").await.is_ok()
        })
        .await;
        child
    }

    /// Restarts the server as an operator's `systemctl restart` does (a fast shutdown: every
    /// client connection is cut), same data and address; returns once it answers again.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Starts the server stopped by [`Postgres::stop`] again; returns once it answers.
    pub async fn start_again(&mut self) {
        self.child = Self::server(&self.bin, self._dir.path(), self.addr).await;
    }

    /// Stops the server with a fast shutdown (every client connection is cut); returns once
    /// it no longer answers.
    pub async fn stop(&mut self) {
        // The postmaster's pid (the child may be `runuser`, which does not pass signals on).
        let data = self._dir.path().join("data");
        let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
        let pid = pid_file.lines().next().unwrap().trim().to_string();
        // SIGINT: PostgreSQL's fast shutdown.
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -INT {pid}");
        tokio::time::timeout(START, self.child.wait())
            .await
            .expect("PostgreSQL stops on SIGINT")
            .unwrap();
        assert!(psql(self.addr, "SELECT 1").await.is_err(), "PostgreSQL is down");
    }
}

/// `program` as the `postgres` user when the test runs as root, run in `dir`.
fn as_postgres(program: &Path, dir: &Path) -> Command {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.current_dir(dir);
    cmd
}

fn postgres_uid() -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres")).then(|| f[2].parse().unwrap())
        })
        .expect("a postgres user (the postgresql package creates it)")
}

/// `psql -At -c sql` against `addr` as `postgres`: the output's text, or what went wrong.
pub async fn psql(addr: SocketAddr, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "postgres"])
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// nginx's `stream` module on `127.0.0.1:port`, expecting the PROXY protocol (v1 or v2, nginx
/// reads both) from whoever connects, and answering with the client address the header gave:
/// `"<addr> <port>\n"`, then closing.
pub struct ProxyEcho {
    pub addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl ProxyEcho {
    pub async fn start() -> ProxyEcho {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let d = dir.path().display();
        let conf = format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n{user}\
             events {{ worker_connections 64; }}\n\
             stream {{\n  proxy_protocol_timeout 2s;\n  server {{\n    listen {addr} proxy_protocol;\n\
             \x20   return \"$proxy_protocol_addr $proxy_protocol_port\\n\";\n  }}\n}}\n",
            user = if is_root() { "user root;\n" } else { "" },
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let log = dir.path().join("nginx.out");
        let child = spawn(
            Command::new("nginx")
                .arg("-c")
                .arg(&path)
                .arg("-p")
                .arg(dir.path())
                .args(["-e", &format!("{d}/error.log")]),
            &log,
        );
        wait_listening(addr, "nginx (stream, proxy_protocol)", &log).await;
        ProxyEcho {
            addr,
            _child: child,
            _dir: dir,
        }
    }
}

/// An SMTP server (aiosmtpd) on `127.0.0.1:port` that requires STARTTLS with its own
/// certificate (`cert`, for `mail.test`) and writes each message it receives to `inbox` as
/// `<n>.eml`, with a first line `tls=<cipher or none>`.
pub struct Smtp {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub inbox: PathBuf,
    _child: Child,
    _dir: tempfile::TempDir,
}

const SMTP_SERVER: &str = r#"
import asyncio, os, ssl, sys
from aiosmtpd.controller import Controller

cert, key, inbox, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

class Inbox:
    def __init__(self):
        self.n = 0
    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        cipher = session.ssl["cipher"][0] if session.ssl else "none"
        path = os.path.join(inbox, f"{self.n}.eml")
        with open(path + ".part", "wb") as f:
            f.write(f"tls={cipher}\nfrom={envelope.mail_from}\nto={','.join(envelope.rcpt_tos)}\n".encode())
            f.write(envelope.content)
        os.rename(path + ".part", path)
        return "250 Message accepted"

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
controller = Controller(Inbox(), hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True)
controller.start()
print("ready", flush=True)
asyncio.get_event_loop().run_until_complete(asyncio.Event().wait())
"#;

impl Smtp {
    pub async fn start() -> Smtp {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate(dir.path(), "mail.test").await;
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).unwrap();
        let script = dir.path().join("smtpd.py");
        std::fs::write(&script, SMTP_SERVER).unwrap();
        let port = free_port();
        let log = dir.path().join("smtpd.log");
        let child = spawn(
            Command::new("python3")
                .arg(&script)
                .args([&cert, &key, &inbox])
                .arg(port.to_string()),
            &log,
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(addr, "aiosmtpd", &log).await;
        Smtp {
            addr,
            cert,
            inbox,
            _child: child,
            _dir: dir,
        }
    }

    /// The messages received so far, oldest first.
    pub fn received(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.inbox)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

/// Sends one message with Python's `smtplib` to `addr`, after STARTTLS verified against `cert`
/// (the server's own, for `mail.test`); returns smtplib's error text on failure.
pub async fn send_mail(addr: SocketAddr, cert: &Path, subject: &str) -> Result<(), String> {
    const CLIENT: &str = r#"
import smtplib, ssl, sys
host, port, cafile, subject = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False  # connected by address; the chain is still verified
with smtplib.SMTP(host, port, timeout=10) as s:
    s.ehlo("laptop.test")
    s.starttls(context=ctx)
    s.ehlo("laptop.test")
    s.sendmail("alice@laptop.test", ["bob@mail.test"], f"Subject: {subject}\r\n\r\nHello through the tunnel.\r\n")
"#;
    let out = Command::new("python3")
        .args(["-c", CLIENT])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(cert)
        .arg(subject)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `openssl s_server` on `127.0.0.1:port` with its own certificate for `name`, answering
/// `GET /` with its status page (`-www`).
pub struct TlsServer {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl TlsServer {
    pub async fn start(name: &str) -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate(dir.path(), name).await;
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.path().join("s_server.log");
        let child = spawn(
            Command::new("openssl")
                .args(["s_server", "-www", "-accept", &addr.to_string()])
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key),
            &log,
        );
        wait_listening(addr, "openssl s_server", &log).await;
        TlsServer {
            addr,
            cert,
            _child: child,
            _dir: dir,
        }
    }
}

/// `openssl s_client -connect addr -servername name`, verifying against `ca`, sending `GET /`:
/// everything it printed (the peer certificate's subject, the verification result, the answer).
pub async fn s_client(addr: SocketAddr, name: &str, ca: &Path) -> String {
    use tokio::io::AsyncWriteExt as _;
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-servername", name])
        .args(["-verify_return_error", "-ign_eof", "-CAfile"])
        .arg(ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    drop(stdin);
    let out = crate::within(Duration::from_secs(20), "openssl s_client", child.wait_with_output())
        .await
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A real Prometheus server scraping `targets` (their `/metrics`) every 200 ms, with its data
/// in a temporary directory; PromQL through its HTTP API.
pub struct Prometheus {
    pub addr: SocketAddr,
    http: reqwest::Client,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n\
                 scrape_configs:\n  - job_name: kakuremichi\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.path().join("prometheus.log");
        let child = spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .current_dir(dir.path()),
            &log,
        );
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let ready = format!("http://{addr}/-/ready");
        eventually(START, &format!("Prometheus ready (log: {log:?})"), || async {
            http.get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        Prometheus {
            addr,
            http,
            _child: child,
            _dir: dir,
        }
    }

    /// An instant PromQL query: each series' labels and value.
    pub async fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let answer: serde_json::Value = self
            .http
            .get(url)
            .query(&[("query", promql)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let value = s["value"][1].as_str().and_then(|v| v.parse().ok());
                (s["metric"].clone(), value.unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// The value of a query that yields one series, `None` while it yields none.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        self.query(promql).await.first().map(|(_, v)| *v)
    }
}
