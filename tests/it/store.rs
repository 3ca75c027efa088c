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

/// `tests/fixtures/sled-state-v0.1.tar.gz` is a state folder made by version 0.1
/// (commit 98e9c9f, the sled store): permit 123 delivered, then with the outbox
/// missing four deltas pending (7001–7003 created, 123 approved). The new binary
/// moves it into queue.redb at start, delivers exactly the four under their old
/// ids, keeps the snapshots (an unchanged file sends nothing) and the counters,
/// and sets the sled files aside.
#[test]
fn a_sled_state_folder_of_version_0_1_is_upgraded_at_start_and_loses_nothing() {
    let mut d = TestDaemon::new().connector(
        "housing",
        &csv_connector(&["permit_number", "status"], "", ""),
    );
    let state = d.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let untar = std::process::Command::new("tar")
        .arg("xzf")
        .arg(fixtures().join("sled-state-v0.1.tar.gz"))
        .arg("-C")
        .arg(&state)
        .status()
        .unwrap();
    assert!(untar.success());
    d.spawn();
    d.wait_for(Duration::from_secs(10), "the four pending deltas", |d| {
        d.outbox_rows("housing").len() == 4
    });
    let rows = d.outbox_rows("housing");
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        ids,
        ["housing:2", "housing:3", "housing:4", "housing:5"],
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|r| r[2] == "123" && r[3] == "APPROVED"),
        "{rows:?}"
    );
    let t = d.target_status("housing");
    assert_eq!(
        (t["delivered"].as_u64(), t["pending"].as_u64()),
        (Some(5), Some(0)),
        "{t}"
    );

    // The snapshots came along: the same permit again is no change; a sentinel
    // change behind it shows the file was taken.
    d.drop_fixture("permits/permit-123-approved.json", "again.json");
    d.drop_file(
        "sentinel.json",
        br#"{"permit_number":"7004","status":"FILED"}"#,
    );
    d.wait_for(Duration::from_secs(10), "the sentinel", |d| {
        d.outbox_rows("housing").len() == 5
    });
    assert_eq!(d.outbox_rows("housing")[4][2], "7004");

    assert!(state.join("queue.redb").is_file());
    assert!(!state.join("db").exists() && !state.join("conf").exists());
    let backup = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("sled-backup-"))
        .expect("the sled files are kept aside");
    assert!(backup.path().join("db").is_file() && backup.path().join("conf").is_file());
    assert!(
        d.log()
            .contains("moved the queue from sled into queue.redb"),
        "{}",
        d.log()
    );
}

/// An operator who may not read the queue file is told so, and which user to
/// run as — not sent to `recover` as if the file were damaged.
#[test]
fn a_queue_file_this_user_may_not_open_is_a_permission_error_not_damage() {
    use std::os::unix::fs::PermissionsExt;
    if std::process::Command::new("setpriv")
        .arg("--help")
        .output()
        .is_err()
    {
        println!("SKIPPED: setpriv (util-linux) is not installed");
        return;
    }
    let mut d = TestDaemon::new().connector("housing", &csv_connector(&["permit_number"], "", ""));
    d.spawn();
    assert_eq!(d.stop(), Some(0));
    // `nobody` must reach the folder, the config and a copy of the binary.
    let bin = d.path().join("hms-sync");
    std::fs::copy(BIN, &bin).unwrap();
    for p in [
        d.path().to_path_buf(),
        d.path().join("state"),
        d.path().join("connectors"),
        d.path().join("connectors/housing"),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for p in [
        d.config_path(),
        d.path().join("connectors/housing/connector.toml"),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(
        d.path().join("state/queue.redb"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("check")
        .arg("-c")
        .arg(d.config_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no permission to open the queue file") && err.contains("sudo -u hms-sync"),
        "{err}"
    );
    assert!(!err.contains("recover"), "{err}");
}
