//! `kakuremichi control migrate` as an operator runs it before or after an upgrade: the built
//! binary on a data directory, the database inspected with `sqlite3`. An "older" database is this
//! release's with its last migration's record removed (the dry run never applies it); a "newer"
//! one has a record of a migration this release does not know.

use kakuremichi_testkit::bin;
use std::path::Path;
use std::process::{Command, Output};

fn migrate(dir: &Path, extra: &[&str]) -> Output {
    let out = Command::new(bin())
        .args(["control", "migrate", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env_remove("DATABASE_URL")
        .output()
        .expect("the kakuremichi binary runs");
    eprintln!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sql(db: &Path, statement: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(statement)
        .output()
        .expect("sqlite3 runs (apt-get install sqlite3)");
    assert!(out.status.success(), "{statement}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn dry_run_lists_what_an_upgrade_applies_and_a_newer_schema_is_refused() {
    if kakuremichi_testkit::peers::find_in_path(&["sqlite3"]).is_none() {
        assert!(
            !kakuremichi_testkit::peers::must_run(),
            "sqlite3 is missing"
        );
        eprintln!("SKIPPED: sqlite3 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = data.join("control.db");

    // Nothing yet: a dry run says so and creates nothing; a real run creates the database.
    let out = migrate(&data, &["--dry-run"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no database at"));
    assert!(!db.exists());
    assert!(migrate(&data, &[]).status.success());
    let newest = sql(&db, "SELECT MAX(version) FROM _sqlx_migrations");
    let out = migrate(&data, &["--dry-run"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));

    // One migration behind: listed, with the copy that would be made; nothing changes.
    let description = sql(
        &db,
        &format!("SELECT description FROM _sqlx_migrations WHERE version = {newest}"),
    );
    sql(
        &db,
        &format!("DELETE FROM _sqlx_migrations WHERE version = {newest}"),
    );
    let before = std::fs::read(&db).unwrap();
    let out = migrate(&data, &["--dry-run"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("would apply 1 migration(s)"), "{text}");
    assert!(text.contains(&description), "{text}");
    assert!(
        text.contains("a copy of the database would be made first"),
        "{text}"
    );
    assert!(text.contains("dry run: nothing changed"), "{text}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "a dry run changes nothing"
    );
    assert!(!data.join("backups").exists());

    // A schema from a newer release: refused, exit status non-zero, with what to do.
    sql(
        &db,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999, 'from the future', TRUE, X'00', 0)",
    );
    let out = migrate(&data, &["--dry-run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("schema is version 99999, newer than this kakuremichi knows"),
        "{err}"
    );
}
