//! Scheduled backups (issue #18): every day at `KAKUREMICHI_BACKUP_AT` (UTC) Control writes a
//! backup of itself (see `store::backup`) to the backup directory, keeps the newest of each of
//! the last `keep_daily` days and `keep_weekly` ISO weeks that have one, deletes the other
//! scheduled backups (never a pre-migration copy or a file of someone else's), and runs
//! `KAKUREMICHI_BACKUP_COMMAND` with the file's path to ship it elsewhere. Each run is in the
//! audit log (`backup.created`, `backup.failed`, `backup.shipped`, `backup.command_failed`),
//! which is also where [`Backups::state`] reads the last success and failure from, so every
//! replica shows the same.

use crate::store::backup_key::BackupKey;
use crate::store::{Actor, AuditRow, Store};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;

/// Names of scheduled (and `control backup`) files: `kakuremichi-<time>.db`.
pub const PREFIX: &str = "kakuremichi-";
/// The longest the backup command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);

/// When and where Control backs itself up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    /// UTC time of day (hour, minute) of the daily backup; `None`: no scheduled backups.
    pub at: Option<(u8, u8)>,
    /// Where backups go; `None`: `DATA_DIR/backups`.
    pub dir: Option<PathBuf>,
    pub keep_daily: usize,
    pub keep_weekly: usize,
    /// Run with `sh -c` after each backup, the file's path as `$1` and in `KAKUREMICHI_BACKUP_FILE`.
    pub command: Option<String>,
    /// `KAKUREMICHI_BACKUP_KEY`: every backup is encrypted with it.
    pub key: Option<BackupKey>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            at: Some((3, 0)),
            dir: None,
            keep_daily: 7,
            keep_weekly: 4,
            command: None,
            key: None,
        }
    }
}

/// Parses `HH:MM` (UTC) or `off`.
pub fn parse_at(text: &str) -> Result<Option<(u8, u8)>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let parsed = text.split_once(':').and_then(|(h, m)| {
        let (h, m) = (h.parse::<u8>().ok()?, m.parse::<u8>().ok()?);
        (h < 24 && m < 60 && text.len() == 5).then_some((h, m))
    });
    parsed
        .map(Some)
        .ok_or_else(|| format!("backup time {text:?} must be HH:MM in UTC (e.g. 03:00), or off"))
}

/// The next moment after `now` at `at` (UTC).
pub fn next_at(now: OffsetDateTime, (hour, minute): (u8, u8)) -> OffsetDateTime {
    let today =
        now.replace_time(time::Time::from_hms(hour, minute, 0).unwrap_or(time::Time::MIDNIGHT));
    if today > now {
        today
    } else {
        today + time::Duration::days(1)
    }
}

/// Which of `backups` (path, time made) to keep at `now`: the newest of each of the `daily` most
/// recent days and of the `weekly` most recent ISO weeks that have one (one file may count for
/// both). Backups made after `now` (a clock set back) are kept.
pub fn keep(
    backups: &[(PathBuf, OffsetDateTime)],
    now: OffsetDateTime,
    daily: usize,
    weekly: usize,
) -> BTreeSet<PathBuf> {
    let mut newest_first: Vec<&(PathBuf, OffsetDateTime)> = backups.iter().collect();
    newest_first.sort_by_key(|b| std::cmp::Reverse(b.1));
    let mut kept: BTreeSet<PathBuf> = newest_first
        .iter()
        .filter(|(_, t)| *t > now)
        .map(|(p, _)| p.clone())
        .collect();
    let mut days = Vec::new();
    let mut weeks = Vec::new();
    for (path, t) in newest_first.iter().filter(|(_, t)| *t <= now) {
        let day = t.date();
        if !days.contains(&day) && days.len() < daily {
            days.push(day);
            kept.insert(path.clone());
        }
        let week = (t.date().iso_week(), t.date().to_iso_week_date().0);
        if !weeks.contains(&week) && weeks.len() < weekly {
            weeks.push(week);
            kept.insert(path.clone());
        }
    }
    kept
}

/// Files listed by [`Backups::files`], at most.
const MAX_LISTED: usize = 500;
/// With a schedule, no backup for this long needs attention (twice the 24 h RPO's period).
const OVERDUE: time::Duration = time::Duration::hours(48);

/// The scheduled backups of one Control.
pub struct Backups {
    store: Store,
    data_dir: PathBuf,
    config: BackupConfig,
    /// One run at a time (the schedule and `POST /api/v1/backups`).
    running: tokio::sync::Mutex<()>,
}

/// A backup just made: its path, and why the backup command failed if it did.
#[derive(Debug)]
pub struct Made {
    pub path: PathBuf,
    pub command_error: Option<String>,
}

/// A file of the backup directory.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct BackupFile {
    pub name: String,
    pub size: u64,
    /// When it was made (RFC 3339), from its name.
    pub created: Option<String>,
    pub encrypted: bool,
    /// `scheduled` (also `control backup` and the API's) or `pre-migration` (made before a
    /// schema upgrade; never removed by retention).
    pub kind: &'static str,
}

/// What the audit log says of the backups: the last success and the last failure of each step.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct BackupState {
    /// When the newest backup was written, and its path.
    pub last_success: Option<String>,
    pub last_file: Option<String>,
    /// When the backup command last shipped one.
    pub last_shipped: Option<String>,
    /// The newest failure not followed by a success of the same step (writing, or shipping).
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// A failure stands, or (with a schedule) nothing was written for 48 hours.
    pub needs_attention: bool,
}

impl Backups {
    pub fn new(store: Store, data_dir: PathBuf, config: BackupConfig) -> Self {
        Self {
            store,
            data_dir,
            config,
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config(&self) -> &BackupConfig {
        &self.config
    }

    pub fn dir(&self) -> PathBuf {
        self.config
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("backups"))
    }

    /// Backs up on schedule until `stop` turns true.
    pub async fn run(self: std::sync::Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(at) = self.config.at else { return };
        loop {
            let now = OffsetDateTime::now_utc();
            let wait = Duration::try_from(next_at(now, at) - now).unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(wait) => {}
            }
            if let Err(e) = self.run_once(OffsetDateTime::now_utc()).await {
                tracing::error!(error = %e, "scheduled backup failed");
            }
        }
    }

    /// One run at `now`: backup, retention, command. `Err` when no backup was written; a
    /// failing command is in [`Made::command_error`] (the backup is there).
    pub async fn run_once(&self, now: OffsetDateTime) -> Result<Made, String> {
        let _one_at_a_time = self.running.lock().await;
        self.run_locked(now).await
    }

    /// [`Backups::run_once`], or `None` at once when a run is under way.
    pub async fn try_run_once(&self, now: OffsetDateTime) -> Option<Result<Made, String>> {
        let _one_at_a_time = self.running.try_lock().ok()?;
        Some(self.run_locked(now).await)
    }

    async fn run_locked(&self, now: OffsetDateTime) -> Result<Made, String> {
        let dir = self.dir();
        // Names have one-second stamps: a second backup within the same second (on request)
        // takes the next free one.
        let name = |at: OffsetDateTime| {
            let stamp = crate::store::timestamp(at).replace([':', '-'], "");
            dir.join(format!("{PREFIX}{stamp}.db"))
        };
        let mut path = name(now);
        for later in 1..=60 {
            if !path.exists() {
                break;
            }
            path = name(now + time::Duration::seconds(later));
        }
        let written = self
            .store
            .backup_now(&self.data_dir, &path, self.config.key.as_ref())
            .await;
        if let Err(e) = written {
            let message = e.to_string();
            self.audit(
                "backup.failed",
                &path,
                serde_json::json!({"error": message}),
            )
            .await;
            return Err(message);
        }
        tracing::info!(path = %path.display(), encrypted = self.config.key.is_some(), "backup written");
        self.audit("backup.created", &path, serde_json::json!({}))
            .await;
        self.prune(&dir, now);
        let mut command_error = None;
        if let Some(command) = &self.config.command {
            match run_command(command, &path).await {
                Ok(()) => {
                    self.audit("backup.shipped", &path, serde_json::json!({}))
                        .await
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "the backup command failed");
                    self.audit(
                        "backup.command_failed",
                        &path,
                        serde_json::json!({"error": e}),
                    )
                    .await;
                    command_error = Some(e);
                }
            }
        }
        Ok(Made {
            path,
            command_error,
        })
    }

    /// The backup directory's backups (and pre-migration copies), newest first.
    pub fn files(&self) -> Vec<BackupFile> {
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return Vec::new();
        };
        let mut files: Vec<BackupFile> = entries
            .filter_map(Result::ok)
            .filter_map(|e| describe(&e.path()))
            .collect();
        files.sort_by(|a, b| b.created.cmp(&a.created).then(b.name.cmp(&a.name)));
        files.truncate(MAX_LISTED);
        files
    }

    /// The last successes and failures, from the audit log.
    pub async fn state(&self, now: OffsetDateTime) -> crate::store::StoreResult<BackupState> {
        let last = |action: &'static str| self.store.last_audit_of(action);
        let (created, failed) = (last("backup.created").await?, last("backup.failed").await?);
        let (shipped, ship_failed) = (
            last("backup.shipped").await?,
            last("backup.command_failed").await?,
        );
        let newer = |bad: &Option<AuditRow>, good: &Option<AuditRow>| match (bad, good) {
            (Some(b), Some(g)) if b.id < g.id => None,
            (Some(b), _) => Some(b.clone()),
            (None, _) => None,
        };
        let standing = [newer(&failed, &created), newer(&ship_failed, &shipped)]
            .into_iter()
            .flatten()
            .max_by_key(|r| r.id);
        let overdue = self.config.at.is_some()
            && created
                .as_ref()
                .and_then(|c| OffsetDateTime::parse(&c.at, &Rfc3339).ok())
                .is_some_and(|at| now - at > OVERDUE);
        let error = standing.as_ref().map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.detail)
                .ok()
                .and_then(|d| d["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| r.action.clone())
        });
        Ok(BackupState {
            needs_attention: standing.is_some() || overdue,
            last_success: created.as_ref().map(|c| c.at.clone()),
            last_file: created.map(|c| c.target.trim_start_matches("backup:").to_string()),
            last_shipped: shipped.map(|s| s.at),
            last_error_at: standing.map(|r| r.at),
            last_error: error,
        })
    }

    /// Deletes the scheduled backups [`keep`] does not keep (with their checksum files).
    fn prune(&self, dir: &Path, now: OffsetDateTime) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let backups: Vec<(PathBuf, OffsetDateTime)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let stamp = name.strip_prefix(PREFIX)?.strip_suffix(".db")?;
                Some((e.path(), parse_stamp(stamp)?))
            })
            .collect();
        let kept = keep(
            &backups,
            now,
            self.config.keep_daily,
            self.config.keep_weekly,
        );
        for (path, _) in backups.iter().filter(|(p, _)| !kept.contains(p)) {
            let sum = PathBuf::from(format!("{}.sha256", path.display()));
            match std::fs::remove_file(path) {
                Ok(()) => {
                    let _ = std::fs::remove_file(sum);
                    tracing::info!(path = %path.display(), "old backup removed (retention)");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an old backup")
                }
            }
        }
    }

    async fn audit(&self, action: &str, path: &Path, detail: serde_json::Value) {
        let actor = Actor {
            user_id: None,
            email: None,
        };
        let target = format!("backup:{}", path.display());
        if let Err(e) = self.store.audit(&actor, action, &target, &detail).await {
            tracing::warn!(error = %e, "cannot record the backup in the audit log");
        }
    }
}

/// The backup (or pre-migration copy) at `path`, `None` for any other file.
pub fn describe(path: &Path) -> Option<BackupFile> {
    let name = path.file_name()?.to_str()?.to_string();
    let (kind, created) = if let Some(rest) = name.strip_prefix(PREFIX) {
        ("scheduled", parse_stamp(rest.strip_suffix(".db")?))
    } else if name.starts_with("pre-migration-") && name.ends_with(".db") {
        let stamp = name.strip_suffix(".db")?.rsplit('-').next()?;
        ("pre-migration", parse_stamp(stamp))
    } else {
        return None;
    };
    let meta = std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)?;
    let mut head = [0u8; 8];
    let encrypted = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| crate::store::backup_key::is_encrypted(&head));
    Some(BackupFile {
        name,
        size: meta.len(),
        created: created.map(crate::store::timestamp),
        encrypted,
        kind,
    })
}

/// `20261202T030000Z` (the file name's form of a timestamp) as a time.
fn parse_stamp(stamp: &str) -> Option<OffsetDateTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(stamp, &format)
        .ok()
        .map(|t| t.assume_utc())
}

async fn run_command(command: &str, file: &Path) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .arg("sh")
        .arg(file)
        .env("KAKUREMICHI_BACKUP_FILE", file)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run the backup command: {e}"))?;
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("the backup command exited with {status}")),
        Ok(Err(e)) => Err(format!("the backup command: {e}")),
        Err(_) => Err(format!(
            "the backup command ran longer than {} s and was stopped",
            COMMAND_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn times_parse_and_the_next_run_is_today_or_tomorrow() {
        assert_eq!(parse_at("03:30"), Ok(Some((3, 30))));
        assert_eq!(parse_at("off"), Ok(None));
        for bad in ["3:30", "24:00", "12:60", "noon", "03:30:00"] {
            assert!(parse_at(bad).is_err(), "{bad}");
        }
        let now = datetime!(2026-12-02 02:00 UTC);
        assert_eq!(next_at(now, (3, 0)), datetime!(2026-12-02 03:00 UTC));
        assert_eq!(next_at(now, (1, 0)), datetime!(2026-12-03 01:00 UTC));
        assert_eq!(next_at(now, (2, 0)), datetime!(2026-12-03 02:00 UTC));
    }

    #[test]
    fn seven_daily_and_four_weekly_are_kept() {
        // Daily at 03:00 for 60 days up to Tuesday 2026-06-30, plus a second one that day.
        let now = datetime!(2026-06-30 12:00 UTC);
        let mut backups: Vec<(PathBuf, OffsetDateTime)> = (0..60)
            .map(|d| {
                let t = datetime!(2026-06-30 03:00 UTC) - time::Duration::days(d);
                (PathBuf::from(format!("d{d}")), t)
            })
            .collect();
        backups.push((PathBuf::from("later"), datetime!(2026-06-30 11:00 UTC)));
        let kept = keep(&backups, now, 7, 4);
        // Days: Jun 30 (its newest, "later"), 29 ... 24 (d1-d6). ISO weeks: 27 ("later"),
        // 26 (Sunday Jun 28: d2), 25 (Jun 21: d9), 24 (Jun 14: d16).
        let want: BTreeSet<PathBuf> = ["later", "d1", "d2", "d3", "d4", "d5", "d6", "d9", "d16"]
            .into_iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(kept, want);
        // A backup from the future (clock set back) is never deleted.
        backups.push((PathBuf::from("future"), datetime!(2027-01-01 00:00 UTC)));
        assert!(keep(&backups, now, 7, 4).contains(Path::new("future")));
        assert_eq!(keep(&backups, now, 0, 0).len(), 1);
    }

    #[tokio::test]
    async fn a_run_backs_up_prunes_and_runs_the_command_and_a_failing_command_is_audited() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let store = Store::open_file(&data.join("control.db")).await.unwrap();
        let shipped = dir.path().join("shipped");
        // Ten old ones, 2020-01-01 to -10: the six newest days are kept with today's, and
        // January 5 as its ISO week's newest; January 1 to 4 go.
        let old = |day: u8| {
            data.join("backups")
                .join(format!("kakuremichi-202001{day:02}T030000Z.db"))
        };
        std::fs::create_dir_all(data.join("backups")).unwrap();
        for day in 1..=10 {
            std::fs::write(old(day), "old").unwrap();
        }
        let pre_migration = data
            .join("backups")
            .join("pre-migration-v1-to-v2-20200101T000000Z.db");
        std::fs::write(&pre_migration, "kept").unwrap();
        let config = BackupConfig {
            command: Some(format!("cp \"$1\" {}", shipped.display())),
            ..BackupConfig::default()
        };
        let backups = Backups::new(store.clone(), data.clone(), config);
        let now = OffsetDateTime::now_utc();
        let made = backups.run_once(now).await.unwrap();
        let path = made.path;
        assert_eq!(made.command_error, None);
        assert!(path.exists() && shipped.exists(), "written and shipped");
        for day in 1..=4 {
            assert!(!old(day).exists(), "2020-01-{day:02}: removed");
        }
        for day in 5..=10 {
            assert!(old(day).exists(), "2020-01-{day:02}: kept");
        }
        assert!(
            pre_migration.exists(),
            "not a scheduled backup: never removed"
        );

        let failing = Backups::new(
            store.clone(),
            data,
            BackupConfig {
                command: Some("exit 3".into()),
                ..BackupConfig::default()
            },
        );
        let state = backups.state(now).await.unwrap();
        assert!(!state.needs_attention, "{state:?}");
        assert_eq!(state.last_file.as_deref(), path.to_str());
        assert!(state.last_shipped.is_some());
        let made = failing
            .run_once(now + time::Duration::seconds(1))
            .await
            .unwrap();
        assert!(made.path.exists(), "the backup is written all the same");
        let err = made.command_error.unwrap();
        assert!(err.contains("exited with"), "{err}");
        let audit = store.list_audit(None, None, 50).await.unwrap();
        let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
        assert!(actions.contains(&"backup.created"), "{actions:?}");
        assert!(actions.contains(&"backup.command_failed"), "{actions:?}");
        // The dashboard's state: the shipping failure stands until a shipment succeeds.
        let state = failing.state(now).await.unwrap();
        assert!(state.needs_attention, "{state:?}");
        assert!(state.last_error.unwrap().contains("exited with"));
        backups
            .run_once(now + time::Duration::seconds(2))
            .await
            .unwrap();
        let state = backups.state(now).await.unwrap();
        assert!(
            !state.needs_attention && state.last_error.is_none(),
            "{state:?}"
        );
        // Two days without a backup, with a schedule: overdue.
        let later = now + time::Duration::hours(49);
        assert!(backups.state(later).await.unwrap().needs_attention);
        let listed = backups.files();
        // Today's newest (retention keeps one a day), January 5 to 10, the pre-migration copy.
        assert_eq!(listed.len(), 1 + 6 + 1, "{listed:?}");
        assert_eq!(listed[0].kind, "scheduled");
        assert!(listed.iter().any(|f| f.kind == "pre-migration"));
    }

    #[tokio::test]
    async fn with_a_key_the_backup_is_encrypted_and_restores_only_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("secrets.key"), [7u8; 32]).unwrap();
        let store = Store::open_file(&data.join("control.db")).await.unwrap();
        let key = BackupKey::new("a passphrase long enough").unwrap();
        let config = BackupConfig {
            key: Some(key.clone()),
            ..BackupConfig::default()
        };
        let backups = Backups::new(store.clone(), data.clone(), config);
        let made = backups.run_once(OffsetDateTime::now_utc()).await.unwrap();
        let bytes = std::fs::read(&made.path).unwrap();
        assert!(crate::store::backup_key::is_encrypted(&bytes));
        assert!(!bytes.windows(15).any(|w| w == b"SQLite format 3"));
        assert!(backups.files()[0].encrypted);

        let restore = |key: Option<BackupKey>, into: &str| {
            let (file, into) = (made.path.clone(), dir.path().join(into));
            async move { Store::restore(&file, &into, false, key.as_ref()).await }
        };
        let none = restore(None, "none").await.unwrap_err().to_string();
        assert!(none.contains("set KAKUREMICHI_BACKUP_KEY"), "{none}");
        let other = BackupKey::new("not the passphrase at all").unwrap();
        let wrong = restore(Some(other), "wrong").await.unwrap_err().to_string();
        assert!(wrong.contains("not the key"), "{wrong}");
        assert!(
            !dir.path().join("wrong/control.db").exists(),
            "nothing restored"
        );
        let restored = restore(Some(key), "right").await.unwrap();
        assert_eq!(restored.files, ["secrets.key"]);
        assert_eq!(
            std::fs::read(dir.path().join("right/secrets.key")).unwrap(),
            [7u8; 32]
        );
        Store::open_file(&dir.path().join("right/control.db"))
            .await
            .unwrap();
    }
}
