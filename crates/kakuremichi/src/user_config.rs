//! What the command line keeps for its user, and how it shows them a link: the config directory
//! (`--config-dir`, else `$XDG_CONFIG_HOME/kakuremichi`, else `~/.config/kakuremichi`; on Windows
//! `%APPDATA%\kakuremichi`), private files in it (mode 0600 on Unix, replaced whole), and opening
//! a URL in the browser.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// The directory the command line keeps its tokens in.
pub fn dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d.to_path_buf());
    }
    #[cfg(windows)]
    if let Some(appdata) = std::env::var_os("APPDATA").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(appdata).join("kakuremichi"));
    }
    match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => Ok(PathBuf::from(x).join("kakuremichi")),
        None => {
            let home = std::env::var_os("HOME").context("no HOME: give --config-dir")?;
            Ok(PathBuf::from(home).join(".config/kakuremichi"))
        }
    }
}

/// Writes `bytes` to `path` readable by its owner only (0600), all or nothing: a temporary file
/// beside it, synced, then renamed over it.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    // Windows: the file inherits the ACL of the user's profile directory, private to them.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Tries to open `url` in the user's browser (`$BROWSER`, `xdg-open`, `open`); callers print
/// the URL too, for SSH sessions where nothing opens.
pub fn open_in_browser(url: &str) {
    let from_env = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty());
    for opener in from_env
        .iter()
        .map(String::as_str)
        .chain(["xdg-open", "open"])
    {
        let mut command = std::process::Command::new(opener);
        command.arg(url);
        #[cfg(windows)]
        if opener == "xdg-open" {
            // The default browser: `explorer URL` (cmd's `start` would read `&` as a separator).
            command = std::process::Command::new("explorer");
            command.arg(url);
        }
        let spawned = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if spawned.is_ok() {
            return;
        }
    }
}
