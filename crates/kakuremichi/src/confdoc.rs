//! The tables of flags of `docs/configuration.md` (the roles and their tools) and `docs/cli.md`
//! (the command-line client: login, tunnels, agents, ...), rendered from the real
//! `clap::Command`, so the docs cannot drift from the CLI: the tests below fail when a committed
//! file differs from what the code renders, and say how to regenerate it. Only the block between
//! the markers is generated; the prose around it is written by hand.

use clap::{Arg, Command};
use std::fmt::Write as _;

pub const BEGIN: &str =
    "<!-- BEGIN generated from the CLI by crates/kakuremichi/src/confdoc.rs: do not edit -->";
pub const END: &str = "<!-- END generated from the CLI -->";

/// Which subcommands a doc is about.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The roles and their tools, and the options every subcommand takes (configuration.md).
    Roles,
    /// The command-line client, [`crate::cli::CLIENT_COMMANDS`] (cli.md).
    Client,
}

/// The generated block: for [`Part::Roles`] one table of flags for the options every subcommand
/// takes first; then one section per subcommand of `part`, in the order `kakuremichi --help`
/// lists them.
pub fn render(mut cli: Command, part: Part) -> String {
    cli.build();
    let name = cli.get_name().to_string();
    let mut out = String::new();
    let global: Vec<&Arg> = cli.get_arguments().filter(|a| documented(a)).collect();
    if !global.is_empty() && part == Part::Roles {
        let _ = writeln!(out, "### Every subcommand\n");
        table(&mut out, &global);
    }
    let client = |s: &&Command| crate::cli::CLIENT_COMMANDS.contains(&s.get_name());
    for sub in subcommands(&cli).filter(|s| client(s) == (part == Part::Client)) {
        section(&mut out, &name, sub);
    }
    format!("{BEGIN}\n{}{END}\n", out.trim_end().to_string() + "\n")
}

/// A subcommand's heading, about, positional arguments and flags, then its own subcommands
/// (`kakuremichi control import-cloudflared`) under the full command line.
fn section(out: &mut String, parent: &str, sub: &Command) {
    let name = format!("{parent} {}", sub.get_name());
    let _ = writeln!(out, "### `{name}`\n");
    if let Some(about) = sub.get_long_about().or(sub.get_about()) {
        let _ = writeln!(out, "{}\n", one_line(&about.to_string()));
    }
    for arg in sub.get_positionals().filter(|a| !a.is_hide_set()) {
        let names = arg.get_value_names().map_or_else(
            || arg.get_id().to_string(),
            |n| {
                n.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        );
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string());
        let _ = writeln!(
            out,
            "Argument `<{names}>`: {}\n",
            one_line(&help.unwrap_or_default())
        );
    }
    let args: Vec<&Arg> = sub
        .get_arguments()
        .filter(|a| documented(a) && !a.is_global_set())
        .collect();
    if args.is_empty() {
        let _ = writeln!(out, "No flags.\n");
    } else {
        table(out, &args);
    }
    for inner in subcommands(sub) {
        section(out, &name, inner);
    }
}

/// The documented subcommands: `build` adds clap's own `help` subcommand, not a role, left out.
fn subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// Flags a user sets: not clap's own `--help`/`--version`, not hidden ones.
fn documented(arg: &Arg) -> bool {
    !arg.is_hide_set()
        && !matches!(arg.get_id().as_str(), "help" | "version")
        && arg.get_long().is_some()
}

fn table(out: &mut String, args: &[&Arg]) {
    let _ = writeln!(out, "| Flag | Environment variable | Default | Meaning |");
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    for arg in args {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            flag(arg),
            env(arg),
            default(arg),
            cell(
                &arg.get_long_help()
                    .or(arg.get_help())
                    .map(|h| h.to_string())
                    .unwrap_or_default()
            ),
        );
    }
    out.push('\n');
}

fn flag(arg: &Arg) -> String {
    let long = arg.get_long().unwrap_or_default();
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    match arg.get_value_names() {
        Some(names) if takes_value => {
            let names: Vec<String> = names.iter().map(|n| format!("<{n}>")).collect();
            format!("`--{long} {}`", names.join(" "))
        }
        _ => format!("`--{long}`"),
    }
}

fn env(arg: &Arg) -> String {
    arg.get_env()
        .map_or_else(|| "—".to_string(), |e| format!("`{}`", e.to_string_lossy()))
}

fn default(arg: &Arg) -> String {
    if arg.is_required_set() {
        return "required".to_string();
    }
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| format!("`{}`", v.to_string_lossy()))
        .collect();
    if values.is_empty() {
        "—".to_string()
    } else {
        values.join(", ")
    }
}

/// Help text as one Markdown table cell: paragraphs joined, pipes escaped.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/");
    const REGENERATE: &str =
        "KAKUREMICHI_UPDATE_DOCS=1 cargo test -p kakuremichi --bin kakuremichi configuration_doc";

    /// The committed doc `name` (in docs/) is what the CLI renders for `part`. With
    /// KAKUREMICHI_UPDATE_DOCS=1 it rewrites the block instead (and then passes).
    fn check(name: &str, part: Part) {
        let path = format!("{DOCS}{name}");
        let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("docs/{name}: {e}"));
        let start = doc.find(BEGIN).expect("the doc has the BEGIN marker");
        let end =
            doc[start..].find(END).expect("the doc has the END marker") + start + END.len() + 1;
        let rendered = render(crate::cli::Cli::command(), part);
        let updated = format!(
            "{}{rendered}{}",
            &doc[..start],
            doc.get(end..).unwrap_or("")
        );
        if std::env::var_os("KAKUREMICHI_UPDATE_DOCS").is_some() {
            if updated != doc {
                std::fs::write(&path, &updated).expect("the doc is writable");
            }
            return;
        }
        assert!(
            updated == doc,
            "docs/{name} differs from the flags in the code (crates/kakuremichi/src/cli.rs and the \
             modules of its commands). Regenerate it with:\n    {REGENERATE}\nand commit the result. \
             The block the code renders is:\n{rendered}"
        );
    }

    #[test]
    fn configuration_doc_matches_the_cli() {
        check("configuration.md", Part::Roles);
    }

    #[test]
    fn configuration_doc_of_the_client_commands_matches_the_cli() {
        check("cli.md", Part::Client);
    }

    #[test]
    fn every_flag_with_an_env_var_is_in_the_doc_with_its_default() {
        let rendered = render(crate::cli::Cli::command(), Part::Roles);
        assert!(
            rendered.contains("| `--listen <LISTEN>` | `KAKUREMICHI_LISTEN` | `0.0.0.0:8780` |")
        );
        assert!(rendered.contains("| `--token <TOKEN>` | `GATEWAY_TOKEN` | required |"));
        assert!(rendered.contains("`--threads <N>` | `KAKUREMICHI_THREADS` | — |"));
        assert!(rendered.contains("### `kakuremichi up`"));
        assert!(rendered.contains("### `kakuremichi control import-cloudflared`"));
        assert!(rendered.contains("Argument `<CONFIG>`: The cloudflared config file"));
        assert!(rendered.contains("| `--token <TOKEN>` | `KAKUREMICHI_TOKEN` | required |"));
        assert!(
            !rendered.contains("--help"),
            "clap's own flags are left out"
        );
        assert!(!rendered.contains("### `kakuremichi tunnels"), "in cli.md");
        let client = render(crate::cli::Cli::command(), Part::Client);
        assert!(client.contains("### `kakuremichi tunnels create`"));
        assert!(client.contains("| `--control-url <URL>` | `KAKUREMICHI_CONTROL_URL` | — |"));
        assert!(
            !client.contains("kakuremichi gateway`"),
            "in configuration.md"
        );
    }
}
