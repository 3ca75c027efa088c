//! Crash safety under SIGKILL (SPEC §3.1–3.3).
//!
//! Socket clients and a file dropper feed the daemon without pause while it
//! delivers to a CSV outbox; the daemon is killed with SIGKILL at random moments
//! and restarted, again and again. Every writer keeps a ledger: a change is
//! *accepted* only when the socket answered `{"ok":true}` for it, or when its file
//! left the inbox. Each record carries a counter (`status = "v<N>"`, N strictly
//! increasing per key, every key owned by one writer), so after the final drain
//! the outbox must show, per key:
//! (a) a last row whose N is at least the latest accepted N (and no more than
//!     the latest N ever sent: a change whose answer was lost may arrive);
//! (b) N never going backwards from file to file (repeats are at-least-once);
//! (c) whole files only: header, equal field counts, CRLF-terminated, and no
//!     temp file visible under a name the legacy system would take;
//! (d) no row written after a kill holds less than what had been accepted
//!     before that kill (the restarted daemon never starts from an older state).
//!
//! `HMS_CRASH_CYCLES` raises the number of kills (default 50); `HMS_CRASH_SEED`
//! fixes the writers' random choices.
//!
//! The writers, the outbox reader and the checks are shared with the power-loss
//! test (`power_loss.rs`), which runs the same load on a file system that loses
//! what was not fsynced.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

const TARGET: &str = "crash";
pub const COLUMNS: &[&str] = &["permit_number", "status"];
pub const SOCKET_WRITERS: usize = 4;
pub const KEYS_PER_WRITER: usize = 5;
pub const FILE_KEYS: usize = 10;
const MAX_PIPELINE: usize = 40;

/// What the writers know: the highest N accepted and sent per key.
#[derive(Default)]
pub struct Ledger {
    pub accepted: HashMap<String, u64>,
    pub sent: HashMap<String, u64>,
    pub accepted_changes: u64,
    pub sent_changes: u64,
    /// Things that must never happen (a bad-line answer, a rejected file).
    pub anomalies: Vec<String>,
}

impl Ledger {
    pub fn sent(&mut self, key: &str, n: u64) {
        self.sent_changes += 1;
        let e = self.sent.entry(key.to_string()).or_default();
        *e = (*e).max(n);
    }

    pub fn accepted(&mut self, key: &str, n: u64) {
        self.accepted_changes += 1;
        let e = self.accepted.entry(key.to_string()).or_default();
        *e = (*e).max(n);
    }
}

#[derive(Default)]
pub struct Shared {
    pub ledger: Mutex<Ledger>,
    pub stop: AtomicBool,
    pub connects: AtomicU64,
    pub unanswered: AtomicU64,
    pub retry_answers: AtomicU64,
    pub files_accepted: AtomicU64,
}

/// Stops the writer threads however the test ends.
pub struct StopOnDrop(pub Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Relaxed);
    }
}

fn connect(path: &Path) -> std::io::Result<(UnixStream, BufReader<UnixStream>)> {
    let stream = UnixStream::connect(path)?;
    // A live daemon answers within milliseconds; a killed one closes the socket.
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    let reader = BufReader::new(stream.try_clone()?);
    Ok((stream, reader))
}

/// Pipelines windows of envelopes for its own keys, reconnecting after crashes.
/// Each key's counter starts after `first` (what an earlier phase already sent).
pub fn socket_writer(
    shared: Arc<Shared>,
    socket: PathBuf,
    keys: Vec<String>,
    first: u64,
    seed: u64,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut next = vec![first; keys.len()];
    let mut conn: Option<(UnixStream, BufReader<UnixStream>)> = None;
    while !shared.stop.load(Relaxed) {
        let Some((stream, reader)) = conn.as_mut() else {
            match connect(&socket) {
                Ok(c) => {
                    shared.connects.fetch_add(1, Relaxed);
                    conn = Some(c);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
            continue;
        };
        let window = rng.usize(1..=MAX_PIPELINE);
        let mut batch = Vec::with_capacity(window);
        let mut text = String::new();
        {
            let mut ledger = shared.ledger.lock().unwrap();
            for _ in 0..window {
                let j = rng.usize(..keys.len());
                next[j] += 1;
                let n = next[j];
                ledger.sent(&keys[j], n);
                batch.push((j, n));
                text.push_str(&envelope(
                    &keys[j],
                    json!({"permit_number": keys[j], "status": format!("v{n}")}),
                ));
                text.push('\n');
            }
        }
        if stream.write_all(text.as_bytes()).is_err() {
            shared.unanswered.fetch_add(window as u64, Relaxed);
            conn = None;
            continue;
        }
        for (i, &(j, n)) in batch.iter().enumerate() {
            let mut line = String::new();
            let whole =
                matches!(reader.read_line(&mut line), Ok(len) if len > 0) && line.ends_with('\n');
            if !whole {
                // The daemon died: these lines have no answer and are not accepted.
                shared.unanswered.fetch_add((window - i) as u64, Relaxed);
                conn = None;
                break;
            }
            let answer: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => {
                    let mut l = shared.ledger.lock().unwrap();
                    l.anomalies.push(format!("answer is not JSON: {line:?}"));
                    continue;
                }
            };
            if answer["ok"] == true {
                shared.ledger.lock().unwrap().accepted(&keys[j], n);
            } else if answer["retry"] == true {
                // Busy or a failed commit: not accepted, the client may send again.
                shared.retry_answers.fetch_add(1, Relaxed);
            } else {
                let mut l = shared.ledger.lock().unwrap();
                l.anomalies
                    .push(format!("a good envelope was refused: {}", line.trim_end()));
            }
        }
        std::thread::sleep(Duration::from_micros(rng.u64(0..2000)));
    }
}

/// Drops 1–3 files at a time (disjoint keys) with `drop`, then waits until each
/// has left the inbox before touching those keys again: the order of files
/// dropped together is not specified, the order of a key's changes must be.
pub fn file_dropper(
    shared: Arc<Shared>,
    inbox: PathBuf,
    keys: Vec<String>,
    first: u64,
    seed: u64,
    drop: fn(&Path, &str, &[u8]),
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut next = vec![first; keys.len()];
    let mut file_no = 0u64;
    let mut waiting: Vec<(String, Vec<(usize, u64)>)> = Vec::new();
    let mut stopping_since: Option<Instant> = None;
    loop {
        if waiting.is_empty() {
            if shared.stop.load(Relaxed) {
                return;
            }
            let files = rng.usize(1..=3);
            for f in 0..files {
                let mut records = Vec::new();
                for j in (f..keys.len()).step_by(files) {
                    if rng.bool() || (records.is_empty() && j + files >= keys.len()) {
                        next[j] += 1;
                        records.push((j, next[j]));
                    }
                }
                let docs: Vec<serde_json::Value> = records
                    .iter()
                    .map(|&(j, n)| json!({"permit_number": keys[j], "status": format!("v{n}")}))
                    .collect();
                {
                    let mut ledger = shared.ledger.lock().unwrap();
                    for &(j, n) in &records {
                        ledger.sent(&keys[j], n);
                    }
                }
                file_no += 1;
                let name = format!("d{file_no:06}.json");
                drop(
                    &inbox,
                    &name,
                    serde_json::to_string(&docs).unwrap().as_bytes(),
                );
                waiting.push((name, records));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
        waiting.retain(|(name, records)| {
            // Only "not found" means gone: a disk without power (the power-loss
            // test) fails every look with EIO.
            let here = |p: &Path| match p.symlink_metadata() {
                Ok(_) => Some(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(false),
                Err(_) => None,
            };
            if here(&inbox.join(name)) != Some(false) {
                return true;
            }
            let rejected = match here(&inbox.join(".rejected").join(name)) {
                Some(r) => r,
                None => return true,
            };
            let mut ledger = shared.ledger.lock().unwrap();
            if rejected {
                ledger.anomalies.push(format!(
                    "{name} was rejected: {}",
                    std::fs::read_to_string(inbox.join(".rejected").join(format!("{name}.error")))
                        .unwrap_or_default()
                ));
                return false;
            }
            for &(j, n) in records {
                ledger.accepted(&keys[j], n);
            }
            shared.files_accepted.fetch_add(1, Relaxed);
            false
        });
        if shared.stop.load(Relaxed) {
            let since = *stopping_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(60) {
                let names: Vec<&str> = waiting.iter().map(|(n, _)| n.as_str()).collect();
                shared.ledger.lock().unwrap().anomalies.push(format!(
                    "files still in the inbox 60 s after the end: {names:?}"
                ));
                return;
            }
        }
    }
}

/// Starts the load on `d`: `SOCKET_WRITERS` socket writers with
/// `KEYS_PER_WRITER` keys each (`s<w>-<j>`) and a file dropper with `FILE_KEYS`
/// keys (`f-<j>`), until `shared.stop`. Returns their threads.
pub fn start_load(
    shared: &Arc<Shared>,
    d: &TestDaemon,
    rng: &mut fastrand::Rng,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    for w in 0..SOCKET_WRITERS {
        let (s, path, seed) = (shared.clone(), d.socket(), rng.u64(..));
        let keys = (0..KEYS_PER_WRITER).map(|j| format!("s{w}-{j}")).collect();
        threads.push(std::thread::spawn(move || {
            socket_writer(s, path, keys, 0, seed)
        }));
    }
    let (s, inbox, seed) = (shared.clone(), d.inbox(), rng.u64(..));
    let keys = (0..FILE_KEYS).map(|j| format!("f-{j}")).collect();
    threads.push(std::thread::spawn(move || {
        file_dropper(s, inbox, keys, 0, seed, drop_into)
    }));
    threads
}

/// A last stretch with a live daemon, then the writers of [`start_load`] stop;
/// waits until the inbox is empty and the queues of `targets` are drained.
pub fn stop_load_and_drain(
    d: &TestDaemon,
    shared: &Shared,
    threads: Vec<std::thread::JoinHandle<()>>,
    targets: &[&str],
) {
    std::thread::sleep(Duration::from_millis(300));
    shared.stop.store(true, Relaxed);
    for t in threads {
        t.join().expect("a writer panicked");
    }
    d.wait_inbox_empty();
    d.wait_for(Duration::from_secs(60), "the queues to drain", |d| {
        targets.iter().all(|t| {
            let st = d.target_status(t);
            st["pending"] == 0 && st["in_flight"] == 0
        })
    });
}

/// One data row of the outbox: where it came from and the key's counter.
pub struct Row {
    pub file: String,
    pub file_no: u64,
    pub delivery_id: String,
    pub key: String,
    pub n: u64,
}

/// `crash-000000000042.csv` -> 42 (for the target `crash`).
pub fn file_number(target: &str, name: &str) -> Option<u64> {
    let n = name
        .strip_prefix(&format!("{target}-"))?
        .strip_suffix(".csv")?;
    (n.len() == 12 && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse().ok())?
}

/// The highest delivery file number in the outbox (0: none yet).
pub fn highest_file_number(dir: &Path, target: &str) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| file_number(target, &e.file_name().to_string_lossy()))
        .max()
        .unwrap_or(0)
}

/// Checks (c) on every outbox file of `target` and returns the rows in
/// delivery order.
pub fn read_outbox(dir: &Path, target: &str, problems: &mut Vec<String>) -> (Vec<Row>, usize) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let header: Vec<String> = ["delivery_id", "op"]
        .iter()
        .chain(COLUMNS)
        .map(|s| s.to_string())
        .collect();
    let mut rows = Vec::new();
    let mut files = 0;
    for name in names {
        if name.starts_with('.') {
            // Hidden from the legacy system: the number marker, a temp file a
            // kill interrupted.
            continue;
        }
        let Some(file_no) = file_number(target, &name) else {
            problems.push(format!(
                "outbox holds {name:?}, visible to the legacy system but not a delivery file"
            ));
            continue;
        };
        files += 1;
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        if !bytes.ends_with(b"\r\n") {
            problems.push(format!(
                "{name} is not whole (no final CRLF): {:?}",
                String::from_utf8_lossy(&bytes)
            ));
            continue;
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(&bytes[..]);
        let mut records = reader.records();
        match records.next() {
            Some(Ok(h)) if h.iter().eq(header.iter().map(String::as_str)) => {}
            other => {
                problems.push(format!("{name}: header is {other:?}, want {header:?}"));
                continue;
            }
        }
        let mut data = 0;
        for rec in records {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("{name}: not CSV: {e}"));
                    break;
                }
            };
            data += 1;
            if rec.len() != header.len() {
                problems.push(format!(
                    "{name}: row {rec:?} has {} fields, the header {}",
                    rec.len(),
                    header.len()
                ));
                continue;
            }
            let n = rec[3].strip_prefix('v').and_then(|n| n.parse::<u64>().ok());
            match (&rec[1], n) {
                ("create" | "update", Some(n)) => rows.push(Row {
                    file: name.clone(),
                    file_no,
                    delivery_id: rec[0].to_string(),
                    key: rec[2].to_string(),
                    n,
                }),
                _ => problems.push(format!("{name}: unexpected row {rec:?}")),
            }
        }
        if data == 0 {
            problems.push(format!("{name} holds no rows"));
        }
    }
    (rows, files)
}

/// What had been accepted at each kill (or power cut), kept as the changes
/// since the previous one, and the last delivery file that existed then.
#[derive(Default)]
pub struct Kills {
    /// Per kill: the highest delivery file number left after it.
    pub last_files: Vec<u64>,
    /// Per key: (kill index, accepted N) whenever it grew.
    floors: HashMap<String, Vec<(usize, u64)>>,
    seen: HashMap<String, u64>,
}

impl Kills {
    pub fn record(&mut self, last_file: u64, accepted: &HashMap<String, u64>) {
        let c = self.last_files.len();
        self.last_files.push(last_file);
        for (key, &n) in accepted {
            if self.seen.get(key) != Some(&n) {
                self.seen.insert(key.clone(), n);
                self.floors.entry(key.clone()).or_default().push((c, n));
            }
        }
    }

    /// The N accepted for `key` by kill `c`.
    fn floor(&self, key: &str, c: usize) -> u64 {
        let Some(f) = self.floors.get(key) else {
            return 0;
        };
        match f.partition_point(|&(at, _)| at <= c) {
            0 => 0,
            i => f[i - 1].1,
        }
    }
}

/// What [`check_rows`] found, by kind.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Keys whose last delivered N is below their latest accepted N (or
    /// that got nothing): acknowledged changes lost.
    pub lost: usize,
    /// Rows whose N is below an earlier row of the same key.
    pub went_back: usize,
    /// Rows written after a kill with less than what was accepted before it.
    pub below_kill: usize,
    /// First rows of a key after a kill that hold less than was accepted before
    /// it: the delta leased before the kill, sent as it was (allowed, counted).
    pub sealed_resends: usize,
    /// Rows that repeat a delivery id already delivered for the same key
    /// (at-least-once repeats; a repeat may carry a newer value merged in).
    pub repeats: usize,
    /// Rows whose delivery id was delivered before for another key: a legacy
    /// system that drops repeats by id would drop this change.
    pub reused_ids: usize,
}

/// Checks (a), (b) and (d) on the outbox rows against the writers' ledger;
/// `what` names a kill in messages ("kill", "power cut").
pub fn check_rows(
    rows: &[Row],
    ledger: &Ledger,
    kills: &Kills,
    what: &str,
    problems: &mut Vec<String>,
) -> Verdict {
    let mut v = Verdict::default();
    let mut ids: HashMap<&str, &Row> = HashMap::new();
    // (b) per key, N never goes backwards in delivery order.
    let mut last: BTreeMap<&str, &Row> = BTreeMap::new();
    for row in rows {
        match ids.insert(row.delivery_id.as_str(), row) {
            Some(first) if first.key == row.key => v.repeats += 1,
            Some(first) => {
                v.reused_ids += 1;
                problems.push(format!(
                    "delivery id {} reused: key {} v{} in {}, but key {} v{} in {}",
                    row.delivery_id, row.key, row.n, row.file, first.key, first.n, first.file
                ));
            }
            None => {}
        }
        let sent = ledger.sent.get(&row.key).copied().unwrap_or(0);
        if row.n > sent {
            problems.push(format!(
                "{} ({}): key {} v{} was never sent (highest sent v{sent})",
                row.file, row.delivery_id, row.key, row.n
            ));
        }
        if let Some(prev) = last.get(row.key.as_str())
            && row.n < prev.n
        {
            v.went_back += 1;
            problems.push(format!(
                "key {} went back: v{} in {} ({}) after v{} in {} ({})",
                row.key, row.n, row.file, row.delivery_id, prev.n, prev.file, prev.delivery_id
            ));
        }
        last.insert(&row.key, row);
    }
    // (d) what was accepted before a kill is in every row written after it: the
    // restarted daemon's state never starts below an acknowledged value. One
    // exception: the key's first row after the kill may be the delta leased
    // (sealed) before it, retried as it is under its id (queue invariant; at
    // most one per record is sealed at a time); the key's next row must then
    // hold the floor.
    let mut first_after: HashSet<(&str, usize)> = HashSet::new();
    for row in rows {
        let Some(c) = kills
            .last_files
            .iter()
            .rposition(|last| *last < row.file_no)
        else {
            continue;
        };
        let accepted = kills.floor(&row.key, c);
        let first = first_after.insert((row.key.as_str(), c));
        if row.n < accepted && first {
            v.sealed_resends += 1;
        } else if row.n < accepted {
            v.below_kill += 1;
            problems.push(format!(
                "key {}: v{} in {} ({}), written after {what} #{}, but v{accepted} had been \
                 accepted before it",
                row.key,
                row.n,
                row.file,
                row.delivery_id,
                c + 1
            ));
        }
    }
    // (a) the last row of every key holds at least its latest accepted value.
    let mut keys: Vec<(&String, &u64)> = ledger.accepted.iter().collect();
    keys.sort();
    for (key, &accepted) in keys {
        match last.get(key.as_str()) {
            None => {
                v.lost += 1;
                problems.push(format!(
                    "key {key}: v{accepted} was accepted but nothing was delivered"
                ))
            }
            Some(row) if row.n < accepted => {
                v.lost += 1;
                problems.push(format!(
                    "key {key}: last delivered v{} in {} ({}), but v{accepted} was accepted",
                    row.n, row.file, row.delivery_id
                ))
            }
            Some(_) => {}
        }
    }
    v
}

#[test]
fn sigkill_under_load_loses_no_accepted_change_and_never_goes_back() {
    let cycles: usize = std::env::var("HMS_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .max(1);
    let seed: u64 = std::env::var("HMS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash test: {cycles} cycles, HMS_CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();

    let mut d = TestDaemon::new()
        .connector(
            TARGET,
            &csv_connector(
                COLUMNS,
                "",
                "max_attempts = 1000\nbackoff = \"20ms\"\nmax_backoff = \"200ms\"",
            ),
        )
        .start();

    let shared = Arc::new(Shared::default());
    let _stop = StopOnDrop(shared.clone());
    let threads = start_load(&shared, &d, &mut rng);

    // Per kill: the last file the killed daemon wrote, and what had been
    // accepted by then (a lower bound: answers may still sit unread in sockets).
    let mut kills = Kills::default();
    for _ in 0..cycles {
        std::thread::sleep(Duration::from_millis(rng.u64(20..=300)));
        d.kill9();
        kills.record(
            highest_file_number(&d.outbox(TARGET), TARGET),
            &shared.ledger.lock().unwrap().accepted,
        );
        d.restart();
    }
    stop_load_and_drain(&d, &shared, threads, &[TARGET]);

    let mut problems = Vec::new();
    let (rows, files) = read_outbox(&d.outbox(TARGET), TARGET, &mut problems);
    let ledger = shared.ledger.lock().unwrap();
    problems.extend(ledger.anomalies.iter().cloned());
    check_rows(&rows, &ledger, &kills, "kill", &mut problems);

    let log = d.log();
    if log.contains("panicked") {
        problems.push("the daemon log shows a panic".into());
    }
    eprintln!(
        "crash test: {cycles} SIGKILL cycles in {:.1} s; changes sent {}, accepted {} \
         ({} keys; {} files left the inbox), unanswered {}, busy/retry answers {}, \
         socket connections {}; delivered {} rows in {files} files",
        started.elapsed().as_secs_f64(),
        ledger.sent_changes,
        ledger.accepted_changes,
        ledger.accepted.len(),
        shared.files_accepted.load(Relaxed),
        shared.unanswered.load(Relaxed),
        shared.retry_answers.load(Relaxed),
        shared.connects.load(Relaxed),
        rows.len(),
    );
    assert!(
        ledger.accepted.len() == SOCKET_WRITERS * KEYS_PER_WRITER + FILE_KEYS,
        "some keys never had an accepted change: {:?}",
        ledger.accepted.keys().collect::<Vec<_>>()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s) after {cycles} crash cycles (seed {seed}):\n{}",
        problems.len(),
        problems
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The same record changed by many lines pipelined on one connection, no crash
/// involved: the changes must apply in line order (§3.3: the legacy system never
/// gets an older value after a newer one; the last line's value is the record's
/// state). Each burst goes out in one write so that the daemon reads it at once;
/// after each burst the queue drains and the last row must hold the burst's last
/// value.
#[test]
fn pipelined_changes_of_one_record_apply_in_line_order() {
    let d = TestDaemon::new()
        .connector(TARGET, &csv_connector(COLUMNS, "", ""))
        .start();
    let mut c = d.client();
    let (rounds, per_round) = (10, 20);
    let mut n = 0;
    let mut wrong = Vec::new();
    for round in 1..=rounds {
        let lines: Vec<String> = (0..per_round)
            .map(|_| {
                n += 1;
                envelope(
                    "one",
                    json!({"permit_number": "one", "status": format!("v{n}")}),
                )
            })
            .collect();
        c.send_line(&lines.join("\n"));
        for _ in 0..per_round {
            assert_eq!(c.answer()["ok"], true);
        }
        d.wait_for(Duration::from_secs(30), "the queue to drain", |d| {
            let st = d.target_status(TARGET);
            st["pending"] == 0 && st["in_flight"] == 0
        });
        let mut problems = Vec::new();
        let (rows, _) = read_outbox(&d.outbox(TARGET), TARGET, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let last = rows.last().map(|r| r.n);
        if last != Some(n) {
            wrong.push(format!(
                "burst {round} ended with v{n}, the last row holds {last:?}"
            ));
        }
    }
    let mut problems = Vec::new();
    let (rows, _) = read_outbox(&d.outbox(TARGET), TARGET, &mut problems);
    let seen: Vec<u64> = rows.iter().map(|r| r.n).collect();
    let backwards = seen.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(
        wrong.is_empty() && backwards == 0,
        "one connection sent v1..v{n} for one record in {rounds} pipelined bursts, \
         but the lines were not applied in order:\n{}\n{backwards} step(s) back in the rows: {seen:?}",
        wrong.join("\n")
    );
}
