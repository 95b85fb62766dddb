//! The command line as a user runs it (issue #17): `kakuremichi login` in a pseudo-terminal,
//! approved in Debian's chromium; then the management commands against the same Control, each
//! checked through the API (`--json` parses; bad input exits 2 and changes nothing); then
//! `logout` revokes the token. `KAKUREMICHI_TOKEN` with `--control-url` works without a profile.

use kakuremichi_testkit::browser::Browser;
use kakuremichi_testkit::control::{self, Control};
use kakuremichi_testkit::pty::Pty;
use kakuremichi_testkit::{ADMIN_EMAIL, ADMIN_PASSWORD};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

/// The binary with a home of its own: no profile but what this test makes.
fn kakuremichi(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kakuremichi"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("KAKUREMICHI_LOG", "warn");
    cmd
}

/// Runs `kakuremichi <args>`; its output.
fn run(home: &Path, args: &[&str]) -> Output {
    kakuremichi(home)
        .args(args)
        .output()
        .expect("run kakuremichi")
}

/// Runs `kakuremichi <args> --json`, which must succeed; the JSON it printed.
fn json(home: &Path, args: &[&str]) -> Value {
    let out = run(home, &[args, &["--json"]].concat());
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)))
}

/// `tunnels create` of `hostname` for `agent`, with `target` (`None` leaves `--target` out) and
/// `more` flags.
fn create_args<'a>(
    (hostname, agent): (&'a str, &'a str),
    target: Option<&'a str>,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "tunnels",
        "create",
        "--hostname",
        hostname,
        "--agent",
        agent,
    ];
    if let Some(t) = target {
        args.extend(["--target", t]);
    }
    args.extend(more);
    args
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn tunnels(c: &Control) -> Vec<Value> {
    c.tunnel_records().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_in_a_terminal_approved_in_the_browser_then_every_command_then_logout() {
    kakuremichi_testkit::init_logs();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some((driver, chromium)) = kakuremichi_testkit::browser::binaries(module_path!()) else {
        return;
    };
    let (_dir, data) = control::data_dir();
    let c = control::start(&data).await;
    let base = c.url("");
    let home = tempfile::tempdir().unwrap();
    let home = home.path();

    // Not logged in yet: a clear message, exit 2.
    let out = run(home, &["tunnels", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("kakuremichi login"), "{}", text(&out));

    // login prints the link and the code, and waits.
    let mut term = Pty::spawn(kakuremichi(home).args(["login", &base, "--no-browser"]));
    let shown = term.expect("approve the code", WITHIN).await;
    let link = shown
        .split_whitespace()
        .find(|w| w.contains("/device?code="))
        .unwrap_or_else(|| panic!("no link in {shown}"))
        .to_string();
    assert!(link.starts_with(&base), "{link}");
    let code = link.rsplit('=').next().unwrap();
    assert!(shown.contains(&format!("code  {code}")), "{shown}");

    // The user opens it: signs in, sees the same code, approves.
    let b = Browser::start(&driver, &chromium, "MAP cli.test 127.0.0.1").await;
    b.client.goto(&link).await.unwrap();
    b.wait_path("/login").await;
    b.fill("input[name=email]", ADMIN_EMAIL).await;
    b.fill("input[name=password]", ADMIN_PASSWORD).await;
    b.click("button[type=submit]").await;
    b.wait_path("/device").await;
    assert_eq!(b.text("#user-code").await, code);
    b.shot("cli-01-approve-device").await;
    b.click("#approve").await;
    b.wait_text("#device h1", "Command line signed in", WITHIN)
        .await;
    b.shot("cli-02-device-approved").await;
    b.close().await;

    let status = term.exit(WITHIN).await;
    let said = term.output();
    assert!(status.success(), "{said}");
    assert!(
        said.contains(&format!("Logged in to {base} as {ADMIN_EMAIL}")),
        "{said}"
    );
    let profiles = home.join("config/kakuremichi/profiles.json");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&profiles).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "profiles are private");
    let kept: Value = serde_json::from_slice(&std::fs::read(&profiles).unwrap()).unwrap();
    let name = kept["current"].as_str().unwrap().to_string();
    let token = kept["profiles"][&name]["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(name, base.trim_start_matches("http://"));
    let me = c.call_with(&token, "GET", "/api/v1/auth/me", None).await;
    assert_eq!(
        me.body["user"]["email"], ADMIN_EMAIL,
        "the kept token works"
    );

    // Agents and tunnels, checked through the API.
    let agent = json(home, &["agents", "create", "home"]);
    assert!(
        agent["api_key"].as_str().unwrap().starts_with("kma_"),
        "{agent}"
    );
    let out = run(home, &["agents", "create", "laptop"]);
    assert!(out.status.success(), "{}", text(&out));
    for expect in [
        "API_KEY: kma_",
        &format!("CONTROL_URL: {base}"),
        "kakuremichi-agent:",
    ] {
        assert!(text(&out).contains(expect), "{expect}: {}", text(&out));
    }
    let create = create_args(("app.test", "home"), Some("127.0.0.1:9"), &["--tls", "off"]);
    let out = run(home, &create);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Created tunnel"), "{}", text(&out));
    let made = tunnels(&c).await;
    assert_eq!(made.len(), 1);
    assert_eq!(made[0]["hostname"], "app.test");
    assert_eq!(made[0]["agent_id"], agent["id"]);
    assert_eq!(made[0]["target"], "127.0.0.1:9");

    let listed = json(home, &["tunnels", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let out = run(home, &["tunnels", "list"]);
    let table = text(&out);
    assert!(
        table.contains("HOSTNAME") && table.contains("app.test"),
        "{table}"
    );
    let shown = json(home, &["tunnels", "show", "app.test"]);
    let out = run(home, &["open", "app.test", "--no-browser"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "http://app.test/"
    );
    assert_eq!(shown["id"], made[0]["id"]);

    let edited = json(
        home,
        &["tunnels", "edit", "app.test", "--target", "127.0.0.1:10"],
    );
    assert_eq!(edited["target"], "127.0.0.1:10");
    json(home, &["tunnels", "disable", "app.test"]);
    assert_eq!(tunnels(&c).await[0]["enabled"], false);
    json(home, &["tunnels", "enable", &made[0]["id"].to_string()]);
    assert_eq!(tunnels(&c).await[0]["enabled"], true);

    // Bad input: exit 2, a message that says what is wrong, nothing changed.
    let before = tunnels(&c).await;
    let target = Some("127.0.0.1:9");
    for (args, says) in [
        (
            create_args(("x.test", "home"), target, &["--tls", "sometimes"]),
            "sometimes",
        ),
        (create_args(("x.test", "nobody"), target, &[]), "no Agent"),
        (create_args(("x.test", "home"), None, &[]), "--target"),
        (
            create_args(("not a host", "home"), target, &[]),
            "Control refused",
        ),
        (create_args(("app.test", "home"), target, &[]), "HTTP 409"),
        (vec!["tunnels", "show", "nothing.test"], "no tunnel"),
        (vec!["tunnels", "edit", "app.test"], "nothing to change"),
        (
            vec!["tunnels", "edit", "app.test", "--access", "everyone"],
            "users:",
        ),
        (vec!["tunnels", "delete", "999"], "HTTP 404"),
    ] {
        let out = run(home, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    assert_eq!(tunnels(&c).await, before, "bad input changed nothing");

    // status: no Gateway and an offline Agent need attention → exit status 1.
    let out = run(home, &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("Needs attention") && text(&out).contains("Agent home is offline"),
        "{}",
        text(&out)
    );
    let out = run(home, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["agents"]["total"], 2);

    // Gateways, users and tokens.
    let gateway = json(
        home,
        &[
            "gateways",
            "create",
            "edge-1",
            "--public-endpoint",
            "127.0.0.1:51820",
        ],
    );
    assert!(
        gateway["token"].as_str().unwrap().starts_with("kmg_"),
        "{gateway}"
    );
    json(home, &["gateways", "disable", "edge-1"]);
    let (_, gws) = c.get("/api/v1/gateways").await;
    assert_eq!(gws[0]["enabled"], false);
    let users = json(home, &["users", "list"]);
    assert!(users.to_string().contains(ADMIN_EMAIL));
    let made_token = json(home, &["tokens", "create", "backup-script"]);
    assert!(made_token["token"].as_str().unwrap().starts_with("kmt_"));
    let listed = json(home, &["tokens", "list"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"backup-script")
            && names.iter().any(|n| n.starts_with("kakuremichi CLI on")),
        "{names:?}"
    );
    json(home, &["tokens", "delete", "backup-script"]);
    let gone = c
        .call_with(
            made_token["token"].as_str().unwrap(),
            "GET",
            "/api/v1/auth/me",
            None,
        )
        .await;
    assert_eq!(gone.status, reqwest::StatusCode::UNAUTHORIZED);

    // open prints the URL (Gateway ports are not reported by a Gateway that never ran: none).
    json(home, &["tunnels", "delete", "app.test"]);
    assert!(tunnels(&c).await.is_empty());
    json(home, &["agents", "delete", "laptop"]);
    json(home, &["gateways", "delete", "edge-1"]);

    // A CI job: a token and the URL, no profile.
    let ci_home = tempfile::tempdir().unwrap();
    let out = kakuremichi(ci_home.path())
        .env("KAKUREMICHI_TOKEN", &c.token)
        .args(["agents", "list", "--json", "--control-url", &base])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let agents: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(agents[0]["name"], "home");

    // logout revokes the token on Control and forgets the profile.
    let out = run(home, &["logout"]);
    assert!(out.status.success(), "{}", text(&out));
    let me = c.call_with(&token, "GET", "/api/v1/auth/me", None).await;
    assert_eq!(
        me.status,
        reqwest::StatusCode::UNAUTHORIZED,
        "the token is revoked"
    );
    let kept: Value = serde_json::from_slice(&std::fs::read(&profiles).unwrap()).unwrap();
    assert_eq!(kept["profiles"], serde_json::json!({}));
    let out = run(home, &["tunnels", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn completions_and_man_pages_come_from_the_same_definition() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(home, &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("tunnels") && script.contains("control-url"),
            "{shell}: {script}"
        );
    }
    let out = run(home, &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let pages = home.join("man");
    let out = run(home, &["man", "--out-dir", pages.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for page in [
        "kakuremichi.1",
        "kakuremichi-login.1",
        "kakuremichi-tunnels-create.1",
    ] {
        let text =
            std::fs::read_to_string(pages.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is a man page");
    }
}

/// `--version` says which commit and which target the binary was built from (issue #20): what a
/// bug report and a release asset need.
#[test]
fn version_names_the_commit_and_the_target() {
    let home = tempfile::tempdir().unwrap();
    let out = run(home.path(), &["--version"]);
    assert!(out.status.success(), "{}", text(&out));
    let line = String::from_utf8_lossy(&out.stdout);
    let expected_start = format!("kakuremichi {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&expected_start), "{line}");
    let inside = line.trim().strip_prefix(&expected_start).unwrap();
    let (commit, target) = inside.strip_suffix(')').unwrap().split_once(", ").unwrap();
    // Built from a git checkout (as here), the commit is HEAD's; "unknown" only from a tarball.
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert!(
            commit.len() == 12 && head.starts_with(commit),
            "{line} (HEAD {head})"
        ),
        None => assert_eq!(commit, "unknown", "{line}"),
    }
    assert!(
        target.contains(std::env::consts::ARCH) && target.contains(std::env::consts::OS),
        "{line}"
    );
}
