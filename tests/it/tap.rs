//! `hms-sync tap TARGET` (payloads live, as they go on the wire) and the
//! delivery log's one `down` line per probe during an outage.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{BIN, TestDaemon, csv_connector, envelope};
use crate::operator::code;

const FAST: &str = "max_attempts = 3\nbackoff = \"50ms\"\nmax_backoff = \"200ms\"";

#[test]
fn tap_prints_each_payload_as_it_is_sent_and_a_reader_that_never_reads_does_not_slow_delivery() {
    let d = TestDaemon::new()
        .connector(
            "housing",
            &csv_connector(&["permit_number", "status"], "", FAST),
        )
        .start();
    let mut tap = Command::new(BIN)
        .args(["tap", "housing", "--json", "--count", "3", "-c"])
        .arg(d.config_path())
        .current_dir(d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Sentinel: the tap says it listens (on stderr) before anything is sent.
    let mut err = BufReader::new(tap.stderr.take().unwrap());
    let mut hello = String::new();
    err.read_line(&mut hello).unwrap();
    assert!(hello.contains("tapping housing"), "{hello}");
    // A second subscriber that never reads: its socket fills, it lags.
    let mut stuck =
        std::os::unix::net::UnixStream::connect(d.path().join("state/control.sock")).unwrap();
    writeln!(stuck, "{}", json!({"cmd": "tap", "target": "housing"})).unwrap();
    let mut c = d.client();
    for i in 0..3 {
        let key = format!("t{i}");
        assert_eq!(
            c.call(&envelope(
                &key,
                json!({"permit_number": key, "status": "<ok>"})
            ))["ok"],
            true
        );
    }
    let out = BufReader::new(tap.stdout.take().unwrap());
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(tap.wait().unwrap().success());
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["target"], "housing");
        assert_eq!(l["id"], format!("housing:{}", i + 1));
        assert_eq!(l["attempt"], 1);
        assert_eq!(l["encoding"], "text");
        assert!(
            l["payload"]
                .as_str()
                .unwrap()
                .contains(&format!("t{i},<ok>")),
            "{l}"
        );
    }
    // 3,000 changes with the stuck reader still subscribed: all delivered.
    let started = Instant::now();
    let mut lines = String::new();
    for i in 0..3000 {
        let key = format!("m{i}");
        lines.push_str(&envelope(
            &key,
            json!({"permit_number": key, "status": "x".repeat(200)}),
        ));
        lines.push('\n');
    }
    let out = d.cli_stdin(&["send", "-"], lines.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_for(Duration::from_secs(30), "3,003 delivered", |d| {
        d.target_status("housing")["delivered"] == 3003
    });
    eprintln!(
        "3,000 delivered with a stuck tap reader in {:?}",
        started.elapsed()
    );
    drop(stuck);
}

#[test]
fn tap_of_an_unknown_target_exits_2_and_without_a_daemon_exits_1() {
    let mut d = TestDaemon::new()
        .connector("housing", &csv_connector(&["permit_number"], "", FAST))
        .start();
    let out = d.cli(&["tap", "nosuch"]);
    assert_eq!(code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target `nosuch`"));
    d.stop();
    let out = d.cli(&["tap", "housing"]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

#[test]
fn an_outage_logs_one_down_line_per_probe_not_one_per_pending_change() {
    let d = TestDaemon::new()
        .connector(
            "housing",
            &csv_connector(
                &["permit_number"],
                "",
                "backoff = \"100ms\"\nmax_backoff = \"200ms\"",
            ),
        )
        .start();
    std::fs::remove_dir(d.outbox("housing")).unwrap();
    // 50 changes in one file: the file transport sends them as one batch.
    let mut rows = String::from("[");
    for i in 0..50 {
        if i > 0 {
            rows.push(',');
        }
        rows.push_str(&format!("{{\"permit_number\":\"{i}\"}}"));
    }
    rows.push(']');
    d.drop_file("batch.json", rows.as_bytes());
    let downs = |d: &TestDaemon| {
        d.delivery_log()
            .into_iter()
            .filter(|e| e["outcome"] == "down")
            .collect::<Vec<_>>()
    };
    d.wait_for(Duration::from_secs(20), "five probes", |d| {
        downs(d).len() >= 5
    });
    let (_, metrics) = d.http_get("/metrics");
    let probes: f64 = metrics
        .lines()
        .find(|l| l.starts_with("hms_sync_deliveries_total{target=\"housing\",outcome=\"down\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("deliveries_total down in the metrics");
    let lines = downs(&d);
    // Every probe sent the whole batch, so each line names its first delta and
    // there are as many lines as probes (give or take the one in progress).
    assert!(lines.iter().all(|e| e["id"] == lines[0]["id"]), "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|e| e["error"].as_str().is_some_and(|s| !s.is_empty()))
    );
    assert!(
        (lines.len() as f64 - probes).abs() <= 1.0,
        "{} lines, {probes} probes",
        lines.len()
    );
    std::fs::create_dir(d.outbox("housing")).unwrap();
    d.wait_for(Duration::from_secs(20), "delivery after the outage", |d| {
        d.target_status("housing")["delivered"] == 50
    });
    let (_, metrics) = d.http_get("/metrics");
    assert!(
        metrics.contains("hms_sync_deliveries_total{target=\"housing\",outcome=\"delivered\"} 50"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE hms_sync_commit_seconds histogram"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hms_sync_commit_seconds_bucket{le=\"+Inf\"}"),
        "{metrics}"
    );
}
