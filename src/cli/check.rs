//! `hms-sync check`: every problem in the config and the connectors, at once.

use std::path::Path;
use std::process::ExitCode;

use crate::config;
use crate::connector::TransportSpec;

pub fn run(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("hms-sync check: {} problem(s):", errors.0.len());
            for e in &errors.0 {
                eprintln!("  - {e}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    // Secrets are not read while the config loads (operators who cannot read
    // them still run `status`); `check` runs as the service user and reads them.
    let secrets: Vec<String> = cfg
        .connectors
        .iter()
        .filter_map(|c| match &c.transport {
            TransportSpec::Soap(s) => crate::transport::soap::read_password(s)
                .err()
                .map(|e| format!("{}[transport] password_file: {e}", s.password_file_at)),
            _ => None,
        })
        .collect();
    let mut secrets = secrets;
    if let Some(cmd) = &cfg.alert_command
        && let Some(why) = crate::alerts::missing_program(cmd)
    {
        let line = config::line_of(
            &std::fs::read_to_string(cfg.source.to_string()).unwrap_or_default(),
            None,
            "alert_command",
        )
        .map(|l| format!("line {l}: "))
        .unwrap_or_default();
        secrets.push(format!(
            "{}: {line}alert_command: {why}; alerts could never be delivered",
            cfg.source
        ));
    }
    if !secrets.is_empty() {
        eprintln!("hms-sync check: {} problem(s):", secrets.len());
        for e in &secrets {
            eprintln!("  - {e}");
        }
        return Ok(ExitCode::from(2));
    }
    println!("config: {}", cfg.source);
    println!("state:  {}", cfg.state_dir.display());
    for w in &cfg.watches {
        let shape = match &w.key {
            Some(k) => format!("bare records keyed by `{k}`"),
            None => "envelopes".to_string(),
        };
        println!(
            "watch:  {} -> collection {} ({shape}{})",
            w.dir.display(),
            w.collection,
            if w.snapshot { ", full snapshots" } else { "" }
        );
    }
    println!("socket: {}", cfg.socket.path.display());
    let mut warnings = 0;
    for c in &cfg.connectors {
        let transport = match &c.transport {
            TransportSpec::File {
                dir,
                create_dir,
                pickup,
                ..
            } => {
                if *create_dir && !dir.exists() {
                    println!(
                        "note:   {}: outbox {} will be created at start-up (create_dir = true)",
                        c.name,
                        dir.display()
                    );
                } else if !writable_dir(dir) {
                    warnings += 1;
                    eprintln!(
                        "warning: {}: outbox {} is missing or not writable; deliveries wait (target down) until it is",
                        c.name,
                        dir.display()
                    );
                }
                format!(
                    "file -> {}{}",
                    dir.display(),
                    crate::transport::pickup::describe(pickup)
                )
            }
            TransportSpec::Serial(spec) => {
                let (description, warning) = crate::transport::serial::describe(spec);
                if let Some(w) = warning {
                    warnings += 1;
                    eprintln!("warning: {}: {w}", c.name);
                }
                description
            }
            TransportSpec::Soap(s) => crate::transport::soap::describe(s),
        };
        println!(
            "target: {} receives {} via {transport}",
            c.name,
            c.collections.join(", ")
        );
        let files = matches!(c.transport, TransportSpec::File { .. });
        println!("format: {}: {}", c.name, c.format.describe(files));
    }
    match crate::queue::probe(&cfg.state_dir, cfg.cache_mib) {
        Ok(description) => println!("queue:  {description}"),
        Err(e) => {
            eprintln!("hms-sync check: {e}");
            return Ok(ExitCode::from(1));
        }
    }
    if cfg.connectors.is_empty() {
        warnings += 1;
        eprintln!(
            "warning: no connectors in {}: every change will be refused{}",
            cfg.connectors_dir.display(),
            if cfg.keep_unrouted {
                " (kept, with keep_unrouted)"
            } else {
                ""
            }
        );
    }
    let routed = cfg.routed_collections();
    for w in &cfg.watches {
        if !routed.contains(&w.collection) {
            warnings += 1;
            eprintln!(
                "warning: [[watch]] {}: no connector receives collection `{}` (known: {}); its files {}",
                w.dir.display(),
                w.collection,
                if routed.is_empty() {
                    "none".to_string()
                } else {
                    routed.join(", ")
                },
                if cfg.keep_unrouted {
                    "are kept as unrouted changes (keep_unrouted = true)"
                } else {
                    "will be moved to .rejected/"
                }
            );
        }
    }
    println!(
        "ok{}",
        if warnings > 0 {
            format!(" ({warnings} warning(s))")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn writable_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path.
    dir.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0
}
