//! `kakuremichi --version` names the commit and the target it was built from, so a bug report or
//! a release asset says exactly what runs: `0.1.0 (commit 0123456789ab, x86_64-unknown-linux-musl)`.
//!
//! The commit comes from `KAKUREMICHI_COMMIT` (how the Docker build passes it: the image has no
//! `.git`), else from `git rev-parse HEAD`, else "unknown" (a source tarball).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KAKUREMICHI_COMMIT");
    let commit = std::env::var("KAKUREMICHI_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_head)
        .map(|c| c.trim().chars().take(12).collect::<String>())
        .unwrap_or_else(|| "unknown".to_string());
    let target = std::env::var("TARGET").unwrap_or_default();
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=KAKUREMICHI_VERSION={version} (commit {commit}, {target})");
}

/// HEAD's commit, and the files whose change moves it (so a new commit rebuilds this crate's
/// version string, nothing else).
fn git_head() -> Option<String> {
    let out = Command::new("git")
        .args([
            "rev-parse",
            "--absolute-git-dir",
            "--git-common-dir",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines();
    // A worktree has its own HEAD; branches and packed refs are in the common directory.
    let git_dir = std::path::PathBuf::from(lines.next()?);
    // (relative to the working directory when git prints it relative)
    let common_dir = std::env::current_dir().ok()?.join(lines.next()?);
    let head = lines.next()?.to_string();
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    println!(
        "cargo:rerun-if-changed={}",
        common_dir.join("packed-refs").display()
    );
    if let Ok(head_file) = std::fs::read_to_string(git_dir.join("HEAD")) {
        if let Some(reference) = head_file.strip_prefix("ref: ") {
            println!(
                "cargo:rerun-if-changed={}",
                common_dir.join(reference.trim()).display()
            );
        }
    }
    (head.len() >= 12 && head.bytes().all(|b| b.is_ascii_hexdigit())).then_some(head)
}
