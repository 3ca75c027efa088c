//! Load generator for `bench/run.sh` (built as `cargo build --release --example loadgen`).
//!
//! Subcommands (each prints `key=value` lines on stdout for the script to read):
//!
//! ```text
//! loadgen ingest  SOCKET [--clients 4] [--seconds 8] [--max N] [--window 1000] [--prefix P]
//!     C clients, each on its own connection, pipelining envelopes with distinct keys
//!     (at most `window` unanswered lines per client). Stops sending after `seconds`
//!     or once `max` lines are sent in total, then waits for every answer.
//!     Prints ok/err/busy counts, elapsed seconds, ok_rate (ok answers per second).
//!
//! loadgen latency INBOX OUTBOX [--rate 200] [--count 2000] [--key-col 2] [--trace FILE]
//!     Drops one-record JSON files (temp name + rename) at a fixed rate, polls OUTBOX
//!     every 1 ms, reads each new delivery file, matches its keys and records the time
//!     from just before the rename to the poll that saw the file. Consumes (deletes)
//!     the outbox files, as a legacy importer would. Prints p50/p90/p99/max in ms.
//!
//! loadgen soap-server PORTFILE [--expect N] [--seconds 120] [--dump FILE]
//!                   [--service-ms 0] [--workers 0]
//!     A keep-alive HTTP/1.1 server on 127.0.0.1 (port written to PORTFILE) that
//!     answers every POST with a short SOAP ack: at once, as a COBOL box that never
//!     waits would, or, with `--service-ms`, after that much work, done by at most
//!     `--workers` requests at a time (0: any number; the others wait their turn),
//!     as a slow legacy service would. Latency is measured when the answer goes. Stops after `expect` requests (or `seconds`). Prints requests,
//!     the delivery rate over the second half of them (once the ingest that fed
//!     the queue is long over), and, for bodies holding a `sent_us` field, the
//!     drop-to-delivered latency p50/p90/p99/max. `--dump` saves the first body
//!     (the request wrk repeats).
//!
//! loadgen burst INBOX [--count 20000] [--timeout 300] [--wait-only 1]
//!     Writes COUNT one-record JSON files (temp name + rename) as fast as one
//!     producer can, then waits until the inbox holds none of them. Prints the
//!     producer's rate and the files/s taken from the inbox (first rename to the
//!     inbox being empty). `--timeout 0` only writes; `--wait-only 1` only waits.
//!
//! loadgen drop INBOX [--rate 200] [--count 2000]
//!     Writes one-record JSON files (temp name + rename) at a fixed rate, each with
//!     `sent_us`, the wall-clock time of its rename in µs.
//!
//! loadgen restart BIN CONFIG OUTBOX LOG [--timeout 120]
//!     Starts `BIN run -c CONFIG` (output appended to LOG), polls OUTBOX every 1 ms and
//!     prints the time from spawn to the first delivery file and to `ready` in LOG,
//!     plus RSS at that moment; then SIGTERMs the daemon and waits for it to exit.
//! ```
//!
//! The generator uses a current-thread runtime on purpose: the box has few cores and
//! every cycle spent here is taken from the daemon under test.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Notify;

fn usage() -> ! {
    eprintln!(
        "usage: loadgen ingest SOCKET [--clients N] [--seconds S] [--max N] [--window W] [--prefix P]\n\
         \x20      loadgen latency INBOX OUTBOX [--rate R] [--count N] [--key-col I] [--trace FILE]\n\
         \x20      loadgen restart BIN CONFIG OUTBOX LOG [--timeout S]\n\
         \x20      loadgen soap-server PORTFILE [--expect N] [--seconds S] [--dump FILE]\n\
         \x20      loadgen drop INBOX [--rate R] [--count N]\n\
         \x20      loadgen burst INBOX [--count N] [--timeout S] [--wait-only 1]"
    );
    std::process::exit(2);
}

/// Positional arguments and `--name value` options.
struct Args {
    pos: Vec<String>,
    opts: Vec<(String, String)>,
}

impl Args {
    fn parse(raw: Vec<String>) -> Args {
        let mut pos = Vec::new();
        let mut opts = Vec::new();
        let mut it = raw.into_iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                let v = it.next().unwrap_or_else(|| usage());
                opts.push((name.to_string(), v));
            } else {
                pos.push(a);
            }
        }
        Args { pos, opts }
    }
    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.opts.iter().rev().find(|(n, _)| n == name) {
            Some((_, v)) => v.parse().unwrap_or_else(|_| {
                eprintln!("loadgen: bad value for --{name}: {v}");
                std::process::exit(2)
            }),
            None => default,
        }
    }
    fn pos(&self, i: usize) -> &str {
        self.pos
            .get(i)
            .map(String::as_str)
            .unwrap_or_else(|| usage())
    }
}

fn main() {
    let mut raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.is_empty() {
        usage();
    }
    let cmd = raw.remove(0);
    let args = Args::parse(raw);
    match cmd.as_str() {
        "ingest" => ingest(&args),
        "latency" => latency(&args),
        "burst" => burst(&args),
        "restart" => restart(&args),
        "soap-server" => soap_server(&args),
        "drop" => drop_files(&args),
        _ => usage(),
    }
}

// ---- ingest -------------------------------------------------------------------

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    ok: AtomicU64,
    busy: AtomicU64,
    err: AtomicU64,
}

/// One envelope with five fields and a distinct key.
fn envelope(out: &mut Vec<u8>, key: &str, i: u64) {
    let statuses = ["APPLIED", "REVIEW", "APPROVED", "ISSUED"];
    let _ = writeln!(
        out,
        "{{\"collection\":\"permits\",\"key\":\"{key}\",\"doc\":{{\"permit_number\":\"{key}\",\"status\":\"{}\",\"type\":\"residential\",\"parcel_id\":\"P-{:06}\",\"fee\":{}.50}}}}",
        statuses[(i % 4) as usize],
        i % 1_000_000,
        100 + i % 900
    );
}

fn ingest(args: &Args) {
    let socket = PathBuf::from(args.pos(0));
    let clients: u64 = args.get("clients", 4);
    let seconds: f64 = args.get("seconds", 8.0);
    let max: u64 = args.get("max", u64::MAX);
    let window: u64 = args.get("window", 1000);
    let prefix: String = args.get("prefix", "k".to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let totals = Arc::new(Totals::default());
        let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let per_client = if max == u64::MAX {
            u64::MAX
        } else {
            max.div_ceil(clients)
        };
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let stream = match UnixStream::connect(&socket).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("loadgen: cannot connect to {}: {e}", socket.display());
                    std::process::exit(1);
                }
            };
            let totals = totals.clone();
            let first_error = first_error.clone();
            let prefix = format!("{prefix}-{c}");
            let limit = per_client.min(max.saturating_sub(c * per_client));
            tasks.push(tokio::spawn(client(
                stream,
                prefix,
                limit,
                window,
                deadline,
                totals,
                first_error,
            )));
        }
        for t in tasks {
            t.await.expect("client task");
        }
        let elapsed = started.elapsed().as_secs_f64();
        let ok = totals.ok.load(Ordering::Relaxed);
        println!("sent={}", totals.sent.load(Ordering::Relaxed));
        println!("ok={ok}");
        println!("busy={}", totals.busy.load(Ordering::Relaxed));
        println!("err={}", totals.err.load(Ordering::Relaxed));
        println!("seconds={elapsed:.3}");
        println!("ok_rate={:.0}", ok as f64 / elapsed);
        println!("loadgen_cpu_s={:.2}", own_cpu_seconds());
        if let Some(e) = first_error.lock().unwrap().as_ref() {
            println!("first_error={}", e.replace('\n', " "));
        }
    });
}

async fn client(
    stream: UnixStream,
    prefix: String,
    limit: u64,
    window: u64,
    deadline: Instant,
    totals: Arc<Totals>,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
) {
    let (read, mut write) = stream.into_split();
    let answered = Arc::new(AtomicU64::new(0));
    let more_room = Arc::new(Notify::new());
    let done_sending = Arc::new(AtomicBool::new(false));
    let sent_count = Arc::new(AtomicU64::new(0));

    let reader = {
        let answered = answered.clone();
        let more_room = more_room.clone();
        let done_sending = done_sending.clone();
        let sent_count = sent_count.clone();
        let totals = totals.clone();
        tokio::spawn(async move {
            let mut r = BufReader::with_capacity(64 * 1024, read);
            let mut line = Vec::with_capacity(256);
            loop {
                if done_sending.load(Ordering::Acquire)
                    && answered.load(Ordering::Acquire) >= sent_count.load(Ordering::Acquire)
                {
                    break;
                }
                line.clear();
                match r.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => {
                        // The daemon closed the connection: whatever is unanswered is lost.
                        let missing =
                            sent_count.load(Ordering::Acquire) - answered.load(Ordering::Acquire);
                        if missing > 0 {
                            totals.err.fetch_add(missing, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert_with(|| {
                                format!("connection closed by the daemon with {missing} lines unanswered")
                            });
                        }
                        answered.fetch_add(missing, Ordering::Release);
                        more_room.notify_one();
                        break;
                    }
                    Ok(_) => {}
                }
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                if text == b"{\"ok\":true}" {
                    totals.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    let s = String::from_utf8_lossy(text).into_owned();
                    if s.contains("\"retry\":true") && s.contains("busy") {
                        totals.busy.fetch_add(1, Ordering::Relaxed);
                    } else {
                        totals.err.fetch_add(1, Ordering::Relaxed);
                    }
                    first_error.lock().unwrap().get_or_insert(s);
                }
                answered.fetch_add(1, Ordering::Release);
                more_room.notify_one();
            }
        })
    };

    let mut buf = Vec::with_capacity(256 * 1024);
    let mut i: u64 = 0;
    let mut key = String::with_capacity(64);
    'send: while i < limit && Instant::now() < deadline {
        // Wait for room in the window.
        loop {
            let outstanding = i - answered.load(Ordering::Acquire);
            if outstanding < window {
                break;
            }
            more_room.notified().await;
            if reader.is_finished() {
                break 'send;
            }
        }
        let room = window - (i - answered.load(Ordering::Acquire));
        let n = room.min(256).min(limit - i);
        buf.clear();
        for _ in 0..n {
            key.clear();
            let _ = std::fmt::Write::write_fmt(&mut key, format_args!("{prefix}-{i}"));
            envelope(&mut buf, &key, i);
            i += 1;
        }
        sent_count.store(i, Ordering::Release);
        totals.sent.fetch_add(n, Ordering::Relaxed);
        if write.write_all(&buf).await.is_err() {
            break;
        }
    }
    sent_count.store(i, Ordering::Release);
    done_sending.store(true, Ordering::Release);
    // Wake the reader in case it already has every answer and waits for a line.
    let _ = write.shutdown().await;
    let _ = reader.await;
}

/// CPU time (user + system) this process has used so far.
fn own_cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

// ---- latency ------------------------------------------------------------------

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency(args: &Args) {
    let inbox = PathBuf::from(args.pos(0));
    let outbox = PathBuf::from(args.pos(1));
    let rate: f64 = args.get("rate", 200.0);
    let count: usize = args.get("count", 2000);
    // delivery_id,op,permit_number,... : the key is the third column.
    let key_col: usize = args.get("key-col", 2);
    // Optional: one line per delivered key, `key rename_unix_us seen_unix_us`, to
    // line up with the daemon's own log timestamps.
    let trace: String = args.get("trace", String::new());
    let base = Instant::now();
    let base_wall_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let mut trace_lines = String::new();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let writer_done = Arc::new(AtomicBool::new(false));
    let lag = Arc::new(AtomicU64::new(0));

    let writer = {
        let sent = sent.clone();
        let inbox = inbox.clone();
        let writer_done = writer_done.clone();
        let lag = lag.clone();
        std::thread::spawn(move || {
            let start = Instant::now() + Duration::from_millis(50);
            for i in 0..count {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else {
                    lag.fetch_max((now - due).as_micros() as u64, Ordering::Relaxed);
                }
                let key = format!("lat-{i:06}");
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_micros();
                let body = format!(
                    "{{\"permit_number\":\"{key}\",\"status\":\"ISSUED\",\"type\":\"residential\",\"parcel_id\":\"P-{i:06}\",\"sent_us\":{ts}}}\n"
                );
                let tmp = inbox.join(format!(".{key}.json.part"));
                std::fs::write(&tmp, body).expect("write into the inbox");
                sent[i].store(base.elapsed().as_nanos() as u64 + 1, Ordering::Release);
                std::fs::rename(&tmp, inbox.join(format!("{key}.json")))
                    .expect("rename into the inbox");
            }
            writer_done.store(true, Ordering::Release);
        })
    };

    let mut lat_ms: Vec<f64> = Vec::with_capacity(count);
    let mut seen = vec![false; count];
    let mut files = 0usize;
    let mut repeats = 0usize;
    let mut last_progress = Instant::now();
    while lat_ms.len() < count {
        let entries = match std::fs::read_dir(&outbox) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("loadgen: cannot read {}: {e}", outbox.display());
                std::process::exit(1);
            }
        };
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        let seen_at = base.elapsed().as_nanos() as u64;
        names.sort();
        for path in names {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            files += 1;
            for row in text.lines().skip(1) {
                let Some(key) = row.split(',').nth(key_col) else {
                    continue;
                };
                let Some(i) = key
                    .trim_matches('"')
                    .strip_prefix("lat-")
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                if i >= count {
                    continue;
                }
                if seen[i] {
                    repeats += 1;
                    continue;
                }
                seen[i] = true;
                let t = sent[i].load(Ordering::Acquire);
                lat_ms.push(seen_at.saturating_sub(t - 1) as f64 / 1e6);
                if !trace.is_empty() {
                    let _ = std::fmt::Write::write_fmt(
                        &mut trace_lines,
                        format_args!(
                            "lat-{i:06} {} {}\n",
                            base_wall_us + (t - 1) / 1000,
                            base_wall_us + seen_at / 1000
                        ),
                    );
                }
                last_progress = Instant::now();
            }
            let _ = std::fs::remove_file(&path);
        }
        if writer_done.load(Ordering::Acquire) && last_progress.elapsed() > Duration::from_secs(30)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    writer.join().expect("writer thread");
    if !trace.is_empty() {
        std::fs::write(&trace, trace_lines).expect("write the trace file");
    }
    let got = lat_ms.len();
    lat_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = lat_ms.iter().sum::<f64>() / got.max(1) as f64;
    println!("sent={count}");
    println!("delivered={got}");
    println!("missing={}", count - got);
    println!("outbox_files={files}");
    println!("repeats={repeats}");
    println!(
        "writer_max_lag_ms={:.1}",
        lag.load(Ordering::Relaxed) as f64 / 1000.0
    );
    println!("mean_ms={mean:.2}");
    println!("p50_ms={:.2}", percentile(&lat_ms, 50.0));
    println!("p90_ms={:.2}", percentile(&lat_ms, 90.0));
    println!("p99_ms={:.2}", percentile(&lat_ms, 99.0));
    println!("max_ms={:.2}", lat_ms.last().copied().unwrap_or(f64::NAN));
}

// ---- restart ------------------------------------------------------------------

fn vm_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn has_delivery(outbox: &Path) -> bool {
    std::fs::read_dir(outbox)
        .map(|rd| {
            rd.flatten()
                .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
        })
        .unwrap_or(false)
}

fn restart(args: &Args) {
    let bin = args.pos(0).to_string();
    let config = PathBuf::from(args.pos(1));
    let outbox = PathBuf::from(args.pos(2));
    let log_path = PathBuf::from(args.pos(3));
    let timeout: f64 = args.get("timeout", 120.0);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open the daemon log");
    let log_len = log.metadata().map(|m| m.len()).unwrap_or(0);
    let cwd = config.parent().unwrap_or(Path::new(".")).to_path_buf();
    let started = Instant::now();
    let mut child = std::process::Command::new(&bin)
        .args(["run", "-c"])
        .arg(&config)
        .current_dir(&cwd)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start hms-sync");
    let pid = child.id();
    let mut ready_ms: Option<f64> = None;
    let mut first_ms: Option<f64> = None;
    let deadline = started + Duration::from_secs_f64(timeout);
    let mut polls = 0u64;
    while Instant::now() < deadline {
        if first_ms.is_none() && has_delivery(&outbox) {
            first_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        }
        if ready_ms.is_none() && polls.is_multiple_of(5) {
            let text = std::fs::read(&log_path).unwrap_or_default();
            let new =
                String::from_utf8_lossy(&text[(log_len as usize).min(text.len())..]).into_owned();
            if new.contains(" ready") {
                ready_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        if first_ms.is_some() && ready_ms.is_some() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("loadgen: hms-sync exited early: {status}");
            break;
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    let rss = vm_field(pid, "VmRSS:").unwrap_or(0);
    let hwm = vm_field(pid, "VmHWM:").unwrap_or(0);
    println!("pid={pid}");
    println!(
        "ready_ms={}",
        ready_ms.map(|v| format!("{v:.1}")).unwrap_or("none".into())
    );
    println!(
        "first_delivery_ms={}",
        first_ms.map(|v| format!("{v:.1}")).unwrap_or("none".into())
    );
    println!("rss_kib={rss}");
    println!("hwm_kib={hwm}");
    // Stop it the polite way.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let stop_started = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if stop_started.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            let _ = child.wait();
            println!("stop=killed");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "stop_ms={:.0}",
        stop_started.elapsed().as_secs_f64() * 1000.0
    );
}

// ---- soap ---------------------------------------------------------------------

fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[derive(Default)]
struct SoapStats {
    /// Arrival time of each request (µs since the epoch).
    arrivals: Vec<u64>,
    latencies_us: Vec<u64>,
    first_body: Option<Vec<u8>>,
    /// Requests being worked on or waiting now, and the most at once.
    now: usize,
    most: usize,
}

fn soap_server(args: &Args) {
    let port_file = PathBuf::from(args.pos(0));
    let expect: usize = args.get("expect", usize::MAX);
    let seconds: f64 = args.get("seconds", 120.0);
    let dump: String = args.get("dump", String::new());
    let service = Duration::from_millis(args.get("service-ms", 0u64));
    let workers: usize = args.get("workers", 0);
    let slots = Arc::new(tokio::sync::Semaphore::new(if workers == 0 {
        tokio::sync::Semaphore::MAX_PERMITS
    } else {
        workers
    }));
    let stats = Arc::new(std::sync::Mutex::new(SoapStats::default()));
    let done = Arc::new(Notify::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        std::fs::write(&port_file, port.to_string()).unwrap();
        let ack: &'static str = "<?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><UpdatePermitResponse>got it</UpdatePermitResponse></soap:Body></soap:Envelope>";
        let (st, dn) = (stats.clone(), done.clone());
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let (st, dn, slots) = (st.clone(), dn.clone(), slots.clone());
            async move {
                if !service.is_zero() {
                    {
                        let mut s = st.lock().unwrap();
                        s.now += 1;
                        s.most = s.most.max(s.now);
                    }
                    let _worker = slots.acquire().await.unwrap();
                    tokio::time::sleep(service).await;
                    st.lock().unwrap().now -= 1;
                }
                let now = wall_us();
                let mut s = st.lock().unwrap();
                s.arrivals.push(now);
                let text = String::from_utf8_lossy(&body);
                if let Some(pos) = text.find("name=\"sent_us\">") {
                    let rest = &text[pos + 15..];
                    if let Some(sent) = rest.split('<').next().and_then(|n| n.parse::<u64>().ok()) {
                        s.latencies_us.push(now.saturating_sub(sent));
                    }
                }
                if s.first_body.is_none() {
                    s.first_body = Some(body.to_vec());
                }
                if s.arrivals.len() >= expect {
                    dn.notify_one();
                }
                ([("content-type", "text/xml; charset=utf-8")], ack)
            }
        });
        let server = axum::serve(listener, app);
        tokio::select! {
            _ = server => {}
            _ = done.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs_f64(seconds)) => {}
        }
    });
    let s = stats.lock().unwrap();
    if !dump.is_empty()
        && let Some(b) = &s.first_body
    {
        std::fs::write(&dump, b).unwrap();
    }
    let n = s.arrivals.len();
    println!("requests={n}");
    println!("most_at_once={}", s.most);
    if n >= 4 {
        let half = &s.arrivals[n / 2..];
        let span = (half[half.len() - 1] - half[0]) as f64 / 1e6;
        if span > 0.0 {
            println!("rate={:.0}", (half.len() - 1) as f64 / span);
        }
    }
    let mut lat = s.latencies_us.clone();
    if !lat.is_empty() {
        lat.sort_unstable();
        let pct =
            |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
        println!("latency_count={}", lat.len());
        println!("p50_ms={:.1}", pct(0.50));
        println!("p90_ms={:.1}", pct(0.90));
        println!("p99_ms={:.1}", pct(0.99));
        println!("max_ms={:.1}", lat[lat.len() - 1] as f64 / 1000.0);
    }
}

fn burst(args: &Args) {
    let inbox = PathBuf::from(args.pos(0));
    let count: usize = args.get("count", 20_000);
    let timeout = Duration::from_secs_f64(args.get("timeout", 300.0));
    // --wait-only 1: the files are there already (written with --timeout 0
    // while the daemon was stopped); only wait for the inbox to empty.
    let wait_only = args.get("wait-only", 0u8) == 1;
    let start = Instant::now();
    for i in (0..count).filter(|_| !wait_only) {
        let key = format!("burst-{i:07}");
        let tmp = inbox.join(format!(".{key}.json.part"));
        let body = format!("{{\"permit_number\":\"{key}\",\"status\":\"ISSUED\",\"fee\":{i}}}\n");
        std::fs::write(&tmp, body).expect("write into the inbox");
        std::fs::rename(&tmp, inbox.join(format!("{key}.json"))).expect("rename into the inbox");
    }
    let written = start.elapsed();
    let waiting = || {
        std::fs::read_dir(&inbox)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("burst-"))
                    .count()
            })
            .unwrap_or(0)
    };
    let mut left = waiting();
    while left > 0 && start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(5));
        left = waiting();
    }
    let drained = start.elapsed();
    println!("files={count}");
    println!("left={left}");
    println!(
        "producer_files_per_s={:.0}",
        count as f64 / written.as_secs_f64()
    );
    println!("written_s={:.2}", written.as_secs_f64());
    println!("drained_s={:.2}", drained.as_secs_f64());
    println!(
        "files_per_s={:.0}",
        (count - left) as f64 / drained.as_secs_f64()
    );
}

fn drop_files(args: &Args) {
    let inbox = PathBuf::from(args.pos(0));
    let rate: f64 = args.get("rate", 200.0);
    let count: usize = args.get("count", 2000);
    let start = Instant::now() + Duration::from_millis(50);
    let mut late_us = 0u64;
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            late_us = late_us.max((now - due).as_micros() as u64);
        }
        let key = format!("lat-{i:06}");
        let tmp = inbox.join(format!(".{key}.json.part"));
        let body = format!(
            "{{\"permit_number\":\"{key}\",\"status\":\"ISSUED\",\"sent_us\":{}}}\n",
            wall_us()
        );
        std::fs::write(&tmp, body).expect("write into the inbox");
        std::fs::rename(&tmp, inbox.join(format!("{key}.json"))).expect("rename into the inbox");
    }
    println!("dropped={count}");
    println!("writer_max_late_ms={:.1}", late_us as f64 / 1000.0);
}
