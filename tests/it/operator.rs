//! The operator's day (issue 10): nothing swallowed (unrouted collections are
//! refused or kept and counted), pause / resume surviving kill -9, probe,
//! `status --check` exit codes, `where` and `GET /records/...`, `resync --key`,
//! and unknown targets or collections refused with exit 2.
//!
//! Waits are on sentinels: a second target that receives the same changes shows
//! that a change went through the daemon, so a paused target's silence is proof.

use std::time::Duration;

use serde_json::json;

use crate::harness::{TestDaemon, csv_connector, drop_into, envelope};

const FAST: &str = "max_attempts = 3\nbackoff = \"50ms\"\nmax_backoff = \"200ms\"";

fn two_targets() -> TestDaemon {
    TestDaemon::new()
        .connector(
            "housing",
            &csv_connector(&["permit_number", "status"], "", FAST),
        )
        .connector(
            "cobol",
            &csv_connector(&["permit_number", "status"], "", FAST),
        )
}

pub fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_socket_change_for_a_collection_no_connector_receives_is_refused_naming_the_known_ones() {
    let d = TestDaemon::new()
        .connector("housing", &csv_connector(&["permit_number"], "", FAST))
        .connector(
            "assessor",
            &csv_connector(&["permit_number"], "", FAST)
                .replace("collections = [\"permits\"]", "collections = [\"parcels\"]"),
        )
        .start();
    let mut c = d.client();
    let answer = c.call(r#"{"collection":"x","key":"1","doc":{"a":1}}"#);
    assert_eq!(
        answer,
        json!({"ok": false, "error": "no connector receives collection 'x' (known: parcels, permits)"})
    );
    // The connection stays open and routed changes still go in.
    assert_eq!(
        c.call(&envelope("1", json!({"permit_number": "1"})))["ok"],
        true
    );
    // Refused means not kept: the record is unknown.
    let out = d.cli(&["where", "x", "1"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
}

#[test]
fn a_file_of_unrouted_changes_goes_to_rejected_with_its_note_and_nothing_is_taken() {
    let d = TestDaemon::new()
        .connector("housing", &csv_connector(&["permit_number"], "", FAST))
        .tables("[[watch]]\ndir = \"inbox/parcels\"\ncollection = \"parcels\"\nkey = \"id\"")
        .start();
    drop_into(&d.path().join("inbox/parcels"), "p.json", br#"{"id":"9"}"#);
    drop_into(
        &d.path().join("inbox/envelopes"),
        "mixed.ndjson",
        b"{\"collection\":\"permits\",\"key\":\"1\",\"doc\":{\"permit_number\":\"1\"}}\n{\"collection\":\"typo\",\"key\":\"2\",\"doc\":{}}\n",
    );
    let note = d.path().join("inbox/parcels/.rejected/p.json.error");
    let mixed = d
        .path()
        .join("inbox/envelopes/.rejected/mixed.ndjson.error");
    d.wait_for(Duration::from_secs(10), "both files rejected", |_| {
        note.exists() && mixed.exists()
    });
    let note = std::fs::read_to_string(note).unwrap();
    assert!(
        note.contains("no connector receives collection 'parcels' (known: permits)"),
        "{note}"
    );
    let mixed = std::fs::read_to_string(mixed).unwrap();
    assert!(mixed.contains("'typo'"), "{mixed}");
    // All or nothing: permit 1 of the mixed file was not taken either.
    assert_eq!(d.target_status("housing")["pending"], 0);
    assert_eq!(d.target_status("housing")["delivered"], 0);
}

#[test]
fn with_keep_unrouted_the_change_is_kept_counted_and_found_by_where() {
    let d = TestDaemon::new()
        .connector("housing", &csv_connector(&["permit_number"], "", FAST))
        .tables("[collections]\nkeep_unrouted = true")
        .start();
    let mut c = d.client();
    assert_eq!(
        c.call(r#"{"collection":"parcels","key":"7","doc":{"owner":"Lee"}}"#)["ok"],
        true
    );
    let status = d.status_json();
    assert_eq!(
        status["unrouted"],
        json!([{"collection": "parcels", "changes": 1}]),
        "{status}"
    );
    // Kept: its state is there for a later connector or resync.
    let out = d.cli(&["where", "parcels", "7", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"]["owner"], "Lee");
    assert_eq!(v["targets"], json!([]));
    let (_, metrics) = d.http_get("/metrics");
    assert!(
        metrics.contains("hms_sync_unrouted_changes_total{collection=\"parcels\"} 1"),
        "{metrics}"
    );
    for family in [
        "hms_sync_held{target=\"housing\"} 0",
        "hms_sync_paused{target=\"housing\"} 0",
        "hms_sync_oldest_pending_age_seconds{target=\"housing\"}",
        "hms_sync_queue_bytes ",
        "hms_sync_disk_free_bytes ",
        "hms_sync_watch_files_rejected{dir=",
        "hms_sync_alerts_firing ",
    ] {
        assert!(metrics.contains(family), "{family} in {metrics}");
    }
    let out = d.cli(&["status"]);
    assert!(text(&out).contains("unrouted: 1 change(s) of collection `parcels`"));
}

#[test]
fn check_warns_about_a_watch_no_connector_receives_and_refuses_a_missing_alert_program() {
    let d = TestDaemon::new()
        .connector(
            "assessor",
            &csv_connector(&["id"], "", FAST)
                .replace("collections = [\"permits\"]", "collections = [\"parcels\"]"),
        )
        .config("alert_command = \"/usr/local/bin/no-such-pager --now\"");
    d.write_config();
    let out = d.cli(&["check"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("alert_command"), "{t}");
    assert!(t.contains("/usr/local/bin/no-such-pager"), "{t}");
    assert!(t.contains("line 1"), "{t}");

    let d = TestDaemon::new().connector(
        "assessor",
        &csv_connector(&["id"], "", FAST)
            .replace("collections = [\"permits\"]", "collections = [\"parcels\"]"),
    );
    d.write_config();
    let out = d.cli(&["check"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("no connector receives collection `permits` (known: parcels)"),
        "{t}"
    );
    assert!(t.contains("inbox/permits"), "{t}");
}

#[test]
fn a_paused_target_gets_nothing_counts_nothing_and_stays_paused_across_kill_9() {
    let mut d = two_targets().start();
    let out = d.cli(&["pause", "cobol"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let mut c = d.client();
    assert_eq!(
        c.call(&envelope("1", json!({"permit_number": "1", "status": "A"})))["ok"],
        true
    );
    // Sentinel: housing got it, so the change went through the daemon.
    d.wait_for(Duration::from_secs(10), "housing's delivery", |d| {
        d.target_status("housing")["delivered"] == 1
    });
    let cobol = d.target_status("cobol");
    assert_eq!(cobol["state"], "paused", "{cobol}");
    assert_eq!(cobol["paused"], true);
    assert_eq!(cobol["pending"], 1);
    assert_eq!(cobol["delivered"], 0);
    assert!(d.outbox_files("cobol").is_empty());
    assert!(d.delivery_log().iter().all(|e| e["target"] != "cobol"));
    assert!(text(&d.cli(&["status"])).contains("paused"));

    d.kill9();
    d.restart();
    drop(c);
    let mut c = d.client();
    assert_eq!(
        c.call(&envelope("2", json!({"permit_number": "2", "status": "B"})))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(10), "housing's second delivery", |d| {
        d.target_status("housing")["delivered"] == 2
    });
    let cobol = d.target_status("cobol");
    assert_eq!(
        cobol["state"], "paused",
        "still paused after kill -9: {cobol}"
    );
    assert_eq!(cobol["pending"], 2);
    assert!(d.outbox_files("cobol").is_empty());

    let out = d.cli(&["resume", "cobol"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    d.wait_for(Duration::from_secs(10), "cobol's deliveries", |d| {
        d.target_status("cobol")["delivered"] == 2
    });
    let rows = d.outbox_rows("cobol");
    assert_eq!(rows.len(), 2);
    assert_eq!(d.target_status("cobol")["state"], "up");
}

#[test]
fn pause_and_resume_work_while_the_daemon_is_stopped() {
    let mut d = two_targets().start();
    d.stop();
    let out = d.cli(&["pause", "cobol"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("not running"));
    d.restart();
    assert_eq!(d.target_status("cobol")["state"], "paused");
}

#[test]
fn probe_tries_a_down_target_now_instead_of_waiting_out_the_backoff() {
    // An hour of backoff: only a probe can bring the delivery within the test.
    let d = TestDaemon::new()
        .connector(
            "housing",
            &csv_connector(
                &["permit_number"],
                "",
                "backoff = \"1h\"\nmax_backoff = \"1h\"",
            ),
        )
        .start();
    std::fs::remove_dir(d.outbox("housing")).unwrap();
    let mut c = d.client();
    assert_eq!(
        c.call(&envelope("1", json!({"permit_number": "1"})))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(10), "the target to be down", |d| {
        d.target_status("housing")["state"] == "down"
    });
    std::fs::create_dir(d.outbox("housing")).unwrap();
    let out = d.cli(&["probe", "housing"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("probing now"), "{}", text(&out));
    d.wait_for(
        Duration::from_secs(10),
        "the delivery after the probe",
        |d| d.target_status("housing")["delivered"] == 1,
    );
    assert_eq!(d.target_status("housing")["state"], "up");
}

#[test]
fn status_check_exits_0_ok_1_warning_2_critical_3_not_running() {
    let mut d = TestDaemon::new()
        .connector(
            "housing",
            &csv_connector(&["permit_number"], "", FAST),
        )
        .connector(
            "cobol",
            "collections = [\"permits\"]\n[format]\nkind = \"xml\"\nroot = \"PermitUpdate\"\nkey_element = \"PermitNumber\"\n\
             [transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\n[retry]\nmax_attempts = 1\n",
        );
    d.write_config();
    let out = d.cli(&["status", "--check"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).starts_with("UNKNOWN: hms-sync is not running"));
    d.spawn();
    let out = d.cli(&["status", "--check"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).starts_with("OK"));
    d.cli(&["pause", "housing"]);
    let out = d.cli(&["status", "--check"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("housing paused"), "{}", text(&out));
    // XML cannot carry U+0007: a rejection, and with max_attempts = 1 a dead letter.
    let mut c = d.client();
    c.call(&envelope(
        "b",
        json!({"permit_number": "b", "notes": "\u{7}"}),
    ));
    d.wait_for(Duration::from_secs(10), "the dead letter", |d| {
        d.target_status("cobol")["dead"] == 1
    });
    let out = d.cli(&["status", "--check"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let t = text(&out);
    assert!(t.starts_with("CRITICAL: cobol has 1 dead letter(s)"), "{t}");
    assert!(t.contains("housing paused"), "{t}");
}

#[test]
fn unknown_targets_and_collections_are_usage_errors_in_every_command() {
    let d = two_targets().start();
    for args in [
        &["pause", "nope"][..],
        &["resume", "nope"],
        &["probe", "nope"],
        &["resync", "nope"],
        &["resync", "cobol", "--collection", "parcels"],
        &["dead", "list", "--target", "nope"],
        &["dead", "retry", "--all", "--target", "nope"],
        &["tail", "--target", "nope"],
        &["translate", "nope", "x.json"],
        &["where", "parcels", "1"],
    ] {
        let out = d.cli(args);
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out));
        let t = text(&out);
        assert!(
            t.contains("nope") || t.contains("parcels"),
            "{args:?} names what it did not know: {t}"
        );
    }
    let out = d.cli(&["pause", "nope"]);
    assert!(text(&out).contains("known targets: cobol, housing"));
}

#[test]
fn where_shows_delivered_pending_dead_and_held_and_the_page_answers_the_same() {
    let d = TestDaemon::new()
        .connector("housing", &csv_connector(&["permit_number", "status"], "", FAST))
        .connector("cobol", &csv_connector(&["permit_number", "status"], "", FAST))
        .connector(
            "xmlbox",
            "collections = [\"permits\"]\n[format]\nkind = \"xml\"\nroot = \"PermitUpdate\"\nkey_element = \"PermitNumber\"\n\
             [transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\n[retry]\nmax_attempts = 1\n",
        )
        .start();
    assert_eq!(code(&d.cli(&["pause", "cobol"])), 0);
    let mut c = d.client();
    c.call(&envelope(
        "123",
        json!({"permit_number": "123", "status": "NEW", "notes": "bell\u{7}"}),
    ));
    d.wait_for(
        Duration::from_secs(10),
        "housing's delivery and the dead letter",
        |d| d.target_status("housing")["delivered"] == 1 && d.target_status("xmlbox")["dead"] == 1,
    );
    // A later change: held behind the dead letter at xmlbox, merged at cobol.
    c.call(&envelope(
        "123",
        json!({"permit_number": "123", "status": "APPROVED"}),
    ));
    d.wait_for(Duration::from_secs(10), "housing's second delivery", |d| {
        d.target_status("housing")["delivered"] == 2
    });
    assert_eq!(d.target_status("xmlbox")["held"], 1);
    assert_eq!(d.target_status("housing")["held"], 0);
    let out = d.cli(&["where", "permits", "123", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"]["status"], "APPROVED", "{v}");
    let target = |name: &str| {
        v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    let housing = target("housing");
    assert_eq!(housing["state"], "delivered", "{housing}");
    assert_eq!(housing["last_delivered"]["id"], "housing:2");
    let cobol = target("cobol");
    assert_eq!(cobol["state"], "pending", "{cobol}");
    assert_eq!(cobol["pending"][0]["id"], "cobol:1");
    assert_eq!(cobol["pending"][0]["op"], "create");
    assert_eq!(cobol["pending"][0]["set"]["status"], "APPROVED");
    let xml = target("xmlbox");
    assert_eq!(xml["state"], "dead", "{xml}");
    assert!(
        xml["dead"]["last_error"]
            .as_str()
            .unwrap()
            .contains("U+0007"),
        "{xml}"
    );
    assert_eq!(xml["held"]["set"]["status"], "APPROVED", "{xml}");
    assert!(v["log"].as_array().unwrap().len() >= 3, "{v}");
    // The page's JSON is the same document.
    let (head, body) = d.http_get("/records/permits/123");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["targets"], v["targets"]);
    // For people.
    let t = text(&d.cli(&["where", "permits", "123"]));
    assert!(t.contains("cobol: pending"), "{t}");
    assert!(t.contains("xmlbox: dead"), "{t}");
    assert!(t.contains("held behind the dead letter"), "{t}");
    // An unknown key of a known collection is an answer, not an error.
    let out = d.cli(&["where", "permits", "999"]);
    assert_eq!(code(&out), 0);
    assert!(text(&out).contains("not known"));
}

#[test]
fn resync_key_sends_one_record_in_full_again() {
    let d = TestDaemon::new()
        .connector(
            "housing",
            &csv_connector(&["permit_number", "status"], "", FAST),
        )
        .start();
    let mut c = d.client();
    for k in ["1", "2", "3"] {
        c.call(&envelope(k, json!({"permit_number": k, "status": "S"})));
    }
    d.wait_for(Duration::from_secs(10), "three deliveries", |d| {
        d.target_status("housing")["delivered"] == 3
    });
    let out = d.cli(&["resync", "housing", "--key", "2"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    d.wait_for(Duration::from_secs(10), "the resent record", |d| {
        d.target_status("housing")["delivered"] == 4
    });
    let rows = d.outbox_rows("housing");
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3][2], "2", "{rows:?}");
    assert_eq!(rows[3][3], "S", "{rows:?}");
    let out = d.cli(&["resync", "housing", "--key", "nope"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
}

#[test]
fn dead_show_prints_for_people_with_the_payload_and_the_commands_to_copy() {
    let server = crate::soap::LegacyBox::start();
    server.reject("13", true);
    let d = TestDaemon::new()
        .connector(
            "cobol",
            &crate::soap::soap_connector(
                &server.url(),
                "",
                "max_attempts = 2\nbackoff = \"10ms\"\nmax_backoff = \"50ms\"",
            ),
        )
        .start();
    d.client().call(&envelope(
        "13",
        json!({"permit_number": "13", "status": "A"}),
    ));
    d.wait_for(Duration::from_secs(10), "a dead letter", |d| {
        d.target_status("cobol")["dead"] == 1
    });
    let out = d.cli(&["dead", "show", "cobol:1"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("reason:"), "{t}");
    assert!(t.contains("soap:Envelope"), "the payload: {t}");
    assert!(t.contains("id=\"cobol:1\""), "under its delivery id: {t}");
    assert!(t.contains("hms-sync dead retry cobol:1"), "{t}");
    // Without a terminal nothing is asked (scripts), as with --yes.
    let out = d.cli(&["dead", "drop", "cobol:1"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("1 dead letter(s) dropped"));
}

#[test]
fn config_default_prints_the_embedded_default_config() {
    let d = TestDaemon::new();
    let out = d.cli(&["config", "--default"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("state_dir = \"var/state\""), "{t}");
    assert!(t.contains("[[watch]]"), "{t}");
}

#[test]
fn a_status_listener_on_the_network_needs_allow_from_or_a_token_file() {
    let d = TestDaemon::new()
        .connector("housing", &csv_connector(&["permit_number"], "", FAST))
        .tables("[alerts]\nfile_rejected = true");
    std::fs::write(
        d.config_path(),
        "state_dir = \"state\"\n[socket]\npath = \"hms.sock\"\n[status]\nlisten = \"0.0.0.0:7878\"\n",
    )
    .unwrap();
    let out = d.cli(&["check"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("line 5"), "{t}");
    assert!(t.contains("allow_from") && t.contains("token_file"), "{t}");
    std::fs::write(
        d.config_path(),
        "state_dir = \"state\"\n[socket]\npath = \"hms.sock\"\n[status]\nlisten = \"0.0.0.0:7878\"\nallow_from = [\"10.20.0.0/16\", \"nonsense\"]\n",
    )
    .unwrap();
    let t = text(&d.cli(&["check"]));
    assert!(t.contains("`nonsense` is not a network"), "{t}");
    assert!(!t.contains("reachable from the network"), "{t}");
}

#[test]
fn every_argument_has_help_text_and_help_lists_the_exit_codes() {
    let d = TestDaemon::new();
    let top = d.cli(&["--help"]);
    assert!(text(&top).contains("Exit codes: 0 success, 1 runtime failure, 2 bad usage"));
    let status = text(&d.cli(&["status", "--help"]));
    assert!(status.contains("3 UNKNOWN"), "{status}");
    for cmd in [
        &["run"][..],
        &["check"],
        &["status"],
        &["pause"],
        &["resume"],
        &["probe"],
        &["where"],
        &["resync"],
        &["tail"],
        &["send"],
        &["translate"],
        &["new"],
        &["recover"],
        &["config"],
        &["dead", "list"],
        &["dead", "show"],
        &["dead", "retry"],
        &["dead", "drop"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = String::from_utf8_lossy(&d.cli(&args).stdout).into_owned();
        for line in help.lines() {
            let t = line.trim_end();
            let bare = t.trim_start().starts_with('-') || t.trim_start().starts_with(['<', '[']);
            // An argument line with nothing after its name has no help text.
            let name_only = t
                .trim_start()
                .split("  ")
                .filter(|p| !p.trim().is_empty())
                .count()
                == 1;
            assert!(
                !(line.starts_with("  ") && bare && name_only),
                "`hms-sync {}` has an argument without help: {t:?}",
                cmd.join(" ")
            );
        }
    }
}
