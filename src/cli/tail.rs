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
    #[arg(long)]
    target: Option<String>,
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
    let filter = Filter {
        target: args.target,
        key: args.key,
        outcome: args.outcome,
    };
    let print = |e: &Entry| {
        if args.json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            println!("{}", e.human());
        }
    };
    let path = &cfg.delivery_log;
    for e in read_last(path, &filter, args.lines)? {
        print(&e);
    }
    if args.follow {
        use std::io::Write;
        follow(path, &filter, |e| {
            print(e);
            std::io::stdout().flush().is_ok()
        })?;
    }
    Ok(ExitCode::SUCCESS)
}
