//! Real authoritative DNS servers for the DNS provider tests: BIND9 (`named`, RFC 2136 with TSIG)
//! and PowerDNS (`pdns_server` with its HTTP API and the SQLite backend), each started in its own
//! temporary directory on free loopback ports, ready when it answers, killed when dropped. Both
//! serve [`ZONE`], which holds one record the tests did not write ([`NOT_OURS`]). [`dig`] is the
//! independent check of what a server really serves.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use tokio::process::{Child, Command};

use crate::eventually;

/// The zone both servers serve.
pub const ZONE: &str = "example.test";
/// A record put in the zone by the test set-up, not by a provider: it must survive.
pub const NOT_OURS: (&str, &str) = ("keep.example.test", "192.0.2.99");
/// The TSIG key allowed to change anything in [`ZONE`] on BIND.
pub const KEY_NAME: &str = "kakuremichi-test.";
/// A second key, allowed only TXT records at `only.example.test` (to provoke a policy refusal).
pub const LIMITED_KEY_NAME: &str = "kakuremichi-limited.";
const START: Duration = Duration::from_secs(20);

/// Returns false (after a loud SKIPPED line) when BIND or dig is missing and peers are optional.
pub fn bind_available(test: &str) -> bool {
    let found = crate::peers::find_in_path(&["named"]).is_some()
        && crate::peers::find_in_path(&["dig"]).is_some();
    let why = "named / dig not installed (sudo apt-get install -y bind9 bind9-dnsutils)";
    crate::peers::can_run(test, (!found).then(|| why.to_string()))
}

/// Returns false (after a loud SKIPPED line) when PowerDNS, its SQLite backend, sqlite3 or dig
/// is missing and peers are optional.
pub fn powerdns_available(test: &str) -> bool {
    let found = crate::peers::find_in_path(&["pdns_server"]).is_some()
        && crate::peers::find_in_path(&["sqlite3"]).is_some()
        && crate::peers::find_in_path(&["dig"]).is_some()
        && Path::new(PDNS_SCHEMA).is_file();
    let why = "pdns_server / sqlite3 / dig not installed (sudo apt-get install -y pdns-server \
               pdns-backend-sqlite3 sqlite3 bind9-dnsutils)";
    crate::peers::can_run(test, (!found).then(|| why.to_string()))
}

const PDNS_SCHEMA: &str = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql";

/// A port free for both UDP and TCP on 127.0.0.1 (DNS listens on both).
pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A fresh random TSIG secret (32 bytes, base64 as BIND writes it).
pub fn tsig_secret() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// What `dig` finds at `name` `kind` on `127.0.0.1:port`, one value a line (`+short`), sorted.
pub async fn dig(port: u16, name: &str, kind: &str) -> Vec<String> {
    dig_at(Ipv4Addr::LOCALHOST, port, name, kind).await
}

/// [`dig`] on `ip:port`.
pub async fn dig_at(ip: Ipv4Addr, port: u16, name: &str, kind: &str) -> Vec<String> {
    try_dig(ip, port, name, kind)
        .await
        .unwrap_or_else(|e| panic!("dig {name} {kind} on {ip}:{port}: {e}"))
}

/// [`dig`], or what went wrong (no answer yet, say).
async fn try_dig(ip: Ipv4Addr, port: u16, name: &str, kind: &str) -> Result<Vec<String>, String> {
    let out = Command::new("dig")
        .args(["+short", "+norecurse", "+time=2", "+tries=1", "-p"])
        .arg(port.to_string())
        .arg(format!("@{ip}"))
        .args([name, kind])
        .output()
        .await
        .map_err(|e| format!("cannot run dig: {e}"))?;
    if !out.status.success() {
        return Err(format!("{out:?}"));
    }
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(';') && !l.is_empty())
        .map(str::to_owned)
        .collect();
    lines.sort();
    Ok(lines)
}

/// Waits until the server on `ip:port` answers `zone`'s SOA.
async fn wait_for_soa(ip: Ipv4Addr, port: u16, zone: &str, log: &Path) {
    let what = format!("the DNS server on {ip}:{port} to serve {zone} (log: {log:?})");
    eventually(START, &what, move || async move {
        try_dig(ip, port, zone, "SOA")
            .await
            .is_ok_and(|lines| !lines.is_empty())
    })
    .await;
}

/// BIND9 serving [`ZONE`] with updates allowed for [`KEY_NAME`].
pub struct Bind {
    /// `ip:port`, for the `server` of an `rfc2136` config.
    pub server: String,
    pub port: u16,
    /// [`KEY_NAME`]'s secret (hmac-sha256), and [`LIMITED_KEY_NAME`]'s.
    pub key_secret: String,
    pub limited_secret: String,
    _child: Child,
    _dir: tempfile::TempDir,
}

/// What [`Bind::start_serving`] serves, and where.
pub struct BindSetup<'a> {
    /// The address it listens on (port 53 on an address of its own needs root).
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Each zone gets an SOA and `ns1.<zone>` (A: `ip`) as its name server; [`KEY_NAME`] may
    /// change anything in it.
    pub zones: &'a [&'a str],
    /// More records, `(zone, line)` with the line in zone-file syntax and absolute names.
    pub records: &'a [(&'a str, &'a str)],
    /// Also a resolver: answers with recursion, so a CNAME from one of its zones into another
    /// is followed (BIND's authoritative answers stop at the CNAME). It serves an empty root
    /// zone of its own, so a name outside its zones is NXDOMAIN and no query leaves loopback.
    pub recursive: bool,
}

impl Bind {
    /// BIND serving [`ZONE`] (with [`NOT_OURS`]) on a free port of 127.0.0.1.
    pub async fn start() -> Bind {
        let (keep_name, keep_ip) = NOT_OURS;
        let keep = format!("{keep_name}. IN A {keep_ip}");
        Bind::start_serving(BindSetup {
            ip: Ipv4Addr::LOCALHOST,
            port: free_port(),
            zones: &[ZONE],
            records: &[(ZONE, &keep)],
            recursive: false,
        })
        .await
    }

    pub async fn start_serving(setup: BindSetup<'_>) -> Bind {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let (ip, port) = (setup.ip, setup.port);
        let (key_secret, limited_secret) = (tsig_secret(), tsig_secret());
        let mut zones_conf = String::new();
        for zone in setup.zones {
            let mut text = format!(
                "$TTL 300\n@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 300\n\
                 @ IN NS ns1.{zone}.\nns1 IN A {ip}\n"
            );
            for (_, line) in setup.records.iter().filter(|(z, _)| z == zone) {
                text.push_str(line);
                text.push('\n');
            }
            std::fs::write(dir.path().join(format!("{zone}.db")), text).unwrap();
            // The limited key may only write TXT at only.<ZONE>, to provoke a policy refusal.
            zones_conf.push_str(&format!(
                r#"zone "{zone}" {{
  type primary; file "{d}/{zone}.db";
  update-policy {{ grant {KEY_NAME} zonesub ANY; grant {LIMITED_KEY_NAME} name only.{zone}. TXT; }};
}};
"#
            ));
        }
        let recursion = if setup.recursive {
            std::fs::write(
                dir.path().join("root.db"),
                format!("$TTL 300\n@ IN SOA ns. hostmaster. 1 3600 600 86400 300\n@ IN NS ns.\nns IN A {ip}\n"),
            )
            .unwrap();
            zones_conf.push_str(&format!("zone \".\" {{ type primary; file \"{d}/root.db\"; }};\n"));
            "recursion yes; allow-recursion { any; };"
        } else {
            "recursion no;"
        };
        // `controls {}`: no rndc listener on 953, so several servers can run at once.
        let conf = format!(
            r#"options {{
  directory "{d}"; pid-file none; session-keyfile "{d}/session.key";
  managed-keys-directory "{d}"; listen-on port {port} {{ {ip}; }}; listen-on-v6 {{ none; }};
  {recursion} dnssec-validation no; notify no; allow-query {{ any; }};
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{key_secret}"; }};
key "{LIMITED_KEY_NAME}" {{ algorithm hmac-sha256; secret "{limited_secret}"; }};
{zones_conf}"#
        );
        let conf_path = dir.path().join("named.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("named.log");
        let child = Command::new(crate::peers::find_in_path(&["named"]).expect("named"))
            .args(["-g", "-4", "-n", "1", "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start named");
        for zone in setup.zones {
            wait_for_soa(ip, port, zone, &log).await;
        }
        Bind {
            server: format!("{ip}:{port}"),
            port,
            key_secret,
            limited_secret,
            _child: child,
            _dir: dir,
        }
    }
}

/// PowerDNS Authoritative with its API on loopback and [`ZONE`] created through it.
pub struct PowerDns {
    /// The API's base URL (`http://127.0.0.1:port`).
    pub api_url: String,
    pub api_key: String,
    /// Where it answers DNS (for [`dig`]).
    pub port: u16,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl PowerDns {
    pub async fn start() -> PowerDns {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("pdns.sqlite3");
        let status = std::process::Command::new("sqlite3")
            .arg(&db)
            .stdin(std::fs::File::open(PDNS_SCHEMA).unwrap())
            .status()
            .expect("run sqlite3");
        assert!(status.success(), "sqlite3 could not create the PowerDNS schema");
        std::fs::write(dir.path().join("pdns.conf"), "").unwrap();
        let (port, http_port) = (free_port(), free_port());
        let api_key = crate::dns::tsig_secret();
        let log = dir.path().join("pdns.log");
        let d = dir.path().display();
        // Caches off: a test reads right after it writes, and checks the API, not the cache.
        let child = Command::new(crate::peers::find_in_path(&["pdns_server"]).expect("pdns"))
            .args([
                format!("--config-dir={d}"),
                format!("--socket-dir={d}"),
                "--guardian=no".into(),
                "--daemon=no".into(),
                "--disable-syslog".into(),
                "--write-pid=no".into(),
                "--local-address=127.0.0.1".into(),
                format!("--local-port={port}"),
                "--launch=gsqlite3".into(),
                format!("--gsqlite3-database={}", db.display()),
                "--api=yes".into(),
                format!("--api-key={api_key}"),
                "--webserver=yes".into(),
                "--webserver-address=127.0.0.1".into(),
                format!("--webserver-port={http_port}"),
                "--webserver-allow-from=127.0.0.0/8".into(),
                "--cache-ttl=0".into(),
                "--query-cache-ttl=0".into(),
                "--negquery-cache-ttl=0".into(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start pdns_server");
        let api_url = format!("http://127.0.0.1:{http_port}");
        let http = reqwest::Client::new();
        let zones = format!("{api_url}/api/v1/servers/localhost/zones");
        let what = format!("the PowerDNS API at {api_url} (log: {log:?})");
        eventually(START, &what, || {
            let request = http.get(&zones).header("X-API-Key", &api_key);
            async move {
                let r = request.send().await;
                r.is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        let (keep_name, keep_ip) = NOT_OURS;
        let created = http
            .post(&zones)
            .header("X-API-Key", &api_key)
            .json(&serde_json::json!({
                "name": format!("{ZONE}."), "kind": "Native",
                "nameservers": [format!("ns1.{ZONE}.")],
                "rrsets": [{"name": format!("{keep_name}."), "type": "A", "ttl": 300,
                            "records": [{"content": keep_ip, "disabled": false}]}],
            }))
            .send()
            .await
            .unwrap();
        assert!(
            created.status().is_success(),
            "create {ZONE} in PowerDNS: {}",
            created.text().await.unwrap_or_default()
        );
        wait_for_soa(Ipv4Addr::LOCALHOST, port, ZONE, &log).await;
        PowerDns {
            api_url,
            api_key,
            port,
            _child: child,
            _dir: dir,
        }
    }
}
