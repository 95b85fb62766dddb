//! `kakuremichi control backup` and `kakuremichi control restore` (docs/backups.md).

use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct BackupArgs {
    /// Control's data directory (control.db, secrets.key, internal-ca/).
    #[arg(long, env = "KAKUREMICHI_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub database: crate::database::DatabaseArg,
    /// Where to write the backup (it must not exist); default BACKUP_DIR/kakuremichi-TIME.db.
    /// A FILE.sha256 is written beside it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Directory of the backups. Default: DATA_DIR/backups.
    #[arg(long, env = "KAKUREMICHI_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    #[command(flatten)]
    pub key: BackupKeyArg,
}

/// `KAKUREMICHI_BACKUP_KEY`, shared by Control, `backup` and `restore`.
#[derive(Args, Clone)]
pub struct BackupKeyArg {
    /// Passphrase (16 to 1024 characters) that encrypts backups at rest (Argon2id +
    /// ChaCha20-Poly1305); needed again to restore them. Prefer the environment variable to the
    /// flag (a flag shows in `ps`). Make one with: openssl rand -base64 32
    #[arg(long = "backup-key", env = "KAKUREMICHI_BACKUP_KEY", hide_env_values = true,
          value_parser = parse_key, value_name = "PASSPHRASE")]
    pub backup_key: Option<kakuremichi_control::BackupKey>,
}

fn parse_key(text: &str) -> Result<kakuremichi_control::BackupKey, String> {
    kakuremichi_control::BackupKey::new(text)
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup file (its FILE.sha256 must be beside it).
    pub file: PathBuf,
    /// The data directory to restore into (Control stopped).
    #[arg(long, env = "KAKUREMICHI_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Replace the database the data directory already holds.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub key: BackupKeyArg,
}

pub async fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let url = a.database.url()?;
    let path = kakuremichi_control::backup(
        &a.data_dir,
        url.as_deref(),
        a.out,
        a.backup_dir,
        a.key.backup_key.as_ref(),
    )
    .await?;
    println!("{}", path.display());
    Ok(())
}

pub async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let key = a.key.backup_key.as_ref();
    let r = kakuremichi_control::restore(&a.file, &a.data_dir, a.force, key).await?;
    println!(
        "restored {} into {} (made {} by kakuremichi {}, schema version {}; files: {})",
        a.file.display(),
        a.data_dir.display(),
        r.created,
        r.release,
        r.schema_version,
        if r.files.is_empty() {
            "none".to_string()
        } else {
            r.files.join(", ")
        }
    );
    println!("start Control on it: nodes reconnect and resynchronise by themselves");
    Ok(())
}
