//! The ingest Unix socket: newline-delimited JSON envelopes in, one answer line
//! per envelope out, in order, each written only once its change is durable.
//! Clients may pipeline many lines before reading answers.
//!
//! **Invariants:** a bad line gets `{"ok":false,…}` and the connection stays open;
//! a line longer than `max_line_bytes` is skipped without being held in memory;
//! answers keep the order of the lines; every "busy" answer says `"retry":
//! true`; a connection idle for [`IDLE_TIMEOUT`] is closed (its owed answers
//! written first); an idle connection holds a few KiB, and the buffer of a long
//! line is given back once the line is handled.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::parse::{Shape, parse_line};
use super::{IngestStats, Routing};
use crate::config::{Limits, SocketConfig};
use crate::queue::handle::QueueHandle;
use crate::queue::{Ingested, QueueError};
use crate::record::ChangeSet;

/// Answers a connection may have outstanding before we stop reading its lines.
const PIPELINE_DEPTH: usize = 1024;
/// Most connections served at once, whatever the file limit allows; with the
/// small buffers below an idle connection costs a few KiB, so this bounds what
/// idle clients can make the daemon hold (about 50 MiB at most).
const MAX_CONNECTIONS: usize = 4096;
/// Descriptors kept for everything but ingest connections: the store, drop
/// folder files, SOAP and serial connections, the status and control listeners.
const RESERVED_FDS: u64 = 256;
/// A connection that sends no line and is owed no answer for this long is
/// closed, as is one whose client reads no answer for this long: pooled clients
/// that forget their connections must not hold them for ever. Documented in the
/// README ("Ingest socket"); see ARCHITECTURE.md for why it is not a config key.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Read and write buffer of a connection; lines may be longer (they are
/// gathered in a separate buffer, up to `max_line_bytes`).
const IO_BUFFER: usize = 8 * 1024;
/// A line buffer grown past this by a long line is freed once the line is handled.
const KEEP_LINE_BUFFER: usize = 64 * 1024;

/// Raises the soft limit of open files to the hard limit (a local service with a
/// few hundred pooled connections is normal; the soft default is often 1024) and
/// returns the soft limit now in force.
pub fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit for the duration of the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is 32 bits on some targets
    let soft = lim.rlim_cur as u64;
    soft
}

/// Connections to serve at once with `open_files` descriptors allowed.
pub fn connection_limit(open_files: u64) -> usize {
    let spare = open_files.saturating_sub(RESERVED_FDS).max(16);
    (spare.min(MAX_CONNECTIONS as u64)) as usize
}

/// Binds the socket (replacing a stale one, refusing if a daemon answers on it)
/// and sets its mode.
pub async fn bind(cfg: &SocketConfig) -> anyhow::Result<UnixListener> {
    use anyhow::{Context, bail};
    if let Some(dir) = cfg.path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket folder {}", dir.display()))?;
    }
    if cfg.path.exists() {
        if UnixStream::connect(&cfg.path).await.is_ok() {
            bail!(
                "another process is already listening on {}; is hms-sync running twice?",
                cfg.path.display()
            );
        }
        std::fs::remove_file(&cfg.path)
            .with_context(|| format!("cannot remove the stale socket {}", cfg.path.display()))?;
    }
    let listener = UnixListener::bind(&cfg.path)
        .with_context(|| format!("cannot listen on {}", cfg.path.display()))?;
    std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(cfg.mode))
        .with_context(|| format!("cannot set the mode of {}", cfg.path.display()))?;
    Ok(listener)
}

pub struct IngestSocket {
    pub connections: Arc<tokio::sync::Semaphore>,
    /// The most connections served at once (the semaphore's size).
    pub max_connections: usize,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    pub listener: UnixListener,
    pub cfg: SocketConfig,
    pub limits: Limits,
    pub queue: QueueHandle,
    pub stats: Arc<IngestStats>,
    /// Which collections are taken (None: all, for tests of the socket alone).
    pub routing: Option<Arc<Routing>>,
    pub shutdown: watch::Receiver<bool>,
}

impl IngestSocket {
    pub fn new(
        listener: UnixListener,
        cfg: SocketConfig,
        limits: Limits,
        queue: QueueHandle,
        stats: Arc<IngestStats>,
        shutdown: watch::Receiver<bool>,
    ) -> IngestSocket {
        // The daemon raised the limit at start; raising again changes nothing.
        let max_connections = connection_limit(raise_open_file_limit());
        IngestSocket {
            connections: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            max_connections,
            idle_timeout: IDLE_TIMEOUT,
            listener,
            cfg,
            limits,
            queue,
            stats,
            routing: None,
            shutdown,
        }
    }

    /// Refuses (or counts, with `keep_unrouted`) changes no connector receives.
    pub fn with_routing(mut self, routing: Arc<Routing>) -> IngestSocket {
        self.routing = Some(routing);
        self
    }

    /// Serves at most `max_connections` at once and closes idle ones after
    /// `idle_timeout` (the defaults come from the file limit and [`IDLE_TIMEOUT`]).
    pub fn with_limits(mut self, max_connections: usize, idle_timeout: Duration) -> IngestSocket {
        self.connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
        self.max_connections = max_connections;
        self.idle_timeout = idle_timeout;
        self
    }

    pub async fn run(mut self) {
        tracing::debug!(
            max_connections = self.max_connections,
            idle_timeout = ?self.idle_timeout,
            "ingest socket limits"
        );
        let me = unsafe { libc::geteuid() };
        loop {
            let stream = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "ingest socket accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = self.shutdown.changed() => break,
            };
            let allowed = match stream.peer_cred() {
                Ok(cred) => {
                    let (uids, gids) = (&self.cfg.allow_uids, &self.cfg.allow_gids);
                    (uids.is_empty() && gids.is_empty())
                        || cred.uid() == me
                        || uids.contains(&cred.uid())
                        || gids.contains(&cred.gid())
                }
                Err(_) => false,
            };
            if !allowed {
                let who = stream
                    .peer_cred()
                    .map(|c| format!("uid {} gid {}", c.uid(), c.gid()))
                    .unwrap_or_default();
                tracing::warn!(peer = %who, "ingest socket: peer not in allow_uids/allow_gids, refused");
                tokio::spawn(async move {
                    let mut stream = stream;
                    let line = json!({"ok": false, "error": format!("refused: {who} is not allowed by [socket] allow_uids/allow_gids")});
                    let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
                });
                continue;
            }
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                let max = self.max_connections;
                IngestStats::add(&self.stats.busy, 1);
                tracing::warn!("ingest socket: {max} connections already open; refusing one more");
                tokio::spawn(async move {
                    let mut stream = stream;
                    let line = busy(&format!(
                        "busy: {max} connections already open; try again shortly"
                    ));
                    let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
                });
                continue;
            };
            let conn = Connection {
                idle_timeout: self.idle_timeout,
                limits: self.limits,
                queue: self.queue.clone(),
                stats: self.stats.clone(),
                routing: self.routing.clone(),
                shutdown: self.shutdown.clone(),
            };
            tokio::spawn(async move {
                let stats = conn.stats.clone();
                IngestStats::add(&stats.socket_clients, 1);
                conn.serve(stream).await;
                stats
                    .socket_clients
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                drop(permit);
            });
        }
        let _ = std::fs::remove_file(&self.cfg.path);
    }
}

struct Connection {
    idle_timeout: Duration,
    limits: Limits,
    queue: QueueHandle,
    stats: Arc<IngestStats>,
    routing: Option<Arc<Routing>>,
    shutdown: watch::Receiver<bool>,
}

enum Line {
    Full,
    TooLong(usize),
    Eof,
}

/// Reads one line into `buf` (without the newline), holding at most `max` bytes.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut total = 0usize;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(if total == 0 {
                Line::Eof
            } else if total > max {
                Line::TooLong(total)
            } else {
                Line::Full
            });
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i)),
            None => (available, None),
        };
        total += chunk.len();
        if total <= max {
            buf.extend_from_slice(chunk);
        } else {
            buf.clear();
        }
        let used = found.map(|i| i + 1).unwrap_or(available.len());
        r.consume(used);
        if found.is_some() {
            return Ok(if total > max {
                Line::TooLong(total)
            } else {
                Line::Full
            });
        }
    }
}

fn refused(error: &str) -> String {
    json!({"ok": false, "error": error}).to_string()
}

/// Not now, but later: every busy answer says so (SPEC §3.8), so that clients
/// send the line again instead of taking it as a refusal.
fn busy(error: &str) -> String {
    json!({"ok": false, "error": error, "retry": true}).to_string()
}

/// One answer the connection owes, in line order.
enum Owed {
    /// Known already (a refused line).
    Now(String),
    /// The queue's verdict on an ingested change, once it is durable, and the
    /// collection if no connector receives it (kept: counted once accepted).
    Ingest(
        oneshot::Receiver<Result<Ingested, QueueError>>,
        Option<String>,
    ),
}

impl Connection {
    async fn serve(mut self, stream: UnixStream) {
        let (read, write) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Owed>(PIPELINE_DEPTH);
        let stats = self.stats.clone();
        let routing = self.routing.clone();
        let idle = self.idle_timeout;
        let writer = tokio::spawn(async move {
            let mut out = BufWriter::with_capacity(IO_BUFFER, write);
            while let Some(owed) = rx.recv().await {
                let line = match owed {
                    Owed::Now(line) => line,
                    Owed::Ingest(mut answer, unrouted) => {
                        let result = match answer.try_recv() {
                            Ok(r) => Ok(r),
                            Err(oneshot::error::TryRecvError::Empty) => {
                                // Not durable yet: hand out what is ready first.
                                if !in_time(idle, out.flush()).await {
                                    return;
                                }
                                answer.await.map_err(|_| ())
                            }
                            Err(oneshot::error::TryRecvError::Closed) => Err(()),
                        };
                        let lost = || {
                            Err(QueueError::CommitFailed(
                                "the queue writer has stopped".into(),
                            ))
                        };
                        let result = result.unwrap_or_else(|()| lost());
                        if let (Ok(_), Some(c), Some(r)) = (&result, &unrouted, &routing) {
                            r.count_accepted(std::iter::once(c.as_str()));
                        }
                        answer_line(&stats, result)
                    }
                };
                // A client that reads no answers for `idle` is gone.
                if !in_time(idle, out.write_all(line.as_bytes())).await
                    || !in_time(idle, out.write_all(b"\n")).await
                {
                    return;
                }
                if rx.is_empty() && !in_time(idle, out.flush()).await {
                    return;
                }
            }
            let _ = in_time(idle, out.flush()).await;
        });
        let mut reader = BufReader::with_capacity(IO_BUFFER, read);
        let mut buf = Vec::new();
        let mut line_no = 0usize;
        loop {
            if buf.capacity() > KEEP_LINE_BUFFER {
                // Give a long line's memory back (idle connections keep little).
                buf = Vec::new();
            }
            // No whole line for `idle_timeout`: idle (or a client trickling one
            // line for ever). Owed answers are still written below.
            let read = tokio::select! {
                r = tokio::time::timeout(
                    self.idle_timeout,
                    read_line(&mut reader, &mut buf, self.limits.max_line_bytes),
                ) => match r {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::debug!("ingest socket: closing a connection idle for {:?}", self.idle_timeout);
                        break;
                    }
                },
                _ = self.shutdown.changed() => break,
            };
            let owed = match read {
                Err(_) | Ok(Line::Eof) => break,
                Ok(Line::TooLong(n)) => {
                    line_no += 1;
                    IngestStats::add(&self.stats.lines_refused, 1);
                    Owed::Now(refused(&format!(
                        "line {line_no}: {n} bytes, over the limit of {} (max_line_bytes); nothing from it was taken",
                        self.limits.max_line_bytes
                    )))
                }
                Ok(Line::Full) if buf.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Line::Full) => {
                    line_no += 1;
                    match parse_line(&buf, &Shape::Envelope, &self.limits) {
                        Err(e) => {
                            IngestStats::add(&self.stats.lines_refused, 1);
                            Owed::Now(refused(&format!("line {line_no}: {e}")))
                        }
                        Ok(change)
                            if let Some(Err(e)) = self
                                .routing
                                .as_ref()
                                .map(|r| r.check(&change.record.collection)) =>
                        {
                            IngestStats::add(&self.stats.lines_refused, 1);
                            Owed::Now(refused(&e))
                        }
                        Ok(change) => {
                            let unrouted = self
                                .routing
                                .as_ref()
                                .filter(|r| !r.is_known(&change.record.collection))
                                .map(|_| change.record.collection.clone());
                            // Submitted here, in line order, so that the queue applies
                            // a connection's changes in the order they were written.
                            let set = ChangeSet {
                                changes: vec![change],
                                full_collections: Vec::new(),
                            };
                            match self.queue.submit_ingest(set).await {
                                Ok(answer) => Owed::Ingest(answer, unrouted),
                                Err(e) => Owed::Now(answer_line(&self.stats, Err(e))),
                            }
                        }
                    }
                }
            };
            if tx.send(owed).await.is_err() {
                break;
            }
        }
        drop(tx);
        let _ = writer.await;
    }
}

/// Runs an I/O step; false if it failed or took longer than `limit`.
async fn in_time<T>(
    limit: Duration,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> bool {
    matches!(tokio::time::timeout(limit, io).await, Ok(Ok(_)))
}

/// The answer line for an ingested change.
fn answer_line(stats: &IngestStats, result: Result<Ingested, QueueError>) -> String {
    match result {
        Ok(_) => {
            IngestStats::add(&stats.lines_accepted, 1);
            IngestStats::add(&stats.changes, 1);
            json!({"ok": true}).to_string()
        }
        Err(QueueError::Busy(reason)) => {
            IngestStats::add(&stats.busy, 1);
            json!({"ok": false, "error": reason, "retry": true}).to_string()
        }
        Err(e) => {
            IngestStats::add(&stats.lines_refused, 1);
            json!({"ok": false, "error": e.to_string(), "retry": true}).to_string()
        }
    }
}

/// Removes the socket file if it is ours.
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_skipped_without_being_held() {
        let data = format!("{}\nshort\n{}", "x".repeat(100), "y".repeat(5));
        let mut r = BufReader::with_capacity(8, data.as_bytes());
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut r, &mut buf, 10).await.unwrap(),
            Line::TooLong(100)
        ));
        assert!(buf.len() <= 10);
        assert!(matches!(
            read_line(&mut r, &mut buf, 10).await.unwrap(),
            Line::Full
        ));
        assert_eq!(buf, b"short");
        assert!(matches!(
            read_line(&mut r, &mut buf, 10).await.unwrap(),
            Line::Full
        ));
        assert_eq!(buf, b"yyyyy");
        assert!(matches!(
            read_line(&mut r, &mut buf, 10).await.unwrap(),
            Line::Eof
        ));
    }

    #[test]
    fn the_connection_limit_follows_the_file_limit() {
        assert_eq!(connection_limit(1024), 768);
        assert_eq!(connection_limit(1 << 20), MAX_CONNECTIONS);
        assert_eq!(connection_limit(100), 16);
        assert!(raise_open_file_limit() >= 1);
    }

    /// A real socket and a real queue; the limits small enough to reach.
    struct Served {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        _stop: watch::Sender<bool>,
    }

    async fn serve(max_connections: usize, idle_timeout: Duration) -> Served {
        use crate::queue::{Queue, TargetSpec};
        let dir = tempfile::tempdir().unwrap();
        let spec = TargetSpec {
            name: "t".into(),
            collections: vec!["permits".into()],
            fields: None,
        };
        let queue = Queue::open(dir.path(), 1, vec![spec]).unwrap();
        let (queue, _writer) = QueueHandle::spawn(queue);
        let cfg = SocketConfig {
            path: dir.path().join("hms.sock"),
            mode: 0o600,
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
        };
        let listener = bind(&cfg).await.unwrap();
        let (stop, shutdown) = watch::channel(false);
        let socket = IngestSocket::new(
            listener,
            cfg.clone(),
            Limits::default(),
            queue,
            Arc::default(),
            shutdown,
        )
        .with_limits(max_connections, idle_timeout);
        tokio::spawn(socket.run());
        Served {
            _dir: dir,
            path: cfg.path,
            _stop: stop,
        }
    }

    async fn call(stream: &mut UnixStream, line: &str) -> serde_json::Value {
        use tokio::io::AsyncReadExt;
        stream
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
            answer.push(byte[0]);
        }
        serde_json::from_slice(&answer).unwrap()
    }

    const LINE: &str = r#"{"collection":"permits","key":"1","doc":{"a":1}}"#;

    #[tokio::test]
    async fn a_connection_over_the_limit_is_told_busy_with_retry() {
        let served = serve(2, Duration::from_secs(60)).await;
        let mut first = UnixStream::connect(&served.path).await.unwrap();
        let _second = UnixStream::connect(&served.path).await.unwrap();
        assert_eq!(call(&mut first, LINE).await["ok"], true);
        let mut third = UnixStream::connect(&served.path).await.unwrap();
        let answer = call(&mut third, LINE).await;
        assert_eq!(answer["ok"], false, "{answer}");
        assert_eq!(answer["retry"], true, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().starts_with("busy"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn idle_connections_are_closed_and_their_places_freed() {
        use tokio::io::AsyncReadExt;
        let idle = Duration::from_secs(1);
        let served = serve(2, idle).await;
        let mut a = UnixStream::connect(&served.path).await.unwrap();
        let mut b = UnixStream::connect(&served.path).await.unwrap();
        // One that talks keeps its connection past the timeout while it talks.
        for _ in 0..4 {
            assert_eq!(call(&mut a, LINE).await["ok"], true);
            tokio::time::sleep(idle / 5).await;
        }
        // The silent one is closed: end of file, well within a few timeouts.
        let started = std::time::Instant::now();
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), b.read(&mut byte))
            .await
            .expect("the idle connection was closed")
            .unwrap();
        assert_eq!(n, 0);
        assert!(started.elapsed() < Duration::from_secs(5));
        // Both places are free again once `a` falls silent too.
        let n = tokio::time::timeout(Duration::from_secs(10), a.read(&mut byte))
            .await
            .expect("the idle connection was closed")
            .unwrap();
        assert_eq!(n, 0);
        let mut c = UnixStream::connect(&served.path).await.unwrap();
        let mut d = UnixStream::connect(&served.path).await.unwrap();
        assert_eq!(call(&mut c, LINE).await["ok"], true);
        assert_eq!(call(&mut d, LINE).await["ok"], true);
    }
}
