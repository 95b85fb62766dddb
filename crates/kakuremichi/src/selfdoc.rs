//! What the command line generates from its own definition: shell completions
//! (`kakuremichi completions bash|zsh|fish`) and man pages (`kakuremichi man --out-dir DIR`, one
//! page per command, e.g. `kakuremichi-tunnels-create.1`). Both follow the code, so they cannot
//! drift from it.

use crate::exit::Exit;
use anyhow::Context;
use clap::{Args, CommandFactory};
use std::path::PathBuf;

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Directory to write the pages to (created if missing), e.g. /usr/local/share/man/man1.
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
}

/// Prints the completion script of `shell` on stdout.
pub fn completions(args: &CompletionsArgs) {
    let mut cmd = crate::cli::Cli::command();
    let name = cmd.get_name().to_string();
    clap_complete::generate(args.shell, &mut cmd, name, &mut std::io::stdout());
}

/// Writes one man page per command into `--out-dir`; says how many.
pub fn man(args: &ManArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| Exit::usage(format!("--out-dir {}: {e}", args.out_dir.display())))?;
    let cmd = crate::cli::Cli::command();
    clap_mangen::generate_to(cmd, &args.out_dir)
        .with_context(|| format!("writing man pages to {}", args.out_dir.display()))?;
    let written = std::fs::read_dir(&args.out_dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".1"))
        .count();
    println!(
        "{written} man pages in {} (try: man -l {}/kakuremichi.1)",
        args.out_dir.display(),
        args.out_dir.display()
    );
    Ok(())
}
