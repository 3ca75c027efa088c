//! The whole path, from outside: drop folder and socket in, outbox files out.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

const COLUMNS: &[&str] = &["permit_number", "status", "inspector.name"];

fn daemon() -> TestDaemon {
    TestDaemon::new()
        .connector(
            "housing",
            &csv_connector(
                COLUMNS,
                "",
                "max_attempts = 3\nbackoff = \"50ms\"\nmax_backoff = \"200ms\"",
            ),
        )
        .start()
}

#[test]
fn fixture_files_become_csv_batches_and_a_repeat_sends_nothing() {
    let d = daemon();
    d.drop_fixture("permits/permit-123.json", "a.json");
    d.wait_for(Duration::from_secs(10), "the first batch", |d| {
        d.outbox_files("housing").len() == 1
    });
    d.drop_fixture("permits/permit-123-approved.json", "b.json");
    d.wait_for(Duration::from_secs(10), "the second batch", |d| {
        d.outbox_files("housing").len() == 2
    });
    let rows = d.outbox_rows("housing");
    assert_eq!(
        rows[0],
        ["housing:1", "create", "123", "UNDER_REVIEW", "T. Lee"]
    );
    assert_eq!(
        rows[1],
        [
            "housing:2",
            "update",
            "123",
            "APPROVED",
            "M. O'Brien & Sons <contract>"
        ]
    );
    // The same file again: no delta, no file. A later change of another record
    // is the sentinel: once its batch is out, a repeat would have been before it.
    d.drop_fixture("permits/permit-123-approved.json", "c.json");
    d.wait_inbox_empty();
    d.drop_file("sentinel.json", br#"{"permit_number":"999"}"#);
    d.wait_for(Duration::from_secs(10), "the sentinel's batch", |d| {
        d.outbox_rows("housing").iter().any(|r| r[2] == "999")
    });
    let rows = d.outbox_rows("housing");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[2][..3], ["housing:3", "create", "999"]);
    assert_eq!(d.outbox_files("housing").len(), 3);
    let st = d.target_status("housing");
    assert_eq!(
        (
            st["state"].as_str(),
            st["delivered"].as_u64(),
            st["pending"].as_u64()
        ),
        (Some("up"), Some(3), Some(0))
    );
    // The delivery log says so too.
    let tail = d.cli(&["tail", "--json", "--outcome", "delivered"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["id"], "housing:2");
    assert_eq!(lines[1]["key"], "123");
    assert_eq!(lines[1]["attempt"], 1);
}

#[test]
fn csv_ndjson_and_envelope_files_all_ingest() {
    let d = daemon();
    d.drop_fixture("permits/export-2026-11-25.csv", "export.csv");
    d.wait_for(Duration::from_secs(10), "4 rows", |d| {
        d.outbox_rows("housing").len() == 4
    });
    let envelopes = format!(
        "{}\n{}\n",
        json!({"collection": "permits", "key": "124", "deleted": true}),
        json!({"collection": "permits", "key": 900, "doc": {"permit_number": "900", "status": "NEW"}})
    );
    drop_into(
        &d.path().join("inbox/envelopes"),
        "e.ndjson",
        envelopes.as_bytes(),
    );
    d.wait_for(Duration::from_secs(10), "6 rows", |d| {
        d.outbox_rows("housing").len() == 6
    });
    let rows = d.outbox_rows("housing");
    assert!(
        rows.iter()
            .any(|r| r[1] == "delete" && r[2] == "124" && r[3].is_empty())
    );
    assert!(
        rows.iter()
            .any(|r| r[1] == "create" && r[2] == "900" && r[3] == "NEW")
    );
}

#[test]
fn snapshot_folders_delete_records_absent_from_the_file() {
    let d = TestDaemon::new()
        .tables("[[watch]]\ndir = \"inbox/full\"\ncollection = \"permits\"\nkey = \"permit_number\"\nsnapshot = true")
        .connector("housing", &csv_connector(COLUMNS, "", ""))
        .start();
    drop_into(
        &d.path().join("inbox/full"),
        "all.csv",
        b"permit_number,status\n1,A\n2,B\n",
    );
    d.wait_for(Duration::from_secs(10), "2 rows", |d| {
        d.outbox_rows("housing").len() == 2
    });
    drop_into(
        &d.path().join("inbox/full"),
        "all2.csv",
        b"permit_number,status\n2,B\n",
    );
    d.wait_for(Duration::from_secs(10), "the delete", |d| {
        d.outbox_rows("housing").len() == 3
    });
    let rows = d.outbox_rows("housing");
    assert_eq!(rows[2][1..3], ["delete".to_string(), "1".to_string()]);
}

#[test]
fn socket_pipelines_answers_in_order_and_bad_lines_keep_the_connection() {
    let d = daemon();
    let mut c = d.client();
    for i in 0..200 {
        c.send_line(&envelope(
            &i.to_string(),
            json!({"permit_number": i.to_string(), "status": "S"}),
        ));
        if i == 100 {
            c.send_line("{not json");
            c.send_line(&json!({"collection": "permits", "key": "x"}).to_string());
        }
    }
    let answers: Vec<serde_json::Value> = (0..202).map(|_| c.answer()).collect();
    assert_eq!(answers.iter().filter(|a| a["ok"] == true).count(), 200);
    assert_eq!(answers[101]["ok"], false);
    assert!(
        answers[101]["error"].as_str().unwrap().contains("line 102"),
        "{}",
        answers[101]
    );
    assert!(
        answers[102]["error"]
            .as_str()
            .unwrap()
            .contains("neither `doc`"),
        "{}",
        answers[102]
    );
    assert_eq!(
        c.call(&envelope("500", json!({"permit_number": "500"})))["ok"],
        true,
        "the connection stays open"
    );
    d.wait_for(Duration::from_secs(10), "201 rows", |d| {
        d.outbox_rows("housing").len() == 201
    });
}

#[test]
fn a_missing_outbox_is_an_outage_that_ends_with_every_delta_delivered() {
    let d = daemon();
    std::fs::remove_dir(d.outbox("housing")).unwrap();
    let mut c = d.client();
    for i in 0..5 {
        assert_eq!(
            c.call(&envelope(
                "1",
                json!({"permit_number": "1", "status": format!("S{i}")})
            ))["ok"],
            true
        );
        assert_eq!(
            c.call(&envelope(
                &format!("k{i}"),
                json!({"permit_number": format!("k{i}")})
            ))["ok"],
            true
        );
    }
    d.wait_for(Duration::from_secs(10), "state down", |d| {
        d.target_status("housing")["state"] == "down"
    });
    let st = d.target_status("housing");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{st}"
    );
    // Outages never count against deltas, however long they last (max_attempts is
    // 3): wait for more probes than that, not for a fixed time.
    d.wait_for(Duration::from_secs(10), "six probes of the outage", |d| {
        d.cli(&["tail", "--json", "--outcome", "down"])
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
            >= 6
    });
    assert_eq!(d.target_status("housing")["dead"], 0);
    std::fs::create_dir(d.outbox("housing")).unwrap();
    d.wait_for(Duration::from_secs(10), "delivery after the outage", |d| {
        d.target_status("housing")["pending"] == 0 && d.target_status("housing")["in_flight"] == 0
    });
    let rows = d.outbox_rows("housing");
    // Record 1 changed five times while down. The first probe sealed its create
    // (the legacy system might have seen it); the four later changes coalesced
    // into one update behind it. Both carry the latest state.
    let one: Vec<_> = rows.iter().filter(|r| r[2] == "1").collect();
    assert_eq!(one.len(), 2, "{rows:?}");
    assert_eq!(
        (one[0][1].as_str(), one[1][1].as_str()),
        ("create", "update"),
        "{rows:?}"
    );
    assert!(one.iter().all(|r| r[3] == "S4"), "{rows:?}");
    assert_eq!(rows.len(), 7, "{rows:?}");
    assert_eq!(d.target_status("housing")["state"], "up");
}

#[test]
fn rejections_dead_letter_hold_the_record_and_retry_sends_the_merged_state() {
    // XML cannot carry U+0007: the translator refuses, which counts as a rejection.
    let connector = "collections = [\"permits\"]\n[format]\nkind = \"xml\"\nroot = \"PermitUpdate\"\nkey_element = \"PermitNumber\"\n\
                     [transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\n[retry]\nmax_attempts = 3\nbackoff = \"20ms\"\nmax_backoff = \"50ms\"\n";
    let d = TestDaemon::new()
        .config("alert_command = \"echo \\\"$HMS_ID $HMS_KEY $HMS_ATTEMPTS\\\" >> alerts.txt\"")
        .connector("cobol", connector)
        .start();
    let mut c = d.client();
    assert_eq!(
        c.call(&envelope(
            "bad",
            json!({"permit_number": "bad", "notes": "bell\u{7}"})
        ))["ok"],
        true
    );
    assert_eq!(
        c.call(&envelope("good", json!({"permit_number": "good"})))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(10), "a dead letter", |d| {
        d.target_status("cobol")["dead"] == 1
    });
    let list = d.cli(&["dead", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["id"], "cobol:1");
    assert_eq!(list[0]["key"], "bad");
    assert_eq!(list[0]["attempts"], 3);
    assert!(list[0]["last_error"].as_str().unwrap().contains("U+0007"));
    d.wait_for(Duration::from_secs(5), "the alert", |d| {
        std::fs::read_to_string(d.path().join("alerts.txt"))
            .unwrap_or_default()
            .contains("cobol:1 bad 3")
    });
    // Other records flowed.
    assert_eq!(d.target_status("cobol")["delivered"], 1);
    // Later changes of the held record wait behind the dead letter.
    assert_eq!(
        c.call(&envelope(
            "bad",
            json!({"permit_number": "bad", "notes": "fixed", "status": "OK"})
        ))["ok"],
        true
    );
    // A later change of another record is the sentinel: had the held change gone
    // out, it would have gone before it.
    assert_eq!(
        c.call(&envelope("sentinel", json!({"permit_number": "sentinel"})))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(10), "the sentinel", |d| {
        d.target_status("cobol")["delivered"] == 2
    });
    assert_eq!(d.target_status("cobol")["pending"], 0);
    assert!(
        d.outbox_files("cobol")
            .iter()
            .all(|f| !std::fs::read_to_string(f).unwrap().contains(">fixed<")),
        "the held record went nowhere"
    );
    let out = d.cli(&["dead", "retry", "cobol:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_for(Duration::from_secs(10), "the merged delta", |d| {
        d.target_status("cobol")["delivered"] == 3
    });
    assert_eq!(d.target_status("cobol")["dead"], 0);
    let files = d.outbox_files("cobol");
    let last = std::fs::read_to_string(files.last().unwrap()).unwrap();
    assert!(
        last.contains("id=\"cobol:1\"") && last.contains(">fixed<") && last.contains(">OK<"),
        "{last}"
    );
    let retried = d.cli(&["tail", "--json", "--outcome", "retried"]);
    assert!(String::from_utf8_lossy(&retried.stdout).contains("cobol:1"));
}

#[test]
fn dropping_a_dead_letter_lets_held_changes_flow() {
    let connector = "collections = [\"permits\"]\n[format]\nkind = \"xml\"\n[transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\n[retry]\nmax_attempts = 1\n";
    let d = TestDaemon::new().connector("cobol", connector).start();
    let mut c = d.client();
    assert_eq!(
        c.call(&envelope(
            "k",
            json!({"permit_number": "k", "notes": "\u{1}"})
        ))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(10), "a dead letter", |d| {
        d.target_status("cobol")["dead"] == 1
    });
    assert_eq!(
        c.call(&envelope(
            "k",
            json!({"permit_number": "k", "notes": "clean"})
        ))["ok"],
        true
    );
    // A bad id in the list changes nothing (all or nothing), exit 2.
    let out = d.cli(&["dead", "retry", "cobol:1", "cobol:999"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cobol:999"));
    assert_eq!(
        d.target_status("cobol")["dead"],
        1,
        "cobol:1 was not retried"
    );
    let out = d.cli(&["dead", "drop", "cobol:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_for(Duration::from_secs(10), "the held change", |d| {
        d.target_status("cobol")["delivered"] == 1
    });
    let files = d.outbox_files("cobol");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.contains("id=\"cobol:2\"") && text.contains(">clean<"),
        "{text}"
    );
    let missing = d.cli(&["dead", "show", "cobol:1"]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn sigterm_stops_cleanly_with_exit_0_and_state_survives() {
    let mut d = daemon();
    d.drop_fixture("permits/permit-123.json", "a.json");
    d.wait_for(Duration::from_secs(10), "a batch", |d| {
        d.outbox_files("housing").len() == 1
    });
    assert_eq!(d.stop(), Some(0));
    assert!(
        !d.socket().exists(),
        "the socket file is removed on shutdown"
    );
    // Offline, status still reads the queue.
    let st = d.status_json();
    assert_eq!(st["running"], false);
    assert_eq!(st["targets"][0]["delivered"], 1);
    d.restart();
    d.drop_fixture("permits/permit-123.json", "again.json");
    d.wait_inbox_empty();
    // The sentinel: a later change of another record; a repeat would be before it.
    d.drop_file("sentinel.json", br#"{"permit_number":"999"}"#);
    d.wait_for(Duration::from_secs(10), "the sentinel's batch", |d| {
        d.outbox_rows("housing").iter().any(|r| r[2] == "999")
    });
    let rows = d.outbox_rows("housing");
    assert_eq!(
        rows.iter().filter(|r| r[2] == "123").count(),
        1,
        "the snapshot survived the restart: {rows:?}"
    );
}

#[test]
fn backpressure_pauses_ingestion_without_loss_and_resumes_by_itself() {
    let d = TestDaemon::new()
        .config("max_queue_bytes = 2000")
        .connector("housing", &csv_connector(COLUMNS, "", ""))
        .start();
    std::fs::remove_dir(d.outbox("housing")).unwrap();
    let mut c = d.client();
    let mut accepted = 0;
    let mut busy = None;
    for i in 0..200 {
        let a = c.call(&envelope(
            &format!("k{i}"),
            json!({"permit_number": format!("k{i}"), "status": "S"}),
        ));
        if a["ok"] == true {
            accepted += 1;
        } else {
            busy = Some(a);
            break;
        }
    }
    let busy = busy.expect("the queue filled up");
    assert_eq!(busy["retry"], true, "{busy}");
    assert!(
        busy["error"].as_str().unwrap().starts_with("busy"),
        "{busy}"
    );
    // A dropped file waits in the inbox meanwhile: once the watcher has tried it
    // and been told busy (the metric grows), it must still be there.
    let busy_before = metric(&d, "hms_sync_ingest_busy_total");
    d.drop_file("late.json", br#"{"permit_number":"late","status":"L"}"#);
    d.wait_for(
        Duration::from_secs(10),
        "the watcher to try the file",
        |d| metric(d, "hms_sync_ingest_busy_total") > busy_before,
    );
    assert!(
        d.inbox().join("late.json").exists(),
        "the file stays while ingestion is paused"
    );
    std::fs::create_dir(d.outbox("housing")).unwrap();
    d.wait_inbox_empty();
    d.wait_for(Duration::from_secs(20), "everything delivered", |d| {
        d.outbox_rows("housing").len() == accepted + 1
    });
    assert_eq!(
        c.call(&envelope("after", json!({"permit_number": "after"})))["ok"],
        true,
        "resumed by itself"
    );
}

/// The status listener's port, from the daemon's log (tests bind port 0).
fn status_port(d: &TestDaemon) -> u16 {
    let log = d.log();
    let at = log
        .find("status listener up address=127.0.0.1:")
        .expect("status listener in the log");
    log[at + "status listener up address=127.0.0.1:".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn the_status_listener_serves_status_json_metrics_and_a_page_read_only() {
    let d = daemon();
    d.drop_fixture("permits/permit-123.json", "a.json");
    d.wait_for(Duration::from_secs(10), "a delivery", |d| {
        d.target_status("housing")["delivered"] == 1
    });
    let port = status_port(&d);
    let (head, body) = http_get(port, "/status");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let t = &v["targets"][0];
    for field in [
        "name",
        "state",
        "pending",
        "in_flight",
        "dead",
        "delivered",
        "oldest_pending_age_s",
        "last_error",
    ] {
        assert!(t.get(field).is_some(), "status lacks {field}: {body}");
    }
    assert_eq!(t["delivered"], 1);
    let (_, metrics) = http_get(port, "/metrics");
    assert!(
        metrics.contains("hms_sync_delivered_total{target=\"housing\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hms_sync_ingest_files_total{result=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hms_sync_commit_seconds_count"),
        "{metrics}"
    );
    let (_, page) = http_get(port, "/");
    assert!(page.contains("housing"), "{page}");
    // Nothing that changes state is reachable over TCP.
    let (head, _) = http_get(port, "/dead/retry");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[test]
fn archive_dir_keeps_accepted_files_and_poll_watches_without_inotify() {
    let d = TestDaemon::new()
        .tables("[[watch]]\ndir = \"inbox/polled\"\ncollection = \"permits\"\nkey = \"permit_number\"\npoll = true\narchive_dir = \"archive\"")
        .connector("housing", &csv_connector(COLUMNS, "", ""))
        .start();
    drop_into(
        &d.path().join("inbox/polled"),
        "p.json",
        br#"{"permit_number":"p1","status":"A"}"#,
    );
    d.wait_for(Duration::from_secs(15), "the polled file", |d| {
        d.outbox_rows("housing").len() == 1
    });
    d.wait_for(Duration::from_secs(5), "the archived file", |d| {
        d.path().join("archive/p.json").exists()
    });
    assert!(!d.path().join("inbox/polled/p.json").exists());
}

/// A value from the daemon's `/metrics` (the listener's address is in its log).
fn metric(d: &TestDaemon, name: &str) -> f64 {
    use std::io::{Read, Write};
    let log = d.log();
    let addr = log
        .lines()
        .filter(|l| l.contains("status listener up"))
        .filter_map(|l| l.split("address=").nth(1))
        .filter_map(|a| a.split_whitespace().next())
        .next_back()
        .expect("the status listener's address in the log")
        .to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}
