//! Alerts (issue #22): the leading replica looks at the fleet every few seconds (presence of
//! Gateways and Agents, tunnels no Gateway serves, certificates, 5xx rates from the traffic
//! history), fires an alert once a condition has held for its rule's delay and resolves it
//! once the condition has been gone for `resolve_after` (hysteresis: a flapping node sends
//! nothing). Each alert fires and resolves once: the `alerts` table allows one open alert per
//! key, whichever replica leads. Every change is in the audit log (`alert.fired`,
//! `alert.resolved`) and sent to every channel (webhook, e-mail; see [`channels`]).

mod budget;
pub mod channels;
pub mod rules;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kakuremichi_proto::TunnelProtocol;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::hub::Hub;
use crate::secrets::Sealer;
use crate::store::{
    Actor, AlertChannelRow, AlertRow, NewAlertChannel, NodeKind, NodeRef, Store, StoreError,
    StoreResult,
};
use channels::{Deliverer, Event, Mailer, Notice, Target};
use rules::{CertFact, Facts, NodeFact, Rule, Tracker, TunnelFact};

/// The rules' thresholds (`kakuremichi control --alert-*`).
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// A Gateway or Agent offline this long (or a tunnel no Gateway serves) fires.
    pub offline_after: Duration,
    /// An alert resolves once its condition has been gone this long.
    pub resolve_after: Duration,
    /// A certificate expiring within this many days fires.
    pub certificate_days: u32,
    /// A certificate whose orders fail this long fires.
    pub certificate_failing_after: Duration,
    /// More 5xx than this share of the responses over `error_rate_window` fires.
    pub error_rate_percent: u32,
    pub error_rate_window: Duration,
    /// `KAKUREMICHI_SMTP_URL` and `KAKUREMICHI_SMTP_FROM`, checked.
    pub mailer: Option<Mailer>,
    /// At most [`MAX_NOTICES`] messages per channel in this window; the rest are counted and
    /// summed up in one message when it is over.
    pub notice_window: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            offline_after: Duration::from_secs(60),
            resolve_after: Duration::from_secs(60),
            certificate_days: 14,
            certificate_failing_after: Duration::from_secs(15 * 60),
            error_rate_percent: 5,
            error_rate_window: Duration::from_secs(5 * 60),
            mailer: None,
            notice_window: Duration::from_secs(60),
        }
    }
}

impl AlertConfig {
    /// How often the leader looks: often enough for the shortest delay, at most every 15 s.
    pub fn interval(&self) -> Duration {
        (self.offline_after.min(self.resolve_after) / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(15))
    }
}

/// A channel as the API shows it (never the sealed target).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ChannelView {
    pub id: i64,
    pub name: String,
    /// `webhook` or `email`.
    pub kind: String,
    /// Webhooks: `json`, `slack` or `discord`; e-mail: `text`.
    pub format: String,
    /// The webhook's scheme and host (its path may hold a token), or the e-mail address.
    pub hint: String,
    pub created_at: String,
    /// When a message last arrived, and why the last one did not (`null` once one arrives).
    pub last_sent_at: Option<String>,
    pub last_error: Option<String>,
}

impl From<AlertChannelRow> for ChannelView {
    fn from(r: AlertChannelRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            kind: r.kind,
            format: r.format,
            hint: r.hint,
            created_at: r.created_at,
            last_sent_at: r.last_sent_at,
            last_error: r.last_error,
        }
    }
}

/// A condition that holds but has not fired yet (its rule's delay has not passed).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PendingView {
    pub key: String,
    pub rule: &'static str,
    pub subject: String,
    pub summary: String,
    /// Seconds until it fires if it still holds then.
    pub fires_in_seconds: u64,
}

/// Messages per channel per `notice_window`; beyond, one message counts the rest.
pub const MAX_NOTICES: usize = 10;
/// Deliveries under way at once.
const MAX_SENDING: usize = 8;

/// Longest channel name.
pub const MAX_CHANNEL_NAME: usize = 100;

/// Control's alerts.
pub struct Alerts {
    store: Store,
    hub: Arc<Hub>,
    sealer: Arc<Sealer>,
    config: AlertConfig,
    deliverer: Deliverer,
    control_url: Option<String>,
    /// The conditions waiting for their delay, as of the last round (on the leading replica;
    /// empty on the others).
    pending: std::sync::Mutex<Vec<PendingView>>,
    sending: tokio::sync::Semaphore,
    budget: std::sync::Mutex<budget::Budget>,
}

impl Alerts {
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        sealer: Arc<Sealer>,
        config: AlertConfig,
        control_url: Option<String>,
    ) -> Self {
        let deliverer = Deliverer::new(config.mailer.clone());
        let budget = std::sync::Mutex::new(budget::Budget::new(config.notice_window, MAX_NOTICES));
        Self {
            store,
            hub,
            sealer,
            config,
            deliverer,
            control_url,
            pending: Default::default(),
            sending: tokio::sync::Semaphore::new(MAX_SENDING),
            budget,
        }
    }

    pub fn config(&self) -> &AlertConfig {
        &self.config
    }

    /// The conditions that will fire if they still hold after their delay.
    pub fn pending(&self) -> Vec<PendingView> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The sealing context of a channel's target: bound to its name.
    fn context(name: &str) -> String {
        format!("alert-channel:{name}")
    }

    /// Checks and adds a channel; the error says what is wrong (a `StoreError::Invalid`).
    pub async fn add_channel(
        &self,
        name: &str,
        kind: &str,
        target: &str,
        format: Option<&str>,
    ) -> StoreResult<ChannelView> {
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_CHANNEL_NAME
            || name.chars().any(char::is_control)
        {
            return Err(StoreError::Invalid(format!(
                "name must be 1 to {MAX_CHANNEL_NAME} characters without control characters"
            )));
        }
        let parsed = Target::parse(kind, target.trim(), format).map_err(StoreError::Invalid)?;
        if matches!(parsed, Target::Email { .. }) && !self.deliverer.can_mail() {
            return Err(StoreError::Invalid(
                "e-mail channels need KAKUREMICHI_SMTP_URL (and KAKUREMICHI_SMTP_FROM) on Control"
                    .into(),
            ));
        }
        let sealed = self
            .sealer
            .seal(&Self::context(name), target.trim().as_bytes());
        let row = self
            .store
            .add_alert_channel(&NewAlertChannel {
                name,
                kind,
                format: parsed.format(),
                target: &sealed,
                hint: &parsed.hint(),
            })
            .await?;
        Ok(row.into())
    }

    pub async fn channels(&self) -> StoreResult<Vec<ChannelView>> {
        Ok(self
            .store
            .alert_channels()
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    fn open_target(&self, row: &AlertChannelRow) -> Result<Target, String> {
        let plain = self
            .sealer
            .open(&Self::context(&row.name), &row.target)
            .map_err(|e| format!("cannot open the channel's target: {e}"))?;
        let text =
            String::from_utf8(plain).map_err(|_| "the channel's target is not text".to_string())?;
        Target::parse(&row.kind, &text, Some(&row.format))
    }

    /// Sends a test message to channel `id` now (one attempt); the error in words.
    pub async fn test_channel(&self, id: i64) -> StoreResult<Result<(), String>> {
        let row = self.store.alert_channel(id).await?;
        let result = match self.open_target(&row) {
            Ok(target) => {
                let notice = Notice::test(&row.name, self.control_url.clone());
                self.deliverer.send(&target, &notice, false).await
            }
            Err(e) => Err(e),
        };
        self.store
            .alert_channel_sent(row.id, result.as_ref().err().map(String::as_str))
            .await?;
        Ok(result)
    }

    /// Reads what the rules look at.
    async fn facts(&self, now: OffsetDateTime) -> StoreResult<Facts> {
        let gateways = self.store.list_gateways().await?;
        let agents = self.store.list_agents().await?;
        let temporary: HashSet<i64> = self
            .store
            .temporary_agent_ids()
            .await?
            .into_iter()
            .collect();
        let online = |kind, id| self.hub.is_online(NodeRef { kind, id });
        let gateway_facts: Vec<NodeFact> = gateways
            .iter()
            .map(|g| NodeFact {
                id: g.id,
                name: g.name.clone(),
                watched: g.enabled && g.last_seen.is_some(),
                online: online(NodeKind::Gateway, g.id),
            })
            .collect();
        let agent_facts = agents
            .iter()
            .map(|a| NodeFact {
                id: a.id,
                name: a.name.clone(),
                watched: a.last_seen.is_some() && !temporary.contains(&a.id),
                online: online(NodeKind::Agent, a.id),
            })
            .collect();
        let serving: Vec<i64> = gateway_facts
            .iter()
            .filter(|g| g.watched && g.online)
            .map(|g| g.id)
            .collect();
        let port_errors = self.hub.port_errors();
        let window_start = now.unix_timestamp() - self.config.error_rate_window.as_secs() as i64;
        let errors: HashMap<i64, (i64, i64)> = self
            .store
            .error_counts(window_start)
            .await?
            .into_iter()
            .map(|(t, requests, errors)| (t, (requests, errors)))
            .collect();
        let certs: HashMap<(String, String), _> = self
            .store
            .list_certificates()
            .await?
            .into_iter()
            .map(|c| ((c.hostname.clone(), c.source.clone()), c))
            .collect();
        let mut tunnels = Vec::new();
        for t in self
            .store
            .list_tunnels()
            .await?
            .into_iter()
            .filter(|t| t.enabled)
        {
            let protocol = t.protocol();
            let port = t.public_port.and_then(|p| u16::try_from(p).ok());
            let serving_gateways = serving
                .iter()
                .filter(|g| {
                    protocol == TunnelProtocol::Http
                        || !port_errors.get(g).is_some_and(|errors| {
                            errors
                                .iter()
                                .any(|e| e.protocol == protocol && Some(e.port) == port)
                        })
                })
                .count();
            let certificate = (t.tls != "off")
                .then(|| crate::store::shown_cert(&certs, &t))
                .flatten()
                .map(|c| CertFact {
                    hostname: c.hostname.clone(),
                    failed: c.status == "failed",
                    not_after: c
                        .not_after
                        .as_deref()
                        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()),
                    last_error: c.last_error.clone(),
                });
            let (requests, errors) = errors.get(&t.id).copied().unwrap_or_default();
            tunnels.push(TunnelFact {
                id: t.id,
                hostname: t.hostname,
                serving_gateways,
                certificate,
                requests,
                errors,
            });
        }
        Ok(Facts {
            gateways: gateway_facts,
            agents: agent_facts,
            tunnels,
        })
    }

    /// One round: look, decide, fire and resolve.
    async fn round(self: &Arc<Self>, tracker: &mut Tracker) -> StoreResult<()> {
        self.held_back().await;
        let now = OffsetDateTime::now_utc();
        let facts = self.facts(now).await?;
        let holding = rules::conditions(&facts, now, &self.config);
        let open: HashSet<String> = self
            .store
            .open_alerts()
            .await?
            .into_iter()
            .map(|a| a.key)
            .collect();
        let at = Instant::now();
        let decisions = tracker.step(at, &holding, &open, &self.config);
        let pending = holding
            .iter()
            .filter_map(|c| {
                let since = tracker.pending_since(&c.key)?;
                let fires_at = since + c.rule.delay(&self.config);
                Some(PendingView {
                    key: c.key.clone(),
                    rule: c.rule.as_str(),
                    subject: c.subject.clone(),
                    summary: c.summary.clone(),
                    fires_in_seconds: fires_at.saturating_duration_since(at).as_secs(),
                })
            })
            .collect();
        *self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = pending;
        let mut fired = Vec::new();
        for c in decisions.fire {
            if let Some(alert) = self
                .store
                .fire_alert(&c.key, c.rule.as_str(), &c.subject, &c.summary)
                .await?
            {
                tracing::warn!(rule = c.rule.as_str(), subject = %c.subject, "alert: {}", c.summary);
                fired.push(alert);
            }
        }
        self.changed(Event::Fired, fired).await;
        let mut resolved = Vec::new();
        for key in decisions.resolve {
            if let Some(alert) = self.store.resolve_alert(&key).await? {
                tracing::info!(rule = %alert.rule, subject = %alert.subject, "alert resolved: {}", alert.summary);
                resolved.push(alert);
            }
        }
        self.changed(Event::Resolved, resolved).await;
        Ok(())
    }

    async fn channels_or_log(&self) -> Option<Vec<AlertChannelRow>> {
        match self.store.alert_channels().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the alert channels");
                None
            }
        }
    }

    /// Once the budget's window is over, one message for what it held back.
    async fn held_back(self: &Arc<Self>) {
        let (held, window) = {
            let mut budget = self
                .budget
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (budget.roll(Instant::now()), budget.window())
        };
        if held.is_empty() {
            return;
        }
        let Some(channels) = self.channels_or_log().await else {
            return;
        };
        let notices = held
            .into_iter()
            .map(|(event, n)| Notice::more(event, n, window, self.control_url.clone()))
            .collect();
        self.send_all(channels, notices);
    }

    /// Alerts fired or resolved in one round: each in the audit log, then to every channel (in
    /// the background) as far as the budget allows (see `budget`).
    async fn changed(self: &Arc<Self>, event: Event, alerts: Vec<AlertRow>) {
        if alerts.is_empty() {
            return;
        }
        let action = match event {
            Event::Fired => "alert.fired",
            _ => "alert.resolved",
        };
        let actor = Actor {
            user_id: None,
            email: None,
        };
        for alert in &alerts {
            let detail = json!({"key": alert.key, "rule": alert.rule, "summary": alert.summary});
            if let Err(e) = self
                .store
                .audit(&actor, action, &alert.subject, &detail)
                .await
            {
                tracing::error!(error = %e, "cannot write {action} to the audit log");
            }
        }
        let Some(channels) = self.channels_or_log().await else {
            return;
        };
        let now = Instant::now();
        let notices: Vec<Notice> = {
            let mut budget = self
                .budget
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            alerts
                .into_iter()
                .filter(|_| budget.admit(now, event))
                .map(|a| Notice::about(event, a, self.control_url.clone()))
                .collect()
        };
        self.send_all(channels, notices);
    }

    /// Each notice to each channel, in the background.
    fn send_all(self: &Arc<Self>, channels: Vec<AlertChannelRow>, notices: Vec<Notice>) {
        for row in channels {
            for notice in &notices {
                let me = self.clone();
                let (row, notice) = (row.clone(), notice.clone());
                tokio::spawn(async move { me.deliver(row, notice).await });
            }
        }
    }

    async fn deliver(&self, row: AlertChannelRow, notice: Notice) {
        // A few at a time: a slow receiver holds a permit, not a pile of connections.
        let Ok(_permit) = self.sending.acquire().await else {
            return;
        };
        let result = match self.open_target(&row) {
            Ok(target) => self.deliverer.send(&target, &notice, true).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::warn!(channel = %row.name, error = %e, "an alert could not be delivered");
            let actor = Actor {
                user_id: None,
                email: None,
            };
            let detail = json!({"error": e, "text": notice.text});
            let _ = self
                .store
                .audit(
                    &actor,
                    "alert.delivery_failed",
                    &format!("alert_channel:{}", row.name),
                    &detail,
                )
                .await;
        }
        let _ = self
            .store
            .alert_channel_sent(row.id, result.as_ref().err().map(String::as_str))
            .await;
    }

    /// Watches the fleet until `stop` (the leading replica only).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tracker = Tracker::default();
        let mut tick = tokio::time::interval(self.config.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            offline_after = ?self.config.offline_after,
            resolve_after = ?self.config.resolve_after,
            rules = ?Rule::ALL.map(Rule::as_str),
            "watching for alerts"
        );
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => {
                    // Another replica leads now: its own rounds say what is pending.
                    self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
                    return;
                }
            }
            if let Err(e) = self.round(&mut tracker).await {
                tracing::warn!(error = %e, "alert round failed; trying again");
            }
        }
    }
}
