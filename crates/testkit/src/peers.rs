//! The real programs some tests talk to (Pebble, wireguard-go, chromium, `ip`/`nft`): finding
//! them, and the one rule for when they are missing. A test that cannot run here is skipped with
//! a loud `SKIPPED` line, unless the run requires peers (`CI` set or `KAKUREMICHI_REQUIRE_PEERS=1`),
//! in which case it fails with what to install.

use std::io::Write as _;
use std::path::PathBuf;

/// True when a test that cannot run here must fail rather than skip (CI, or peers required).
pub fn must_run() -> bool {
    std::env::var_os("CI").is_some()
        || std::env::var("KAKUREMICHI_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// The first of `names` found in a `PATH` directory.
pub fn find_in_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Whether the effective user is root (namespaces, TUN devices).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        })
        .as_deref()
        == Some("0")
}

/// `None` when the test can run; otherwise it cannot, and `why` says what is missing: returns
/// false after a loud `SKIPPED` line, or panics when the run requires peers ([`must_run`]).
pub fn can_run(test: &str, why: Option<String>) -> bool {
    let Some(why) = why else { return true };
    assert!(!must_run(), "{test} cannot run: {why}");
    // Straight to the stderr handle, not eprintln!: the harness captures that and would hide
    // it, since a skipped test passes.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    false
}

/// Returns from the calling test (after [`can_run`]'s loud line) when it cannot run here.
#[macro_export]
macro_rules! skip_unless {
    ($test:expr, $why:expr) => {
        if !$crate::peers::can_run($test, $why) {
            return;
        }
    };
}
