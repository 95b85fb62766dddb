//! `DATABASE_URL` / `DATABASE_URL_FILE`, shared by Control and its database tools.

use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;

/// Longest database URL accepted from a file (a URL with a long password and TLS parameters
/// fits many times over).
const MAX_URL_FILE: u64 = 8 * 1024;

#[derive(Args, Clone, Default)]
pub struct DatabaseArg {
    /// Database URL: sqlite:PATH, or postgres://USER:PASSWORD@HOST:PORT/DB for several Control
    /// replicas on one PostgreSQL (TLS: add ?sslmode=verify-full&sslrootcert=CA.pem). Default:
    /// the SQLite file control.db in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// File whose content is the database URL (a Docker or Kubernetes secret), instead of
    /// DATABASE_URL, so the password is not in the environment.
    #[arg(
        long,
        env = "DATABASE_URL_FILE",
        value_name = "FILE",
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<PathBuf>,
}

impl DatabaseArg {
    /// The URL given, read from the file when one is named; `None`: the default SQLite file.
    pub fn url(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.database_url_file else {
            return Ok(self.database_url.clone());
        };
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read DATABASE_URL_FILE {}", path.display()))?
            .len();
        anyhow::ensure!(
            size <= MAX_URL_FILE,
            "DATABASE_URL_FILE {} is {size} bytes; a database URL is at most {MAX_URL_FILE}",
            path.display()
        );
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read DATABASE_URL_FILE {}", path.display()))?;
        let url = text.trim();
        anyhow::ensure!(
            !url.is_empty(),
            "DATABASE_URL_FILE {} is empty; write the database URL in it",
            path.display()
        );
        Ok(Some(url.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_comes_from_the_file_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "postgres://k:secret@db/k\n").unwrap();
        let arg = DatabaseArg {
            database_url: None,
            database_url_file: Some(file.clone()),
        };
        assert_eq!(
            arg.url().unwrap().as_deref(),
            Some("postgres://k:secret@db/k")
        );
        std::fs::write(&file, "\n").unwrap();
        assert!(arg.url().unwrap_err().to_string().contains("is empty"));
        let missing = DatabaseArg {
            database_url_file: Some(dir.path().join("none")),
            ..DatabaseArg::default()
        };
        assert!(missing
            .url()
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
    }
}
