//! `hms-sync where COLLECTION KEY [--json]`: the record's last known state and,
//! per target, delivered / pending / in flight / held / dead — by key lookups
//! and the delivery log read backwards, never a scan of the queue.

use std::process::ExitCode;

use serde_json::Value;

use crate::config::Config;
use crate::control::Request;

pub fn run(cfg: &Config, collection: &str, key: &str, json: bool) -> anyhow::Result<ExitCode> {
    super::operate::known_collection(cfg, collection)?;
    let v = match super::request(
        cfg,
        Request::Where {
            collection: collection.into(),
            key: key.into(),
        },
    )? {
        Ok(v) => v,
        Err(e) => anyhow::bail!(e),
    };
    if json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", human(&v));
    Ok(ExitCode::SUCCESS)
}

fn delta_line(d: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(set) = d["set"].as_object() {
        for (k, v) in set {
            parts.push(format!("{k}={v}"));
        }
    }
    if let Some(unset) = d["unset"].as_array() {
        for u in unset {
            parts.push(format!("-{}", u.as_str().unwrap_or("")));
        }
    }
    format!("{} {}", d["op"].as_str().unwrap_or("?"), parts.join(" "))
}

/// The report for people.
pub fn human(v: &Value) -> String {
    let mut out = String::new();
    let name = format!(
        "{} {}",
        v["collection"].as_str().unwrap_or(""),
        v["key"].as_str().unwrap_or("")
    );
    if v["known"] != true {
        out.push_str(&format!(
            "{name}: not known (no change for it was ever accepted, or it was deleted and delivered)\n"
        ));
    } else if v["state"].is_null() {
        out.push_str(&format!("{name}: deleted\n"));
    } else {
        out.push_str(&format!("{name}: {}\n", v["state"]));
    }
    for t in v["targets"].as_array().into_iter().flatten() {
        let target = t["target"].as_str().unwrap_or("");
        let delivered = match &t["last_delivered"] {
            Value::Null => "no delivery in the recent log".to_string(),
            d => format!(
                "last delivered {} ({}) at {}",
                d["id"].as_str().unwrap_or(""),
                d["op"].as_str().unwrap_or(""),
                d["at"].as_str().unwrap_or("")
            ),
        };
        out.push_str(&format!(
            "  {target}: {} — {delivered}\n",
            t["state"].as_str().unwrap_or("")
        ));
        for p in t["pending"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "    pending {} (attempts {}{}): {}\n",
                p["id"].as_str().unwrap_or(""),
                p["attempts"],
                p["last_error"]
                    .as_str()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default(),
                delta_line(p)
            ));
        }
        for id in t["in_flight"].as_array().into_iter().flatten() {
            out.push_str(&format!("    in flight {}\n", id.as_str().unwrap_or("")));
        }
        if let Some(d) = t["dead"].as_object() {
            out.push_str(&format!(
                "    dead {} after {} attempts: {}\n      (hms-sync dead retry {0} / dead drop {0})\n",
                d["id"].as_str().unwrap_or(""),
                d["attempts"],
                d["last_error"].as_str().unwrap_or("")
            ));
        }
        if !t["held"].is_null() {
            out.push_str(&format!(
                "    held behind the dead letter: {}\n",
                delta_line(&t["held"])
            ));
        }
    }
    let log = v["log"].as_array().cloned().unwrap_or_default();
    if !log.is_empty() {
        out.push_str("  recent delivery log (newest first):\n");
        for e in log {
            if let Ok(e) = serde_json::from_value::<crate::delivery_log::Entry>(e) {
                out.push_str(&format!("    {}\n", e.human()));
            }
        }
    }
    out
}
