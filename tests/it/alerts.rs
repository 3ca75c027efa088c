//! Alerts (SPEC §6 "Alerts"): each kind fires once when its condition starts and
//! resolves once when it clears; a burst of dead letters is one alert with the
//! count; a hanging command is killed after 10 s without delaying delivery; a
//! failing command shows in `status` and fires `alert_failed`.

use std::time::Duration;

use serde_json::json;

use crate::harness::{TestDaemon, csv_connector, envelope};

/// Appends one line per run: kind, state, target, then the facts the test reads.
const RECORD: &str = "alert_command = \"echo \\\"$HMS_ALERT $HMS_ALERT_STATE target=$HMS_TARGET count=$HMS_COUNT file=$HMS_FILE error=$HMS_ERROR failed=$HMS_FAILED_ALERT\\\" >> alerts.txt\"";

fn alerts(d: &TestDaemon) -> Vec<String> {
    std::fs::read_to_string(d.path().join("alerts.txt"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn count(d: &TestDaemon, prefix: &str) -> usize {
    alerts(d).iter().filter(|l| l.starts_with(prefix)).count()
}

#[test]
fn target_down_and_backlog_stale_fire_once_and_resolve_once() {
    let d = TestDaemon::new()
        .config(RECORD)
        .tables("[alerts]\ntarget_down_after = \"1s\"\noldest_pending_after = \"1s\"")
        .connector(
            "housing",
            &csv_connector(
                &["permit_number"],
                "",
                "backoff = \"50ms\"\nmax_backoff = \"200ms\"",
            ),
        )
        .start();
    std::fs::remove_dir(d.outbox("housing")).unwrap();
    let mut c = d.client();
    assert_eq!(
        c.call(&envelope("1", json!({"permit_number": "1"})))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(10), "both alerts firing", |d| {
        count(d, "target_down firing target=housing") == 1
            && count(d, "backlog_stale firing target=housing") == 1
    });
    let line = alerts(&d)
        .into_iter()
        .find(|l| l.starts_with("target_down firing"))
        .unwrap();
    assert!(
        line.contains("outbox"),
        "the reason is in HMS_ERROR: {line}"
    );
    let status = d.status_json();
    let firing: Vec<&str> = status["alerts"]["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert"].as_str().unwrap())
        .collect();
    assert!(firing.contains(&"target_down"), "{status}");
    std::fs::create_dir(d.outbox("housing")).unwrap();
    d.wait_for(Duration::from_secs(10), "both alerts resolved", |d| {
        count(d, "target_down resolved target=housing") == 1
            && count(d, "backlog_stale resolved target=housing") == 1
    });
    assert_eq!(d.target_status("housing")["delivered"], 1);
    // Once each: the outage was one condition, however many probes it took.
    assert_eq!(count(&d, "target_down firing"), 1, "{:?}", alerts(&d));
    assert_eq!(count(&d, "backlog_stale firing"), 1, "{:?}", alerts(&d));
}

#[test]
fn a_burst_of_dead_letters_is_one_summary_alert_resolved_when_none_is_left() {
    let d = TestDaemon::new()
        .config(RECORD)
        .connector(
            "cobol",
            "collections = [\"permits\"]\n[format]\nkind = \"xml\"\nroot = \"PermitUpdate\"\nkey_element = \"PermitNumber\"\n\
             [transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\n[retry]\nmax_attempts = 1\n",
        )
        .start();
    let mut c = d.client();
    for i in 0..40 {
        let k = i.to_string();
        c.send_line(&envelope(&k, json!({"permit_number": k, "notes": "\u{7}"})));
    }
    for _ in 0..40 {
        assert_eq!(c.answer()["ok"], true);
    }
    d.wait_for(Duration::from_secs(20), "40 dead letters", |d| {
        d.target_status("cobol")["dead"] == 40
    });
    d.wait_for(Duration::from_secs(10), "the dead_letter alert", |d| {
        count(d, "dead_letter firing target=cobol") == 1
    });
    let line = alerts(&d)
        .into_iter()
        .find(|l| l.starts_with("dead_letter firing"))
        .unwrap();
    assert!(line.contains("U+0007"), "{line}");
    let list: serde_json::Value =
        serde_json::from_slice(&d.cli(&["dead", "list", "--json"]).stdout).unwrap();
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let mut args = vec!["dead", "drop"];
    args.extend(ids.iter().map(String::as_str));
    let out = d.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_for(Duration::from_secs(10), "the resolution", |d| {
        count(d, "dead_letter resolved target=cobol") == 1
    });
    assert_eq!(count(&d, "dead_letter firing"), 1, "{:?}", alerts(&d));
}

#[test]
fn file_rejected_fires_with_the_file_and_its_reason_and_resolves_when_rejected_is_emptied() {
    let d = TestDaemon::new()
        .config(RECORD)
        .connector("housing", &csv_connector(&["permit_number"], "", ""))
        .start();
    d.drop_file("bad.json", b"{not json");
    d.wait_for(Duration::from_secs(10), "the file_rejected alert", |d| {
        count(d, "file_rejected firing") == 1
    });
    let line = alerts(&d)
        .into_iter()
        .find(|l| l.starts_with("file_rejected firing"))
        .unwrap();
    assert!(line.contains("file=bad.json"), "{line}");
    assert!(line.contains("count=1"), "{line}");
    let rejected = d.inbox().join(".rejected");
    for e in std::fs::read_dir(&rejected).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    d.wait_for(Duration::from_secs(10), "the resolution", |d| {
        count(d, "file_rejected resolved") == 1
    });
    assert_eq!(count(&d, "file_rejected firing"), 1);
}

#[test]
fn a_hanging_alert_command_is_killed_after_10_s_never_delays_delivery_and_shows_in_status() {
    let cmd = "alert_command = \"if [ \\\"$HMS_ALERT\\\" = alert_failed ]; then echo \\\"$HMS_ALERT $HMS_FAILED_ALERT $HMS_ERROR\\\" >> alerts.txt; else echo $$ > hang.pid; exec sleep 60; fi\"";
    let d = TestDaemon::new()
        .config(cmd)
        .connector("housing", &csv_connector(&["permit_number"], "", ""))
        .start();
    d.drop_file("bad.json", b"{not json");
    let pid_file = d.path().join("hang.pid");
    d.wait_for(Duration::from_secs(10), "the hanging command", |_| {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| p.ends_with('\n'))
    });
    // Delivery goes on while the command hangs.
    let mut c = d.client();
    assert_eq!(
        c.call(&envelope("1", json!({"permit_number": "1"})))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(5), "a delivery meanwhile", |d| {
        d.target_status("housing")["delivered"] == 1
    });
    assert!(alerts(&d).is_empty(), "the command has not been killed yet");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    d.wait_for(Duration::from_secs(15), "alert_failed", |d| {
        count(d, "alert_failed file_rejected") == 1
    });
    let line = &alerts(&d)[0];
    assert!(line.contains("ran over 10 s and was killed"), "{line}");
    let gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    d.wait_for(Duration::from_secs(5), "the sleep to be killed", |_| {
        gone(pid)
    });
    let status = d.status_json();
    let failing = &status["alerts"]["command_failing"];
    assert_eq!(failing["alert"], "file_rejected", "{status}");
    assert!(
        failing["error"].as_str().unwrap().contains("killed"),
        "{status}"
    );
    let out = d.cli(&["status", "--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("alert_command is failing"));
    assert!(
        String::from_utf8_lossy(&d.cli(&["status"]).stdout).contains("alert_command is failing")
    );
}

#[test]
fn a_failing_alert_command_shows_its_exit_status_and_message() {
    let d = TestDaemon::new()
        .config("alert_command = \"echo pager gateway refused >&2; exit 3\"")
        .connector("housing", &csv_connector(&["permit_number"], "", ""))
        .start();
    d.drop_file("bad.json", b"{not json");
    d.wait_for(Duration::from_secs(10), "the failure in status", |d| {
        !d.status_json()["alerts"]["command_failing"].is_null()
    });
    let status = d.status_json();
    let error = status["alerts"]["command_failing"]["error"]
        .as_str()
        .unwrap();
    assert!(error.contains("3"), "{error}");
    assert!(error.contains("pager gateway refused"), "{error}");
}
