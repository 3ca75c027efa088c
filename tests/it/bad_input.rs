//! Bad input loses nothing and stops nothing (SPEC §3.7): each case is refused
//! with a clear error, quarantined whole, and the daemon keeps going.

use std::time::Duration;

use crate::harness::*;

fn daemon() -> TestDaemon {
    TestDaemon::new()
        .tables("[limits]\nmax_file_bytes = 1048576\nmax_line_bytes = 65536\n")
        .connector(
            "housing",
            &csv_connector(&["permit_number", "status"], "", ""),
        )
        .start()
}

/// Drops `contents` as `name`, waits for it in `.rejected/`, returns the `.error` text.
fn rejected(d: &TestDaemon, name: &str, contents: &[u8]) -> String {
    d.drop_file(name, contents);
    let error = d.inbox().join(".rejected").join(format!("{name}.error"));
    d.wait_for(
        Duration::from_secs(10),
        &format!("{name} to be rejected"),
        |_| error.exists(),
    );
    assert_eq!(
        std::fs::read(d.inbox().join(".rejected").join(name)).unwrap(),
        contents,
        "moved whole"
    );
    std::fs::read_to_string(error).unwrap()
}

/// After the bad input, good input still flows.
fn still_works(d: &TestDaemon) {
    let key = format!("ok{}", d.outbox_rows("housing").len());
    d.drop_file(
        &format!("{key}.json"),
        format!("{{\"permit_number\":\"{key}\",\"status\":\"A\"}}").as_bytes(),
    );
    d.wait_for(Duration::from_secs(10), "good input after bad", |d| {
        d.outbox_rows("housing").iter().any(|r| r[2] == key)
    });
}

#[test]
fn truncated_json() {
    let d = daemon();
    let err = rejected(&d, "t.json", b"{\"permit_number\": \"1\",\n \"status\": ");
    assert!(err.contains("line 2") && err.contains("EOF"), "{err}");
    still_works(&d);
}

#[test]
fn an_array_with_one_bad_element_ingests_nothing() {
    let d = daemon();
    let err = rejected(
        &d,
        "a.json",
        br#"[{"permit_number":"1"},{"permit_number":"2"},{"status":"x"}]"#,
    );
    assert!(
        err.contains("array element 3") && err.contains("no key field `permit_number`"),
        "{err}"
    );
    // A later good file is delivered after anything the bad one could have
    // queued: once it is there, nothing else may be.
    still_works(&d);
    assert_eq!(d.outbox_rows("housing").len(), 1, "all-or-nothing");
}

#[test]
fn ndjson_with_a_bad_line_5000() {
    let d = daemon();
    let mut text = String::new();
    for i in 1..5000 {
        text.push_str(&format!("{{\"permit_number\":\"{i}\"}}\n"));
    }
    text.push_str("{\"permit_number\": oops}\n");
    let err = rejected(&d, "big.ndjson", text.as_bytes());
    assert!(err.contains("line 5000"), "{err}");
    still_works(&d);
    assert_eq!(d.outbox_rows("housing").len(), 1);
}

#[test]
fn csv_with_a_short_row() {
    let d = daemon();
    let err = rejected(&d, "s.csv", b"permit_number,status\n1,A\n2\n3,C\n");
    assert!(
        err.contains("line 3") && err.contains("1 fields but the header has 2"),
        "{err}"
    );
    still_works(&d);
}

#[test]
fn a_record_without_its_key() {
    let d = daemon();
    let err = rejected(&d, "k.json", br#"{"status":"A"}"#);
    assert!(err.contains("no key field `permit_number`"), "{err}");
    still_works(&d);
}

#[test]
fn a_file_over_the_size_limit_is_not_read() {
    let d = daemon();
    let path = d.inbox().join(".big.json.part");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(50 << 30)
        .unwrap(); // sparse: 50 GiB
    std::fs::rename(&path, d.inbox().join("big.json")).unwrap();
    let error = d.inbox().join(".rejected/big.json.error");
    d.wait_for(
        Duration::from_secs(10),
        "the big file to be rejected",
        |_| error.exists(),
    );
    let err = std::fs::read_to_string(error).unwrap();
    assert!(err.contains("max_file_bytes"), "{err}");
    still_works(&d);
}

#[test]
fn a_10_mib_socket_line_and_deep_nesting_are_refused_and_the_connection_lives() {
    let d = daemon();
    let mut c = d.client();
    let huge = format!(
        "{{\"collection\":\"permits\",\"key\":\"1\",\"doc\":{{\"x\":\"{}\"}}}}",
        "a".repeat(10 << 20)
    );
    let a = c.call(&huge);
    assert_eq!(a["ok"], false);
    assert!(
        a["error"].as_str().unwrap().contains("max_line_bytes"),
        "{a}"
    );
    let deep = format!(
        "{{\"collection\":\"permits\",\"key\":\"1\",\"doc\":{}1{}}}",
        "{\"a\":".repeat(10_000),
        "}".repeat(10_000)
    );
    let a = c.call(&deep);
    assert_eq!(a["ok"], false, "{a}");
    let a = c.call(&envelope("1", serde_json::json!({"permit_number": "1"})));
    assert_eq!(a["ok"], true);
    let err = rejected(
        &d,
        "deep.json",
        format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)).as_bytes(),
    );
    assert!(err.contains("recursion limit"), "{err}");
    still_works(&d);
}

#[test]
fn invalid_utf8() {
    let d = daemon();
    let err = rejected(
        &d,
        "u.json",
        b"{\"permit_number\":\"1\",\"status\":\"\xff\xfe\"}",
    );
    assert!(err.contains("line 1"), "{err}");
    let err = rejected(&d, "u.csv", b"permit_number,status\n1,\xff\n");
    assert!(err.contains("UTF-8"), "{err}");
    still_works(&d);
}

#[test]
fn a_fifo_and_a_symlink_are_quarantined_without_blocking() {
    let d = daemon();
    let fifo = d.inbox().join("pipe.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let error = d.inbox().join(".rejected/pipe.json.error");
    d.wait_for(Duration::from_secs(15), "the FIFO to be rejected", |_| {
        error.exists()
    });
    assert!(std::fs::read_to_string(error).unwrap().contains("FIFO"));
    let secret = d.path().join("secret.json");
    std::fs::write(&secret, "{\"permit_number\":\"s\"}").unwrap();
    std::os::unix::fs::symlink(&secret, d.inbox().join("link.json")).unwrap();
    let error = d.inbox().join(".rejected/link.json.error");
    d.wait_for(
        Duration::from_secs(15),
        "the symlink to be rejected",
        |_| error.exists(),
    );
    assert!(
        std::fs::read_to_string(error)
            .unwrap()
            .contains("symbolic link")
    );
    assert!(secret.exists(), "the link's target is untouched");
    still_works(&d);
}

#[test]
fn a_file_deleted_between_the_event_and_the_read_is_skipped() {
    let d = daemon();
    for i in 0..50 {
        let p = d.inbox().join(format!("gone{i}.json"));
        std::fs::write(&p, "{\"permit_number\":\"g\"}").unwrap();
        let _ = std::fs::remove_file(&p);
    }
    still_works(&d);
    assert!(
        std::fs::read_dir(d.inbox().join(".rejected"))
            .unwrap()
            .next()
            .is_none(),
        "nothing rejected"
    );
}

#[test]
fn temp_and_dot_files_are_left_alone() {
    let d = daemon();
    for name in [".hidden.json", "x.json.tmp", "y.json.part"] {
        std::fs::write(d.inbox().join(name), "{\"permit_number\":\"1\"}").unwrap();
    }
    still_works(&d);
    for name in [".hidden.json", "x.json.tmp", "y.json.part"] {
        assert!(d.inbox().join(name).exists(), "{name} untouched");
    }
}

#[test]
fn a_file_written_in_place_is_taken_once_closed() {
    use std::io::Write;
    let d = daemon();
    let mut f = std::fs::File::create(d.inbox().join("slow.json")).unwrap();
    f.write_all(b"{\"permit_number\":\"slow\",").unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    f.write_all(b"\"status\":\"A\"}").unwrap();
    drop(f);
    d.wait_for(Duration::from_secs(10), "the closed file", |d| {
        d.outbox_rows("housing").len() == 1
    });
    assert!(
        std::fs::read_dir(d.inbox().join(".rejected"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// Every note in `.rejected/`, read whole.
fn notes(d: &TestDaemon) -> Vec<String> {
    let mut notes: Vec<String> = std::fs::read_dir(d.inbox().join(".rejected"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".error"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    notes.sort();
    notes
}

#[test]
fn a_bad_file_with_the_longest_name_is_quarantined_with_its_note_every_time() {
    let d = daemon();
    // 255 bytes, the most ext4 allows: in ASCII, and in two-byte characters.
    let ascii = format!("{}.json", "n".repeat(250));
    let accented = format!("{}.json", "\u{e9}".repeat(125));
    assert_eq!((ascii.len(), accented.len()), (255, 255));
    for (i, name) in [&ascii, &ascii, &accented, &accented]
        .into_iter()
        .enumerate()
    {
        // Not through `drop_file`: its `.<name>.part` would be too long itself.
        let tmp = d.inbox().join(".long.part");
        std::fs::write(&tmp, b"{\"permit_number\": oops}").unwrap();
        std::fs::rename(&tmp, d.inbox().join(name)).unwrap();
        d.wait_for(
            Duration::from_secs(10),
            "the long-named file and its note in .rejected/",
            |d| notes(d).len() == i + 1 && !d.inbox().join(name).exists(),
        );
        still_works(&d);
    }
    let quarantined: Vec<String> = std::fs::read_dir(d.inbox().join(".rejected"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".error"))
        .collect();
    assert_eq!(quarantined.len(), 4, "{quarantined:?}");
    for n in &quarantined {
        assert!(n.len() + ".error".len() <= 255, "{n}");
        let bytes = std::fs::read(d.inbox().join(".rejected").join(n)).unwrap();
        assert_eq!(bytes, b"{\"permit_number\": oops}", "moved whole");
    }
    // The notes keep the original names.
    let notes = notes(&d);
    assert_eq!(notes.iter().filter(|n| n.contains(&ascii)).count(), 2);
    assert_eq!(notes.iter().filter(|n| n.contains(&accented)).count(), 2);
    assert!(notes.iter().all(|n| n.contains("expected value")));
}

/// A local service with a pool of a few hundred connections is normal: idle ones
/// must not lock out a new client (they got "busy: 256 connections already open").
#[test]
fn three_hundred_idle_socket_connections_lock_nobody_out() {
    let d = daemon();
    let idle: Vec<std::os::unix::net::UnixStream> = (0..300)
        .map(|_| std::os::unix::net::UnixStream::connect(d.socket()).unwrap())
        .collect();
    let mut c = d.client();
    let a = c.call(&envelope("p1", serde_json::json!({"permit_number": "p1"})));
    assert_eq!(a["ok"], true, "{a}");
    d.wait_for(Duration::from_secs(10), "the delivery", |d| {
        d.outbox_rows("housing").iter().any(|r| r[2] == "p1")
    });
    drop(idle);
}
