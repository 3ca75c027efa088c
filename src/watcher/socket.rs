//! The ingest Unix socket: newline-delimited JSON envelopes in, one answer line
//! per envelope out, in order, each written only once its change is durable.
//! Clients may pipeline many lines before reading answers.
//!
//! **Invariants:** a bad line gets `{"ok":false,…}` and the connection stays open;
//! a line longer than `max_line_bytes` is skipped without being held in memory;
//! answers keep the order of the lines.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::IngestStats;
use super::parse::{Shape, parse_line};
use crate::config::{Limits, SocketConfig};
use crate::queue::handle::QueueHandle;
use crate::queue::{Ingested, QueueError};
use crate::record::ChangeSet;

/// Answers a connection may have outstanding before we stop reading its lines.
const PIPELINE_DEPTH: usize = 1024;
/// Connections served at once; with PIPELINE_DEPTH and max_line_bytes this bounds
/// the memory that clients can make the daemon hold.
const MAX_CONNECTIONS: usize = 256;

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
    pub listener: UnixListener,
    pub cfg: SocketConfig,
    pub limits: Limits,
    pub queue: QueueHandle,
    pub stats: Arc<IngestStats>,
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
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        IngestSocket {
            connections,
            listener,
            cfg,
            limits,
            queue,
            stats,
            shutdown,
        }
    }

    pub async fn run(mut self) {
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
                tracing::warn!(
                    "ingest socket: {MAX_CONNECTIONS} connections already open; refusing one more"
                );
                tokio::spawn(async move {
                    let mut stream = stream;
                    let line =
                        refused(&format!("busy: {MAX_CONNECTIONS} connections already open"));
                    let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
                });
                continue;
            };
            let conn = Connection {
                limits: self.limits,
                queue: self.queue.clone(),
                stats: self.stats.clone(),
                shutdown: self.shutdown.clone(),
            };
            tokio::spawn(async move {
                conn.serve(stream).await;
                drop(permit);
            });
        }
        let _ = std::fs::remove_file(&self.cfg.path);
    }
}

struct Connection {
    limits: Limits,
    queue: QueueHandle,
    stats: Arc<IngestStats>,
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

/// One answer the connection owes, in line order.
enum Owed {
    /// Known already (a refused line).
    Now(String),
    /// The queue's verdict on an ingested change, once it is durable.
    Ingest(oneshot::Receiver<Result<Ingested, QueueError>>),
}

impl Connection {
    async fn serve(mut self, stream: UnixStream) {
        let (read, write) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Owed>(PIPELINE_DEPTH);
        let stats = self.stats.clone();
        let writer = tokio::spawn(async move {
            let mut out = BufWriter::new(write);
            while let Some(owed) = rx.recv().await {
                let line = match owed {
                    Owed::Now(line) => line,
                    Owed::Ingest(mut answer) => {
                        let result = match answer.try_recv() {
                            Ok(r) => Ok(r),
                            Err(oneshot::error::TryRecvError::Empty) => {
                                // Not durable yet: hand out what is ready first.
                                if out.flush().await.is_err() {
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
                        answer_line(&stats, result.unwrap_or_else(|()| lost()))
                    }
                };
                if out.write_all(line.as_bytes()).await.is_err()
                    || out.write_all(b"\n").await.is_err()
                {
                    return;
                }
                if rx.is_empty() && out.flush().await.is_err() {
                    return;
                }
            }
            let _ = out.flush().await;
        });
        let mut reader = BufReader::with_capacity(64 * 1024, read);
        let mut buf = Vec::new();
        let mut line_no = 0usize;
        loop {
            let read = tokio::select! {
                r = read_line(&mut reader, &mut buf, self.limits.max_line_bytes) => r,
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
                        Ok(change) => {
                            // Submitted here, in line order, so that the queue applies
                            // a connection's changes in the order they were written.
                            let set = ChangeSet {
                                changes: vec![change],
                                full_collections: Vec::new(),
                            };
                            match self.queue.submit_ingest(set).await {
                                Ok(answer) => Owed::Ingest(answer),
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
}
