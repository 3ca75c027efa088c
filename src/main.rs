//! `hms-sync`: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;

/// The static musl binary allocates through mimalloc: musl's malloc serialises
/// every allocation on one lock and halved the daemon's rates (ARCHITECTURE.md).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = hms_sync::cli::Cli::parse();
    hms_sync::cli::init_tracing(&cli);
    match hms_sync::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hms-sync: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
