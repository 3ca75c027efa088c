//! The command line as scripts use it: check, exit codes, new, translate, resync.

use std::time::Duration;

use crate::harness::*;

#[test]
fn check_lists_every_problem_with_file_line_and_known_keys() {
    let d = TestDaemon::new().connector(
        "typo",
        "collections = [\"permits\"]\n[format]\nkind = \"csv\"\ncolumns = [\"a\"]\n[transport]\nkind = \"file\"\ndri = \"x\"\n",
    );
    d.write_config();
    let out = d.cli(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connectors/typo/connector.toml: line 7"),
        "{err}"
    );
    assert!(
        err.contains("unknown field `dri`") && err.contains("batch_window"),
        "{err}"
    );
    // run refuses the same config with exit 2.
    let out = d.cli(&["run"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_passes_a_good_config_and_warns_about_an_unwritable_outbox() {
    let d = TestDaemon::new().connector("housing", &csv_connector(&["permit_number"], "", ""));
    d.write_config();
    std::fs::remove_dir(d.outbox("housing")).unwrap();
    let out = d.cli(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("outbox"));
}

#[test]
fn new_scaffolds_a_connector_that_check_accepts() {
    let d = TestDaemon::new();
    d.write_config();
    let out = d.cli(&["new", "county-x", "--transport", "file"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.path().join("connectors/county-x/connector.toml").exists());
    let out = d.cli(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        d.cli(&["new", "../evil", "--transport", "file"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        d.cli(&["new", "county-x", "--transport", "file"])
            .status
            .code(),
        Some(2),
        "no overwrite"
    );
}

#[test]
fn translate_shows_the_payload_without_sending() {
    let d = TestDaemon::new().connector(
        "cobol",
        "collections = [\"permits\"]\n[format]\nkind = \"xml\"\nroot = \"PermitUpdate\"\nkey_element = \"PermitNumber\"\n[transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\n",
    );
    d.write_config();
    let f = fixtures();
    let out = d.cli(&[
        "translate",
        "cobol",
        f.join("permits/permit-123-approved.json").to_str().unwrap(),
        "--from",
        f.join("permits/permit-123.json").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r#"<PermitUpdate op="update">"#)
            && text.contains("O'Brien &amp; Sons &lt;contract&gt;"),
        "{text}"
    );
    assert!(
        text.contains(r#"<Field name="fee_waiver" removed="true"/>"#),
        "{text}"
    );
    assert!(d.outbox_files("cobol").is_empty());
}

#[test]
fn resync_queues_every_known_record_again() {
    let d = TestDaemon::new()
        .connector(
            "housing",
            &csv_connector(&["permit_number", "status"], "", ""),
        )
        .start();
    d.drop_fixture("permits/export-2026-11-25.csv", "e.csv");
    d.wait_for(Duration::from_secs(10), "4 rows", |d| {
        d.outbox_rows("housing").len() == 4
    });
    let out = d.cli(&["resync", "housing"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued 4"));
    d.wait_for(Duration::from_secs(10), "8 rows", |d| {
        d.outbox_rows("housing").len() == 8
    });
    assert_eq!(d.cli(&["resync", "nope"]).status.code(), Some(2));
}

#[test]
fn version_names_commit_and_target() {
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.contains("commit") && v.contains("linux"), "{v}");
}

#[test]
fn send_reports_refused_lines_and_exits_1() {
    let d = TestDaemon::new()
        .connector("housing", &csv_connector(&["permit_number"], "", ""))
        .start();
    let input = format!(
        "{}\nnot json\n",
        envelope("1", serde_json::json!({"permit_number": "1"}))
    );
    let out = d.cli_stdin(&["send", "-"], input.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 accepted, 1 refused") && err.contains("line 2"),
        "{err}"
    );
}
