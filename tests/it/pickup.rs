//! `[transport] pickup` end to end: the real binary writes files into the
//! outbox and counts them delivered only when the importer takes them
//! (`consumed`) or answers (`ack_file`: `<file>.ack`, or `<file>.err` with a
//! reason and `<delivery_id> <reason>` lines). The importer is the test
//! itself in the bad-input tests, and a real COBOL program
//! (`tests/legacy/PERMIT-IMPORT.cbl`, GnuCOBOL, an indexed master file) in
//! the end-to-end ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

/// A CSV connector `county` with `pickup` settings in `[transport]`.
fn csv_pickup(transport: &str, retry: &str) -> String {
    csv_connector(&["permit_number", "status"], transport, retry)
}

fn send(c: &mut Client, key: &str, status: &str) {
    assert_eq!(
        c.call(&envelope(
            key,
            json!({"permit_number": key, "status": status})
        ))["ok"],
        true
    );
}

/// Data files in the outbox (no answers, no dot files).
fn data_files(d: &TestDaemon) -> Vec<PathBuf> {
    d.outbox_files("county")
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            !n.ends_with(".ack") && !n.ends_with(".err") && !n.ends_with(".tmp")
        })
        .collect()
}

fn answer(file: &Path, suffix: &str, text: &[u8]) {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    let tmp = PathBuf::from(format!("{}.tmp", PathBuf::from(&name).display()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, PathBuf::from(name)).unwrap();
}

fn dead_list(d: &TestDaemon) -> Vec<serde_json::Value> {
    let out = d.cli(&["dead", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn settled(d: &TestDaemon) -> bool {
    let st = d.target_status("county");
    st["pending"] == 0 && st["in_flight"] == 0
}

#[test]
fn check_names_file_line_and_key_of_a_wrong_pickup_setting() {
    let d = TestDaemon::new().connector(
        "county",
        &csv_pickup(
            "pickup = \"when_ready\"\nack_suffix = \"\"\n",
            "max_attempts = 1",
        ),
    );
    d.write_config();
    let out = d.cli(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connectors/county/connector.toml: line 9: [transport] pickup = \"when_ready\" is not known"),
        "{err}"
    );
    assert!(
        err.contains("line 10: [transport] ack_suffix = \"\""),
        "{err}"
    );
    let d = TestDaemon::new().connector(
        "county",
        &csv_pickup(
            "pickup = \"consumed\"\nerr_suffix = \".bad\"\npickup_timeout = \"soon\"\n",
            "max_attempts = 1",
        ),
    );
    d.write_config();
    let err = String::from_utf8_lossy(&d.cli(&["check"]).stderr).into_owned();
    assert!(
        err.contains("line 10: [transport] err_suffix applies only with pickup = \"ack_file\""),
        "{err}"
    );
    assert!(
        err.contains("line 11: [transport] pickup_timeout:"),
        "{err}"
    );
}

/// A daemon with `transport` (max_attempts 1) and one record's file waiting
/// for its answer.
fn one_file_waiting(transport: &str) -> (TestDaemon, PathBuf) {
    let d = TestDaemon::new()
        .connector("county", &csv_pickup(transport, "max_attempts = 1"))
        .start();
    send(&mut d.client(), "7", "NEW");
    d.wait_for(
        Duration::from_secs(10),
        "the file, its delta in flight",
        |d| data_files(d).len() == 1 && d.target_status("county")["in_flight"] == 1,
    );
    let file = data_files(&d).remove(0);
    (d, file)
}

/// The reason of the one dead letter, once there is one.
fn dead_reason(d: &TestDaemon) -> String {
    d.wait_for(Duration::from_secs(10), "the dead letter", |d| {
        d.target_status("county")["dead"] == 1
    });
    dead_list(d)[0]["last_error"].as_str().unwrap().to_string()
}

#[test]
fn an_empty_err_file_refuses_the_file_with_a_reason_that_says_so() {
    let (d, file) = one_file_waiting("pickup = \"ack_file\"\n");
    answer(&file, ".err", b"");
    let reason = dead_reason(&d);
    assert!(reason.contains("without a reason"), "{reason}");
    assert!(reason.contains(".err"), "{reason}");
    d.wait_for(
        Duration::from_secs(10),
        "the settled file and answer removed",
        |d| d.outbox_files("county").is_empty(),
    );
}

#[test]
fn a_huge_err_file_is_read_only_to_its_first_mib() {
    let (d, file) = one_file_waiting("pickup = \"ack_file\"\n");
    // 8 MiB: the reason, filler lines, and past the first MiB a line naming
    // the record with a reason of its own that must never be read.
    let mut text = b"HUGE ANSWER\n".to_vec();
    while text.len() < 2 << 20 {
        text.extend_from_slice(b"county:999999 filler line of a very talkative importer\n");
    }
    text.extend_from_slice(b"county:1 LATE REASON\n");
    text.resize(8 << 20, b'x');
    answer(&file, ".err", &text);
    let reason = dead_reason(&d);
    assert!(reason.contains("HUGE ANSWER"), "{reason}");
    assert!(!reason.contains("LATE"), "{reason}");
    d.wait_for(Duration::from_secs(10), "the answer removed", |d| {
        d.outbox_files("county").is_empty()
    });
}

#[test]
fn an_ack_for_a_file_never_written_is_ignored_and_logged_once() {
    let d = TestDaemon::new().connector(
        "county",
        &csv_pickup("pickup = \"ack_file\"\n", "max_attempts = 1"),
    );
    let stray = d.outbox("county").join("county-000000000042.csv.ack");
    std::fs::write(&stray, "OK\n").unwrap();
    let d = d.start();
    let mut c = d.client();
    for (n, key) in ["1", "2", "3"].iter().enumerate() {
        send(&mut c, key, "NEW");
        d.wait_for(Duration::from_secs(10), "the file", |d| {
            data_files(d).len() == 1
        });
        // Each wait starts with a look for strays: three looks, one log line.
        if n == 0 {
            d.wait_for(Duration::from_secs(10), "the stray ack logged", |d| {
                d.log().contains("not waiting for")
            });
        }
        answer(&data_files(&d)[0], ".ack", b"OK\n");
        d.wait_for(Duration::from_secs(10), "the delivery", |d| {
            d.target_status("county")["delivered"] == n as u64 + 1
        });
    }
    assert!(stray.exists(), "a stray answer is left alone");
    assert_eq!(d.log().matches("not waiting for").count(), 1, "{}", d.log());
    assert_eq!(d.target_status("county")["dead"], 0);
}

#[test]
fn an_importer_that_takes_the_file_but_never_answers_is_an_outage_not_a_dead_letter() {
    let d = TestDaemon::new()
        .connector(
            "county",
            &csv_pickup(
                "pickup = \"ack_file\"\npickup_timeout = \"2s\"\n",
                "max_attempts = 1\nbackoff = \"100ms\"\nmax_backoff = \"500ms\"",
            ),
        )
        .start();
    let mut c = d.client();
    send(&mut c, "7", "NEW");
    // Two timeouts (the delivery log's "down" lines are the sentinel).
    d.wait_for(Duration::from_secs(20), "two pickup timeouts", |d| {
        d.delivery_log()
            .iter()
            .filter(|e| e["outcome"] == "down")
            .count()
            >= 2
    });
    let st = d.target_status("county");
    assert_eq!(st["state"], "down", "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("pickup_timeout (2s)"),
        "{st}"
    );
    assert_eq!(st["dead"], 0);
    let files = data_files(&d);
    assert_eq!(
        files.len(),
        1,
        "no second copy while the first waits: {files:?}"
    );
    answer(&files[0], ".ack", b"");
    d.wait_for(Duration::from_secs(15), "the delivery", |d| {
        d.target_status("county")["delivered"] == 1
    });
    let st = d.target_status("county");
    assert_eq!(st["state"], "up", "{st}");
    assert_eq!(st["dead"], 0);
    d.wait_for(Duration::from_secs(10), "the outbox cleared", |d| {
        d.outbox_files("county").is_empty()
    });
}

/// Restarts the daemon and sees it wait for the same file again, no second copy.
fn restart_waiting_for(d: &mut TestDaemon, before: &[PathBuf]) {
    d.restart();
    d.wait_for(
        Duration::from_secs(15),
        "waiting again after the restart",
        |d| {
            d.log()
                .contains("waiting for the importer's answer to a file written before")
        },
    );
    assert_eq!(data_files(d), before, "no second copy");
}

#[test]
fn kill_9_while_a_file_waits_resumes_waiting_without_a_second_copy() {
    let mut d = TestDaemon::new()
        .connector(
            "county",
            &csv_pickup(
                "pickup = \"ack_file\"\nbatch_window = \"1s\"\n",
                "max_attempts = 1",
            )
            .replace("batch_window = \"0s\"\n", ""),
        )
        .start();
    let mut c = d.client();
    for key in ["1", "2", "3"] {
        send(&mut c, key, "NEW");
    }
    d.wait_for(
        Duration::from_secs(10),
        "all three in flight in one file",
        |d| data_files(d).len() == 1 && d.target_status("county")["in_flight"] == 3,
    );
    let before = data_files(&d);
    assert_eq!(before.len(), 1, "{before:?}");
    let bytes = std::fs::read(&before[0]).unwrap();
    d.kill9();
    restart_waiting_for(&mut d, &before);
    assert_eq!(std::fs::read(&before[0]).unwrap(), bytes);
    answer(&before[0], ".ack", b"OK\n");
    d.wait_for(Duration::from_secs(15), "the delivery", |d| {
        d.target_status("county")["delivered"] == 3 && settled(d)
    });
    assert!(d.outbox_files("county").is_empty());
    assert_eq!(d.target_status("county")["dead"], 0);
}

#[test]
fn a_stop_while_a_file_waits_is_prompt_and_the_wait_resumes_after_start() {
    let (mut d, file) = one_file_waiting("pickup = \"ack_file\"\n");
    let before = vec![file];
    // pickup_timeout is 10 minutes: the stop must not wait for it.
    let started = std::time::Instant::now();
    assert_eq!(d.stop(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    restart_waiting_for(&mut d, &before);
    assert_eq!(d.target_status("county")["dead"], 0);
    answer(&before[0], ".ack", b"");
    d.wait_for(Duration::from_secs(15), "the delivery", |d| {
        d.target_status("county")["delivered"] == 1 && settled(d)
    });
}

#[test]
fn consumed_a_file_counts_as_delivered_once_the_importer_moves_it_away() {
    let (d, file) = one_file_waiting("pickup = \"consumed\"\n");
    assert_eq!(d.target_status("county")["delivered"], 0);
    // While the file waits, `where` shows the delta in flight.
    let out = d.cli(&["where", "permits", "7", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["targets"][0]["state"], "in_flight", "{v}");
    assert_eq!(v["targets"][0]["in_flight"], json!(["county:1"]), "{v}");
    let check = String::from_utf8_lossy(&d.cli(&["check"]).stdout).into_owned();
    assert!(
        check.contains("delivered once the importer moves or deletes the file (pickup = \"consumed\", outage after 10m)"),
        "{check}"
    );
    let taken = d.path().join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::rename(&file, taken.join(file.file_name().unwrap())).unwrap();
    d.wait_for(Duration::from_secs(10), "the delivery", |d| {
        d.target_status("county")["delivered"] == 1 && settled(d)
    });
    let rows: Vec<String> = std::fs::read_to_string(taken.join(file.file_name().unwrap()))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(rows[1], "county:1,create,7,NEW");
}

/// Answers every file in the outbox by `judge` (its text → an .err's text,
/// or None for an .ack), until `stop`.
fn test_importer(
    outbox: PathBuf,
    stop: Arc<AtomicBool>,
    judge: impl Fn(&str) -> Option<String> + Send + 'static,
) -> std::thread::JoinHandle<Vec<usize>> {
    std::thread::spawn(move || {
        let mut sizes = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            for f in unanswered(&outbox, "csv") {
                let Ok(text) = std::fs::read_to_string(&f) else {
                    continue;
                };
                sizes.push(text.lines().count() - 1);
                match judge(&text) {
                    Some(e) => answer(&f, ".err", e.as_bytes()),
                    None => answer(&f, ".ack", b"OK\n"),
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sizes
    })
}

/// An `ack_file` daemon that gathers a batch for 2 s (max_attempts 1), and a
/// stop flag for its importer.
fn gathering_daemon(transport: &str) -> (TestDaemon, Arc<AtomicBool>) {
    let d = TestDaemon::new()
        .connector(
            "county",
            &csv_pickup(
                &format!("pickup = \"ack_file\"\nbatch_window = \"2s\"\n{transport}"),
                "max_attempts = 1",
            )
            .replace("batch_window = \"0s\"\n", ""),
        )
        .start();
    (d, Arc::new(AtomicBool::new(false)))
}

/// Files of `outbox` ending in `.<ext>` with neither `.ack` nor `.err` yet, by name.
fn unanswered(outbox: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(outbox)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("county-")
                && p.extension().is_some_and(|e| e == ext)
                && !Path::new(&format!("{}.ack", p.display())).exists()
                && !Path::new(&format!("{}.err", p.display())).exists()
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_file_refused_naming_no_record_is_retried_in_halves_until_the_refused_one_stands_alone() {
    let (d, stop) = gathering_daemon("batch_max = 8\n");
    let importer = test_importer(d.outbox("county"), stop.clone(), |text| {
        text.contains(",5,")
            .then(|| "BATCH REFUSED: A RECORD FAILED VALIDATION\n".to_string())
    });
    let mut c = d.client();
    for key in 1..=8 {
        send(&mut c, &key.to_string(), "NEW");
    }
    d.wait_for(Duration::from_secs(20), "seven delivered, one dead", |d| {
        let st = d.target_status("county");
        st["delivered"] == 7 && st["dead"] == 1 && settled(d)
    });
    stop.store(true, Ordering::SeqCst);
    let sizes = importer.join().unwrap();
    // 8 refused; 1-4 taken; 5-8 refused; 5-6 refused; 5 alone refused, 6 taken; 7-8 taken.
    assert_eq!(
        sizes,
        vec![8, 4, 4, 2, 1, 1, 2],
        "halves until the refused one stands alone"
    );
    let dead = dead_list(&d);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["key"], "5");
    let reason = dead[0]["last_error"].as_str().unwrap();
    assert!(reason.contains("BATCH REFUSED"), "{reason}");
}

#[test]
fn an_err_naming_records_rejects_only_those_and_writes_the_rest_again() {
    let (d, stop) = gathering_daemon("");
    let importer = test_importer(d.outbox("county"), stop.clone(), |text| {
        let bad: Vec<String> = text
            .lines()
            .filter(|l| l.ends_with(",XX"))
            .map(|l| format!("{} UNKNOWN STATUS XX\n", l.split(',').next().unwrap()))
            .collect();
        (!bad.is_empty()).then(|| format!("{} RECORDS REFUSED\n{}", bad.len(), bad.concat()))
    });
    let mut c = d.client();
    for key in 1..=6 {
        send(
            &mut c,
            &key.to_string(),
            if key % 3 == 0 { "XX" } else { "NEW" },
        );
    }
    d.wait_for(Duration::from_secs(20), "four delivered, two dead", |d| {
        let st = d.target_status("county");
        st["delivered"] == 4 && st["dead"] == 2 && settled(d)
    });
    stop.store(true, Ordering::SeqCst);
    assert_eq!(importer.join().unwrap(), vec![6, 4]);
    let mut dead: Vec<(String, String)> = dead_list(&d)
        .iter()
        .map(|v| {
            (
                v["key"].as_str().unwrap().to_string(),
                v["last_error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    dead.sort();
    assert_eq!(dead[0].0, "3");
    assert_eq!(dead[1].0, "6");
    assert!(dead[0].1.ends_with(": UNKNOWN STATUS XX"), "{}", dead[0].1);
}

// ---------------------------------------------------------------------------
// The real COBOL importer.

fn legacy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/legacy")
}

/// Builds PERMIT-IMPORT and PERMIT-DUMP into `dir` (None: cobc is missing).
fn build_cobol(dir: &Path, ebcdic: bool) -> Option<(PathBuf, PathBuf)> {
    if Command::new("cobc").arg("--version").output().is_err() {
        println!("SKIPPED: cobc (GnuCOBOL) is not installed; .ci/run installs gnucobol3");
        return None;
    }
    let build = |source: &str, out: &str| {
        let mut cmd = Command::new("cobc");
        cmd.args(["-x", "-fbinary-size=2-4-8", "-fbinary-byteorder=big-endian"]);
        if ebcdic {
            cmd.arg("-fsign=EBCDIC");
        }
        let status = cmd
            .arg("-I")
            .arg(legacy())
            .arg("-I")
            .arg(fixtures().join("cobol"))
            .arg("-o")
            .arg(dir.join(out))
            .arg(legacy().join(source))
            .output()
            .expect("run cobc");
        assert!(
            status.status.success(),
            "cobc {source}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        dir.join(out)
    };
    Some((
        build("PERMIT-IMPORT.cbl", "permit-import"),
        build("PERMIT-DUMP.cbl", "permit-dump"),
    ))
}

/// Runs the COBOL importer over every unanswered `.dat` file of `outbox`, in
/// name order, as a county's cron job would, until `stop`. Returns how many
/// files it answered with .ack and with .err.
fn cobol_importer(
    program: PathBuf,
    encoding: &'static str,
    outbox: PathBuf,
    master: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize)> {
    std::thread::spawn(move || {
        let (mut acks, mut errs) = (0, 0);
        while !stop.load(Ordering::SeqCst) {
            for f in unanswered(&outbox, "dat") {
                let name = f.display().to_string();
                let out = Command::new(&program)
                    .args([&name, encoding, "county"])
                    .arg(&master)
                    .output()
                    .expect("run PERMIT-IMPORT");
                assert!(
                    out.status.success(),
                    "PERMIT-IMPORT: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                if Path::new(&format!("{name}.ack")).exists() {
                    acks += 1;
                } else if Path::new(&format!("{name}.err")).exists() {
                    errs += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        (acks, errs)
    })
}

/// The master file as PERMIT-DUMP prints it: permit number → (status, fee in
/// cents, units).
fn dump(program: &Path, master: &Path) -> BTreeMap<u64, (String, i64, i64)> {
    let out = Command::new(program).arg(master).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 4, "{l}");
            let cents = f[2].replace('.', "").parse::<i64>().unwrap();
            (
                f[0].parse().unwrap(),
                (f[1].to_string(), cents, f[3].parse().unwrap()),
            )
        })
        .collect()
}

fn cobol_connector(encoding: &str) -> String {
    format!(
        "collections = [\"permits\"]\n[format]\nkind = \"fixed\"\ncopybook = \"PERMIT-UPD.cpy\"\nencoding = \"{encoding}\"\nrecord_end = \"none\"\n\
         [format.map]\nPU-ACTION = \"@op\"\nPU-PERMIT-NO = \"permit_number\"\nPU-STATUS = \"status\"\nPU-FEE = \"fee\"\nPU-UNITS = \"units\"\nPU-SEQ = \"@delivery_id\"\n\
         [format.header]\nrecord = \"PERMIT-HDR\"\n[format.header.map]\nPH-BATCH = \"@batch_seq\"\nPH-DATE = \"@run_date\"\n\
         [format.trailer]\nrecord = \"PERMIT-TRL\"\n[format.trailer.map]\nPT-COUNT = \"@record_count\"\nPT-FEE-TOTAL = \"@sum:fee\"\n\
         [transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\nbatch_window = \"300ms\"\nbatch_max = 100\npickup = \"ack_file\"\npickup_timeout = \"60s\"\n\
         [retry]\nmax_attempts = 2\nbackoff = \"100ms\"\nmax_backoff = \"300ms\"\n"
    )
}

/// A few hundred permits in several rounds through the daemon into the COBOL
/// importer's indexed master file; the records it refuses (unknown status)
/// end as dead letters with its reason, never their neighbours; after the
/// fix and `dead retry --all`, the master file equals the expected state.
fn cobol_round_trip(encoding: &'static str, importer_encoding: &'static str) {
    let build = tempfile::tempdir().unwrap();
    let Some((import, dumper)) = build_cobol(build.path(), encoding != "ascii") else {
        return;
    };
    let d = TestDaemon::new()
        .config("alert_command = \"echo \\\"$HMS_ALERT $HMS_ALERT_STATE $HMS_ERROR\\\" >> alerts.txt\"\n")
        .connector("county", &cobol_connector(encoding));
    std::fs::copy(
        fixtures().join("cobol/PERMIT-UPD.cpy"),
        d.path().join("connectors/county/PERMIT-UPD.cpy"),
    )
    .unwrap();
    let d = d.start();
    let master = d.path().join("permits.idx");
    let stop = Arc::new(AtomicBool::new(false));
    let importer = cobol_importer(
        import,
        importer_encoding,
        d.outbox("county"),
        master.clone(),
        stop.clone(),
    );

    type State = BTreeMap<u64, (String, i64, i64)>;
    let mut expected: State = BTreeMap::new();
    let mut c = d.client();
    fn put(c: &mut Client, expected: &mut State, key: u64, status: &str, cents: i64, units: i64) {
        let doc = json!({"permit_number": key.to_string(), "status": status,
                         "fee": cents as f64 / 100.0, "units": units});
        assert_eq!(c.call(&envelope(&key.to_string(), doc))["ok"], true);
        expected.insert(key, (status.to_string(), cents, units));
    }
    let refused = |key: u64| key.is_multiple_of(37);
    // Round 1: 300 new permits; eight with a status code the importer refuses.
    for key in 1..=300u64 {
        let status = if refused(key) { "XX" } else { "NEW" };
        put(
            &mut c,
            &mut expected,
            key,
            status,
            key as i64 * 125,
            (key % 7) as i64,
        );
    }
    let round_done = |d: &TestDaemon| settled(d) && d.target_status("county")["dead"] == 8;
    d.wait_for(Duration::from_secs(60), "round 1 settled", round_done);
    // Round 2: every odd permit approved, with a fee change (some negative).
    for key in (1..=300u64).step_by(2).filter(|&k| !refused(k)) {
        put(
            &mut c,
            &mut expected,
            key,
            "APPROVED",
            key as i64 * 100 - 5_000,
            -((key % 5) as i64),
        );
    }
    d.wait_for(Duration::from_secs(60), "round 2 settled", round_done);
    // Round 3: every fifth permit withdrawn, every third issued.
    for key in (1..=300u64).filter(|&k| !refused(k)) {
        if key % 5 == 0 {
            assert_eq!(
                c.call(
                    &json!({"collection": "permits", "key": key.to_string(), "deleted": true})
                        .to_string()
                )["ok"],
                true
            );
            expected.remove(&key);
        } else if key % 3 == 0 {
            let (_, cents, units) = expected[&key].clone();
            put(&mut c, &mut expected, key, "ISSUED", cents, units + 1);
        }
    }
    d.wait_for(Duration::from_secs(90), "every delta settled", |d| {
        let st = d.target_status("county");
        settled(d) && st["dead"] == 8
    });
    let dead = dead_list(&d);
    let mut dead_keys: Vec<u64> = dead
        .iter()
        .map(|v| v["key"].as_str().unwrap().parse().unwrap())
        .collect();
    dead_keys.sort();
    assert_eq!(
        dead_keys,
        (1..=300).filter(|&k| refused(k)).collect::<Vec<_>>()
    );
    for v in &dead {
        let reason = v["last_error"].as_str().unwrap();
        assert!(
            reason.contains(&format!(
                "UNKNOWN STATUS CODE 'XX' FOR PERMIT {:08}",
                v["key"].as_str().unwrap().parse::<u64>().unwrap()
            )),
            "{reason}"
        );
    }
    // The dead letters ran the alert, with the importer's reason.
    d.wait_for(Duration::from_secs(20), "the dead_letter alert", |d| {
        std::fs::read_to_string(d.path().join("alerts.txt")).is_ok_and(|t| {
            t.contains("dead_letter firing") && t.contains("UNKNOWN STATUS CODE 'XX'")
        })
    });
    // Before the fix: everything but the refused records is on the master.
    let mut without: BTreeMap<_, _> = expected.clone();
    without.retain(|k, _| !refused(*k));
    assert_eq!(dump(&dumper, &master), without);

    // The fix: corrected records (held with their dead letters), then retry.
    for key in (1..=300u64).filter(|&k| refused(k)) {
        put(&mut c, &mut expected, key, "REVIEW", key as i64 * 125, 9);
    }
    let out = d.cli(&["dead", "retry", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_for(
        Duration::from_secs(60),
        "the fixed records delivered",
        |d| settled(d) && d.target_status("county")["dead"] == 0,
    );
    stop.store(true, Ordering::SeqCst);
    let (acks, errs) = importer.join().unwrap();
    assert!(errs >= 1 && acks >= 3, "acks {acks}, errs {errs}");
    assert_eq!(dump(&dumper, &master), expected);
    println!(
        "COBOL importer ({encoding}): {acks} files acknowledged, {errs} refused; master file holds {} permits as expected",
        expected.len()
    );
    d.wait_for(Duration::from_secs(10), "the outbox cleared", |d| {
        d.outbox_files("county").is_empty()
    });
}

#[test]
fn cobol_importer_ascii_master_file_converges_and_refused_records_are_dead_letters() {
    cobol_round_trip("ascii", "ASCII");
}

#[test]
fn cobol_importer_cp037_master_file_converges_and_refused_records_are_dead_letters() {
    cobol_round_trip("cp037", "CP037");
}

#[test]
fn a_stop_is_prompt_while_the_importer_keeps_writing_its_err_file() {
    let (mut d, file) = one_file_waiting("pickup = \"ack_file\"\n");
    // The importer appends a line to its `.err` every 50 ms, for as long as
    // the test runs: it never reads the same twice, a poll apart.
    let err = std::path::PathBuf::from(format!("{}.err", file.display()));
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (err, writing) = (err.clone(), writing.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&err).unwrap();
            writeln!(f, "STILL VALIDATING").unwrap();
            let mut n = 0;
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                writeln!(f, "checked record {n}").unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Stop once the daemon has had several looks at a `.err` that never read
    // the same twice: 20 lines written is a second of them (polls are 200 ms).
    d.wait_for(Duration::from_secs(30), "20 lines in the .err", |_| {
        std::fs::read_to_string(&err).is_ok_and(|t| t.lines().count() >= 20)
    });
    let started = std::time::Instant::now();
    assert_eq!(d.stop(), Some(0));
    let took = started.elapsed();
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    assert!(took < Duration::from_secs(15), "the stop took {took:?}");
}
