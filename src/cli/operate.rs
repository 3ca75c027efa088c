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

/// `hms-sync forget TARGET [--yes]`: drop the queue of a target whose connector
/// was removed (shown as orphaned). Exit 2 for a target that still has a
/// connector or that the queue does not know.
pub fn forget(cfg: &Config, target: &str, yes: bool) -> anyhow::Result<ExitCode> {
    if cfg.connector(target).is_some() {
        return Err(UsageError(format!(
            "`{target}` still has a connector ({}); remove that folder and run `hms-sync reload` first, then forget its queue",
            cfg.connectors_dir.join(target).display()
        ))
        .into());
    }
    let report = super::status::report(cfg)?;
    let orphans: Vec<&serde_json::Value> = report["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["orphaned"] == true)
        .collect();
    let Some(t) = report["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == target)
    else {
        let names: Vec<&str> = orphans.iter().filter_map(|t| t["name"].as_str()).collect();
        return Err(UsageError(format!(
            "unknown target `{target}`: no queue of that name is kept; orphaned targets: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
        .into());
    };
    if t["orphaned"] != true {
        return Err(UsageError(format!(
            "`{target}` still has a connector in the running hms-sync; run `hms-sync reload` after removing it, then forget its queue"
        ))
        .into());
    }
    use std::io::IsTerminal;
    if !yes && std::io::stdin().is_terminal() {
        eprint!(
            "Forget {target}: {} waiting change(s) and {} dead letter(s) are dropped and never delivered. [y/N] ",
            t["pending"], t["dead"]
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            println!("nothing forgotten");
            return Ok(ExitCode::SUCCESS);
        }
    }
    let req = Request::Forget {
        target: target.to_string(),
    };
    match super::request(cfg, req)? {
        Ok(v) => {
            println!(
                "{target}: forgotten ({} waiting change(s), {} dead letter(s) dropped)",
                v["deltas"], v["dead"]
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => anyhow::bail!(e),
    }
}

/// `hms-sync reload`: what `systemctl reload hms-sync` (SIGHUP) does, with the
/// result printed. Exit 2 if the new config was refused.
pub fn reload(cfg: &Config) -> anyhow::Result<ExitCode> {
    let answer = super::block_on(control::ask(&cfg.control_socket(), &Request::Reload))?;
    let v = match answer {
        Some(Ok(v)) => v,
        Some(Err(e)) => anyhow::bail!(e),
        None => anyhow::bail!(
            "hms-sync is not running (no answer on {}); it reads the config when it starts",
            cfg.control_socket().display()
        ),
    };
    if let Some(e) = v["error"].as_str() {
        return Err(UsageError(format!(
            "reload refused; hms-sync keeps running with the config it had:\n{e}"
        ))
        .into());
    }
    let list = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(String::from))
            .collect()
    };
    let mut said = false;
    for (key, what) in [
        ("added", "new connector, delivering"),
        (
            "changed",
            "changed; applies to every change not already sent",
        ),
        (
            "returned",
            "connector back; its kept queue, with the changes made while it was gone, is delivered",
        ),
        (
            "orphaned",
            "connector removed; its queue is kept and goes on taking its collections' changes (orphaned) until it comes back or `hms-sync forget`",
        ),
        ("removed", "connector removed (nothing was queued for it)"),
    ] {
        for name in list(key) {
            println!("{name}: {what}");
            said = true;
        }
    }
    for key in list("needs_restart") {
        println!("needs restart: `{key}` changed; it applies when hms-sync restarts");
        said = true;
    }
    if !said {
        println!("reloaded: no connector changed");
    }
    Ok(ExitCode::SUCCESS)
}

/// `hms-sync tap TARGET`: print TARGET's payloads as they go on the wire,
/// until Ctrl-C (or `--count` payloads).
pub fn tap(cfg: &Config, target: &str, json: bool, count: Option<u64>) -> anyhow::Result<ExitCode> {
    known_target(cfg, target)?;
    super::block_on(async {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let socket = cfg.control_socket();
        let Ok(stream) = tokio::net::UnixStream::connect(&socket).await else {
            anyhow::bail!(
                "hms-sync is not running (no answer on {}); nothing is being sent",
                socket.display()
            );
        };
        let (read, mut write) = stream.into_split();
        let req = serde_json::to_string(&Request::Tap {
            target: target.to_string(),
        })?;
        write.write_all(format!("{req}\n").as_bytes()).await?;
        let mut lines = BufReader::new(read).lines();
        let first = lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the daemon closed the control connection"))?;
        let hello: serde_json::Value = serde_json::from_str(&first)?;
        if hello["ok"] != true {
            return Err(
                UsageError(hello["error"].as_str().unwrap_or("refused").to_string()).into(),
            );
        }
        // On stderr, so that `--json` output stays clean.
        eprintln!("tapping {target}: payloads as they are sent (Ctrl-C to stop)");
        let mut seen = 0u64;
        let mut out = std::io::stdout();
        use std::io::Write;
        while let Some(line) = lines.next_line().await? {
            let v: serde_json::Value = serde_json::from_str(&line)?;
            if let Some(n) = v["lagged"].as_u64() {
                eprintln!(
                    "({n} payload(s) skipped: this reader fell behind; delivery did not wait)"
                );
                continue;
            }
            if json {
                writeln!(out, "{line}")?;
            } else {
                writeln!(
                    out,
                    "── {} attempt {} at {}{}",
                    v["id"].as_str().unwrap_or(""),
                    v["attempt"],
                    v["ts"].as_str().unwrap_or(""),
                    if v["encoding"] == "hex" {
                        " (not text: hex)"
                    } else {
                        ""
                    }
                )?;
                let payload = v["payload"].as_str().unwrap_or("");
                writeln!(out, "{}", payload.strip_suffix('\n').unwrap_or(payload))?;
            }
            out.flush()?;
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                break;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
