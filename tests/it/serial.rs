//! Serial transport over real pseudo-terminals: the daemon gets the slave's path
//! (through a symlink, so a test can put a new pty in its place) and the test
//! plays the device on the master: it parses STX/ETX/LRC frames (or lines) and
//! answers ACK, NAK, noise or nothing as each test's policy says.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use serde_json::json;

use crate::harness::*;

const STX: u8 = 0x02;
const ETX: u8 = 0x03;
const ACK: u8 = 0x06;
const NAK: u8 = 0x15;

/// One frame as the device read it.
#[derive(Clone, Debug)]
struct Frame {
    payload: String,
    /// The LRC byte matched the payload (always true for line framing).
    lrc_ok: bool,
    /// When the device had read it whole.
    at: Instant,
}

impl Frame {
    /// The CSV fields: delivery_id, op, permit_number, status.
    fn fields(&self) -> Vec<&str> {
        self.payload.split(',').collect()
    }
    fn id(&self) -> &str {
        self.fields()[0]
    }
    fn key(&self) -> &str {
        self.fields()[2]
    }
    fn status(&self) -> &str {
        self.fields()[3]
    }
}

#[derive(Clone, Debug)]
enum Reply {
    Ack,
    Nak,
    /// No answer at all.
    Silent,
    /// These bytes (or a line), then nothing more.
    Raw(Vec<u8>),
    /// This reply, but only after this long (a slow device).
    Late(Duration, Box<Reply>),
}

type Policy = Box<dyn FnMut(&Frame, usize) -> Reply + Send>;

/// A pseudo-terminal pair; the slave is kept open by the test too, so that a
/// daemon that closes or dies does not make the master read EIO.
struct Pty {
    master: std::fs::File,
    _slave: OwnedFd,
    slave_path: PathBuf,
}

fn open_pty() -> Pty {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    // openpty does not set close-on-exec: without it every daemon a test starts
    // (this one's or a parallel test's) would inherit the master and keep the
    // pty alive after the test closed it.
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("close-on-exec");
    }
    // Raw both ways: no echo, no CR/LF translation, no signals from bytes.
    let mut t = tcgetattr(pty.slave.as_fd()).unwrap();
    cfmakeraw(&mut t);
    tcsetattr(pty.slave.as_fd(), SetArg::TCSANOW, &t).unwrap();
    let slave_path = nix::unistd::ttyname(pty.slave.as_fd()).expect("ttyname");
    Pty {
        master: std::fs::File::from(pty.master),
        _slave: pty.slave,
        slave_path,
    }
}

/// Points `link` at `target`, replacing what was there in one rename.
fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

#[derive(Default)]
struct Seen {
    /// Every frame read, in order.
    frames: Vec<Frame>,
    /// Payloads answered with ACK, in order.
    acked: Vec<String>,
    /// Frames cut short: an STX came before the ETX, and reading started again there.
    cut_short: usize,
}

/// The device: a thread reading the master and answering by its policy.
struct Device {
    seen: Arc<Mutex<Seen>>,
    policy: Arc<Mutex<Policy>>,
    line_state: Arc<LineState>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the line does to the device's reading, changed while it runs.
#[derive(Default)]
struct LineState {
    /// The device reads nothing (its input buffer fills and the sender stalls).
    paused: AtomicBool,
    /// If n > 0: the first payload byte of every n-th frame (the 1st, the
    /// (n+1)-th ...) arrives with one bit flipped, as line damage would do; the
    /// device's own LRC check then fails.
    damage_every: AtomicUsize,
    /// The device sends a noise byte every few milliseconds, unasked (a line
    /// that never falls quiet).
    babble: AtomicBool,
}

impl Device {
    fn start(pty: Pty, line: bool, policy: Policy) -> Device {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let policy = Arc::new(Mutex::new(policy));
        let stop = Arc::new(AtomicBool::new(false));
        let line_state = Arc::new(LineState::default());
        let thread = {
            let (seen, policy, line_state, stop) = (
                seen.clone(),
                policy.clone(),
                line_state.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || run_device(pty, line, seen, policy, line_state, stop))
        };
        Device {
            seen,
            policy,
            line_state,
            stop,
            thread: Some(thread),
        }
    }

    fn pause(&self, paused: bool) {
        self.line_state.paused.store(paused, Relaxed);
    }

    fn babble(&self, on: bool) {
        self.line_state.babble.store(on, Relaxed);
    }

    fn damage_every(&self, n: usize) {
        self.line_state.damage_every.store(n, Relaxed);
    }

    fn cut_short(&self) -> usize {
        self.seen.lock().unwrap().cut_short
    }

    fn set_policy(&self, policy: Policy) {
        *self.policy.lock().unwrap() = policy;
    }

    fn frames(&self) -> Vec<Frame> {
        self.seen.lock().unwrap().frames.clone()
    }

    fn acked(&self) -> Vec<String> {
        self.seen.lock().unwrap().acked.clone()
    }

    /// Stops the device and closes the master (and the test's slave handle).
    fn close(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

fn run_device(
    mut pty: Pty,
    line: bool,
    seen: Arc<Mutex<Seen>>,
    policy: Arc<Mutex<Policy>>,
    line_state: Arc<LineState>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut count: HashMap<String, usize> = HashMap::new();
    // Late replies: when to write them, in the order they were decided.
    let mut later: Vec<(Instant, Vec<u8>)> = Vec::new();
    while !stop.load(Relaxed) {
        let now = Instant::now();
        while later.first().is_some_and(|(at, _)| *at <= now) {
            let (_, bytes) = later.remove(0);
            let _ = pty.master.write_all(&bytes);
        }
        let babbling = line_state.babble.load(Relaxed);
        if babbling {
            let _ = pty.master.write_all(b"~");
        }
        let wait = later
            .first()
            .map(|(at, _)| at.saturating_duration_since(now).as_millis().min(20) as u8)
            .unwrap_or(20)
            .min(if babbling { 5 } else { 20 });
        let ready = {
            let mut fds = [PollFd::new(pty.master.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(wait)).unwrap_or(0)
        };
        if ready == 0 || line_state.paused.load(Relaxed) {
            if ready != 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        let n = match pty.master.read(&mut chunk) {
            Ok(n) => n,
            // EIO: no slave open at the moment.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let index = seen.lock().unwrap().frames.len();
            let every = line_state.damage_every.load(Relaxed);
            let damage = every > 0 && index.is_multiple_of(every);
            let mut cut_short = 0;
            let frame = take_frame(&mut buf, line, damage, &mut cut_short);
            seen.lock().unwrap().cut_short += cut_short;
            let Some(frame) = frame else { break };
            let nth = {
                let c = count.entry(frame.payload.clone()).or_default();
                *c += 1;
                *c
            };
            seen.lock().unwrap().frames.push(frame.clone());
            let mut reply = (policy.lock().unwrap())(&frame, nth);
            let mut delay = Duration::ZERO;
            while let Reply::Late(d, r) = reply {
                delay += d;
                reply = *r;
            }
            let bytes: Vec<u8> = match (&reply, line) {
                (Reply::Ack, false) => vec![ACK],
                (Reply::Nak, false) => vec![NAK],
                (Reply::Ack, true) => b"OK\r\n".to_vec(),
                (Reply::Nak, true) => b"ERR\r\n".to_vec(),
                (Reply::Silent, _) => Vec::new(),
                (Reply::Raw(b), _) => b.clone(),
                (Reply::Late(..), _) => unreachable!("unwrapped above"),
            };
            if matches!(reply, Reply::Ack) {
                seen.lock().unwrap().acked.push(frame.payload.clone());
            }
            if delay.is_zero() {
                let _ = pty.master.write_all(&bytes);
            } else {
                later.push((Instant::now() + delay, bytes));
            }
        }
    }
}

/// Takes one whole frame off the front of `buf`. Bytes before an STX are
/// dropped, and so is a frame cut short (an STX before its ETX: the sender
/// died mid-frame and sent a new one), counted in `cut_short`, never merged
/// with the next. `damage`: the payload's first byte arrives with a bit flipped.
fn take_frame(buf: &mut Vec<u8>, line: bool, damage: bool, cut_short: &mut usize) -> Option<Frame> {
    if line {
        let end = buf.windows(2).position(|w| w == b"\r\n")?;
        let payload = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 2);
        return Some(Frame {
            payload,
            lrc_ok: true,
            at: Instant::now(),
        });
    }
    let etx = loop {
        let start = buf.iter().position(|b| *b == STX)?;
        buf.drain(..start);
        let next = 1 + buf[1..].iter().position(|b| *b == STX || *b == ETX)?;
        if buf[next] == ETX {
            break next;
        }
        buf.drain(..next);
        *cut_short += 1;
    };
    let lrc = *buf.get(etx + 1)?;
    let mut payload = buf[1..etx].to_vec();
    buf.drain(..etx + 2);
    if damage && !payload.is_empty() {
        payload[0] ^= 0x01;
    }
    let expected = payload.iter().fold(ETX, |a, b| a ^ b);
    Some(Frame {
        payload: String::from_utf8_lossy(&payload).into_owned(),
        lrc_ok: lrc == expected,
        at: Instant::now(),
    })
}

/// A serial connector on `<tmp>/tty`; `transport` lines override the quick defaults.
fn connector(transport: &str, retry: &str) -> String {
    let mut lines: Vec<String> = transport.lines().map(String::from).collect();
    for default in [
        "baud = 115200",
        "ack_timeout = \"150ms\"",
        "retransmits = 2",
    ] {
        let key = default.split(' ').next().unwrap();
        if !lines.iter().any(|l| l.starts_with(&format!("{key} "))) {
            lines.push(default.to_string());
        }
    }
    format!(
        "collections = [\"permits\"]\n[format]\nkind = \"csv\"\ncolumns = [\"permit_number\", \"status\"]\n\
         [transport]\nkind = \"serial\"\nport = \"tty\"\n{}\n\
         [retry]\nbackoff = \"50ms\"\nmax_backoff = \"200ms\"\n{retry}\n",
        lines.join("\n")
    )
}

/// A daemon with one serial connector "dev" whose port is `<tmp>/tty` -> the pty.
fn daemon_with(pty: &Pty, transport: &str, retry: &str) -> TestDaemon {
    let d = TestDaemon::new().connector("dev", &connector(transport, retry));
    point(&d.path().join("tty"), &pty.slave_path);
    d.start()
}

fn send(d: &TestDaemon, key: &str, status: &str) {
    let answer = d.client().call(&envelope(
        key,
        json!({"permit_number": key, "status": status}),
    ));
    assert_eq!(answer["ok"], true, "{answer}");
}

fn wait_acked(d: &TestDaemon, dev: &Device, what: &str, done: impl Fn(&[String]) -> bool) {
    d.wait_for(Duration::from_secs(15), what, |_| done(&dev.acked()));
}

/// The last status the device acknowledged per key.
fn last_acked(dev: &Device) -> BTreeMap<String, String> {
    let mut last = BTreeMap::new();
    for p in dev.acked() {
        let f: Vec<&str> = p.split(',').collect();
        last.insert(f[2].to_string(), f[3].to_string());
    }
    last
}

/// Per key, the statuses v<n> the device acknowledged only grow.
fn assert_per_record_order(dev: &Device) {
    let mut last: HashMap<String, u32> = HashMap::new();
    for p in dev.acked() {
        let f: Vec<&str> = p.split(',').collect();
        let n: u32 = f[3].trim_start_matches('v').parse().unwrap();
        let prev = last.insert(f[2].to_string(), n).unwrap_or(0);
        assert!(
            n > prev,
            "key {} went from v{prev} to v{n}: {:?}",
            f[2],
            dev.acked()
        );
    }
}

#[test]
fn every_change_arrives_as_a_correct_frame_in_per_record_order() {
    let pty = open_pty();
    let d = daemon_with(&pty, "", "");
    let dev = Device::start(pty, false, Box::new(|_, _| Reply::Ack));
    // The first goes alone, so that it cannot coalesce with a:v2 (SPEC §2).
    send(&d, "a", "v1");
    wait_acked(&d, &dev, "the first record", |a| a.len() == 1);
    for round in 1..=4 {
        for key in ["a", "b", "c"] {
            if (round, key) != (1, "a") {
                send(&d, key, &format!("v{round}"));
            }
        }
    }
    let expected: BTreeMap<String, String> = ["a", "b", "c"]
        .iter()
        .map(|k| (k.to_string(), "v4".to_string()))
        .collect();
    wait_acked(&d, &dev, "the last status of every record", |_| {
        last_acked(&dev) == expected
    });
    let frames = dev.frames();
    assert!(frames.iter().all(|f| f.lrc_ok), "{frames:?}");
    // One frame each, ACKed at once: no retransmission was needed.
    assert_eq!(frames.len(), dev.acked().len());
    let first = &frames[0];
    assert_eq!(first.fields(), ["dev:1", "create", "a", "v1"], "{frames:?}");
    assert_per_record_order(&dev);
    // Delivery ids grow in send order (one frame in flight at a time).
    let ids: Vec<u64> = frames
        .iter()
        .map(|f| f.id().trim_start_matches("dev:").parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    d.wait_for(Duration::from_secs(5), "status to count them", |d| {
        d.target_status("dev")["delivered"].as_u64() == Some(frames.len() as u64)
    });
}

#[test]
fn a_nak_on_each_first_try_is_retransmitted_and_each_delta_delivered_once() {
    let pty = open_pty();
    let d = daemon_with(&pty, "", "max_attempts = 2");
    let dev = Device::start(
        pty,
        false,
        Box::new(|_, nth| if nth == 1 { Reply::Nak } else { Reply::Ack }),
    );
    for i in 0..6 {
        send(&d, &format!("k{i}"), "v1");
    }
    wait_acked(&d, &dev, "six records", |a| a.len() == 6);
    // A seventh record is the sentinel: a repeat of the six would come before it.
    send(&d, "k6", "v1");
    wait_acked(&d, &dev, "the sentinel", |a| a.len() >= 7);
    let acked = dev.acked();
    assert_eq!(acked.len(), 7, "each exactly once: {acked:?}");
    let frames = dev.frames();
    assert_eq!(frames.len(), 14, "each sent twice: {frames:?}");
    for pair in frames.chunks(2) {
        assert_eq!(
            pair[0].payload, pair[1].payload,
            "retransmit is the same frame"
        );
    }
    // Retransmissions belong to one delivery attempt: nothing was rejected. The
    // worker writes its log line after the device's ACK: wait for the seventh.
    let read_log = || std::fs::read_to_string(d.path().join("delivery.log")).unwrap_or_default();
    d.wait_for(Duration::from_secs(20), "seven delivered lines", |_| {
        read_log().matches("\"outcome\":\"delivered\"").count() >= 7
    });
    let log = read_log();
    assert_eq!(log.matches("\"outcome\":\"delivered\"").count(), 7, "{log}");
    assert!(!log.contains("\"rejected\""), "{log}");
}

#[test]
fn line_noise_and_a_corrupt_lrc_are_survived() {
    let pty = open_pty();
    let d = daemon_with(&pty, "", "max_attempts = 2");
    // The device checks each frame's LRC and NAKs a mismatch. The first copy
    // of each frame arrives damaged (one bit flipped on the line), so the NAK
    // is the device's own verdict. The second copy is fine but its answer is
    // noise, then ACK: an ACK after noise is not trusted, so the frame goes a
    // third time and gets a clean ACK.
    let dev = Device::start(
        pty,
        false,
        Box::new(|f, nth| {
            if !f.lrc_ok {
                Reply::Nak
            } else if nth == 1 {
                let mut noise = vec![0x00, 0xFF, b'~', 0x7F, 0x13, 0x11, STX, ETX];
                noise.extend((0..20).map(|i| b'A' + i));
                noise.push(ACK);
                Reply::Raw(noise)
            } else {
                Reply::Ack
            }
        }),
    );
    dev.damage_every(3);
    for i in 0..4 {
        send(&d, &format!("n{i}"), "v1");
    }
    wait_acked(&d, &dev, "four records", |a| a.len() == 4);
    d.wait_for(Duration::from_secs(15), "four deliveries", |d| {
        d.target_status("dev")["delivered"].as_u64() == Some(4)
    });
    let frames = dev.frames();
    assert_eq!(frames.len(), 12, "three sends each: {frames:?}");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.lrc_ok, i % 3 != 0, "frame {i}: {f:?}");
    }
    let st = d.target_status("dev");
    assert_eq!(
        (st["dead"].as_u64(), st["pending"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );
    let log = std::fs::read_to_string(d.path().join("delivery.log")).unwrap();
    assert!(!log.contains("\"rejected\""), "{log}");
}

#[test]
fn noise_only_is_an_outage_not_a_refusal() {
    let pty = open_pty();
    // max_attempts = 1: had noise counted as a refusal, the record would be
    // dead at its first attempt.
    let d = daemon_with(
        &pty,
        "retransmits = 1\nack_timeout = \"50ms\"",
        "max_attempts = 1",
    );
    let dev = Device::start(
        pty,
        false,
        Box::new(|_, _| Reply::Raw(b"\x00\xff?!garbage".to_vec())),
    );
    send(&d, "z1", "v1");
    d.wait_for(Duration::from_secs(10), "the target to be down", |d| {
        let st = d.target_status("dev");
        st["state"] == "down" && st["last_error"].as_str().unwrap_or("").contains("noise")
    });
    d.wait_for(Duration::from_secs(10), "more probes", |_| {
        dev.frames().len() >= 6
    });
    let st = d.target_status("dev");
    assert_eq!(
        (st["dead"].as_u64(), st["delivered"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );
    let log = std::fs::read_to_string(d.path().join("delivery.log")).unwrap_or_default();
    assert!(!log.contains("\"rejected\""), "{log}");
    dev.set_policy(Box::new(|_, _| Reply::Ack));
    d.wait_for(Duration::from_secs(15), "the record delivered", |d| {
        d.target_status("dev")["delivered"].as_u64() == Some(1)
    });
    let out = d.cli(&["dead", "list", "--json"]);
    let dead: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dead.as_array().map(Vec::len), Some(0), "{dead}");
}

#[test]
fn a_line_that_never_falls_quiet_does_not_stop_the_probes() {
    let pty = open_pty();
    let d = daemon_with(
        &pty,
        "retransmits = 0\nack_timeout = \"50ms\"",
        "max_attempts = 1",
    );
    let dev = Device::start(pty, false, Box::new(|_, _| Reply::Silent));
    dev.babble(true);
    send(&d, "q1", "v1");
    // Each send gets only noise and is owed an answer; waiting for those
    // answers before the next send must end although the noise never does.
    d.wait_for(
        Duration::from_secs(15),
        "the worker to keep probing",
        |_| dev.frames().len() >= 5,
    );
    let st = d.target_status("dev");
    assert_eq!(
        (st["state"].as_str(), st["dead"].as_u64()),
        (Some("down"), Some(0)),
        "{st}"
    );
    dev.babble(false);
    dev.set_policy(Box::new(|_, _| Reply::Ack));
    wait_acked(&d, &dev, "the record", |a| a.len() == 1);
}

#[test]
fn a_long_silence_is_an_outage_and_everything_converges_after() {
    let pty = open_pty();
    // max_attempts = 1: had silence counted as a refusal, the first record
    // would be dead at once.
    let d = daemon_with(
        &pty,
        "retransmits = 1\nack_timeout = \"50ms\"",
        "max_attempts = 1",
    );
    let dev = Device::start(pty, false, Box::new(|_, _| Reply::Silent));
    for i in 0..5 {
        send(&d, &format!("s{i}"), "v1");
    }
    d.wait_for(Duration::from_secs(10), "the target to be down", |d| {
        d.target_status("dev")["state"] == "down"
    });
    // Not a quiet period: wait for more probes than max_attempts, all silent.
    d.wait_for(Duration::from_secs(10), "four silent probes", |d| {
        delivery_log(d)
            .iter()
            .filter(|e| e["outcome"] == "down")
            .count()
            >= 4
    });
    let st = d.target_status("dev");
    assert_eq!(st["dead"].as_u64(), Some(0), "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("no answer"),
        "{st}"
    );
    assert!(dev.frames().len() >= 4, "the worker kept probing");
    dev.set_policy(Box::new(|_, _| Reply::Ack));
    d.wait_for(Duration::from_secs(15), "all five delivered", |d| {
        d.target_status("dev")["delivered"].as_u64() == Some(5)
    });
    let st = d.target_status("dev");
    assert_eq!(
        (
            st["state"].as_str(),
            st["dead"].as_u64(),
            st["pending"].as_u64()
        ),
        (Some("up"), Some(0), Some(0)),
        "{st}"
    );
}

#[test]
fn a_record_the_device_always_naks_is_dead_lettered_and_others_flow() {
    let pty = open_pty();
    let d = daemon_with(&pty, "retransmits = 1", "max_attempts = 3");
    let dev = Device::start(
        pty,
        false,
        Box::new(|f, _| {
            if f.key() == "bad" {
                Reply::Nak
            } else {
                Reply::Ack
            }
        }),
    );
    send(&d, "bad", "v1");
    for i in 0..5 {
        send(&d, &format!("ok{i}"), "v1");
    }
    d.wait_for(Duration::from_secs(15), "one dead letter", |d| {
        d.target_status("dev")["dead"].as_u64() == Some(1)
    });
    wait_acked(&d, &dev, "the five good records", |a| a.len() == 5);
    let out = d.cli(&["dead", "list", "--json"]);
    let dead: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dead[0]["key"], "bad", "{dead}");
    assert_eq!(dead[0]["attempts"], 3, "{dead}");
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("NAK to all 2 sends"),
        "{dead}"
    );
    // 3 attempts of 2 sends each.
    let bad = dev.frames().iter().filter(|f| f.key() == "bad").count();
    assert_eq!(bad, 6);
}

/// The delivery log's lines, parsed.
fn delivery_log(d: &TestDaemon) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.path().join("delivery.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_late_answer_is_never_taken_for_another_frames() {
    // Every answer comes 30 ms after ack_timeout (150 ms): each first send
    // times out, and its answer arrives during the retransmission's window.
    // ACK and NAK carry no frame number; without care the answers shift by
    // one frame and the always-refused record is "delivered" by the ACK meant
    // for the record before it.
    let pty = open_pty();
    let d = daemon_with(&pty, "retransmits = 2", "max_attempts = 3");
    let late = Duration::from_millis(180);
    let dev = Device::start(
        pty,
        false,
        Box::new(move |f, _| {
            let r = if f.key() == "bad" {
                Reply::Nak
            } else {
                Reply::Ack
            };
            Reply::Late(late, Box::new(r))
        }),
    );
    send(&d, "ok0", "v1");
    send(&d, "bad", "v1");
    for i in 1..6 {
        send(&d, &format!("ok{i}"), "v1");
    }
    d.wait_for(Duration::from_secs(40), "every record settled", |d| {
        let st = d.target_status("dev");
        st["pending"].as_u64() == Some(0) && st["in_flight"].as_u64().unwrap_or(0) == 0
    });
    let log = delivery_log(&d);
    let delivered_bad: Vec<_> = log
        .iter()
        .filter(|e| e["key"] == "bad" && e["outcome"] == "delivered")
        .collect();
    assert!(delivered_bad.is_empty(), "{delivered_bad:#?}");
    let st = d.target_status("dev");
    assert_eq!(st["dead"].as_u64(), Some(1), "{st}");
    // The first send of each attempt went unanswered in its window.
    let out = d.cli(&["dead", "list", "--json"]);
    let dead: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("NAK to the last of 3 sends of the frame (2 NAKs;"),
        "{dead}"
    );
    let mut delivered: Vec<String> = log
        .iter()
        .filter(|e| e["outcome"] == "delivered")
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(
        delivered,
        (0..6).map(|i| format!("ok{i}")).collect::<Vec<_>>(),
        "{log:#?}"
    );
    // Every record logged delivered is one the device acknowledged.
    let acked: std::collections::BTreeSet<String> = dev
        .acked()
        .iter()
        .map(|p| p.split(',').nth(2).unwrap().to_string())
        .collect();
    assert_eq!(acked.into_iter().collect::<Vec<_>>(), delivered);
}

#[test]
fn a_payload_with_a_framing_byte_is_refused_never_sent() {
    let pty = open_pty();
    let d = daemon_with(&pty, "", "max_attempts = 2");
    let dev = Device::start(pty, false, Box::new(|_, _| Reply::Ack));
    send(&d, "etx", "bad\u{3}value");
    send(&d, "fine", "v1");
    d.wait_for(Duration::from_secs(15), "one dead letter", |d| {
        d.target_status("dev")["dead"].as_u64() == Some(1)
    });
    wait_acked(&d, &dev, "the good record", |a| a.len() == 1);
    let out = d.cli(&["dead", "list", "--json"]);
    let dead: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("ETX (0x03)") && error.contains("would corrupt the frame"),
        "{error}"
    );
    assert!(dev.frames().iter().all(|f| f.key() != "etx"));
}

#[test]
fn line_framing_is_answered_by_lines() {
    let pty = open_pty();
    let d = daemon_with(
        &pty,
        "framing = \"line\"\nack_line = \"OK\"\nnak_line = \"ERR\"\nencoding = \"latin1\"",
        "max_attempts = 2",
    );
    let dev = Device::start(
        pty,
        true,
        Box::new(|_, nth| match nth {
            1 => Reply::Raw(b"BUSY\r\n".to_vec()),
            2 => Reply::Nak,
            _ => Reply::Ack,
        }),
    );
    send(&d, "l1", "Müller");
    send(&d, "l2", "v2");
    d.wait_for(Duration::from_secs(15), "two deliveries", |d| {
        d.target_status("dev")["delivered"].as_u64() == Some(2)
    });
    let frames = dev.frames();
    assert_eq!(frames.len(), 6, "{frames:?}");
    // Latin-1 on the wire: "ü" is one byte 0xFC (lossy-decoded by the test).
    assert_eq!(frames[0].status(), "M\u{FFFD}ller");
}

#[test]
fn the_transport_reconnects_when_a_new_pty_takes_the_path() {
    let pty = open_pty();
    let d = daemon_with(&pty, "", "max_attempts = 1");
    let dev = Device::start(pty, false, Box::new(|_, _| Reply::Ack));
    send(&d, "r1", "v1");
    wait_acked(&d, &dev, "the first record", |a| a.len() == 1);

    // The device goes away while the daemon holds the port, and nothing is at
    // the path for a while: an outage, not a refusal (max_attempts is 1).
    dev.close();
    std::fs::remove_file(d.path().join("tty")).unwrap();
    send(&d, "r2", "v1");
    d.wait_for(Duration::from_secs(10), "the target to be down", |d| {
        let st = d.target_status("dev");
        st["state"] == "down"
            && st["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("does not exist")
    });

    // Another device takes the path (a symlink, like /dev/serial/by-id/...).
    let pty2 = open_pty();
    point(&d.path().join("tty"), &pty2.slave_path);
    // It reads the next frame but closes before answering.
    let dev2 = Device::start(pty2, false, Box::new(|_, _| Reply::Silent));
    send(&d, "r3", "v1");
    d.wait_for(Duration::from_secs(10), "a frame on the second pty", |_| {
        !dev2.frames().is_empty()
    });
    dev2.close();

    let pty3 = open_pty();
    point(&d.path().join("tty"), &pty3.slave_path);
    let dev3 = Device::start(pty3, false, Box::new(|_, _| Reply::Ack));
    wait_acked(&d, &dev3, "both records on the third pty", |a| a.len() == 2);
    let st = d.target_status("dev");
    assert_eq!(
        (
            st["state"].as_str(),
            st["delivered"].as_u64(),
            st["dead"].as_u64()
        ),
        (Some("up"), Some(3), Some(0)),
        "{st}"
    );
}

#[test]
fn sigkill_mid_frame_loses_nothing_accepted() {
    let pty = open_pty();
    let mut d = daemon_with(&pty, "ack_timeout = \"2s\"\nretransmits = 0", "");
    // The device reads nothing for now: the first frame, far bigger than the
    // pty's buffer (about 20 KB), stalls half written, and the daemon is
    // killed in the middle of writing it.
    let dev = Device::start(pty, false, Box::new(|_, _| Reply::Ack));
    dev.pause(true);
    let big = "B".repeat(40_000);
    send(&d, "x0", &big);
    for i in 1..10 {
        send(&d, &format!("x{i}"), "v1");
    }
    // 40 KB take about 3.5 s at 115200 baud: the write is still going on.
    std::thread::sleep(Duration::from_millis(800));
    d.kill9();
    dev.pause(false);
    d.restart();
    let mut expected: BTreeMap<String, String> = (1..10)
        .map(|i| (format!("x{i}"), "v1".to_string()))
        .collect();
    expected.insert("x0".into(), big);
    wait_acked(&d, &dev, "every accepted record", |_| {
        last_acked(&dev) == expected
    });
    // The cut-off frame was seen as such, not merged with the next one.
    assert_eq!(dev.cut_short(), 1, "the kill came mid-frame");
    let frames = dev.frames();
    assert!(frames.iter().all(|f| f.lrc_ok), "{frames:?}");
    assert_eq!(frames[0].key(), "x0");
    assert_eq!(frames[0].id(), "dev:1", "sent again with its delivery id");
}

#[test]
fn new_scaffolds_a_serial_connector_that_check_accepts() {
    let d = TestDaemon::new();
    d.write_config();
    let out = d.cli(&["new", "county-line", "--transport", "serial"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.cli(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(
            "county-line receives permits via serial -> /dev/ttyS0 9600 8N1, framing stx_etx_lrc"
        ),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn translate_shows_the_serial_frame_or_the_refusal() {
    let d = TestDaemon::new().connector("dev", &connector("", ""));
    d.write_config();
    let change = |name: &str, status: &str| {
        let path = d.path().join(name);
        std::fs::write(
            &path,
            envelope("p1", json!({"permit_number": "p1", "status": status})),
        )
        .unwrap();
        path
    };
    let ok = change("ok.json", "M\u{fc}ller");
    let out = d.cli(&["translate", "dev", ok.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let payload = "dev:preview,create,p1,M\u{fc}ller".as_bytes();
    let lrc = payload.iter().fold(ETX, |a, b| a ^ b);
    assert_eq!(
        stdout.trim_end(),
        format!("<STX>dev:preview,create,p1,M<0xC3><0xBC>ller<ETX><LRC 0x{lrc:02X}>")
    );
    let bad = change("bad.json", "a\u{3}b");
    let out = d.cli(&["translate", "dev", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("dev cannot render this change: the serial transport would refuse it")
            && stderr.contains("ETX (0x03)"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn line_settings_other_than_8n1_open_on_a_pty() {
    // A pty has no baud rate, parity or RTS/CTS lines, but it keeps the termios
    // settings: the port opens with them and bytes pass.
    for settings in [
        "flow_control = \"hardware\"\nparity = \"even\"\nstop_bits = 2\nbaud = 9600",
        "flow_control = \"software\"\nparity = \"odd\"\nbaud = 1200",
    ] {
        let pty = open_pty();
        let d = daemon_with(&pty, settings, "");
        let dev = Device::start(pty, false, Box::new(|_, _| Reply::Ack));
        send(&d, "p1", "v1");
        wait_acked(&d, &dev, "the record", |a| a.len() == 1);
    }
}

#[test]
fn inter_frame_delay_spaces_the_frames() {
    let pty = open_pty();
    let d = daemon_with(&pty, "inter_frame_delay = \"250ms\"", "");
    let dev = Device::start(
        pty,
        false,
        Box::new(|_, nth| if nth == 1 { Reply::Nak } else { Reply::Ack }),
    );
    send(&d, "d1", "v1");
    send(&d, "d2", "v1");
    wait_acked(&d, &dev, "both records", |a| a.len() == 2);
    let frames = dev.frames();
    assert_eq!(frames.len(), 4, "{frames:?}");
    for pair in frames.windows(2) {
        let gap = pair[1].at - pair[0].at;
        // Also before a retransmission; a little slack for the device's polling.
        assert!(gap >= Duration::from_millis(240), "{gap:?} between frames");
    }
}
