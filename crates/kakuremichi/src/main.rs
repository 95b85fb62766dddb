//! The `kakuremichi` binary: command-line parsing and wiring only. Each role is a library.

mod access_tcp;
mod alert_args;
#[cfg(target_os = "linux")]
mod allocator;
mod backup;
mod cli;
#[cfg(test)]
mod confdoc;
mod database;
mod exit;
mod import;
mod manage;
mod migrate;
mod selfdoc;
mod session;
mod share;
mod signal;
mod up;
mod user_config;

use clap::Parser;

/// mimalloc, with large blocks mapped on their own (see the module).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

fn main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    allocator::start_collector();
    let cli = cli::Cli::parse();
    init_logging(cli.default_log_filter());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.worker_threads())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<exit::Exit>() {
            Some(exit) => {
                if !exit.message.is_empty() {
                    eprintln!("error: {}", exit.message);
                }
                std::process::ExitCode::from(exit.code)
            }
            None => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// Logs to stderr; `KAKUREMICHI_LOG` (or `RUST_LOG`) takes a filter such as `debug` or
/// `info,kakuremichi_tunnel=debug`.
fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("KAKUREMICHI_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
