//! The `kakuremichi` binary: command-line parsing and wiring only. Each role is a library.

mod access_tcp;
mod alert_args;
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

/// The static (musl) release binaries allocate with mimalloc: musl's malloc takes one lock for
/// every thread. glibc builds keep glibc's allocator with its trim thread (below).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    return_freed_buffers_to_the_system();
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

/// Gives memory freed after a burst of connections back to the system, so a Gateway or Agent
/// returns to its idle size (measured: an Agent at 10 MiB idle kept 222 MiB after three rounds of
/// 1,000 streams with glibc's defaults).
///
/// - Every tunnelled TCP connection has two 256 KiB socket buffers and the Agent two 64 KiB copy
///   buffers. glibc serves blocks that large with their own `mmap` (unmapped on free; untouched
///   pages never resident) only until the first one is freed: then it raises its threshold and
///   takes them from its heaps instead. A fixed threshold keeps the first behaviour.
/// - Smaller blocks (datagrams, HTTP buffers) are allocated on one thread and freed on another,
///   across glibc's per-thread arenas, which keep free memory inside their heaps. A thread trims
///   them every few seconds (`malloc_trim`, which releases the free pages of every arena).
fn return_freed_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
        // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        }
        let spawned = std::thread::Builder::new()
            .name("memory-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim has no preconditions; it takes each arena's lock itself.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        if let Err(e) = spawned {
            eprintln!("warning: cannot start the memory-trim thread ({e}); freed memory may stay resident");
        }
    }
}
