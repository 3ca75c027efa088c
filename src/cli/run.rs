//! `hms-sync run`.

use std::process::ExitCode;

use crate::config::Config;

pub fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hms-sync")
        .build()?;
    runtime.block_on(crate::daemon::run(cfg))?;
    Ok(ExitCode::SUCCESS)
}
