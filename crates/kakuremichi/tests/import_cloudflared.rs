//! `kakuremichi control import-cloudflared` as a user leaving Cloudflare Tunnel runs it: the built
//! binary against a running Control, token and URL from the environment. What counts is what the
//! API shows afterwards (exactly the expected tunnels, with their targets and Agent), what the
//! output says about each rule, and the exit status (1 when something was not imported, 2 for
//! bad input with nothing changed).

use kakuremichi_testkit::control::{self, Control};
use kakuremichi_testkit::{bin, client::NewTunnel};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Several hostnames (one already served by kakuremichi), a wildcard and a name it shadows, a path
/// rule, a TCP rule, the catch-all.
const CONFIG: &str = r#"
tunnel: 6ff42ae2-765d-4adf-8112-31c55c1551ef
credentials-file: /root/.cloudflared/6ff42ae2-765d-4adf-8112-31c55c1551ef.json
ingress:
  - hostname: app.example.com
    service: http://localhost:8000
  - hostname: api.example.com
    service: http://127.0.0.1:9000
    originRequest:
      connectTimeout: 10s
  - hostname: static.example.com
    path: ^/assets/
    service: http://localhost:8001
  - hostname: db.example.com
    service: tcp://localhost:5432
  - hostname: taken.example.com
    service: http://localhost:7000
  - hostname: "*.apps.example.com"
    service: http://localhost:8080
  - hostname: late.apps.example.com
    service: http://localhost:8081
  - service: http_status:404
"#;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `kakuremichi control import-cloudflared FILE --agent AGENT EXTRA...` against `c`, with the
/// admin's token in `KAKUREMICHI_TOKEN` (as the docs advise) and the URL in the environment too.
async fn import(c: &Control, file: &Path, agent: &str, extra: &[&str]) -> Run {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["control", "import-cloudflared"])
        .arg(file)
        .args(["--agent", agent])
        .args(extra)
        .env("KAKUREMICHI_CONTROL_URL", format!("http://{}", c.addr))
        .env("KAKUREMICHI_TOKEN", &c.token)
        .env_remove("KAKUREMICHI_LISTEN");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("the kakuremichi binary runs");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    run
}

/// Control with two Agents (`home`, the target of the import, and `other`) and one tunnel that
/// already serves `taken.example.com`. Returns home's id.
async fn control_with_agents(dir: &Path) -> (Control, i64) {
    let c = control::start(dir).await;
    let client = c.client();
    client.create_agent("other").await.unwrap();
    let home = client.create_agent("home").await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let taken = NewTunnel {
        hostname: "taken.example.com".into(),
        agent_id: home,
        target: "localhost:9".into(),
    };
    client.create_tunnel(&taken).await.unwrap();
    (c, home)
}

/// Every tunnel: hostname → the tunnel.
async fn tunnels(c: &Control) -> BTreeMap<String, Value> {
    c.tunnel_records()
        .await
        .into_iter()
        .map(|t| (t["hostname"].as_str().unwrap().to_string(), t))
        .collect()
}

/// The output line of the rule for `hostname`.
fn line<'a>(run: &'a Run, hostname: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(hostname))
        .unwrap_or_else(|| panic!("no line for {hostname} in\n{}", run.stdout))
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_what_has_an_equivalent_and_names_every_rule_left_out() {
    let (dir, data) = control::data_dir();
    let (c, home) = control_with_agents(&data).await;
    let config = write(dir.path(), "config.yml", CONFIG);

    let run = import(&c, &config, "home", &[]).await;
    assert_eq!(
        run.code,
        Some(1),
        "unsupported rules make the exit status 1"
    );

    let all = tunnels(&c).await;
    let got: Vec<(&str, &str, i64)> = all
        .iter()
        .map(|(h, t)| {
            (
                h.as_str(),
                t["target"].as_str().unwrap(),
                t["agent_id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("*.apps.example.com", "localhost:8080", home),
            ("api.example.com", "127.0.0.1:9000", home),
            ("app.example.com", "localhost:8000", home),
            ("taken.example.com", "localhost:9", home),
        ],
        "exactly the importable hostnames; the existing tunnel unchanged"
    );
    assert_eq!(all["app.example.com"]["access"]["mode"], "public");

    assert!(line(&run, "app.example.com").contains("created"));
    let api = line(&run, "api.example.com");
    assert!(
        api.contains("created") && api.contains("connectTimeout ignored"),
        "{api}"
    );
    let static_ = line(&run, "static.example.com");
    assert!(
        static_.contains("unsupported") && static_.contains("path"),
        "{static_}"
    );
    let db = line(&run, "db.example.com");
    assert!(
        db.contains("unsupported") && db.contains("tcp://") && db.contains("raw TCP"),
        "{db}"
    );
    let taken = line(&run, "taken.example.com");
    assert!(
        taken.contains("skipped") && taken.contains("already exists"),
        "{taken}"
    );
    let wildcard = line(&run, "*.apps.example.com");
    assert!(
        wildcard.contains("created") && wildcard.contains("one label below"),
        "{wildcard}"
    );
    let late = line(&run, "late.apps.example.com");
    assert!(
        late.contains("skipped") && late.contains("never reached"),
        "{late}"
    );
    let catch_all = line(&run, "(every");
    assert!(catch_all.contains("not needed: kakuremichi answers 404 for unknown hosts"));
    assert!(run.stdout.contains(r#"for Agent "home""#), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("3 created, 3 skipped, 2 unsupported, 0 failed"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("2 rule(s) not imported"),
        "{}",
        run.stderr
    );

    // Run again: everything that was created is now skipped; still nothing guessed.
    let again = import(&c, &config, &home.to_string(), &[]).await;
    assert_eq!(again.code, Some(1));
    assert!(again.stdout.contains("0 created, 6 skipped, 2 unsupported"));
    assert_eq!(tunnels(&c).await.len(), 4);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_plan_and_creates_nothing() {
    let (dir, data) = control::data_dir();
    let (c, _) = control_with_agents(&data).await;
    let config = write(dir.path(), "config.yml", CONFIG);
    let before = tunnels(&c).await;

    let run = import(&c, &config, "home", &["--dry-run"]).await;
    assert_eq!(run.code, Some(1), "the plan has unsupported rules");
    assert_eq!(tunnels(&c).await, before, "a dry run changes nothing");
    assert!(line(&run, "app.example.com").contains("would create  -> localhost:8000"));
    assert!(line(&run, "taken.example.com").contains("already exists"));
    assert!(line(&run, "db.example.com").contains("unsupported"));
    assert!(run.stdout.contains("dry run: nothing changed"));
    assert!(run
        .stdout
        .contains("3 would be created, 3 skipped, 2 unsupported"));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_config_exits_0_with_the_chosen_access_and_tls() {
    let (dir, data) = control::data_dir();
    let (c, home) = control_with_agents(&data).await;
    let config = write(
        dir.path(),
        "clean.yml",
        "ingress:\n  - hostname: wiki.example.com\n    service: http://wiki:8080\n  - service: http_status:404\n",
    );
    let extra = ["--access", "users:Alice@Example.com", "--tls", "internal"];
    let run = import(&c, &config, &home.to_string(), &extra).await;
    assert_eq!(run.code, Some(0), "everything imported");
    let wiki = &tunnels(&c).await["wiki.example.com"];
    assert_eq!(wiki["target"], "wiki:8080");
    assert_eq!(wiki["tls"], "internal");
    assert_eq!(
        wiki["access"],
        serde_json::json!({"mode": "users", "allow": ["alice@example.com"]})
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_2_and_changes_nothing() {
    let (dir, data) = control::data_dir();
    let (c, _) = control_with_agents(&data).await;
    let before = tunnels(&c).await;
    let good = write(dir.path(), "config.yml", CONFIG);

    let invalid = write(
        dir.path(),
        "invalid.yml",
        "ingress:\n  - hostname: [unclosed\n",
    );
    let run = import(&c, &invalid, "home", &[]).await;
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("not a valid cloudflared config"),
        "{}",
        run.stderr
    );

    let run = import(&c, &good, "nobody", &[]).await;
    assert_eq!(run.code, Some(2));
    assert!(run
        .stderr
        .contains(r#"no Agent named or numbered "nobody""#));
    assert!(
        run.stderr.contains("home (id"),
        "the message lists the Agents"
    );

    let run = import(&c, &dir.path().join("missing.yml"), "home", &[]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("cannot read"), "{}", run.stderr);

    let huge = write(dir.path(), "huge.yml", &"#".repeat(1 << 21));
    assert_eq!(import(&c, &huge, "home", &[]).await.code, Some(2));

    let run = import(&c, &good, "home", &["--token", "km_not-a-token"]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("refused the token"), "{}", run.stderr);

    assert_eq!(tunnels(&c).await, before, "bad input changes nothing");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_control_exits_1_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "config.yml", CONFIG);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = std::process::Command::new(bin())
        .args(["control", "import-cloudflared"])
        .arg(&config)
        .args(["--agent", "home", "--control-url", &url])
        .env("KAKUREMICHI_TOKEN", "km_x")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach Control"), "{stderr}");
}
