//! The credentials `up` creates on first start, kept in `<data-dir>/up.json` (mode 0600) so that
//! later starts reuse them instead of bootstrapping again.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Credentials `up` created on first start.
#[derive(Serialize, Deserialize)]
pub(super) struct UpState {
    pub admin_email: String,
    pub admin_password: String,
    pub api_token: String,
    pub gateway_token: String,
    pub agent_id: i64,
    pub agent_key: String,
}

/// The first admin's password: 96 random bits, URL-safe.
pub(super) fn random_password() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>())
}

/// The credentials of an earlier start, or `None` on the first.
pub(super) fn read(path: &Path) -> anyhow::Result<Option<UpState>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; remove it (and the data directory) to start over",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Keeps the credentials, readable only by the user who runs `up`.
pub(super) fn write(path: &Path, state: &UpState) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
    file.sync_all()?;
    Ok(())
}
