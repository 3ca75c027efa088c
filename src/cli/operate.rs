//! `hms-sync pause TARGET` / `resume TARGET` / `probe TARGET`: the operator's
//! levers on one target, through the running daemon's control socket.

use std::process::ExitCode;

use super::UsageError;
use crate::config::Config;
use crate::control::{self, Request};

/// Unknown target: exit 2, naming the known ones.
pub fn known_target(cfg: &Config, target: &str) -> anyhow::Result<()> {
    if cfg.connector(target).is_some() {
        return Ok(());
    }
    let known: Vec<&str> = cfg.connectors.iter().map(|c| c.name.as_str()).collect();
    Err(UsageError(format!(
        "unknown target `{target}`; known targets: {}",
        if known.is_empty() {
            format!("none (no connectors in {})", cfg.connectors_dir.display())
        } else {
            known.join(", ")
        }
    ))
    .into())
}

/// Unknown collection (no connector receives it, no watch takes it): exit 2,
/// unless `keep_unrouted` keeps any collection.
pub fn known_collection(cfg: &Config, collection: &str) -> anyhow::Result<()> {
    let mut known = cfg.routed_collections();
    for w in &cfg.watches {
        if !known.contains(&w.collection) {
            known.push(w.collection.clone());
        }
    }
    if cfg.keep_unrouted || known.iter().any(|c| c == collection) {
        return Ok(());
    }
    known.sort();
    Err(UsageError(format!(
        "unknown collection `{collection}`; known collections: {}",
        known.join(", ")
    ))
    .into())
}

pub fn pause(cfg: &Config, target: &str, paused: bool) -> anyhow::Result<ExitCode> {
    known_target(cfg, target)?;
    let req = Request::Pause {
        target: target.to_string(),
        paused,
    };
    let verb = if paused { "paused" } else { "resumed" };
    match super::block_on(control::ask(&cfg.control_socket(), &req))? {
        Some(Ok(_)) => {
            if paused {
                println!(
                    "{target}: paused. Nothing is sent to it until `hms-sync resume {target}`; changes keep queueing."
                );
            } else {
                println!("{target}: resumed. Delivery starts now.");
            }
        }
        Some(Err(e)) => anyhow::bail!(e),
        None => {
            // Not running: the setting is kept for the next start.
            crate::paused::set(&cfg.state_dir, target, paused)?;
            println!("{target}: {verb} (hms-sync is not running; this applies when it starts).");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn probe(cfg: &Config, target: &str) -> anyhow::Result<ExitCode> {
    known_target(cfg, target)?;
    let req = Request::Probe {
        target: target.to_string(),
    };
    match super::block_on(control::ask(&cfg.control_socket(), &req))? {
        Some(Ok(v)) => {
            if v["was_down"] == true {
                println!(
                    "{target}: probing now (it was down: {}). `hms-sync status` shows the result.",
                    v["last_error"].as_str().unwrap_or("no error recorded")
                );
            } else {
                println!("{target}: up; its worker was woken to look for work now.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Err(e)) => anyhow::bail!(e),
        None => anyhow::bail!(
            "hms-sync is not running (no answer on {}); it tries every target when it starts",
            cfg.control_socket().display()
        ),
    }
}
