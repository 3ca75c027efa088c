//! fsync before every answer (SPEC §3.1), shown with strace.
//!
//! The daemon runs under `strace -f`; a client sends envelopes over the ingest
//! socket, first one at a time, then pipelined. The trace must show, for every
//! `{"ok":true}` answer, an `fsync`/`fdatasync` of `<state_dir>/queue.redb` that started
//! after the daemon received that envelope's line (the `read`/`recvfrom` that
//! brought its newline) and finished before the answer was written. Pipelined
//! lines must share flushes (group commit).
//!
//! strace's timestamps keep causal order across threads: a traced thread stays
//! stopped at each syscall entry and exit until strace has handled (and
//! timestamped) it, and strace handles stops one at a time. So if the queue
//! writer's fsync returned before a socket task wrote the answer, the trace shows
//! the fsync's end before the write's start.
//!
//! Every envelope changes its record (a change equal to the snapshot queues
//! nothing and may be answered without a flush). The checker itself is tested on
//! a hand-made trace below, and the run prints how many answers would lose their
//! fsync without each thread's fsyncs (a `commit` that skipped its sync would
//! leave none). `HMS_KEEP_TRACE=<file>` keeps the trace.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

// `open` too: musl's open() is the `open` system call on x86_64, glibc's `openat`.
const TRACED: &str =
    "open,openat,close,read,recvfrom,recvmsg,write,writev,sendto,sendmsg,fsync,fdatasync";
const SEQUENTIAL: usize = 50;
const BURSTS: usize = 3;
const BURST: usize = 50;

// ---- the trace -------------------------------------------------------------

/// One syscall, its unfinished and resumed halves joined.
#[derive(Clone, Debug)]
struct Call {
    tid: u32,
    name: String,
    /// Microseconds since the epoch: entry, and exit as strace saw them.
    start: i64,
    end: Option<i64>,
    /// Everything between the parentheses, strings still escaped.
    args: String,
    ret: Option<i64>,
    /// The trace lines it came from, for messages.
    text: String,
}

impl Call {
    fn fd(&self) -> Option<i32> {
        let first = self.args.split(',').next()?.trim();
        first.parse().ok()
    }

    /// The strings among the arguments, decoded and joined (the data of a read or
    /// write, the iovecs of a writev/sendmsg, the path of an openat); `None` if
    /// strace truncated one.
    fn data(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let b = self.args.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'"' {
                i += 1;
                continue;
            }
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                    match b[i] {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'v' => out.push(0x0b),
                        b'f' => out.push(0x0c),
                        b'a' => out.push(0x07),
                        b'b' => out.push(0x08),
                        b'x' => {
                            let hex = std::str::from_utf8(&b[i + 1..(i + 3).min(b.len())]).ok()?;
                            out.push(u8::from_str_radix(hex, 16).ok()?);
                            i += 2;
                        }
                        b'0'..=b'7' => {
                            let mut v = 0u32;
                            let mut n = 0;
                            while n < 3 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                                v = v * 8 + (b[i] - b'0') as u32;
                                i += 1;
                                n += 1;
                            }
                            out.push(v as u8);
                            continue;
                        }
                        c => out.push(c),
                    }
                    i += 1;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            i += 1;
            if self.args[i.min(b.len())..].starts_with("...") {
                return None;
            }
        }
        Some(out)
    }
}

/// A trace line cut for messages (a pipelined read can be kilobytes long).
fn short(text: &str) -> String {
    text.lines()
        .map(|l| match l.char_indices().nth(240) {
            Some((at, _)) => format!("{}…", &l[..at]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n    ")
}

/// Microseconds from `1795706209.792187` or `0.000058`.
fn micros(s: &str) -> Option<i64> {
    let (secs, frac) = s.split_once('.')?;
    let frac = format!("{frac:0<6}");
    Some(secs.parse::<i64>().ok()? * 1_000_000 + frac.get(..6)?.parse::<i64>().ok()?)
}

/// Splits `name(args) = ret ... <dur>` at the parenthesis that closes the
/// arguments, skipping strings and nested brackets.
fn split_call(s: &str) -> Option<(String, String, Option<i64>, Option<i64>)> {
    let open = s.find('(')?;
    let name = s[..open].to_string();
    let b = s.as_bytes();
    let (mut depth, mut i, mut in_str) = (0i32, open + 1, false);
    let close = loop {
        let c = *b.get(i)?;
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'(' | b'[' | b'{' => depth += 1,
                b')' if depth == 0 => break i,
                b')' | b']' | b'}' => depth -= 1,
                _ => {}
            }
        }
        i += 1;
    };
    let args = s[open + 1..close].to_string();
    let rest = s[close + 1..].trim_start();
    let ret = rest
        .strip_prefix('=')
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse::<i64>().ok());
    let dur = rest
        .rfind('<')
        .and_then(|at| rest[at + 1..].strip_suffix('>'))
        .and_then(micros);
    Some((name, args, ret, dur))
}

/// Parses `strace -f -ttt -T` output, joining `<unfinished ...>` with its
/// `<... resumed>` on the same thread.
fn parse_trace(text: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut unfinished: HashMap<u32, (i64, String, String)> = HashMap::new();
    for line in text.lines() {
        let Some((tid, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let Ok(tid) = tid.parse::<u32>() else {
            continue;
        };
        let rest = rest.trim_start();
        let Some((ts, body)) = rest.split_once(' ') else {
            continue;
        };
        let Some(ts) = micros(ts) else { continue };
        let body = body.trim_start();
        if body.starts_with("+++") || body.starts_with("---") {
            continue;
        }
        if let Some(resumed) = body.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            let Some((start, head, first_line)) = unfinished.remove(&tid) else {
                continue;
            };
            let whole = format!("{head}{tail}");
            if let Some((n, args, ret, _)) = split_call(&whole) {
                debug_assert_eq!(n, name);
                calls.push(Call {
                    tid,
                    name: n,
                    start,
                    end: Some(ts),
                    args,
                    ret,
                    text: format!("{first_line}\n{line}"),
                });
            }
            continue;
        }
        if let Some(head) = body.strip_suffix("<unfinished ...>") {
            unfinished.insert(tid, (ts, head.trim_end().to_string(), line.to_string()));
            continue;
        }
        if let Some((name, args, ret, dur)) = split_call(body) {
            calls.push(Call {
                tid,
                name,
                start: ts,
                end: dur.map(|d| ts + d),
                args,
                ret,
                text: line.to_string(),
            });
        }
    }
    // Calls that never returned (the process ended) keep `end: None`.
    for (tid, (start, head, line)) in unfinished {
        if let Some((name, args, _, _)) = split_call(&format!("{head})")) {
            calls.push(Call {
                tid,
                name,
                start,
                end: None,
                args,
                ret: None,
                text: line,
            });
        }
    }
    calls.sort_by_key(|c| c.start);
    calls
}

/// What the checker found.
#[derive(Debug, Default)]
struct Report {
    lines: usize,
    answers: usize,
    ok_answers: usize,
    /// Messages for ok answers with no covering fsync, with the trace lines.
    violations: Vec<String>,
    /// fsync/fdatasync calls on the db file: (tid, start, end).
    db_fsyncs: Vec<(u32, i64, Option<i64>)>,
    /// (receive time of line i, write start of answer i, ok?)
    exchanges: Vec<(i64, i64, bool)>,
    problems: Vec<String>,
}

impl Report {
    /// fsyncs of the db file that started and ended within `[from, to]`.
    fn fsyncs_between(&self, from: i64, to: i64) -> usize {
        self.db_fsyncs
            .iter()
            .filter(|(_, s, e)| *s >= from && e.is_some_and(|e| e <= to))
            .count()
    }
}

const SYNCS: &[&str] = &["fsync", "fdatasync"];
const READS: &[&str] = &["read", "recvfrom", "recvmsg"];
const WRITES: &[&str] = &["write", "writev", "sendto", "sendmsg"];

/// Checks the claim on a parsed trace: `db` is the database file (absolute),
/// `cwd` the daemon's folder (for relative opens), `marker` a string found in
/// every envelope line.
fn check_trace(calls: &[Call], db: &Path, cwd: &Path, marker: &str) -> Report {
    let mut r = Report::default();
    // Which fds are the db file, and when: (fd, opened at, closed at).
    let mut db_fds: Vec<(i32, i64, Option<i64>)> = Vec::new();
    for c in calls {
        match c.name.as_str() {
            "openat" | "open" => {
                let path = c.data().map(|d| String::from_utf8_lossy(&d).into_owned());
                // `open` has no folder argument: relative to the working folder.
                let at_cwd =
                    c.name == "open" || c.args.split(',').next().unwrap_or("").trim() == "AT_FDCWD";
                if let (Some(path), Some(fd)) = (path, c.ret)
                    && fd >= 0
                    && (at_cwd || path.starts_with('/'))
                    && cwd.join(&path) == db
                {
                    db_fds.push((fd as i32, c.end.unwrap_or(c.start), None));
                }
            }
            "close" => {
                if let Some(fd) = c.fd() {
                    for open in db_fds.iter_mut() {
                        if open.0 == fd && open.2.is_none() && open.1 <= c.start {
                            open.2 = Some(c.start);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if db_fds.is_empty() {
        r.problems
            .push(format!("the trace shows no open of {}", db.display()));
    }
    let is_db = |fd: i32, at: i64| {
        db_fds
            .iter()
            .any(|&(f, from, to)| f == fd && from <= at && to.is_none_or(|to| at < to))
    };
    for c in calls {
        if SYNCS.contains(&c.name.as_str())
            && c.ret == Some(0)
            && c.fd().is_some_and(|fd| is_db(fd, c.start))
        {
            r.db_fsyncs.push((c.tid, c.start, c.end));
        }
    }

    // The ingest connection: the fd whose reads bring the envelopes.
    let ok_data = |c: &Call| c.ret.is_some_and(|n| n > 0);
    let conn_fds: std::collections::BTreeSet<i32> = calls
        .iter()
        .filter(|c| READS.contains(&c.name.as_str()) && ok_data(c))
        .filter(|c| {
            c.data()
                .is_some_and(|d| String::from_utf8_lossy(&d).contains(marker))
        })
        .filter_map(Call::fd)
        .collect();
    let [conn] = conn_fds.iter().copied().collect::<Vec<_>>()[..] else {
        r.problems.push(format!(
            "expected the envelopes on one connection, found fds {conn_fds:?}"
        ));
        return r;
    };
    // Its lifetime: from the close before the first envelope to the close after.
    let first = calls
        .iter()
        .find(|c| {
            READS.contains(&c.name.as_str())
                && c.fd() == Some(conn)
                && ok_data(c)
                && c.data()
                    .is_some_and(|d| String::from_utf8_lossy(&d).contains(marker))
        })
        .map(|c| c.start)
        .unwrap();
    let closes = |c: &&Call| c.name == "close" && c.fd() == Some(conn);
    let born = calls
        .iter()
        .filter(closes)
        .filter(|c| c.start < first)
        .map(|c| c.start)
        .max()
        .unwrap_or(i64::MIN);
    let dies = calls
        .iter()
        .filter(closes)
        .filter(|c| c.start > first)
        .map(|c| c.start)
        .min()
        .unwrap_or(i64::MAX);
    let on_conn = |c: &Call| c.fd() == Some(conn) && c.start > born && c.start < dies && ok_data(c);

    // Line i is received when the read that brings its newline returns.
    let mut reads: Vec<&Call> = calls
        .iter()
        .filter(|c| READS.contains(&c.name.as_str()) && on_conn(c))
        .collect();
    reads.sort_by_key(|c| c.end.unwrap_or(c.start));
    let mut received: Vec<(i64, String)> = Vec::new();
    let mut line = Vec::new();
    for c in &reads {
        let Some(data) = c.data() else {
            r.problems
                .push(format!("strace truncated a read; raise -s:\n{}", c.text));
            return r;
        };
        let n = (c.ret.unwrap_or(0) as usize).min(data.len());
        for &byte in &data[..n] {
            if byte == b'\n' {
                if !line.iter().all(u8::is_ascii_whitespace) {
                    received.push((c.end.unwrap_or(c.start), c.text.clone()));
                }
                line.clear();
            } else {
                line.push(byte);
            }
        }
    }
    // Answer i leaves when the write that carries its newline starts (a write
    // that carries part of it starts no later).
    let mut writes: Vec<&Call> = calls
        .iter()
        .filter(|c| WRITES.contains(&c.name.as_str()) && on_conn(c))
        .collect();
    writes.sort_by_key(|c| c.start);
    let mut answers: Vec<(i64, String, String)> = Vec::new();
    let mut answer = Vec::new();
    let mut answer_start: Option<(i64, String)> = None;
    for c in &writes {
        let Some(data) = c.data() else {
            r.problems
                .push(format!("strace truncated a write; raise -s:\n{}", c.text));
            return r;
        };
        let n = (c.ret.unwrap_or(0) as usize).min(data.len());
        for &byte in &data[..n] {
            if answer_start.is_none() {
                answer_start = Some((c.start, c.text.clone()));
            }
            if byte == b'\n' {
                let (at, text) = answer_start.take().unwrap();
                answers.push((at, String::from_utf8_lossy(&answer).into_owned(), text));
                answer.clear();
            } else {
                answer.push(byte);
            }
        }
    }
    r.lines = received.len();
    r.answers = answers.len();
    if received.len() != answers.len() {
        r.problems.push(format!(
            "{} lines received but {} answers written on fd {conn}",
            received.len(),
            answers.len()
        ));
    }
    for (i, ((got, read_text), (wrote, answer, write_text))) in
        received.iter().zip(&answers).enumerate()
    {
        let ok = serde_json::from_str::<serde_json::Value>(answer).is_ok_and(|v| v["ok"] == true);
        r.exchanges.push((*got, *wrote, ok));
        if !ok {
            continue;
        }
        r.ok_answers += 1;
        if r.fsyncs_between(*got, *wrote) == 0 {
            let last_before = r
                .db_fsyncs
                .iter()
                .filter(|(_, s, _)| *s <= *wrote)
                .max_by_key(|(_, s, _)| *s);
            r.violations.push(format!(
                "answer {} ({answer}) has no fsync of the db file between receiving its line \
                 and writing the answer\n  line received: {}\n  answer written: {}\n  \
                 latest db fsync that started before the answer (tid, start, end µs): {last_before:?}",
                i + 1,
                short(read_text),
                short(write_text),
            ));
        }
    }
    r
}

// ---- running the daemon under strace -----------------------------------------

fn strace_installed() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The process strace started (strace's only child).
fn traced_pid(strace: &Child) -> Option<i32> {
    let pid = strace.id();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Kills the traced daemon if the test ends early (the harness kills strace).
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn every_ok_answer_follows_an_fsync_of_the_queue_db() {
    if !strace_installed() {
        eprintln!(
            "SKIPPED every_ok_answer_follows_an_fsync_of_the_queue_db: `strace` is not \
             installed (apt-get install strace; .ci/run installs it)"
        );
        return;
    }
    let started = Instant::now();
    let mut d =
        TestDaemon::new().connector("dur", &csv_connector(&["permit_number", "status"], "", ""));
    d.write_config();
    let trace_path = d.path().join("strace.out");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.path().join("daemon.log"))
        .unwrap();
    let strace = Command::new("strace")
        .args(["-f", "-ttt", "-T", "-s", "1048576", "-e"])
        .arg(format!("trace={TRACED}"))
        .arg("-o")
        .arg(&trace_path)
        .arg(BIN)
        .args(["run", "-c"])
        .arg(d.config_path())
        .current_dir(d.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start strace");
    d.child = Some(strace);
    d.wait_for(
        Duration::from_secs(60),
        "the traced daemon to log ready",
        |d| d.log().contains("ready"),
    );
    let pid = traced_pid(d.child.as_ref().unwrap()).expect("the daemon under strace");
    let mut guard = KillOnDrop(Some(pid));

    let doc = |i: usize| {
        envelope(
            &format!("k{}", i % 25),
            json!({"permit_number": format!("k{}", i % 25), "status": format!("v{i}")}),
        )
    };
    let mut c = d.client();
    for i in 0..SEQUENTIAL {
        assert_eq!(c.call(&doc(i))["ok"], true, "envelope {i}");
    }
    for b in 0..BURSTS {
        let from = SEQUENTIAL + b * BURST;
        // One write for the whole burst, so that the daemon reads it at once.
        let burst: Vec<String> = (from..from + BURST).map(doc).collect();
        c.send_line(&burst.join("\n"));
        for i in from..from + BURST {
            assert_eq!(c.answer()["ok"], true, "envelope {i}");
        }
    }
    let total = SEQUENTIAL + BURSTS * BURST;
    drop(c);

    // Stop the daemon itself (SIGTERM to strace would detach it) and let strace end.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut strace = d.child.take().unwrap();
    let status = loop {
        if let Some(s) = strace.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the traced daemon did not stop within 60 s of SIGTERM\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    guard.0 = None;
    assert!(
        status.success(),
        "daemon under strace exited with {status}\n{}",
        d.log()
    );

    let text = std::fs::read_to_string(&trace_path).unwrap();
    if let Ok(keep) = std::env::var("HMS_KEEP_TRACE") {
        std::fs::write(&keep, &text).unwrap();
        eprintln!("durability: trace kept in {keep}");
    }
    let calls = parse_trace(&text);
    let db = d.path().join("state").join("queue.redb");
    let report = check_trace(&calls, &db, d.path(), "\"collection\":\"permits\"");

    // Group commit: flushes during the pipelined bursts versus their answers.
    let piped = &report.exchanges[SEQUENTIAL.min(report.exchanges.len())..];
    let piped_fsyncs = match (piped.first(), piped.last()) {
        (Some(first), Some(last)) => report.fsyncs_between(first.0, last.1),
        _ => 0,
    };
    let seq = &report.exchanges[..SEQUENTIAL.min(report.exchanges.len())];
    let seq_fsyncs = match (seq.first(), seq.last()) {
        (Some(first), Some(last)) => report.fsyncs_between(first.0, last.1),
        _ => 0,
    };
    let mut by_thread: BTreeMap<u32, usize> = BTreeMap::new();
    for (tid, _, _) in &report.db_fsyncs {
        *by_thread.entry(*tid).or_default() += 1;
    }
    // What a commit without its fsync would look like: drop one thread's fsyncs.
    let mut without: Vec<String> = Vec::new();
    for &tid in by_thread.keys() {
        let mut fake = report.db_fsyncs.clone();
        fake.retain(|f| f.0 != tid);
        let uncovered = report
            .exchanges
            .iter()
            .filter(|(got, wrote, ok)| {
                *ok && !fake
                    .iter()
                    .any(|(_, s, e)| s >= got && e.is_some_and(|e| e <= *wrote))
            })
            .count();
        without.push(format!("without thread {tid}'s: {uncovered} uncovered"));
    }
    eprintln!(
        "durability: {} lines, {} answers ({} ok) in {:.1} s; db fsyncs: {} in all {by_thread:?} \
         ({}); {seq_fsyncs} during the {SEQUENTIAL} one-at-a-time answers, \
         {piped_fsyncs} during the {} pipelined answers",
        report.lines,
        report.answers,
        report.ok_answers,
        started.elapsed().as_secs_f64(),
        report.db_fsyncs.len(),
        without.join(", "),
        piped.len(),
    );

    assert!(
        report.problems.is_empty(),
        "the trace cannot be checked:\n{}\n(trace in {})",
        report.problems.join("\n"),
        trace_path.display()
    );
    assert_eq!(
        (report.lines, report.ok_answers),
        (total, total),
        "every envelope read and answered ok"
    );
    assert!(
        report.violations.is_empty(),
        "{} of {} ok answers were written without an fsync of {} after their line \
         arrived: accepted is not durable (SPEC §3.1)\n{}",
        report.violations.len(),
        report.ok_answers,
        db.display(),
        report
            .violations
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        piped_fsyncs * 3 <= piped.len(),
        "group commit: {piped_fsyncs} fsyncs for {} pipelined answers",
        piped.len()
    );
    // Keep the folder (and the trace) only when something failed.
    drop(guard);
}

// ---- the checker itself must be able to fail ----------------------------------

/// A hand-made trace in strace's format: line 1 is answered after a covering
/// fsync on another thread (with unfinished/resumed halves); line 2's answer is
/// written before the fsync that followed its read had returned; the only fsync
/// after line 3 arrived ran on a file that is not the db.
#[test]
fn the_trace_checker_flags_an_answer_without_a_covering_fsync() {
    let trace = r#"100   1000.000100 openat(AT_FDCWD, "/s/state/db", O_RDWR|O_CREAT|O_CLOEXEC, 0666) = 7 <0.000010>
100   1000.000200 openat(AT_FDCWD, "state/db", O_RDONLY|O_CLOEXEC) = 8 <0.000010>
100   1000.000300 openat(AT_FDCWD, "/s/state/db.blob", O_RDONLY|O_CLOEXEC) = 9 <0.000010>
101   1000.001000 recvfrom(12,  <unfinished ...>
102   1000.001005 fsync(8 <unfinished ...>
101   1000.001010 <... recvfrom resumed>"{\"collection\":\"permits\",\"key\":\"1\"}\n", 65536, 0, NULL, NULL) = 36 <0.000010>
102   1000.001020 <... fsync resumed>) = 0 <0.000015>
102   1000.002000 fsync(8)                  = 0 <0.000100>
103   1000.002200 write(12, "{\"ok\":true}\n", 12) = 12 <0.000005>
101   1000.003000 read(12, "{\"collection\":\"permits\",\"key\":\"2\"}\n", 65536) = 36 <0.000010>
102   1000.003100 fsync(8 <unfinished ...>
103   1000.003150 write(12, "{\"ok\":true}\n", 12 <unfinished ...>
102   1000.003300 <... fsync resumed>) = 0 <0.000200>
103   1000.003310 <... write resumed>) = 12 <0.000160>
101   1000.003320 read(12, "{\"collection\":\"permits\",\"key\":\"3\"}\n", 65536) = 36 <0.000010>
102   1000.003400 fsync(9)                  = 0 <0.000010>
103   1000.003500 write(12, "{\"ok\":true}\n", 12) = 12 <0.000005>
101   1000.004000 read(12, "", 65536)       = 0 <0.000010>
101   1000.004100 close(12)                 = 0 <0.000010>
100   1000.005000 +++ exited with 0 +++
"#;
    let calls = parse_trace(trace);
    let report = check_trace(&calls, Path::new("/s/state/db"), Path::new("/s"), "permits");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.lines, report.answers, report.ok_answers), (3, 3, 3));
    // fd 7 and 8 are the db (absolute and relative open); fd 9 is not.
    assert_eq!(report.db_fsyncs.len(), 3, "{:?}", report.db_fsyncs);
    assert_eq!(report.violations.len(), 2, "{:#?}", report.violations);
    assert!(
        report.violations[0].starts_with("answer 2 "),
        "{}",
        report.violations[0]
    );
    assert!(
        report.violations[1].starts_with("answer 3 "),
        "{}",
        report.violations[1]
    );
    // With the fsync moved before the answer, all is well.
    let fixed = trace
        .replace(
            "103   1000.003150 write(12, \"{\\\"ok\\\":true}\\n\", 12 <unfinished ...>",
            "103   1000.003350 write(12, \"{\\\"ok\\\":true}\\n\", 12 <unfinished ...>",
        )
        .replace(
            "103   1000.003310 <... write resumed>",
            "103   1000.003360 <... write resumed>",
        )
        .replace("fsync(9)", "fsync(7)");
    let calls = parse_trace(&fixed);
    let report = check_trace(&calls, Path::new("/s/state/db"), Path::new("/s"), "permits");
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}
