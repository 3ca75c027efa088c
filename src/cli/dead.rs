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
        /// Only this target's dead letters.
        #[arg(long)]
        target: Option<String>,
        /// JSON for scripts (SPEC §6 shape).
        #[arg(long)]
        json: bool,
    },
    /// Everything about one dead letter: its delta, what it holds, the record.
    Show {
        /// The dead letter's delivery id, e.g. county-cobol:42 (from `dead list`).
        id: String,
        /// JSON for scripts (with the record's latest state).
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the queue (merged with what they held), attempts reset.
    Retry {
        /// Delivery ids from `dead list`, e.g. county-cobol:42.
        ids: Vec<String>,
        /// Every dead letter (of --target, if given).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// With --all: only this target's dead letters.
        #[arg(long, requires = "all")]
        target: Option<String>,
    },
    /// Forget dead letters; what they held for their record is then sent. Asks
    /// first on a terminal.
    Drop {
        /// Delivery ids from `dead list`, e.g. county-cobol:42.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Do not ask (scripts; without a terminal nothing is asked anyway).
        #[arg(long, short = 'y')]
        yes: bool,
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
                print!("{}", show_human(cfg, &d));
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
        DeadCommand::Drop { ids, yes } => {
            use std::io::IsTerminal;
            if !yes && std::io::stdin().is_terminal() {
                eprint!(
                    "Drop {} dead letter(s) ({})? The legacy system never gets them; changes they hold are then sent. [y/N] ",
                    ids.len(),
                    ids.join(", ")
                );
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                if !matches!(line.trim(), "y" | "Y" | "yes") {
                    println!("nothing dropped");
                    return Ok(ExitCode::SUCCESS);
                }
            }
            let done = answer(cfg, Request::DeadDrop { ids })?;
            let n = done["dropped"].as_array().map(Vec::len).unwrap_or(0);
            println!("{n} dead letter(s) dropped");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dead show` for people: the facts, the delta, what it holds, and the payload
/// the connector sends for it (rendered now from the same delta and the record's
/// latest state, under the same delivery id).
fn show_human(cfg: &Config, d: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out = format!(
        "{}  {} {}  {}\ntarget:     {}\nattempts:   {}\ndead since: {}\nreason:     {}\ndelta:      {}\n",
        s(&d["id"]),
        s(&d["collection"]),
        s(&d["key"]),
        s(&d["op"]),
        s(&d["target"]),
        d["attempts"],
        s(&d["dead_at"]),
        s(&d["last_error"]),
        d["delta"],
    );
    if !d["held_delta"].is_null() {
        out.push_str(&format!(
            "holds:      {} (sent after retry or drop)\n",
            d["held_delta"]
        ));
    }
    let payload = (|| -> anyhow::Result<Vec<u8>> {
        let connector = cfg
            .connector(&s(&d["target"]))
            .ok_or_else(|| anyhow::anyhow!("no connector `{}` in the config", s(&d["target"])))?;
        let delta = crate::record::Delta {
            op: match d["delta"]["op"].as_str() {
                Some("create") => crate::record::Op::Create,
                Some("delete") => crate::record::Op::Delete,
                _ => crate::record::Op::Update,
            },
            set: serde_json::from_value(d["delta"]["set"].clone())?,
            unset: serde_json::from_value(d["delta"]["unset"].clone())?,
        };
        let record: Option<crate::record::Flat> = serde_json::from_value(d["record"].clone())?;
        let id = s(&d["id"]);
        let attempts = d["attempts"].as_u64().unwrap_or(1) as u32;
        super::translate::payload(
            connector,
            &id,
            attempts.max(1),
            &crate::record::RecordId::new(s(&d["collection"]), s(&d["key"])),
            &delta,
            record.as_ref(),
        )
    })();
    match payload {
        Ok(bytes) => out.push_str(&format!(
            "payload (as sent on its last attempt, with the record's latest state):\n{}\n",
            String::from_utf8_lossy(&bytes).trim_end()
        )),
        Err(e) => out.push_str(&format!("payload:    cannot render: {e:#}\n")),
    }
    out.push_str(&format!(
        "\nhms-sync dead retry {0}    # send it again (with what it holds)\nhms-sync dead drop {0}     # forget it\n",
        s(&d["id"])
    ));
    out
}
