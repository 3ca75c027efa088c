//! `hms-sync resync TARGET`: queue every known record in full, page by page,
//! showing progress on a terminal.

use std::io::IsTerminal;
use std::process::ExitCode;

use super::UsageError;
use crate::config::Config;
use crate::control::Request;
use crate::record::RecordId;

pub fn run(cfg: &Config, target: &str, collection: Option<String>) -> anyhow::Result<ExitCode> {
    if cfg.connector(target).is_none() {
        let known: Vec<&str> = cfg.connectors.iter().map(|c| c.name.as_str()).collect();
        return Err(UsageError(format!(
            "unknown target `{target}`; known targets: {}",
            known.join(", ")
        ))
        .into());
    }
    let total = match super::request(
        cfg,
        Request::ResyncCount {
            target: target.into(),
            collection: collection.clone(),
        },
    )? {
        Ok(v) => v["records"].as_u64().unwrap_or(0),
        Err(e) => anyhow::bail!(e),
    };
    let tty = std::io::stderr().is_terminal();
    let mut after: Option<RecordId> = None;
    let mut queued = 0u64;
    loop {
        let req = Request::Resync {
            target: target.into(),
            collection: collection.clone(),
            after: after.clone(),
            limit: 1000,
        };
        let v = match super::request(cfg, req)? {
            Ok(v) => v,
            Err(e) => anyhow::bail!(e),
        };
        queued += v["queued"].as_u64().unwrap_or(0);
        if tty {
            eprint!("\rqueued {queued}/{total} records for {target}");
        }
        match serde_json::from_value::<Option<RecordId>>(v["next"].clone())
            .ok()
            .flatten()
        {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if tty {
        eprintln!();
    }
    println!("queued {queued} record(s) for {target}");
    Ok(ExitCode::SUCCESS)
}
