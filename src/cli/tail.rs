//! `hms-sync tail [-f]`: the delivery log, filtered.

use std::process::ExitCode;

use clap::Args;

use crate::config::Config;
use crate::delivery_log::{Entry, Filter, follow, read_last};

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Keep following the log (across rotation) until interrupted.
    #[arg(short, long)]
    follow: bool,
    /// Only this target's lines.
    #[arg(long)]
    target: Option<String>,
    /// Only this record key's lines.
    #[arg(long)]
    key: Option<String>,
    /// delivered, rejected, down, dead, retried or dropped.
    #[arg(long, value_parser = ["delivered", "rejected", "down", "dead", "retried", "dropped"])]
    outcome: Option<String>,
    /// The log's own JSON lines.
    #[arg(long)]
    json: bool,
    /// How many past entries to show first (0: all).
    #[arg(short = 'n', long = "lines", default_value_t = 20)]
    lines: usize,
}

pub fn run(cfg: &Config, args: TailArgs) -> anyhow::Result<ExitCode> {
    if let Some(t) = &args.target {
        super::operate::known_target(cfg, t)?;
    }
    let filter = Filter {
        target: args.target,
        key: args.key,
        outcome: args.outcome,
    };
    // Stop quietly when the reader goes away (`hms-sync tail -f | head`).
    let print = |e: &Entry| -> bool {
        use std::io::Write;
        let line = if args.json {
            serde_json::to_string(e).unwrap_or_default()
        } else {
            e.human()
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    };
    let path = &cfg.delivery_log;
    for e in read_last(path, &filter, args.lines)? {
        if !print(&e) {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if args.follow {
        follow(path, &filter, print)?;
    }
    Ok(ExitCode::SUCCESS)
}
