//! `hms-sync status [--json] [--watch] [--check]`: a table for people (coloured
//! on a terminal, plain when piped), the JSON of SPEC §6 for scripts, and exit
//! codes for monitoring scripts.

use std::io::IsTerminal;
use std::process::ExitCode;

use serde_json::Value;

use crate::config::Config;
use crate::control::Request;

/// `status --check` exit codes (documented in `--help` and the README).
pub const CHECK_OK: u8 = 0;
pub const CHECK_WARNING: u8 = 1;
pub const CHECK_CRITICAL: u8 = 2;
pub const CHECK_UNKNOWN: u8 = 3;

pub fn report(cfg: &Config) -> anyhow::Result<Value> {
    Ok(match super::request(cfg, Request::Status)? {
        Ok(v) if v.get("targets").is_some() => v,
        // Answered by the queue directly: the daemon is not running.
        Ok(v) => {
            let counts: Vec<crate::queue::QueueCounts> =
                serde_json::from_value(v).unwrap_or_default();
            let mut report = crate::status::report(&counts, None);
            let paused = crate::paused::load(&cfg.state_dir).unwrap_or_default();
            for t in report["targets"].as_array_mut().into_iter().flatten() {
                t["paused"] = Value::Bool(paused.contains(t["name"].as_str().unwrap_or("")));
            }
            report
        }
        Err(e) => anyhow::bail!(e),
    })
}

pub fn run(cfg: &Config, json: bool, watch: bool, check: bool) -> anyhow::Result<ExitCode> {
    if check {
        let (code, text) = match report(cfg) {
            Ok(r) => check_level(cfg, &r),
            Err(e) => (CHECK_UNKNOWN, format!("UNKNOWN: {e:#}")),
        };
        println!("{text}");
        return Ok(ExitCode::from(code));
    }
    if !watch {
        let r = report(cfg)?;
        if json {
            println!("{r}");
        } else {
            print!("{}", table(cfg, &r, std::io::stdout().is_terminal()));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let tty = std::io::stdout().is_terminal();
    loop {
        let text = match report(cfg) {
            Ok(r) if json => format!("{r}\n"),
            Ok(r) => table(cfg, &r, tty),
            Err(e) => format!("cannot read the status: {e:#}\n"),
        };
        if tty {
            // Home and clear: the table refreshes in place.
            print!("\x1b[H\x1b[2J");
        }
        print!(
            "{text}{}",
            if tty {
                "\n(refreshing every 2 s; Ctrl-C to stop)\n"
            } else {
                ""
            }
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

fn paint(text: &str, state: &str, colour: bool) -> String {
    if !colour || std::env::var_os("NO_COLOR").is_some() {
        return text.to_string();
    }
    let code = match state {
        "up" => "32",
        "down" => "31",
        "paused" | "orphaned" => "33",
        _ => return text.to_string(),
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The table for people.
pub fn table(cfg: &Config, report: &Value, colour: bool) -> String {
    let mut out = String::new();
    if report["running"] == Value::Bool(false) {
        out.push_str(&format!(
            "hms-sync is not running (no answer on {}); numbers are from the queue on disk.\n",
            cfg.control_socket().display()
        ));
    }
    let targets = report["targets"].as_array().cloned().unwrap_or_default();
    if targets.is_empty() {
        out.push_str(&format!(
            "no targets: add a connector under {}\n",
            cfg.connectors_dir.display()
        ));
        return out;
    }
    out.push_str(&format!(
        "{:<20} {:<8} {:>8} {:>9} {:>6} {:>10} {:>8}  LAST ERROR\n",
        "TARGET", "STATE", "PENDING", "IN FLIGHT", "DEAD", "DELIVERED", "OLDEST"
    ));
    for t in &targets {
        let state = if t["paused"] == true && report["running"] == false {
            "paused"
        } else {
            t["state"].as_str().unwrap_or("")
        };
        let mut error = t["last_error"].as_str().unwrap_or("-").to_string();
        if state == "down"
            && let Some(s) = t["down_for_s"].as_f64()
        {
            error = format!("down for {}: {error}", age(s));
        }
        out.push_str(&format!(
            "{:<20} {} {:>8} {:>9} {:>6} {:>10} {:>8}  {}\n",
            t["name"].as_str().unwrap_or(""),
            paint(&format!("{state:<8}"), state, colour),
            t["pending"].to_string(),
            t["in_flight"].to_string(),
            t["dead"].to_string(),
            t["delivered"].to_string(),
            age(t["oldest_pending_age_s"].as_f64().unwrap_or(0.0)),
            error,
        ));
    }
    for t in &targets {
        if let Some(n) = t["concurrency"].as_u64().filter(|&n| n > 1) {
            out.push_str(&format!(
                "{}: up to {n} requests at once\n",
                t["name"].as_str().unwrap_or("")
            ));
        }
    }
    for f in report["files_in_progress"].as_array().into_iter().flatten() {
        let of = match f["rows_total"].as_u64() {
            Some(total) => format!(" of {total}"),
            None => String::new(),
        };
        out.push_str(&format!(
            "taking {}/{}: {} rows{of} queued, {} ({} s so far)\n",
            f["dir"].as_str().unwrap_or(""),
            f["file"].as_str().unwrap_or(""),
            f["rows_done"],
            f["phase"].as_str().unwrap_or(""),
            f["running_s"],
        ));
    }
    for t in report["targets"].as_array().into_iter().flatten() {
        if t["orphaned"] == true {
            let name = t["name"].as_str().unwrap_or("");
            out.push_str(&format!(
                "orphaned: {name} has no connector any more; its {} change(s) and {} dead letter(s) are kept until its connector comes back or `hms-sync forget {name}`\n",
                t["pending"], t["dead"]
            ));
        }
    }
    if let Some(e) = report["reload"]["error"].as_str() {
        out.push_str(&format!(
            "reload refused at {} (the running config stays): {e}\n",
            report["reload"]["at"].as_str().unwrap_or("")
        ));
    }
    for k in report["reload"]["needs_restart"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "needs restart: `{}` changed in the config; it applies when hms-sync restarts\n",
            k.as_str().unwrap_or("")
        ));
    }
    for u in report["unrouted"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "unrouted: {} change(s) of collection `{}` kept for a later connector or resync (no connector receives it)\n",
            u["changes"],
            u["collection"].as_str().unwrap_or("")
        ));
    }
    for a in report["alerts"]["firing"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "alert firing: {} {} since {}\n",
            a["alert"].as_str().unwrap_or(""),
            a["subject"].as_str().unwrap_or(""),
            a["since"].as_str().unwrap_or("")
        ));
    }
    if let Some(f) = report["alerts"]["command_failing"].as_object() {
        out.push_str(&format!(
            "alert_command is failing: {} (for {} at {})\n",
            f["error"].as_str().unwrap_or(""),
            f["alert"].as_str().unwrap_or(""),
            f["at"].as_str().unwrap_or("")
        ));
    }
    out
}

/// `status --check`: the exit code and one summary line, then one line per finding.
/// - 3 UNKNOWN: the daemon does not answer (not running), or the status cannot be read.
/// - 2 CRITICAL: a target down for `[alerts] target_down_after` or longer; dead
///   letters; a target's oldest pending change older than `oldest_pending_after`.
/// - 1 WARNING: a target down for less than that; a target paused; a failing
///   `alert_command`; unrouted changes kept.
/// - 0 OK: none of these.
pub fn check_level(cfg: &Config, report: &Value) -> (u8, String) {
    if report["running"] != true {
        return (
            CHECK_UNKNOWN,
            format!(
                "UNKNOWN: hms-sync is not running (no answer on {})",
                cfg.control_socket().display()
            ),
        );
    }
    let mut critical = Vec::new();
    let mut warning = Vec::new();
    let down_after = cfg.alerts.target_down_after.as_secs_f64();
    let stale_after = cfg.alerts.oldest_pending_after.as_secs_f64();
    let targets = report["targets"].as_array().cloned().unwrap_or_default();
    for t in &targets {
        let name = t["name"].as_str().unwrap_or("");
        let error = t["last_error"].as_str().unwrap_or("no error recorded");
        match t["state"].as_str() {
            Some("down") => {
                let for_s = t["down_for_s"].as_f64().unwrap_or(0.0);
                let line = format!("{name} down for {}: {error}", age(for_s));
                if for_s >= down_after {
                    critical.push(line);
                } else {
                    warning.push(line);
                }
            }
            Some("paused") => warning.push(format!("{name} paused by an operator")),
            Some("orphaned") => warning.push(format!(
                "{name} is orphaned (connector removed, its queue kept; hms-sync forget {name})"
            )),
            _ => {}
        }
        let dead = t["dead"].as_u64().unwrap_or(0);
        if dead > 0 {
            critical.push(format!(
                "{name} has {dead} dead letter(s) (hms-sync dead list --target {name})"
            ));
        }
        let oldest = t["oldest_pending_age_s"].as_f64().unwrap_or(0.0);
        // A paused or orphaned target's backlog waits on purpose (warned above).
        let parked = t["state"] == "paused" || t["state"] == "orphaned";
        if !parked && oldest >= stale_after && t["pending"].as_u64() > Some(0) {
            critical.push(format!(
                "{name}: oldest pending change is {} old",
                age(oldest)
            ));
        }
    }
    if let Some(f) = report["alerts"]["command_failing"].as_object() {
        warning.push(format!(
            "alert_command is failing: {}",
            f["error"].as_str().unwrap_or("")
        ));
    }
    if let Some(e) = report["reload"]["error"].as_str() {
        warning.push(format!("the last reload was refused: {e}"));
    }
    for u in report["unrouted"].as_array().into_iter().flatten() {
        warning.push(format!(
            "{} unrouted change(s) of collection `{}` kept",
            u["changes"],
            u["collection"].as_str().unwrap_or("")
        ));
    }
    let (code, word, findings) = if !critical.is_empty() {
        critical.extend(warning);
        (CHECK_CRITICAL, "CRITICAL", critical)
    } else if !warning.is_empty() {
        (CHECK_WARNING, "WARNING", warning)
    } else {
        (
            CHECK_OK,
            "OK",
            vec![format!("{} target(s) up, nothing stuck", targets.len())],
        )
    };
    (code, format!("{word}: {}", findings.join("; ")))
}
