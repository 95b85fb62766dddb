//! The mapping of cloudflared ingress rules, rule kind by rule kind: what becomes a tunnel, what is
//! skipped, and the reason given for everything else.

use super::*;

fn one(yaml_rule: &str) -> Action {
    let text = format!("ingress:\n  - {yaml_rule}\n  - service: http_status:404\n");
    let steps = plan(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(steps.len(), 2);
    steps[0].action.clone()
}

fn unsupported(yaml_rule: &str, why: &str) {
    match one(yaml_rule) {
        Action::Unsupported(reason) => assert!(reason.contains(why), "{yaml_rule}: {reason}"),
        other => panic!("{yaml_rule}: {other:?}, expected unsupported ({why})"),
    }
}

fn target(t: &str) -> Action {
    Action::Create {
        target: t.into(),
        notes: vec![],
    }
}

#[test]
fn a_typical_config_maps_rule_by_rule() {
    let text = r#"
tunnel: 6ff42ae2-765d-4adf-8112-31c55c1551ef
credentials-file: /root/.cloudflared/6ff42ae2-765d-4adf-8112-31c55c1551ef.json
ingress:
  - hostname: App.Example.com
    service: http://localhost:8000
  - hostname: static.example.com
    path: \.(jpg|png|css|js)$
    service: http://localhost:8001
  - hostname: static.example.com
    service: http://127.0.0.1
  - hostname: ssh.example.com
    service: ssh://localhost:22
  - service: http_status:404
"#;
    let steps = plan(text).unwrap();
    let actions: Vec<(usize, &str, &Action)> = steps
        .iter()
        .map(|s| (s.rule, s.hostname.as_str(), &s.action))
        .collect();
    assert_eq!(
        actions[0],
        (1, "app.example.com", &target("localhost:8000"))
    );
    assert!(matches!(actions[1].2, Action::Unsupported(r) if r.contains("path")));
    assert_eq!(
        actions[2],
        (3, "static.example.com", &target("127.0.0.1:80"))
    );
    assert!(matches!(actions[3].2, Action::Unsupported(r) if r.contains("ssh://")));
    assert_eq!(actions[4], (5, "", &Action::Skip(CATCH_ALL.into())));
    assert_eq!(steps[3].service, "ssh://localhost:22");
}

#[test]
fn http_targets_keep_host_and_port_and_default_to_80() {
    assert_eq!(
        one("{hostname: a.example.com, service: http://app:3000}"),
        target("app:3000")
    );
    assert_eq!(
        one("{hostname: a.example.com, service: 'http://[::1]:8080/'}"),
        target("[::1]:8080")
    );
    assert_eq!(
        one("{hostname: a.example.com, service: 'http://[::1]'}"),
        target("[::1]:80")
    );
    assert_eq!(
        one("{hostname: a.example.com, service: HTTP://web}"),
        target("web:80")
    );
}

#[test]
fn every_kind_kakuremichi_cannot_serve_is_reported_with_its_reason() {
    unsupported(
        "{hostname: a.example.com, service: https://localhost:8443}",
        "HTTPS origin",
    );
    unsupported(
        "{hostname: a.example.com, service: tcp://db:5432}",
        "raw TCP",
    );
    unsupported(
        "{hostname: a.example.com, service: rdp://pc:3389}",
        "raw TCP",
    );
    unsupported(
        "{hostname: a.example.com, service: 'unix:/run/app.sock'}",
        "Unix socket",
    );
    unsupported(
        "{hostname: a.example.com, service: hello_world}",
        "kakuremichi hello",
    );
    unsupported("{hostname: a.example.com, service: bastion}", "bastion");
    unsupported("{hostname: a.example.com, service: socks5}", "unknown kind");
    unsupported(
        "{hostname: 'a*.example.com', service: http://localhost:80}",
        "whole leftmost",
    );
    unsupported(
        "{hostname: 'a.*.example.com', service: http://localhost:80}",
        "whole leftmost",
    );
    unsupported(
        "{hostname: a.example.com, service: 'http://localhost:80/api'}",
        "path, query or user",
    );
    unsupported(
        "{hostname: a.example.com, service: 'http_status:503'}",
        "fixed HTTP status",
    );
    unsupported("{hostname: a.example.com}", "no `service`");
    unsupported(
        "{hostname: a.example.com, service: http://x:1, headers: {a: b}}",
        "unknown rule field `headers`",
    );
}

#[test]
fn catch_alls_other_than_404_are_not_guessed() {
    let steps = plan("ingress:\n  - service: http://localhost:8080\n").unwrap();
    assert!(matches!(&steps[0].action, Action::Unsupported(r) if r.contains("every host")));
    let steps = plan("ingress:\n  - service: http_status:503\n").unwrap();
    assert!(matches!(&steps[0].action, Action::Unsupported(r) if r.contains("503")));
    // Not last: cloudflared itself would refuse this; here it is simply not a catch-all.
    let text =
        "ingress:\n  - service: http_status:404\n  - hostname: a.b.c\n    service: http://x:1\n";
    let steps = plan(text).unwrap();
    assert!(matches!(&steps[0].action, Action::Unsupported(_)));
    assert_eq!(steps[1].action, target("x:1"));
}

#[test]
fn origin_request_options_are_honoured_noted_or_refused() {
    let tuned = one(
        "{hostname: a.example.com, service: http://x:1, originRequest: {connectTimeout: 30s, noTLSVerify: true, http2Origin: false}}",
    );
    let Action::Create { target, notes } = tuned else {
        panic!("{tuned:?}");
    };
    assert_eq!(target, "x:1");
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].starts_with("originRequest.connectTimeout ignored"));
    assert!(notes[1].contains("only for HTTPS origins"));
    unsupported(
        "{hostname: a.example.com, service: http://x:1, originRequest: {httpHostHeader: internal}}",
        "originRequest.httpHostHeader",
    );
    unsupported(
        "{hostname: a.example.com, service: http://x:1, originRequest: {access: {required: true, teamName: t}}}",
        "Cloudflare Access",
    );
    unsupported(
        "{hostname: a.example.com, service: http://x:1, originRequest: {frobnicate: 1}}",
        "does not know",
    );
}

#[test]
fn top_level_origin_request_applies_to_every_rule_and_a_rule_overrides_it() {
    let text = r#"
originRequest:
  http2Origin: true
ingress:
  - hostname: a.example.com
    service: http://x:1
  - hostname: b.example.com
    service: http://x:2
    originRequest:
      http2Origin: false
  - service: http_status:404
"#;
    let steps = plan(text).unwrap();
    assert!(matches!(&steps[0].action, Action::Unsupported(r) if r.contains("http2Origin")));
    assert_eq!(steps[1].action, target("x:2"));
}

#[test]
fn a_hostname_served_twice_keeps_the_first_rule_like_cloudflared() {
    let text = r#"
ingress:
  - hostname: a.example.com
    service: https://x:443
  - hostname: A.example.com.
    service: http://x:80
  - hostname: b.example.com
    service: http://y:1
  - hostname: b.example.com
    service: http://y:2
"#;
    let steps = plan(text).unwrap();
    assert!(matches!(&steps[0].action, Action::Unsupported(_)));
    assert!(matches!(&steps[1].action, Action::Skip(r) if r.contains("rule 1")));
    assert_eq!(steps[2].action, target("y:1"));
    assert!(matches!(&steps[3].action, Action::Skip(r) if r.contains("rule 3")));
}

#[test]
fn bad_input_is_refused_whole() {
    assert!(plan("ingress: [unclosed")
        .unwrap_err()
        .contains("not a valid"));
    assert!(plan("tunnel: x\n").unwrap_err().contains("no `ingress`"));
    assert!(plan("ingress: []\n").unwrap_err().contains("no `ingress`"));
    assert!(plan("- just\n- a list\n").is_err());
    assert!(plan("ingress:\n  - hostname: [1, 2]\n    service: http://x:1\n").is_err());
    let many: String = (0..=MAX_RULES)
        .map(|i| format!("  - {{hostname: h{i}.example.com, service: http://x:1}}\n"))
        .collect();
    let err = plan(&format!("ingress:\n{many}")).unwrap_err();
    assert!(err.contains("at most 1000"), "{err}");
}

#[test]
fn yaml_alias_bombs_are_refused() {
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n\
                originRequest: {connectTimeout: *h}\n\
                ingress: [{hostname: a.example.com, service: 'http://x:1'}]\n";
    let err = plan(bomb).unwrap_err();
    assert!(err.contains("repetition limit"), "{err}");
}

#[test]
fn a_wildcard_becomes_a_tunnel_and_the_rules_it_shadows_in_cloudflared_are_not_imported() {
    let steps = plan(
        "ingress:
  - {hostname: app.example.com, service: http://localhost:81}
  - {hostname: '*.example.com', service: http://localhost:82}
  - {hostname: b.example.com, service: http://localhost:83}
  - {hostname: x.b.example.com, service: http://localhost:84}
  - {hostname: other.test, service: http://localhost:85}
  - service: http_status:404",
    )
    .unwrap();
    assert_eq!(
        steps[0].action,
        target("localhost:81"),
        "before the wildcard: its own tunnel"
    );
    match &steps[1].action {
        Action::Create { target, notes } => {
            assert_eq!(target, "localhost:82");
            assert!(
                notes[0].contains("exactly one label below example.com"),
                "{notes:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    match &steps[2].action {
        Action::Skip(why) => assert!(why.contains("rule 2"), "{why}"),
        other => panic!("{other:?}"),
    }
    match &steps[3].action {
        Action::Unsupported(why) => assert!(why.contains("one label only"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(steps[4].action, target("localhost:85"));
}
