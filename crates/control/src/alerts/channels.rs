//! Where alerts go: webhooks (our JSON, or Slack's / Discord's message shape) and e-mail over
//! SMTP (`KAKUREMICHI_SMTP_URL`). Each delivery is tried a few times with a timeout; what went
//! wrong is returned in words for the channel's `last_error` and the audit log.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Serialize;

use crate::store::AlertRow;

/// The longest one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per delivery, and the pauses between them.
const RETRY_PAUSES: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(8)];
/// Longest webhook URL and e-mail address accepted.
pub const MAX_TARGET_LEN: usize = 2048;

/// How a webhook's body looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// `{"event", "alert", "text", "control_url"}`.
    Json,
    /// `{"text"}`: Slack incoming webhooks (and Mattermost, Rocket.Chat).
    Slack,
    /// `{"content"}`: Discord webhooks.
    Discord,
}

impl WebhookFormat {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "json" => Some(Self::Json),
            "slack" => Some(Self::Slack),
            "discord" => Some(Self::Discord),
            _ => None,
        }
    }
}

/// Why this message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Fired,
    Resolved,
    /// The channel's test button.
    Test,
}

/// One message, whatever the channel.
#[derive(Debug, Clone)]
pub struct Notice {
    pub event: Event,
    pub alert: Option<AlertRow>,
    /// One line, e.g. "[FIRING] Gateway gw1 has been offline for more than 60 s".
    pub text: String,
    /// Control's public URL, when it has one.
    pub control_url: Option<String>,
}

impl Notice {
    pub fn about(event: Event, alert: AlertRow, control_url: Option<String>) -> Self {
        let tag = match event {
            Event::Fired => "FIRING",
            Event::Resolved => "RESOLVED",
            Event::Test => "TEST",
        };
        let text = format!("[{tag}] {}", alert.summary);
        Self {
            event,
            alert: Some(alert),
            text,
            control_url,
        }
    }

    /// `count` alerts held back by the budget of `window` (see `budget`).
    pub fn more(event: Event, count: usize, window: Duration, control_url: Option<String>) -> Self {
        let (tag, what) = match event {
            Event::Resolved => ("RESOLVED", "resolved"),
            _ => ("FIRING", "fired"),
        };
        Self {
            event,
            alert: None,
            text: format!(
                "[{tag}] {count} more alerts {what}, held back to send at most {} messages \
                 in {} s; Control's Alerts page lists them all",
                super::MAX_NOTICES,
                window.as_secs()
            ),
            control_url,
        }
    }

    pub fn test(channel: &str, control_url: Option<String>) -> Self {
        Self {
            event: Event::Test,
            alert: None,
            text: format!(
                "[TEST] This is a test of kakuremichi's alert channel {channel:?}: alerts will \
                 arrive like this."
            ),
            control_url,
        }
    }

    fn webhook_body(&self, format: WebhookFormat) -> serde_json::Value {
        let text = match &self.control_url {
            Some(url) if format != WebhookFormat::Json => format!("{} ({url})", self.text),
            _ => self.text.clone(),
        };
        match format {
            WebhookFormat::Json => serde_json::json!({
                "event": self.event,
                "alert": self.alert,
                "text": text,
                "control_url": self.control_url,
            }),
            WebhookFormat::Slack => serde_json::json!({ "text": text }),
            WebhookFormat::Discord => serde_json::json!({ "content": text }),
        }
    }

    fn mail_subject(&self) -> String {
        let mut subject = format!("[kakuremichi] {}", self.text);
        if subject.len() > 200 {
            let mut cut = 197;
            while !subject.is_char_boundary(cut) {
                cut -= 1;
            }
            subject.truncate(cut);
            subject.push_str("...");
        }
        subject
    }

    fn mail_body(&self) -> String {
        let mut body = format!("{}\n", self.text);
        if let Some(a) = &self.alert {
            body.push_str(&format!(
                "\nRule:     {}\nSubject:  {}\nFired:    {}\n",
                a.rule, a.subject, a.fired_at
            ));
            if let Some(r) = &a.resolved_at {
                body.push_str(&format!("Resolved: {r}\n"));
            }
        }
        if let Some(url) = &self.control_url {
            body.push_str(&format!("\nControl: {url}\n"));
        }
        body.push_str(
            "\n-- \nkakuremichi alerts; channels are managed on Control's Alerts page.\n",
        );
        body
    }
}

/// SMTP as `KAKUREMICHI_SMTP_URL` says: `smtps://` is TLS from the first byte (port 465 by
/// default), `smtp://` upgrades with STARTTLS and refuses to go on without it (port 587),
/// unless `?tls=none` (a relay on localhost or a private network; port 25). The server's
/// certificate is checked against the public roots, or against `KAKUREMICHI_SMTP_CA_ROOTS`.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The server as shown in logs (no credentials).
    server: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server)
            .finish()
    }
}

impl Mailer {
    /// Parses the SMTP URL and the sender; `ca_roots`: PEM certificates to trust instead of
    /// the public roots (a private CA). The error says what is wrong and how it should look.
    pub fn new(url: &str, from: Option<&str>, ca_roots: Option<&[u8]>) -> Result<Self, String> {
        let how =
            "KAKUREMICHI_SMTP_URL must look like smtps://USER:PASSWORD@HOST (TLS, port 465), \
                   smtp://USER:PASSWORD@HOST:587 (STARTTLS) or smtp://HOST:25?tls=none (no TLS)";
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{e}; {how}"))?;
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("no host; {how}"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = parsed
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let private_tls = |wrap: fn(TlsParameters) -> Tls| -> Result<Option<Tls>, String> {
            let Some(pem) = ca_roots else {
                return Ok(None);
            };
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err("KAKUREMICHI_SMTP_CA_ROOTS holds no PEM certificate".into());
            }
            let roots = Certificate::from_pem(pem)
                .map_err(|e| format!("KAKUREMICHI_SMTP_CA_ROOTS holds no PEM certificate: {e}"))?;
            let params = TlsParameters::builder(host.clone())
                .add_root_certificate(roots)
                .build_rustls()
                .map_err(|e| format!("cannot set up TLS for {host}: {e}"))?;
            Ok(Some(wrap(params)))
        };
        let port = parsed
            .port()
            .unwrap_or(match (parsed.scheme(), tls.as_deref()) {
                ("smtps", _) => 465,
                (_, Some("none")) => 25,
                _ => 587,
            });
        let builder = match (parsed.scheme(), tls.as_deref()) {
            ("smtps", None) => {
                let builder = AsyncSmtpTransport::<Tokio1Executor>::relay(&host)
                    .map_err(|e| e.to_string())?
                    .port(port);
                match private_tls(Tls::Wrapper)? {
                    Some(tls) => builder.tls(tls),
                    None => builder,
                }
            }
            ("smtp", None | Some("required" | "starttls")) => {
                let builder = AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
                    .map_err(|e| e.to_string())?
                    .port(port);
                match private_tls(Tls::Required)? {
                    Some(tls) => builder.tls(tls),
                    None => builder,
                }
            }
            ("smtp", Some("none")) => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host).port(port)
            }
            _ => return Err(format!("unknown scheme or tls= value; {how}")),
        };
        let builder = if parsed.username().is_empty() {
            builder
        } else {
            let decode = |s: &str| {
                percent_decode(s)
                    .ok_or_else(|| "the SMTP user or password is not valid UTF-8".to_string())
            };
            let user = decode(parsed.username())?;
            let password = decode(parsed.password().unwrap_or(""))?;
            builder.credentials(Credentials::new(user, password))
        };
        let transport = builder.timeout(Some(ATTEMPT_TIMEOUT)).build();
        let from = from
            .map(str::to_string)
            .unwrap_or_else(|| format!("kakuremichi <kakuremichi@{host}>"));
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("KAKUREMICHI_SMTP_FROM {from:?} is not an address: {e}"))?;
        let server = format!("{}://{host}:{port}", parsed.scheme());
        Ok(Self {
            transport,
            from,
            server,
        })
    }

    async fn send(&self, to: &Mailbox, notice: &Notice) -> Result<(), String> {
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(to.clone())
            .subject(notice.mail_subject())
            .header(ContentType::TEXT_PLAIN)
            .body(notice.mail_body())
            .map_err(|e| format!("cannot build the mail: {e}"))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP {}: {e}", self.server))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A channel, opened.
#[derive(Debug, Clone)]
pub enum Target {
    Webhook {
        url: reqwest::Url,
        format: WebhookFormat,
    },
    Email {
        to: Mailbox,
    },
}

impl Target {
    /// Checks a channel as a user gives it; the error says what is wrong.
    pub fn parse(kind: &str, target: &str, format: Option<&str>) -> Result<Self, String> {
        if target.len() > MAX_TARGET_LEN {
            return Err(format!(
                "the target is longer than {MAX_TARGET_LEN} characters"
            ));
        }
        match kind {
            "webhook" => {
                let url = reqwest::Url::parse(target)
                    .map_err(|e| format!("the webhook URL {target:?} is not a URL: {e}"))?;
                if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
                    return Err("the webhook URL must be http:// or https:// with a host".into());
                }
                let format = match format {
                    None => WebhookFormat::Json,
                    Some(f) => WebhookFormat::parse(f).ok_or_else(|| {
                        format!("format {f:?} is not one of json, slack, discord")
                    })?,
                };
                Ok(Self::Webhook { url, format })
            }
            "email" => {
                if format.is_some_and(|f| f != "text") {
                    return Err("e-mail channels have no format (or \"text\")".into());
                }
                let to: Mailbox = target
                    .parse()
                    .map_err(|e| format!("{target:?} is not an e-mail address: {e}"))?;
                Ok(Self::Email { to })
            }
            other => Err(format!("kind {other:?} is not one of webhook, email")),
        }
    }

    /// The format's name, as stored.
    pub fn format(&self) -> &'static str {
        match self {
            Self::Webhook { format, .. } => match format {
                WebhookFormat::Json => "json",
                WebhookFormat::Slack => "slack",
                WebhookFormat::Discord => "discord",
            },
            Self::Email { .. } => "text",
        }
    }

    /// What the API shows: the webhook's scheme and host (its path often holds a token), the
    /// address of an e-mail channel.
    pub fn hint(&self) -> String {
        match self {
            Self::Webhook { url, .. } => format!(
                "{}://{}/…",
                url.scheme(),
                url.host_str().unwrap_or_default()
            ),
            Self::Email { to } => to.email.to_string(),
        }
    }
}

/// Sends alerts out.
#[derive(Debug, Clone)]
pub struct Deliverer {
    http: reqwest::Client,
    mailer: Option<Mailer>,
}

impl Deliverer {
    pub fn new(mailer: Option<Mailer>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kakuremichi-alerts/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Self { http, mailer }
    }

    pub fn can_mail(&self) -> bool {
        self.mailer.is_some()
    }

    /// One attempt.
    async fn send_once(&self, target: &Target, notice: &Notice) -> Result<(), String> {
        match target {
            Target::Webhook { url, format } => {
                let response = self
                    .http
                    .post(url.clone())
                    .json(&notice.webhook_body(*format))
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "webhook {}: {}",
                            url.host_str().unwrap_or(""),
                            reqwest_reason(&e)
                        )
                    })?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!(
                        "webhook {} answered {status}",
                        url.host_str().unwrap_or("")
                    ))
                }
            }
            Target::Email { to } => match &self.mailer {
                Some(mailer) => mailer.send(to, notice).await,
                None => Err("e-mail channels need KAKUREMICHI_SMTP_URL on Control".into()),
            },
        }
    }

    /// Delivers with retries (`retry`: false for the test button, which answers at once).
    pub async fn send(&self, target: &Target, notice: &Notice, retry: bool) -> Result<(), String> {
        let mut result = self.send_once(target, notice).await;
        if retry {
            for pause in RETRY_PAUSES {
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(pause).await;
                result = self.send_once(target, notice).await;
            }
        }
        result
    }
}

/// A reqwest error in words, without the URL (its path may hold a token).
fn reqwest_reason(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_and_hints_hide_webhook_paths() {
        let t = Target::parse(
            "webhook",
            "https://hooks.slack.com/services/T0/B0/secret",
            Some("slack"),
        )
        .unwrap();
        assert_eq!(t.format(), "slack");
        assert_eq!(t.hint(), "https://hooks.slack.com/…");
        assert!(Target::parse("webhook", "ftp://x/", None).is_err());
        assert!(Target::parse("webhook", "https://x/", Some("teams")).is_err());
        let e = Target::parse("email", "ops@example.com", None).unwrap();
        assert_eq!(e.hint(), "ops@example.com");
        assert!(Target::parse("email", "not an address", None).is_err());
        assert!(Target::parse("pager", "x", None).is_err());
        assert!(
            Target::parse("webhook", &format!("https://x/{}", "a".repeat(3000)), None).is_err()
        );
    }

    #[test]
    fn smtp_urls_choose_the_tls_mode_and_bad_ones_say_how() {
        assert!(Mailer::new("smtps://u:p%40ss@mail.example.com", None, None).is_ok());
        assert!(Mailer::new(
            "smtp://mail.example.com:587",
            Some("Ops <ops@example.com>"),
            None
        )
        .is_ok());
        assert!(Mailer::new("smtp://127.0.0.1:2525?tls=none", None, None).is_ok());
        let e = Mailer::new("http://mail.example.com", None, None).unwrap_err();
        assert!(e.contains("smtps://"), "{e}");
        let e = Mailer::new("smtp://mail.example.com?tls=maybe", None, None).unwrap_err();
        assert!(e.contains("tls="), "{e}");
        let e = Mailer::new("smtp://mail.example.com", Some("nobody"), None).unwrap_err();
        assert!(e.contains("KAKUREMICHI_SMTP_FROM"), "{e}");
        let e = Mailer::new("smtps://mail.example.com", None, Some(b"not pem")).unwrap_err();
        assert!(e.contains("KAKUREMICHI_SMTP_CA_ROOTS"), "{e}");
        assert_eq!(percent_decode("p%40ss").as_deref(), Some("p@ss"));
    }

    #[test]
    fn payloads_have_each_formats_shape() {
        let alert = AlertRow {
            id: 1,
            key: "gateway_offline:1".into(),
            rule: "gateway_offline".into(),
            subject: "Gateway gw1".into(),
            summary: "Gateway gw1 has been offline for more than 60 s".into(),
            fired_at: "2026-12-05T00:00:00Z".into(),
            resolved_at: None,
        };
        let n = Notice::about(
            Event::Fired,
            alert,
            Some("https://control.example.com".into()),
        );
        let json = n.webhook_body(WebhookFormat::Json);
        assert_eq!(json["event"], "fired");
        assert_eq!(json["alert"]["rule"], "gateway_offline");
        assert_eq!(
            json["text"],
            "[FIRING] Gateway gw1 has been offline for more than 60 s"
        );
        let slack = n.webhook_body(WebhookFormat::Slack);
        assert!(slack["text"]
            .as_str()
            .unwrap()
            .ends_with("(https://control.example.com)"));
        assert!(n.webhook_body(WebhookFormat::Discord)["content"].is_string());
        assert!(n.mail_body().contains("Rule:     gateway_offline"));
        assert!(n
            .mail_subject()
            .starts_with("[kakuremichi] [FIRING] Gateway gw1"));
    }
}
