//! `--alert-*` and `--smtp-*`: the alert rules' thresholds and the SMTP server of e-mail
//! channels, shared by `control` and `up` (docs/monitoring.md).

use std::time::Duration;

use clap::Args;

#[derive(Args, Clone)]
pub struct AlertArgs {
    /// Seconds a Gateway or Agent may be offline (or a tunnel without a serving Gateway)
    /// before an alert fires.
    #[arg(long, env = "KAKUREMICHI_ALERT_OFFLINE_AFTER", default_value_t = 60,
          value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    alert_offline_after: u64,
    /// Seconds a condition must be gone before its alert is resolved: a node that flaps within
    /// this time sends nothing more.
    #[arg(long, env = "KAKUREMICHI_ALERT_RESOLVE_AFTER", default_value_t = 60,
          value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    alert_resolve_after: u64,
    /// An alert fires for a certificate that expires within this many days (and for one whose
    /// orders have failed for 15 minutes).
    #[arg(long, env = "KAKUREMICHI_ALERT_CERTIFICATE_DAYS", default_value_t = 14,
          value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=365))]
    alert_certificate_days: u32,
    /// An alert fires for a tunnel that answers more than this percentage of its requests
    /// (20 at least) with 5xx over --alert-error-window.
    #[arg(long, env = "KAKUREMICHI_ALERT_ERROR_RATE", default_value_t = 5,
          value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
    alert_error_rate: u32,
    /// Seconds of traffic history the 5xx rate is computed over.
    #[arg(long, env = "KAKUREMICHI_ALERT_ERROR_WINDOW", default_value_t = 300,
          value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(60..=86_400))]
    alert_error_window: u64,
    /// SMTP server of e-mail alert channels: smtps://USER:PASSWORD@HOST (TLS, port 465),
    /// smtp://USER:PASSWORD@HOST:587 (STARTTLS, required) or smtp://HOST:25?tls=none (no TLS,
    /// for a relay on a private network). Default: none, e-mail channels are refused.
    #[arg(
        long,
        env = "KAKUREMICHI_SMTP_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    smtp_url: Option<String>,
    /// Sender of alert mails, e.g. "kakuremichi <alerts@example.com>". Default:
    /// kakuremichi@ the SMTP host.
    #[arg(long, env = "KAKUREMICHI_SMTP_FROM", value_name = "ADDRESS")]
    smtp_from: Option<String>,
    /// PEM file of the certificates to trust for the SMTP server instead of the public roots
    /// (a server with a certificate of a private CA).
    #[arg(long, env = "KAKUREMICHI_SMTP_CA_ROOTS", value_name = "FILE")]
    smtp_ca_roots: Option<std::path::PathBuf>,
}

impl AlertArgs {
    pub fn config(&self) -> anyhow::Result<kakuremichi_control::AlertConfig> {
        let roots = match &self.smtp_ca_roots {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read --smtp-ca-roots {}: {e}", path.display())
            })?),
            None => None,
        };
        let mailer = match &self.smtp_url {
            Some(url) => Some(
                kakuremichi_control::Mailer::new(url, self.smtp_from.as_deref(), roots.as_deref())
                    .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        };
        Ok(kakuremichi_control::AlertConfig {
            offline_after: Duration::from_secs(self.alert_offline_after),
            resolve_after: Duration::from_secs(self.alert_resolve_after),
            certificate_days: self.alert_certificate_days,
            error_rate_percent: self.alert_error_rate,
            error_rate_window: Duration::from_secs(self.alert_error_window),
            mailer,
            ..Default::default()
        })
    }
}
