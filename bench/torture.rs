//! `bench/torture`: N `kill -9`s of a daemon delivering to a file target and a
//! SOAP target at once, under mixed socket and drop-folder input (built as
//! `cargo build --release --example torture`; run through `bench/torture.sh`).
//!
//! ```text
//! torture [--kills 300] [--seed S] [--min-ms 20] [--max-ms 300]
//! ```
//!
//! The load, the outbox reader and the checks are the crash test's
//! (`tests/it/crash.rs`), the SOAP server is the SOAP tests' legacy box
//! (`tests/it/soap.rs`, an HTTP server in this process that records every
//! envelope it gets): this file only adds the SOAP target, the timing of restarts
//! and the summary. Both targets must show, per key, the latest accepted state,
//! never an older value after a newer one, nothing below what was accepted before
//! a kill; the file target also whole files only.
//!
//! Prints `key=value` lines (kills, acked, lost, repeats, restart p50/p99, …)
//! and exits 1 if any check failed, listing the problems first.

// (harness.rs allows its own dead code.)
#[path = "../tests/it/harness.rs"]
mod harness;

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/crash.rs"]
mod crash;

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/soap.rs"]
mod soap;

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crash::{
    COLUMNS, FILE_KEYS, KEYS_PER_WRITER, Kills, Row, SOCKET_WRITERS, Shared, StopOnDrop, Verdict,
    check_rows, highest_file_number, read_outbox, start_load, stop_load_and_drain,
};
use harness::{TestDaemon, csv_connector};
use soap::{LegacyBox, soap_connector};

const FILE_TARGET: &str = "files";
const SOAP_TARGET: &str = "cobol";
const RETRY: &str = "max_attempts = 100000\nbackoff = \"20ms\"\nmax_backoff = \"200ms\"";

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} wants a value")),
        None => default,
    }
}

/// Starts the daemon again and returns the time from spawn to its `ready` line,
/// reading only the log written since (polled every millisecond).
fn timed_restart(d: &mut TestDaemon) -> Duration {
    let log_path = d.path().join("daemon.log");
    let from = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    d.launch();
    let mut seen = String::new();
    loop {
        if let Ok(mut f) = std::fs::File::open(&log_path) {
            seen.clear();
            let _ = f.seek(SeekFrom::Start(from));
            let _ = f.read_to_string(&mut seen);
            if seen.contains(" ready ") {
                return started.elapsed();
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            panic!("the daemon was not ready 60 s after a restart:\n{seen}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The SOAP box's envelopes as outbox rows, request number for file number.
fn soap_rows(server: &LegacyBox, problems: &mut Vec<String>) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, r) in server.received().into_iter().enumerate() {
        let n = r
            .fields
            .get("status")
            .and_then(|s| s.strip_prefix('v'))
            .and_then(|n| n.parse::<u64>().ok());
        match (r.op.as_str(), n) {
            ("create" | "update", Some(n)) => rows.push(Row {
                file: format!("SOAP request #{} (attempt {})", i + 1, r.attempt),
                file_no: i as u64 + 1,
                delivery_id: r.id,
                key: r.key,
                n,
            }),
            _ => problems.push(format!("SOAP request #{}: unexpected {r:?}", i + 1)),
        }
    }
    rows
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kills: usize = arg(&args, "--kills", 300);
    let seed: u64 = arg(&args, "--seed", fastrand::u64(..));
    let (min_ms, max_ms): (u64, u64) = (arg(&args, "--min-ms", 20), arg(&args, "--max-ms", 300));
    let settle_ms: u64 = arg(&args, "--settle-ms", 30);
    println!("seed={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();

    let server = LegacyBox::start();
    let mut d = TestDaemon::new()
        .connector(FILE_TARGET, &csv_connector(COLUMNS, "", RETRY))
        .connector(SOAP_TARGET, &soap_connector(&server.url(), "", RETRY))
        .start();

    let shared = Arc::new(Shared::default());
    let _stop = StopOnDrop(shared.clone());
    let writers = start_load(&shared, &d, &mut rng);

    let (mut file_kills, mut soap_kills) = (Kills::default(), Kills::default());
    let mut restarts = Vec::with_capacity(kills);
    for k in 1..=kills {
        std::thread::sleep(Duration::from_millis(rng.u64(min_ms..=max_ms)));
        d.kill9();
        // A killed daemon's last request may still be on its way through the
        // box's handler: let it land before counting what the box has.
        std::thread::sleep(Duration::from_millis(settle_ms));
        {
            let ledger = shared.ledger.lock().unwrap();
            file_kills.record(
                highest_file_number(&d.outbox(FILE_TARGET), FILE_TARGET),
                &ledger.accepted,
            );
            soap_kills.record(server.received().len() as u64, &ledger.accepted);
        }
        restarts.push(timed_restart(&mut d));
        if k % 100 == 0 {
            eprintln!(
                "torture: {k}/{kills} kills, {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    stop_load_and_drain(&d, &shared, writers, &[FILE_TARGET, SOAP_TARGET]);

    let mut problems = Vec::new();
    let ledger = shared.ledger.lock().unwrap();
    problems.extend(ledger.anomalies.iter().cloned());
    let (file_rows, files) = read_outbox(&d.outbox(FILE_TARGET), FILE_TARGET, &mut problems);
    let file = check_rows(&file_rows, &ledger, &file_kills, "kill", &mut problems);
    let soap_rows = soap_rows(&server, &mut problems);
    let soap = check_rows(&soap_rows, &ledger, &soap_kills, "kill", &mut problems);
    problems.extend(server.errors());
    if ledger.accepted.len() != SOCKET_WRITERS * KEYS_PER_WRITER + FILE_KEYS {
        problems.push(format!(
            "some keys never had an accepted change: {:?}",
            ledger.accepted.keys().collect::<Vec<_>>()
        ));
    }
    if d.log().contains("panicked") {
        problems.push("the daemon log shows a panic".into());
    }
    d.stop();

    for p in problems.iter().take(60) {
        eprintln!("PROBLEM: {p}");
    }
    restarts.sort();
    let wrong = |v: &Verdict| v.went_back + v.below_kill + v.reused_ids;
    println!("kills={kills}");
    println!("seconds={:.0}", started.elapsed().as_secs_f64());
    println!("sent={}", ledger.sent_changes);
    println!("acked={}", ledger.accepted_changes);
    println!("acked_keys={}", ledger.accepted.len());
    println!("files_accepted={}", shared.files_accepted.load(Relaxed));
    println!("unanswered={}", shared.unanswered.load(Relaxed));
    println!("retry_answers={}", shared.retry_answers.load(Relaxed));
    println!("file_rows={} file_files={files}", file_rows.len());
    println!("soap_requests={}", soap_rows.len());
    println!(
        "lost={} (file {}, soap {})",
        file.lost + soap.lost,
        file.lost,
        soap.lost
    );
    println!(
        "repeats={} (file {}, soap {})",
        file.repeats + soap.repeats,
        file.repeats,
        soap.repeats
    );
    println!(
        "sealed_resends={} (file {}, soap {})",
        file.sealed_resends + soap.sealed_resends,
        file.sealed_resends,
        soap.sealed_resends
    );
    println!(
        "order_violations={} (file {}, soap {})",
        wrong(&file) + wrong(&soap),
        wrong(&file),
        wrong(&soap)
    );
    println!("restart_p50_ms={:.1}", percentile(&restarts, 0.50));
    println!("restart_p99_ms={:.1}", percentile(&restarts, 0.99));
    println!(
        "restart_max_ms={:.1}",
        restarts.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    println!("problems={}", problems.len());
    if !problems.is_empty() {
        std::process::exit(1);
    }
}
