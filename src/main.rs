//! `hms-sync`: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;

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
