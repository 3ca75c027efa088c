//! `hms-sync dead list|show|retry|drop`.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use super::UsageError;
use crate::config::Config;
use crate::control::Request;

#[derive(Subcommand, Debug)]
pub enum DeadCommand {
    /// List dead letters, oldest first.
    List {
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Everything about one dead letter: its delta, what it holds, the record.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the queue (merged with what they held), attempts reset.
    Retry {
        ids: Vec<String>,
        /// Every dead letter (of --target, if given).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[arg(long, requires = "all")]
        target: Option<String>,
    },
    /// Forget dead letters; what they held for their record is then sent.
    Drop {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

fn answer(cfg: &Config, req: Request) -> anyhow::Result<Value> {
    match super::request(cfg, req)? {
        Ok(v) => Ok(v),
        Err(e) if e.starts_with("no dead letter") || e.starts_with("unknown target") => {
            Err(UsageError(e).into())
        }
        Err(e) => anyhow::bail!(e),
    }
}

pub fn run(cfg: &Config, cmd: DeadCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DeadCommand::List { target, json } => {
            let list = answer(cfg, Request::DeadList { target })?;
            if json {
                println!("{list}");
                return Ok(ExitCode::SUCCESS);
            }
            let items = list.as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                println!("no dead letters");
            }
            for d in items {
                println!(
                    "{:<24} {}/{} {} attempts={} dead_at={}{}\n    last error: {}",
                    d["id"].as_str().unwrap_or(""),
                    d["collection"].as_str().unwrap_or(""),
                    d["key"].as_str().unwrap_or(""),
                    d["op"].as_str().unwrap_or(""),
                    d["attempts"],
                    d["dead_at"].as_str().unwrap_or(""),
                    if d["held"] == Value::Bool(true) {
                        " (holds newer changes)"
                    } else {
                        ""
                    },
                    d["last_error"].as_str().unwrap_or("-"),
                );
            }
        }
        DeadCommand::Show { id, json } => {
            let d = answer(cfg, Request::DeadShow { id })?;
            if json {
                println!("{d}");
            } else {
                println!("{}", serde_json::to_string_pretty(&d)?);
            }
        }
        DeadCommand::Retry { ids, all, target } => {
            if let Some(t) = &target {
                super::operate::known_target(cfg, t)?;
            }
            if ids.is_empty() && !all {
                return Err(UsageError(
                    "name the dead letters to retry (IDs from `hms-sync dead list`), or --all"
                        .into(),
                )
                .into());
            }
            let done = answer(cfg, Request::DeadRetry { ids, all, target })?;
            let n = done["retried"].as_array().map(Vec::len).unwrap_or(0);
            println!("{n} dead letter(s) back in the queue");
        }
        DeadCommand::Drop { ids } => {
            let done = answer(cfg, Request::DeadDrop { ids })?;
            let n = done["dropped"].as_array().map(Vec::len).unwrap_or(0);
            println!("{n} dead letter(s) dropped");
        }
    }
    Ok(ExitCode::SUCCESS)
}
