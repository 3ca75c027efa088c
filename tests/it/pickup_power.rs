//! Power cuts while files wait for the importer (`pickup`, SPEC §3 and §5
//! "File pickup"): the daemon's state and outbox live on [`PowerFs`], which on
//! a cut takes back every write and name change not made durable by an fsync.
//! Socket writers send versioned changes (`status = "v<N>"`, as in the crash
//! and power-loss tests, whose ledger and checks this test shares); an
//! importer thread plays the legacy side: it copies each file it sees into
//! `imported/` (off PowerFs: the importer's own database), then takes it away
//! (`consumed`: delete + folder fsync) or answers (`ack_file`: `<file>.ack`,
//! fsynced). At random moments the power is cut (SIGKILL and cut, either
//! order) and the daemon restarted. At the end, with the queue drained, what
//! the importer imported must hold every acknowledged change with its record's
//! latest acknowledged version, never going back, and the importer must never
//! have seen two files at once holding the same delivery id (a second copy
//! while the first still waits). `HMS_PICKUP_POWER_CUTS` (default 12) sets the
//! number of cuts.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::crash::{
    COLUMNS, Kills, Shared, StopOnDrop, check_rows, highest_file_number, read_outbox, socket_writer,
};
use crate::harness::*;
use crate::power_loss::daemon_on_power_fs;
use crate::powerfs::PowerFs;

const TARGET: &str = "power";
const WRITERS: usize = 2;
const KEYS: usize = 40;

#[derive(Default)]
struct Importer {
    /// Files imported, by name, with their content.
    imported: HashMap<String, Vec<u8>>,
    /// Looks at a file already imported (not yet answered, or brought back by a cut).
    seen_again: usize,
    /// Most data files seen in the outbox at one look.
    most_at_once: usize,
    problems: Vec<String>,
}

fn delivery_ids(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next().map(String::from))
        .collect()
}

/// One look at the outbox: import and answer every data file there.
fn import_once(outbox: &Path, imported_dir: &Path, mode: &str, state: &Mutex<Importer>) {
    let Ok(entries) = std::fs::read_dir(outbox) else {
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{TARGET}-")) && n.ends_with(".csv"))
        .collect();
    names.sort();
    let mut files = Vec::new();
    for name in &names {
        if let Ok(bytes) = std::fs::read(outbox.join(name)) {
            files.push((name.clone(), bytes));
        }
    }
    let mut s = state.lock().unwrap();
    s.most_at_once = s.most_at_once.max(files.len());
    let mut ids_seen: HashMap<String, String> = HashMap::new();
    for (name, bytes) in &files {
        for id in delivery_ids(bytes) {
            if let Some(other) = ids_seen.insert(id.clone(), name.clone()) {
                s.problems.push(format!(
                    "{id} is in {other} and {name}, both in the outbox at once: a second copy while the first waits"
                ));
            }
        }
    }
    for (name, bytes) in files {
        if !bytes.ends_with(b"\r\n") {
            s.problems
                .push(format!("{name} is not whole when the importer sees it"));
            continue;
        }
        match s.imported.get(&name) {
            Some(before) if *before != bytes => s.problems.push(format!(
                "{name} came back with other content (a number used twice)"
            )),
            Some(_) => s.seen_again += 1,
            None => {
                std::fs::write(imported_dir.join(&name), &bytes).unwrap();
                s.imported.insert(name.clone(), bytes);
            }
        }
        let path = outbox.join(&name);
        let sync_dir = || std::fs::File::open(outbox).and_then(|d| d.sync_all());
        let _ = match mode {
            "consumed" => std::fs::remove_file(&path).and_then(|()| sync_dir()),
            _ => std::fs::File::create(outbox.join(format!("{name}.ack")))
                .and_then(|f| f.sync_all())
                .and_then(|()| sync_dir()),
        };
    }
}

fn power_cuts_while_files_wait(mode: &'static str) {
    let cuts: usize = std::env::var("HMS_PICKUP_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    eprintln!("pickup power test ({mode}): {cuts} cuts, seed {seed}");

    let pfs = PowerFs::mount();
    let mut d = daemon_on_power_fs(&pfs).connector(
        TARGET,
        &csv_connector(
            COLUMNS,
            &format!("batch_max = 50\npickup = \"{mode}\"\npickup_timeout = \"5s\""),
            "max_attempts = 1000\nbackoff = \"20ms\"\nmax_backoff = \"200ms\"",
        ),
    );
    pfs.sync_everything();
    d.spawn();
    let outbox = d.outbox(TARGET);
    let imported_dir = d.path().join("imported");
    std::fs::create_dir_all(&imported_dir).unwrap();

    let importer_state = Arc::new(Mutex::new(Importer::default()));
    let importer_stop = Arc::new(AtomicBool::new(false));
    let importer = {
        let (outbox, imported_dir, state, stop) = (
            outbox.clone(),
            imported_dir.clone(),
            importer_state.clone(),
            importer_stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                import_once(&outbox, &imported_dir, mode, &state);
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };

    let shared = Arc::new(Shared::default());
    let _stop = StopOnDrop(shared.clone());
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let keys: Vec<String> = (0..KEYS)
            .filter(|i| i % WRITERS == w)
            .map(|i| format!("r{i:06}"))
            .collect();
        let (s, path, seed) = (shared.clone(), d.socket(), rng.u64(..));
        writers.push(std::thread::spawn(move || {
            socket_writer(s, path, keys, 1, seed)
        }));
    }

    let mut kills = Kills::default();
    for _ in 0..cuts {
        std::thread::sleep(Duration::from_millis(rng.u64(100..=900)));
        if rng.bool() {
            d.kill9();
            pfs.cut();
        } else {
            pfs.cut();
            std::thread::sleep(Duration::from_millis(rng.u64(0..=20)));
            d.kill9();
        }
        pfs.power_on();
        let last_file =
            highest_file_number(&outbox, TARGET).max(highest_file_number(&imported_dir, TARGET));
        kills.record(last_file, &shared.ledger.lock().unwrap().accepted);
        if let Err(e) = d.try_restart(Duration::from_secs(60)) {
            panic!("the daemon did not come back after a power cut (seed {seed}): {e}");
        }
    }

    std::thread::sleep(Duration::from_millis(300));
    shared.stop.store(true, Relaxed);
    for w in writers {
        w.join().expect("a socket writer panicked");
    }
    d.wait_for(Duration::from_secs(120), "the queue to drain", |d| {
        let st = d.target_status(TARGET);
        st["pending"] == 0 && st["in_flight"] == 0
    });
    importer_stop.store(true, Relaxed);
    importer.join().expect("the importer panicked");

    let mut problems = Vec::new();
    let (rows, files) = read_outbox(&imported_dir, TARGET, &mut problems);
    let ledger = shared.ledger.lock().unwrap();
    problems.extend(ledger.anomalies.iter().cloned());
    let v = check_rows(&rows, &ledger, &kills, "power cut", &mut problems);
    let s = importer_state.lock().unwrap();
    problems.extend(s.problems.iter().cloned());
    if d.log().contains("panicked") {
        problems.push("the daemon log shows a panic".into());
    }
    let ids: HashSet<&str> = rows.iter().map(|r| r.delivery_id.as_str()).collect();

    eprintln!(
        "pickup power test ({mode}): {cuts} cuts; acknowledged {} changes of {} records; \
         imported {files} files, {} rows, {} delivery ids; lost {}; repeats (a file's deltas written \
         again after a cut took its settling back: the delivery in hand) {}; looks at a file \
         already imported {}; most files in the outbox at once {}",
        ledger.accepted_changes,
        ledger.accepted.len(),
        rows.len(),
        ids.len(),
        v.lost,
        v.repeats,
        s.seen_again,
        s.most_at_once,
    );
    assert!(
        problems.is_empty(),
        "{} problem(s) after {cuts} power cuts with pickup = {mode} (seed {seed}):\n{}",
        problems.len(),
        problems
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(files > cuts / 2, "the importer imported only {files} files");
}

#[test]
fn power_cuts_while_files_wait_for_consumed_lose_nothing_and_never_copy_a_waiting_file() {
    power_cuts_while_files_wait("consumed");
}

#[test]
fn power_cuts_while_files_wait_for_an_ack_lose_nothing_and_never_copy_a_waiting_file() {
    power_cuts_while_files_wait("ack_file");
}
