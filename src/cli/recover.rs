//! `hms-sync recover`: rebuilds a damaged queue from what can still be read
//! (see queue/recover.rs), with the daemon stopped.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;
use crate::queue::recover::{Report, recover};

pub fn run(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let report = recover(&cfg.state_dir, cfg.cache_mib)
        .with_context(|| format!("cannot recover the queue in {}", cfg.state_dir.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(cfg, &report);
    }
    let whole = report.open_error.is_none() && report.lost.is_empty();
    Ok(if whole {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_report(cfg: &Config, report: &Report) {
    let Some(damaged) = &report.damaged else {
        println!(
            "no queue in {}: nothing to recover",
            cfg.state_dir.display()
        );
        return;
    };
    if let Some(e) = &report.open_error {
        println!("the old queue could not be opened at all, nothing was saved: {e}");
    }
    println!(
        "saved: {} records, {} pending deltas, {} dead letters",
        report.records, report.pending, report.dead_letters
    );
    if report.lost.is_empty() {
        println!("lost:  nothing");
    } else {
        println!(
            "lost:  {} entries or ranges could not be read:",
            report.lost.len()
        );
        for l in &report.lost {
            println!("  - {l}");
        }
    }
    println!("the damaged file is kept as {}", damaged.display());
    println!(
        "start the daemon again; `hms-sync resync TARGET` re-sends records in full if changes were lost"
    );
}
