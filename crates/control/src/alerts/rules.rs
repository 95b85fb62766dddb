//! Which conditions hold now ([`conditions`], from [`Facts`]), and when a condition becomes an
//! alert and an alert is resolved ([`Tracker`]: a condition must hold for its rule's delay
//! before it fires, and be gone for `resolve_after` before it resolves, so a flapping node
//! sends nothing). Pure: time and facts come in, decisions go out.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::AlertConfig;

/// The rules, as named in the API, the audit log and the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    GatewayOffline,
    AgentOffline,
    /// An enabled tunnel no online Gateway serves (its port taken on every one of them).
    TunnelUnserved,
    /// A certificate whose orders keep failing, or that expires soon.
    Certificate,
    /// Too many 5xx responses over the window.
    ErrorRate,
}

impl Rule {
    pub const ALL: [Rule; 5] = [
        Rule::GatewayOffline,
        Rule::AgentOffline,
        Rule::TunnelUnserved,
        Rule::Certificate,
        Rule::ErrorRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::GatewayOffline => "gateway_offline",
            Rule::AgentOffline => "agent_offline",
            Rule::TunnelUnserved => "tunnel_unserved",
            Rule::Certificate => "certificate",
            Rule::ErrorRate => "error_rate",
        }
    }

    /// How long the condition must hold before it fires.
    pub fn delay(self, config: &AlertConfig) -> Duration {
        match self {
            Rule::GatewayOffline | Rule::AgentOffline | Rule::TunnelUnserved => {
                config.offline_after
            }
            // ACME retries on its own; only failures that last are worth a message.
            Rule::Certificate => config.certificate_failing_after,
            // The window already spans minutes.
            Rule::ErrorRate => Duration::ZERO,
        }
    }
}

/// A condition that holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Stable while the condition holds, e.g. `gateway_offline:3`.
    pub key: String,
    pub rule: Rule,
    pub subject: String,
    pub summary: String,
}

/// A Gateway or an Agent.
#[derive(Debug, Clone)]
pub struct NodeFact {
    pub id: i64,
    pub name: String,
    /// Disabled Gateways, never-seen nodes and temporary tunnels' Agents are not watched.
    pub watched: bool,
    pub online: bool,
}

/// An enabled tunnel.
#[derive(Debug, Clone)]
pub struct TunnelFact {
    pub id: i64,
    pub hostname: String,
    /// Online, enabled Gateways that serve it (bound its port, for stream tunnels).
    pub serving_gateways: usize,
    /// Its certificate (`None`: TLS off, or none ordered yet): status, expiry, last error.
    pub certificate: Option<CertFact>,
    /// HTTP responses and 5xx among them over the error-rate window.
    pub requests: i64,
    pub errors: i64,
}

#[derive(Debug, Clone)]
pub struct CertFact {
    pub hostname: String,
    pub failed: bool,
    pub not_after: Option<OffsetDateTime>,
    pub last_error: Option<String>,
}

/// What the rules look at, read once per round.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub gateways: Vec<NodeFact>,
    pub agents: Vec<NodeFact>,
    pub tunnels: Vec<TunnelFact>,
}

/// Fewest requests in the window for the error rate to count (2 of 3 failing is no trend).
pub const MIN_REQUESTS: i64 = 20;

/// The conditions that hold in `facts` at `now`.
pub fn conditions(facts: &Facts, now: OffsetDateTime, config: &AlertConfig) -> Vec<Condition> {
    let mut out = Vec::new();
    let after = config.offline_after.as_secs();
    for (rule, kind, nodes) in [
        (Rule::GatewayOffline, "Gateway", &facts.gateways),
        (Rule::AgentOffline, "Agent", &facts.agents),
    ] {
        for n in nodes.iter().filter(|n| n.watched && !n.online) {
            out.push(Condition {
                key: format!("{}:{}", rule.as_str(), n.id),
                rule,
                subject: format!("{kind} {}", n.name),
                summary: format!("{kind} {} has been offline for more than {after} s", n.name),
            });
        }
    }
    // With no Gateway online at all, the Gateways' own alerts say it; one per tunnel on top
    // would bury them.
    let any_gateway = facts.gateways.iter().any(|g| g.watched && g.online);
    let soon = now + time::Duration::days(i64::from(config.certificate_days));
    let mut certs_seen = HashSet::new();
    for t in &facts.tunnels {
        if any_gateway && t.serving_gateways == 0 {
            out.push(Condition {
                key: format!("{}:{}", Rule::TunnelUnserved.as_str(), t.id),
                rule: Rule::TunnelUnserved,
                subject: format!("tunnel {}", t.hostname),
                summary: format!(
                    "no online Gateway serves tunnel {} (its port is taken on every one)",
                    t.hostname
                ),
            });
        }
        if let Some(c) = &t.certificate {
            if certs_seen.insert(c.hostname.clone()) {
                out.extend(certificate(c, now, soon));
            }
        }
        if t.requests >= MIN_REQUESTS
            && t.errors * 100 > t.requests * i64::from(config.error_rate_percent)
        {
            let window = config.error_rate_window.as_secs() / 60;
            out.push(Condition {
                key: format!("{}:{}", Rule::ErrorRate.as_str(), t.id),
                rule: Rule::ErrorRate,
                subject: format!("tunnel {}", t.hostname),
                summary: format!(
                    "tunnel {} answered {} of {} requests with 5xx over the last {window} min \
                     (more than {} %)",
                    t.hostname, t.errors, t.requests, config.error_rate_percent
                ),
            });
        }
    }
    out
}

fn certificate(c: &CertFact, now: OffsetDateTime, soon: OffsetDateTime) -> Option<Condition> {
    let summary = if c.failed {
        let why = c.last_error.as_deref().unwrap_or("no reason recorded");
        format!(
            "the certificate of {} cannot be obtained: {why}",
            c.hostname
        )
    } else {
        let not_after = c.not_after.filter(|t| *t < soon)?;
        let days = (not_after - now).whole_days();
        if not_after <= now {
            format!("the certificate of {} has expired", c.hostname)
        } else {
            format!(
                "the certificate of {} expires in {days} days and is not renewed yet",
                c.hostname
            )
        }
    };
    Some(Condition {
        key: format!("{}:{}", Rule::Certificate.as_str(), c.hostname),
        rule: Rule::Certificate,
        subject: format!("certificate {}", c.hostname),
        summary,
    })
}

/// What to do this round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    pub fire: Vec<Condition>,
    /// Keys of open alerts to resolve.
    pub resolve: Vec<String>,
}

/// Since when each condition holds (not fired yet) and since when each open alert's condition
/// is gone (not resolved yet). Kept in memory by the leading replica: a new leader starts
/// counting again, which only delays.
#[derive(Debug, Default)]
pub struct Tracker {
    pending: HashMap<String, Instant>,
    clearing: HashMap<String, Instant>,
}

impl Tracker {
    /// Since when condition `key` holds without having fired yet, if it does.
    pub fn pending_since(&self, key: &str) -> Option<Instant> {
        self.pending.get(key).copied()
    }

    /// Given the conditions now and the keys of the open alerts, what fires and what resolves.
    pub fn step(
        &mut self,
        now: Instant,
        holding: &[Condition],
        open: &HashSet<String>,
        config: &AlertConfig,
    ) -> Decisions {
        let mut decisions = Decisions::default();
        let held: HashSet<&str> = holding.iter().map(|c| c.key.as_str()).collect();
        self.pending.retain(|k, _| held.contains(k.as_str()));
        self.clearing
            .retain(|k, _| open.contains(k) && !held.contains(k.as_str()));
        for c in holding {
            if open.contains(&c.key) {
                continue;
            }
            let since = *self.pending.entry(c.key.clone()).or_insert(now);
            if now.duration_since(since) >= c.rule.delay(config) {
                self.pending.remove(&c.key);
                decisions.fire.push(c.clone());
            }
        }
        let mut gone: Vec<&String> = open.iter().filter(|k| !held.contains(k.as_str())).collect();
        gone.sort();
        for key in gone {
            let since = *self.clearing.entry(key.clone()).or_insert(now);
            if now.duration_since(since) >= config.resolve_after {
                self.clearing.remove(key);
                decisions.resolve.push(key.clone());
            }
        }
        decisions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AlertConfig {
        AlertConfig {
            offline_after: Duration::from_secs(60),
            resolve_after: Duration::from_secs(60),
            ..AlertConfig::default()
        }
    }

    fn node(id: i64, online: bool) -> NodeFact {
        NodeFact {
            id,
            name: format!("n{id}"),
            watched: true,
            online,
        }
    }

    fn tunnel(id: i64) -> TunnelFact {
        TunnelFact {
            id,
            hostname: format!("t{id}.example.com"),
            serving_gateways: 1,
            certificate: None,
            requests: 0,
            errors: 0,
        }
    }

    fn keys(c: &[Condition]) -> Vec<&str> {
        c.iter().map(|c| c.key.as_str()).collect()
    }

    #[test]
    fn offline_watched_nodes_are_conditions_and_others_are_not() {
        let mut unwatched = node(3, false);
        unwatched.watched = false;
        let facts = Facts {
            gateways: vec![node(1, false), node(2, true), unwatched],
            agents: vec![node(7, false)],
            tunnels: vec![],
        };
        let now = OffsetDateTime::now_utc();
        let got = conditions(&facts, now, &config());
        assert_eq!(keys(&got), ["gateway_offline:1", "agent_offline:7"]);
        assert_eq!(
            got[0].summary,
            "Gateway n1 has been offline for more than 60 s"
        );
    }

    #[test]
    fn unserved_tunnels_count_only_while_some_gateway_is_online() {
        let mut t = tunnel(5);
        t.serving_gateways = 0;
        let now = OffsetDateTime::now_utc();
        let mut facts = Facts {
            gateways: vec![node(1, true)],
            agents: vec![],
            tunnels: vec![t],
        };
        assert_eq!(
            keys(&conditions(&facts, now, &config())),
            ["tunnel_unserved:5"]
        );
        facts.gateways[0].online = false;
        assert_eq!(
            keys(&conditions(&facts, now, &config())),
            ["gateway_offline:1"]
        );
    }

    #[test]
    fn certificates_failing_or_expiring_within_the_days_are_conditions() {
        let now = OffsetDateTime::now_utc();
        let cert = |host: &str, failed, days: i64| CertFact {
            hostname: host.into(),
            failed,
            not_after: Some(now + time::Duration::days(days)),
            last_error: failed.then(|| "rate limited".to_string()),
        };
        let mut tunnels = Vec::new();
        for (i, c) in [
            cert("fine.example.com", false, 60),
            cert("soon.example.com", false, 10),
            cert("broken.example.com", true, 60),
        ]
        .into_iter()
        .enumerate()
        {
            let mut t = tunnel(i as i64);
            t.certificate = Some(c);
            tunnels.push(t);
        }
        let facts = Facts {
            gateways: vec![node(1, true)],
            agents: vec![],
            tunnels,
        };
        let got = conditions(&facts, now, &config());
        assert_eq!(
            keys(&got),
            [
                "certificate:soon.example.com",
                "certificate:broken.example.com"
            ]
        );
        assert!(
            got[0].summary.contains("expires in 9 days")
                || got[0].summary.contains("expires in 10 days")
        );
        assert!(got[1].summary.ends_with("cannot be obtained: rate limited"));
    }

    #[test]
    fn the_error_rate_needs_enough_requests_and_more_than_the_percentage() {
        let now = OffsetDateTime::now_utc();
        let with = |requests, errors| {
            let mut t = tunnel(9);
            t.requests = requests;
            t.errors = errors;
            Facts {
                gateways: vec![node(1, true)],
                agents: vec![],
                tunnels: vec![t],
            }
        };
        let fired = |f: &Facts| !conditions(f, now, &config()).is_empty();
        assert!(fired(&with(500, 50)), "10 % > 5 %");
        assert!(!fired(&with(500, 25)), "exactly 5 % is not more than 5 %");
        assert!(!fired(&with(10, 10)), "too few requests to judge");
    }

    #[test]
    fn a_condition_fires_once_after_its_delay_and_resolves_once_after_the_hysteresis() {
        let c = config();
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        let down = vec![Condition {
            key: "gateway_offline:1".into(),
            rule: Rule::GatewayOffline,
            subject: "Gateway g".into(),
            summary: "down".into(),
        }];
        let mut open = HashSet::new();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(tracker.step(at(0), &down, &open, &c), Decisions::default());
        assert_eq!(tracker.step(at(59), &down, &open, &c), Decisions::default());
        let d = tracker.step(at(60), &down, &open, &c);
        assert_eq!(keys(&d.fire), ["gateway_offline:1"]);
        open.insert("gateway_offline:1".to_string());
        // Still down: nothing more.
        assert_eq!(
            tracker.step(at(120), &down, &open, &c),
            Decisions::default()
        );
        // Back for 30 s, down again, back: within the hysteresis, nothing is sent.
        assert_eq!(tracker.step(at(130), &[], &open, &c), Decisions::default());
        assert_eq!(
            tracker.step(at(160), &down, &open, &c),
            Decisions::default()
        );
        assert_eq!(tracker.step(at(170), &[], &open, &c), Decisions::default());
        assert_eq!(tracker.step(at(229), &[], &open, &c), Decisions::default());
        let d = tracker.step(at(230), &[], &open, &c);
        assert_eq!(d.resolve, ["gateway_offline:1"]);
    }

    #[test]
    fn a_flap_shorter_than_the_delay_never_fires() {
        let c = config();
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        let down = vec![Condition {
            key: "agent_offline:2".into(),
            rule: Rule::AgentOffline,
            subject: "Agent a".into(),
            summary: "down".into(),
        }];
        let open = HashSet::new();
        for round in 0..10u64 {
            let base = t0 + Duration::from_secs(round * 40);
            let holding: &[Condition] = if round % 2 == 0 { &down } else { &[] };
            assert_eq!(tracker.step(base, holding, &open, &c), Decisions::default());
            assert_eq!(
                tracker.step(base + Duration::from_secs(30), holding, &open, &c),
                Decisions::default()
            );
        }
    }
}
