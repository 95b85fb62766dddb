//! Scheduled backups (issue #18): every day at `KAKUREMICHI_BACKUP_AT` (UTC) Control writes a
//! backup of itself (see `store::backup`) to the backup directory, keeps the newest of each of
//! the last `keep_daily` days and `keep_weekly` ISO weeks that have one, deletes the other
//! scheduled backups (never a pre-migration copy or a file of someone else's), and runs
//! `KAKUREMICHI_BACKUP_COMMAND` with the file's path to ship it elsewhere. Each run is in the
//! audit log (`backup.created`, `backup.failed`, `backup.command_failed`).

use crate::store::{Actor, Store};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
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
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            at: Some((3, 0)),
            dir: None,
            keep_daily: 7,
            keep_weekly: 4,
            command: None,
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

/// The scheduled backups of one Control.
pub struct Backups {
    store: Store,
    data_dir: PathBuf,
    config: BackupConfig,
}

impl Backups {
    pub fn new(store: Store, data_dir: PathBuf, config: BackupConfig) -> Self {
        Self {
            store,
            data_dir,
            config,
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.config
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("backups"))
    }

    /// Backs up on schedule until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
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

    /// One scheduled run at `now`: backup, retention, command. Returns the backup's path.
    pub async fn run_once(&self, now: OffsetDateTime) -> Result<PathBuf, String> {
        let dir = self.dir();
        let stamp = crate::store::timestamp(now).replace([':', '-'], "");
        let path = dir.join(format!("{PREFIX}{stamp}.db"));
        if let Err(e) = self.store.backup_now(&self.data_dir, &path).await {
            let message = e.to_string();
            self.audit(
                "backup.failed",
                &path,
                serde_json::json!({"error": message}),
            )
            .await;
            return Err(message);
        }
        tracing::info!(path = %path.display(), "backup written");
        self.audit("backup.created", &path, serde_json::json!({}))
            .await;
        self.prune(&dir, now);
        if let Some(command) = &self.config.command {
            if let Err(e) = run_command(command, &path).await {
                tracing::error!(path = %path.display(), error = %e, "the backup command failed");
                self.audit(
                    "backup.command_failed",
                    &path,
                    serde_json::json!({"error": e}),
                )
                .await;
                return Err(format!("backup written to {}, but {e}", path.display()));
            }
        }
        Ok(path)
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
        let path = backups.run_once(now).await.unwrap();
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
        let err = failing
            .run_once(now + time::Duration::seconds(1))
            .await
            .unwrap_err();
        assert!(err.contains("exited with"), "{err}");
        let audit = store.list_audit(None, None, 50).await.unwrap();
        let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
        assert!(actions.contains(&"backup.created"), "{actions:?}");
        assert!(actions.contains(&"backup.command_failed"), "{actions:?}");
    }
}
