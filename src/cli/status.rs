//! `hms-sync status [--json]`.

use std::process::ExitCode;

use serde_json::Value;

use crate::config::Config;
use crate::control::Request;

pub fn run(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let report = match super::request(cfg, Request::Status)? {
        Ok(v) if v.get("targets").is_some() => v,
        // Answered by the queue directly: the daemon is not running.
        Ok(v) => {
            let counts: Vec<crate::queue::QueueCounts> =
                serde_json::from_value(v).unwrap_or_default();
            crate::status::report(&counts, None)
        }
        Err(e) => anyhow::bail!(e),
    };
    if json {
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    if report["running"] == Value::Bool(false) {
        println!(
            "hms-sync is not running (no answer on {}); numbers are from the queue on disk.",
            cfg.control_socket().display()
        );
    }
    let targets = report["targets"].as_array().cloned().unwrap_or_default();
    if targets.is_empty() {
        println!(
            "no targets: add a connector under {}",
            cfg.connectors_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<5} {:>8} {:>9} {:>6} {:>10} {:>9}  LAST ERROR",
        "TARGET", "STATE", "PENDING", "IN FLIGHT", "DEAD", "DELIVERED", "OLDEST"
    );
    for t in targets {
        println!(
            "{:<20} {:<5} {:>8} {:>9} {:>6} {:>10} {:>8}s  {}",
            t["name"].as_str().unwrap_or(""),
            t["state"].as_str().unwrap_or(""),
            t["pending"].to_string(),
            t["in_flight"].to_string(),
            t["dead"].to_string(),
            t["delivered"].to_string(),
            t["oldest_pending_age_s"].to_string(),
            t["last_error"].as_str().unwrap_or("-"),
        );
    }
    Ok(ExitCode::SUCCESS)
}
