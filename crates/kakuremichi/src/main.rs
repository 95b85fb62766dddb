//! The `kakuremichi` binary: command-line parsing and wiring only. Each role is a library.

mod cli;
mod signal;
mod up;

use clap::Parser;

fn main() -> std::process::ExitCode {
    return_freed_buffers_to_the_system();
    let cli = cli::Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `KAKUREMICHI_LOG` (or `RUST_LOG`) takes a filter such as `debug` or
/// `info,kakuremichi_tunnel=debug`.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("KAKUREMICHI_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,boringtun=error".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Every tunnelled TCP connection has two 256 KiB buffers. glibc serves allocations that large
/// with their own `mmap` (given back on free, untouched pages never resident) only until the first
/// such block is freed: then it raises its threshold and serves them from its heaps, which it does
/// not give back. After a burst of 1,000 connections a Gateway or Agent would then keep hundreds
/// of MiB it no longer uses. A fixed threshold keeps the first behaviour.
fn return_freed_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
