//! The queue's file as an operator meets it: a damaged file stops the daemon
//! with a clear error instead of a hang, `recover` makes a fresh queue of what
//! can be read, and a state folder of version 0.1 (sled) is upgraded at start.

use std::time::Duration;

use crate::harness::*;

#[test]
fn a_damaged_queue_file_stops_run_with_exit_1_and_recover_starts_a_fresh_one() {
    let mut d = TestDaemon::new().connector(
        "housing",
        &csv_connector(&["permit_number", "status"], "", ""),
    );
    d.write_config();
    let state = d.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("queue.redb"), vec![0x5a; 64 * 1024]).unwrap();

    let out = d.cli(&["run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("queue.redb") && err.contains("hms-sync recover"),
        "{err}"
    );

    let out = d.cli(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("queue.redb") && err.contains("hms-sync recover"),
        "{err}"
    );

    let out = d.cli(&["recover"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "nothing could be read: {text}");
    assert!(text.contains("could not be opened at all"), "{text}");
    let aside: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("queue.redb.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept aside");
    assert_eq!(
        std::fs::read(state.join(&aside[0])).unwrap(),
        vec![0x5a; 64 * 1024]
    );

    // The daemon runs again on the fresh queue.
    d.spawn();
    d.drop_fixture("permits/permit-123.json", "p.json");
    d.wait_for(Duration::from_secs(10), "the permit delivered", |d| {
        d.outbox_rows("housing").len() == 1
    });
    assert_eq!(d.stop(), Some(0));
    let out = d.cli(&["recover", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["records"], 1, "{report}");
    assert_eq!(report["lost"], serde_json::json!([]), "{report}");
}
