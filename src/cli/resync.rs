//! `hms-sync resync TARGET`: queue every known record in full, page by page,
//! showing progress on a terminal.

use std::io::IsTerminal;
use std::process::ExitCode;

use super::UsageError;
use crate::config::Config;
use crate::control::Request;
use crate::record::RecordId;

pub fn run(
    cfg: &Config,
    target: &str,
    collection: Option<String>,
    key: Option<String>,
) -> anyhow::Result<ExitCode> {
    super::operate::known_target(cfg, target)?;
    let receives = cfg
        .connector(target)
        .map(|c| c.collections.clone())
        .unwrap_or_default();
    if let Some(c) = &collection
        && !receives.contains(c)
    {
        return Err(UsageError(format!(
            "{target} does not receive collection `{c}`; it receives: {}",
            receives.join(", ")
        ))
        .into());
    }
    if let Some(key) = key {
        let collection = match (collection, receives.as_slice()) {
            (Some(c), _) => c,
            (None, [only]) => only.clone(),
            (None, _) => {
                return Err(UsageError(format!(
                    "{target} receives several collections ({}); say which with --collection",
                    receives.join(", ")
                ))
                .into());
            }
        };
        let v = match super::request(
            cfg,
            Request::ResyncKey {
                target: target.into(),
                collection: collection.clone(),
                key: key.clone(),
            },
        )? {
            Ok(v) => v,
            Err(e) => anyhow::bail!(e),
        };
        if v["known"] != true {
            return Err(UsageError(format!(
                "no known record {collection} {key}: nothing to resync (`hms-sync where {collection} {key}`)"
            ))
            .into());
        }
        println!("queued {collection} {key} in full for {target}");
        return Ok(ExitCode::SUCCESS);
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
