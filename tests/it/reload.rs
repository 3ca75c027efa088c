//! Reload (issue 10 item 8): SIGHUP (what `systemctl reload` sends) and
//! `hms-sync reload` re-read the config and connectors in the running daemon.
//! Each test checks that nothing is lost and nothing delivered twice: every
//! outbox row carries its delivery id, and each id and each change shows once.
//!
//! Waits are on sentinels: a second target receiving the same changes, the
//! reload's own record in `status --json`, and counts that must reach a number.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::harness::{Client, TestDaemon, csv_connector, envelope};
use crate::operator::{code, text};

const FAST: &str = "max_attempts = 3\nbackoff = \"50ms\"\nmax_backoff = \"200ms\"";
const RECORD: &str = "alert_command = \"echo \\\"$HMS_ALERT $HMS_ALERT_STATE\\\" >> alerts.txt\"";

/// A running daemon with two CSV file targets, `housing` and `cobol`.
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
        .start()
}

/// SIGHUP to the running daemon; waits until `status --json` shows a reload
/// newer than `before` (the previous reload's `at`, or null).
fn sighup(d: &TestDaemon) -> serde_json::Value {
    let before = d.status_json()["reload"]["at"].clone();
    let pid = d.child.as_ref().expect("running").id() as i32;
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let mut got = serde_json::Value::Null;
    d.wait_for(Duration::from_secs(20), "the reload to apply", |d| {
        let r = d.status_json()["reload"].clone();
        let done = !r["at"].is_null() && r["at"] != before;
        if done {
            got = r;
        }
        done
    });
    got
}

/// Per delivered row: (delivery id, key, status). Panics on a repeated id.
fn delivered(d: &TestDaemon, target: &str) -> Vec<(String, String, String)> {
    let rows: Vec<(String, String, String)> = d
        .outbox_rows(target)
        .into_iter()
        .map(|r| {
            (
                r[0].clone(),
                r[2].clone(),
                r.get(3).cloned().unwrap_or_default(),
            )
        })
        .collect();
    let mut ids = BTreeSet::new();
    for (id, _, _) in &rows {
        assert!(
            ids.insert(id.clone()),
            "{target}: delivery id {id} delivered twice: {rows:?}"
        );
    }
    rows
}

/// Keys delivered to `target`, each of which must have been delivered once.
fn keys_once(d: &TestDaemon, target: &str) -> BTreeSet<String> {
    let mut seen = BTreeMap::<String, usize>::new();
    for (_, key, _) in delivered(d, target) {
        *seen.entry(key).or_default() += 1;
    }
    for (k, n) in &seen {
        assert_eq!(*n, 1, "{target}: key {k} delivered {n} times");
    }
    seen.into_keys().collect()
}

/// Sends creates of keys `prefix{from..to}` with `status` and waits for each answer.
fn creates(c: &mut Client, prefix: &str, keys: std::ops::Range<u32>, status: &str) {
    for i in keys {
        let key = format!("{prefix}{i}");
        let a = c.call(&envelope(
            &key,
            json!({"permit_number": key, "status": status}),
        ));
        assert_eq!(a["ok"], true, "{a}");
    }
}

/// Sends `count` creates (keys `prefix0..`) from a thread, one at a time, and
/// notes how many were acknowledged so far.
fn feed(
    d: &TestDaemon,
    prefix: &'static str,
    count: u64,
) -> (std::thread::JoinHandle<()>, Arc<AtomicU64>) {
    let sent = Arc::new(AtomicU64::new(0));
    let mut c = d.client();
    let s = sent.clone();
    let h = std::thread::spawn(move || {
        for i in 0..count {
            let key = format!("{prefix}{i}");
            let a = c.call(&envelope(
                &key,
                json!({"permit_number": key, "status": "new"}),
            ));
            assert_eq!(a["ok"], true, "{a}");
            s.store(i + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(3));
        }
    });
    (h, sent)
}

#[test]
fn sighup_starts_a_new_connector_under_load_and_it_gets_every_change_after_the_reload() {
    let mut d = TestDaemon::new()
        .connector(
            "housing",
            &csv_connector(&["permit_number", "status"], "", FAST),
        )
        .start();
    let (feeder, sent) = feed(&d, "k", 600);
    d.wait_for(Duration::from_secs(20), "some changes in", |_| {
        sent.load(Ordering::SeqCst) >= 100
    });
    // A second connector appears while changes pour in.
    d = d.connector(
        "cobol",
        &csv_connector(&["permit_number", "status"], "", FAST),
    );
    let r = sighup(&d);
    let after_reload = sent.load(Ordering::SeqCst) + 1;
    assert_eq!(r["added"], json!(["cobol"]), "{r}");
    assert_eq!(r["error"], serde_json::Value::Null, "{r}");
    feeder.join().unwrap();
    d.wait_for(
        Duration::from_secs(30),
        "every change delivered to both",
        |d| {
            let h = d.target_status("housing");
            let c = d.target_status("cobol");
            h["delivered"] == 600 && h["pending"] == 0 && c["pending"] == 0 && c["in_flight"] == 0
        },
    );
    let housing = keys_once(&d, "housing");
    assert_eq!(housing.len(), 600);
    let cobol = keys_once(&d, "cobol");
    for i in after_reload..600 {
        assert!(
            cobol.contains(&format!("k{i}")),
            "cobol misses k{i} (accepted after the reload)"
        );
    }
    assert!(
        cobol.len() < 600,
        "cobol cannot have changes accepted before it existed"
    );
    assert!(d.log().contains("reloaded"), "{}", d.log());
}

#[test]
fn a_changed_connector_applies_to_deltas_not_yet_sent_with_none_lost_or_sent_twice() {
    let d = TestDaemon::new()
        .connector(
            "housing",
            &csv_connector(&["permit_number", "status"], "", FAST),
        )
        .connector("witness", &csv_connector(&["permit_number"], "", FAST))
        .start();
    // 40 deltas held back by a pause, then a steady feed while the format changes.
    assert_eq!(code(&d.cli(&["pause", "housing"])), 0);
    let mut c = d.client();
    for i in 0..40 {
        let key = format!("p{i}");
        assert_eq!(
            c.call(&envelope(
                &key,
                json!({"permit_number": key, "status": "s", "owner": "o"})
            ))["ok"],
            true
        );
    }
    d.wait_for(Duration::from_secs(20), "40 pending", |d| {
        d.target_status("housing")["pending"] == 40
    });
    assert_eq!(code(&d.cli(&["resume", "housing"])), 0);
    let (feeder, _sent) = feed(&d, "f", 300);
    std::fs::write(
        d.path().join("connectors/housing/connector.toml"),
        csv_connector(&["permit_number", "status", "owner"], "", FAST).replace("NAME", "housing"),
    )
    .unwrap();
    let r = sighup(&d);
    assert_eq!(r["changed"], json!(["housing"]), "{r}");
    feeder.join().unwrap();
    d.wait_for(Duration::from_secs(30), "all delivered", |d| {
        let h = d.target_status("housing");
        h["pending"] == 0 && h["in_flight"] == 0 && d.target_status("witness")["delivered"] == 340
    });
    let keys = keys_once(&d, "housing");
    assert_eq!(keys.len(), 340, "every change delivered once");
    // Files written after the reload have the new column; none has a torn row.
    let mut new_format = 0;
    for f in d.outbox_files("housing") {
        let text = std::fs::read_to_string(&f).unwrap();
        let header = text.lines().next().unwrap();
        if header.ends_with(",owner") {
            new_format += 1;
        } else {
            assert!(header.ends_with(",status"), "{header}");
        }
    }
    assert!(new_format > 0, "the changed format was used");
}

#[test]
fn a_removed_connector_is_orphaned_kept_across_kill_9_and_delivers_all_when_it_comes_back() {
    let mut d = two_targets();
    assert_eq!(code(&d.cli(&["pause", "cobol"])), 0);
    let mut c = d.client();
    creates(&mut c, "a", 0..20, "s");
    d.wait_for(Duration::from_secs(20), "20 pending for cobol", |d| {
        d.target_status("cobol")["pending"] == 20 && d.target_status("housing")["delivered"] == 20
    });
    let folder = d.path().join("connectors/cobol");
    let aside = d.path().join("cobol-aside");
    std::fs::rename(&folder, &aside).unwrap();
    let r = sighup(&d);
    assert_eq!(r["orphaned"], json!(["cobol"]), "{r}");
    let st = d.target_status("cobol");
    assert_eq!(
        (
            st["state"].as_str(),
            st["orphaned"].as_bool(),
            st["pending"].as_u64()
        ),
        (Some("orphaned"), Some(true), Some(20)),
        "{st}"
    );
    let table = text(&d.cli(&["status"]));
    assert!(
        table.contains("orphaned: cobol has no connector any more"),
        "{table}"
    );
    let (_, metrics) = d.http_get("/metrics");
    assert!(
        metrics.contains("hms_sync_orphaned{target=\"cobol\"} 1"),
        "{metrics}"
    );
    let (_, page) = d.http_get("/");
    assert!(
        page.contains("orphaned: its connector was removed"),
        "{page}"
    );
    let out = d.cli(&["status", "--check"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    // An orphaned target goes on taking its collections' changes (so a
    // connector put back misses nothing); housing (sentinel) gets them too.
    creates(&mut c, "b", 0..10, "s");
    d.wait_for(Duration::from_secs(20), "housing got the new ones", |d| {
        d.target_status("housing")["delivered"] == 30
    });
    assert_eq!(d.target_status("cobol")["pending"], 30);
    // Still orphaned after kill -9 (found in the queue at start), with its 30.
    d.kill9();
    d.restart();
    assert_eq!(d.target_status("cobol")["state"], "orphaned");
    assert_eq!(d.target_status("cobol")["pending"], 30);
    // Back it comes; it was paused before, so resume; its 30 go out, once each.
    std::fs::rename(&aside, &folder).unwrap();
    let out = d.cli(&["reload"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("cobol: connector back"),
        "{}",
        text(&out)
    );
    assert_eq!(code(&d.cli(&["resume", "cobol"])), 0);
    d.wait_for(
        Duration::from_secs(20),
        "cobol delivers its kept queue",
        |d| {
            let st = d.target_status("cobol");
            st["pending"] == 0 && st["in_flight"] == 0 && st["delivered"] == 30
        },
    );
    let keys = keys_once(&d, "cobol");
    let want: BTreeSet<String> = (0..20)
        .map(|i| format!("a{i}"))
        .chain((0..10).map(|i| format!("b{i}")))
        .collect();
    assert_eq!(keys, want);
    assert_eq!(d.target_status("cobol")["state"], "up");
}

#[test]
fn an_invalid_edit_is_refused_the_running_config_stays_and_it_says_why_until_fixed() {
    let d = TestDaemon::new()
        .config(RECORD)
        .connector(
            "housing",
            &csv_connector(&["permit_number", "status"], "", FAST),
        )
        .start();
    let mut c = d.client();
    let good = std::fs::read_to_string(d.path().join("connectors/housing/connector.toml")).unwrap();
    std::fs::write(
        d.path().join("connectors/housing/connector.toml"),
        good.replace("kind = \"csv\"", "kind = \"cvs\""),
    )
    .unwrap();
    let r = sighup(&d);
    let why = r["error"].as_str().unwrap_or("").to_string();
    assert!(why.contains("connector.toml") && why.contains("cvs"), "{r}");
    // The running connector keeps delivering in its old format.
    assert_eq!(
        c.call(&envelope("1", json!({"permit_number": "1", "status": "s"})))["ok"],
        true
    );
    d.wait_for(
        Duration::from_secs(20),
        "delivery with the old config",
        |d| d.target_status("housing")["delivered"] == 1,
    );
    let out = d.cli(&["reload"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("reload refused"), "{}", text(&out));
    assert!(text(&d.cli(&["status"])).contains("reload refused"));
    let (_, page) = d.http_get("/");
    assert!(page.contains("the last reload was refused"), "{page}");
    let out = d.cli(&["status", "--check"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    d.wait_for(Duration::from_secs(20), "reload_failed alert", |d| {
        std::fs::read_to_string(d.path().join("alerts.txt"))
            .unwrap_or_default()
            .contains("reload_failed firing")
    });
    // Fixed: the next reload applies and the alert resolves, once.
    std::fs::write(d.path().join("connectors/housing/connector.toml"), &good).unwrap();
    let r = sighup(&d);
    assert_eq!(r["error"], serde_json::Value::Null, "{r}");
    d.wait_for(Duration::from_secs(20), "reload_failed resolved", |d| {
        std::fs::read_to_string(d.path().join("alerts.txt"))
            .unwrap_or_default()
            .contains("reload_failed resolved")
    });
    let alerts = std::fs::read_to_string(d.path().join("alerts.txt")).unwrap();
    assert_eq!(
        alerts.matches("reload_failed firing").count(),
        1,
        "{alerts}"
    );
    assert_eq!(keys_once(&d, "housing").len(), 1);
    // A setting that cannot apply live is reported, not ignored.
    let cfg = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(d.config_path(), format!("cache_mib = 8\n{cfg}")).unwrap();
    let r = sighup(&d);
    assert_eq!(r["needs_restart"], json!(["cache_mib"]), "{r}");
    assert!(text(&d.cli(&["status"])).contains("needs restart: `cache_mib`"));
}

#[test]
fn forget_drops_an_orphaned_queue_refuses_a_configured_or_unknown_target_and_ids_are_not_reused() {
    let d = two_targets();
    let mut c = d.client();
    assert_eq!(
        c.call(&envelope("0", json!({"permit_number": "0"})))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(20), "one delivered to cobol", |d| {
        d.target_status("cobol")["delivered"] == 1
    });
    assert_eq!(code(&d.cli(&["pause", "cobol"])), 0);
    creates(&mut c, "", 1..6, "s");
    d.wait_for(Duration::from_secs(20), "5 pending for cobol", |d| {
        d.target_status("cobol")["pending"] == 5
    });
    let out = d.cli(&["forget", "cobol", "--yes"]);
    assert_eq!(code(&out), 2, "still has a connector: {}", text(&out));
    assert!(
        text(&out).contains("still has a connector"),
        "{}",
        text(&out)
    );
    let aside = d.path().join("cobol-aside");
    std::fs::rename(d.path().join("connectors/cobol"), &aside).unwrap();
    let out = d.cli(&["forget", "nosuch", "--yes"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    // The running daemon still has the connector until it reloads.
    let out = d.cli(&["forget", "cobol", "--yes"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    sighup(&d);
    let out = d.cli(&["forget", "cobol", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("5 waiting change(s)"), "{}", text(&out));
    let names: Vec<String> = d.status_json()["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["housing"]);
    // The connector comes back: nothing old is sent, new ids continue after the
    // old, and the pause went with the forgotten queue.
    std::fs::rename(&aside, d.path().join("connectors/cobol")).unwrap();
    sighup(&d);
    assert_eq!(
        c.call(&envelope("9", json!({"permit_number": "9"})))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(20), "the new change delivered", |d| {
        d.target_status("cobol")["delivered"] == 2
    });
    let rows = delivered(&d, "cobol");
    let keys: Vec<&str> = rows.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["0", "9"], "{rows:?}");
    let seq = |id: &str| id.rsplit(':').next().unwrap().parse::<u64>().unwrap();
    assert!(
        seq(&rows[1].0) > 6,
        "the id {} reuses a forgotten seq",
        rows[1].0
    );
}

#[test]
fn forget_works_while_the_daemon_is_stopped_too() {
    let mut d = TestDaemon::new()
        .connector("housing", &csv_connector(&["permit_number"], "", FAST))
        .connector("cobol", &csv_connector(&["permit_number"], "", FAST))
        .start();
    assert_eq!(code(&d.cli(&["pause", "cobol"])), 0);
    let mut c = d.client();
    assert_eq!(
        c.call(&envelope("1", json!({"permit_number": "1"})))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(20), "1 pending for cobol", |d| {
        d.target_status("cobol")["pending"] == 1
    });
    d.stop();
    std::fs::remove_dir_all(d.path().join("connectors/cobol")).unwrap();
    let st = d.status_json();
    assert_eq!(st["targets"][0]["name"], "cobol");
    assert_eq!(st["targets"][0]["orphaned"], true);
    let out = d.cli(&["forget", "cobol"]);
    assert_eq!(code(&out), 0, "no terminal: nothing asked; {}", text(&out));
    let st = d.status_json();
    assert_eq!(st["targets"].as_array().unwrap().len(), 1, "{st}");
}

#[test]
fn new_from_a_sample_record_then_reload_delivers_that_collection_without_a_restart() {
    let d = TestDaemon::new()
        .connector("housing", &csv_connector(&["permit_number"], "", FAST))
        .start();
    let mut c = d.client();
    let parcel = json!({"parcel_no": "0042", "owner": {"name": "Ann <Lee>"}, "acres": 2.5});
    // Before: no connector receives parcels, so the change is refused (not lost).
    let refused = c.call(
        &serde_json::to_string(&json!({"collection": "parcels", "key": "0042", "doc": parcel}))
            .unwrap(),
    );
    assert_eq!(refused["ok"], false, "{refused}");
    std::fs::write(d.path().join("parcel.json"), parcel.to_string()).unwrap();
    let out = d.cli(&[
        "new",
        "assessor",
        "--collection",
        "parcels",
        "--sample",
        "parcel.json",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("key `parcel_no` (guessed"),
        "{}",
        text(&out)
    );
    let toml =
        std::fs::read_to_string(d.path().join("connectors/assessor/connector.toml")).unwrap();
    assert!(
        toml.contains("columns = [\"parcel_no\", \"acres\", \"owner.name\"]"),
        "{toml}"
    );
    std::fs::create_dir_all(d.path().join("var/outbox/assessor")).unwrap();
    let out = d.cli(&["check"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = d.cli(&["reload"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("assessor: new connector"),
        "{}",
        text(&out)
    );
    let ok = c.call(
        &serde_json::to_string(&json!({"collection": "parcels", "key": "0042", "doc": parcel}))
            .unwrap(),
    );
    assert_eq!(ok["ok"], true, "{ok}");
    d.wait_for(Duration::from_secs(20), "the parcel delivered", |d| {
        d.target_status("assessor")["delivered"] == 1
    });
    let out = std::fs::read_dir(d.path().join("var/outbox/assessor"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .unwrap();
    let csv = std::fs::read_to_string(out).unwrap();
    assert!(
        csv.starts_with("delivery_id,op,parcel_no,acres,owner.name"),
        "{csv}"
    );
    assert!(csv.contains(",0042,2.5,Ann <Lee>"), "{csv}");
}

#[test]
fn a_reload_never_cancels_the_soap_delivery_in_hand_and_the_next_one_uses_the_new_settings() {
    let server = crate::soap::LegacyBox::start();
    server.set_delay(Duration::from_secs(2));
    let d = TestDaemon::new()
        .connector(
            "cobol",
            &crate::soap::soap_connector(&server.url(), "", FAST),
        )
        .start();
    let mut c = d.client();
    assert_eq!(
        c.call(&envelope(
            "1",
            json!({"permit_number": "1", "status": "open"})
        ))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(20), "the delivery in hand", |_| {
        server.max_in_flight() == 1
    });
    let path = d.path().join("connectors/cobol/connector.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("root = \"PermitUpdate\"", "root = \"PermitChange\""),
    )
    .unwrap();
    let r = sighup(&d);
    assert_eq!(r["changed"], json!(["cobol"]), "{r}");
    // The reload waited for the answer: delivered once, in the old format.
    let st = d.target_status("cobol");
    assert_eq!(
        (st["delivered"].as_u64(), st["pending"].as_u64()),
        (Some(1), Some(0)),
        "{st}"
    );
    server.set_delay(Duration::ZERO);
    assert_eq!(
        c.call(&envelope(
            "2",
            json!({"permit_number": "2", "status": "open"})
        ))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(20), "the second delivery", |d| {
        d.target_status("cobol")["delivered"] == 2
    });
    let got = server.received();
    let seen: Vec<(&str, &str, &str)> = got
        .iter()
        .map(|r| (r.id.as_str(), r.key.as_str(), r.root.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("cobol:1", "1", "PermitUpdate"),
            ("cobol:2", "2", "PermitChange")
        ],
        "{seen:?}"
    );
    assert!(server.errors().is_empty(), "{:?}", server.errors());
}

#[test]
fn systemd_is_told_reloading_with_a_monotonic_time_then_ready_again() {
    use std::os::unix::net::UnixDatagram;
    let mut d =
        TestDaemon::new().connector("housing", &csv_connector(&["permit_number"], "", FAST));
    d.write_config();
    let notify_path = d.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let log = std::fs::File::create(d.path().join("daemon.log")).unwrap();
    d.child = Some(
        std::process::Command::new(crate::harness::BIN)
            .args(["run", "-c"])
            .arg(d.config_path())
            .current_dir(d.path())
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = notify.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1\n");
    sighup(&d);
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(), "READY=1\n");
}

#[test]
fn removing_and_restoring_a_connector_under_load_loses_nothing_and_sends_nothing_twice() {
    let d = two_targets();
    let (feeder, sent) = feed(&d, "k", 900);
    d.wait_for(Duration::from_secs(30), "a third sent", |_| {
        sent.load(Ordering::SeqCst) >= 300
    });
    let folder = d.path().join("connectors/cobol");
    let aside = d.path().join("cobol-aside");
    std::fs::rename(&folder, &aside).unwrap();
    let before_removal = sent.load(Ordering::SeqCst);
    sighup(&d);
    d.wait_for(Duration::from_secs(30), "two thirds sent", |_| {
        sent.load(Ordering::SeqCst) >= 600
    });
    std::fs::rename(&aside, &folder).unwrap();
    sighup(&d);
    let after_return = sent.load(Ordering::SeqCst) + 1;
    feeder.join().unwrap();
    d.wait_for(Duration::from_secs(30), "everything settled", |d| {
        let h = d.target_status("housing");
        let c = d.target_status("cobol");
        h["delivered"] == 900 && c["pending"] == 0 && c["in_flight"] == 0
    });
    assert_eq!(keys_once(&d, "housing").len(), 900);
    // Every change, also those made while its connector was gone: an orphaned
    // target goes on taking its collections' changes.
    let cobol = keys_once(&d, "cobol");
    for i in 0..900 {
        let when = if i < before_removal {
            "before the removal"
        } else if i < after_return {
            "while it was removed"
        } else {
            "after its return"
        };
        assert!(
            cobol.contains(&format!("k{i}")),
            "cobol lost k{i}, sent {when}"
        );
    }
    assert_eq!(d.target_status("cobol")["state"], "up");
}
