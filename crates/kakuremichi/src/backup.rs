//! `kakuremichi control backup` and `kakuremichi control restore` (docs/backups.md).

use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct BackupArgs {
    /// Control's data directory (control.db, secrets.key, internal-ca/).
    #[arg(long, env = "KAKUREMICHI_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Database URL; default: the SQLite file in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where to write the backup (it must not exist); default BACKUP_DIR/kakuremichi-TIME.db.
    /// A FILE.sha256 is written beside it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Directory of the backups. Default: DATA_DIR/backups.
    #[arg(long, env = "KAKUREMICHI_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
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
}

pub async fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let path =
        kakuremichi_control::backup(&a.data_dir, a.database_url.as_deref(), a.out, a.backup_dir)
            .await?;
    println!("{}", path.display());
    Ok(())
}

pub async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let r = kakuremichi_control::restore(&a.file, &a.data_dir, a.force).await?;
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
