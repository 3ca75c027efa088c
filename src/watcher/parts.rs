//! Large dropped files, taken in parts (SPEC §4 "Large files"): read twice,
//! streaming, never whole in memory. The first pass checks the whole file (a bad
//! file is rejected whole, nothing of it taken); the second hands its changes to
//! the queue [`PART`] at a time, each part durable with the file's progress
//! (queue/files.rs), so that after a crash the file resumes where it stopped.
//! A snapshot then deletes the records it does not hold. The file leaves the
//! inbox once all of it is queued.
//!
//! **Invariant:** memory is bounded by two parts in flight (the parser reads
//! one part ahead), whatever the file's size.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::IngestStats;
use super::dropdir::{DropDir, Identity, ReadError, Taken, open_limited};
use super::parse::{ParseError, stream_file};
use crate::queue::QueueError;
use crate::queue::codec::FilePhase;
use crate::queue::files::FileRef;
use crate::record::Change;

/// Files larger than this are taken in parts; smaller ones whole, in one atomic
/// write (one file, one commit, as before).
pub const PARTS_FROM_BYTES: u64 = 4 << 20;
/// Changes queued in one atomic write.
const PART: usize = 5_000;
/// Records checked (deletes) or marks removed in one write.
const SWEEP: usize = 20_000;
/// How often a file in progress is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Why taking a file in parts stopped before its end.
enum Stop {
    /// Shutdown, or a queue error: try again later; progress is kept.
    Later,
    /// The file changed under us or went away.
    Gone,
}

impl DropDir {
    pub(super) async fn take_in_parts(&self, path: &Path, name: &str) -> Taken {
        let (_, identity) = match open_limited(path, self.limits.max_file_bytes) {
            Ok(f) => f,
            Err(ReadError::Gone | ReadError::Directory) => return Taken::Gone,
            Err(ReadError::Bad(reason)) => return self.reject(path, name, &reason),
            Err(ReadError::Io(e)) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read a dropped file; will try again");
                return Taken::Later;
            }
        };
        let file = FileRef {
            dir: self.watch.dir.display().to_string(),
            name: name.to_string(),
            identity: identity.as_tuple(),
        };
        self.stats.begin_progress(&self.watch.dir, name, 0);
        let taken = self.take_in_parts_shown(path, name, identity, file).await;
        self.stats.progress(&self.watch.dir, None);
        taken
    }

    /// [`DropDir::take_in_parts`]' work, its progress shown in `stats`.
    async fn take_in_parts_shown(
        &self,
        path: &Path,
        name: &str,
        identity: super::dropdir::Identity,
        file: FileRef,
    ) -> Taken {
        let dir = self.watch.dir.clone();
        let show = |f: &dyn Fn(&mut super::FileProgress)| self.stats.progress(&dir, Some(f));
        let known = {
            let file = file.clone();
            self.queue.call(move |q| q.file_progress(&file)).await
        };
        let progress = match known {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(file = %name, error = %e, "cannot read the progress of a large file; will try again");
                return Taken::Later;
            }
        };
        let snapshot = self.watch.snapshot.then(|| self.watch.collection.clone());
        let (mut phase, rows_done) = match progress {
            Some(p) => {
                tracing::info!(file = %name, rows_done = p.rows_done, phase = ?p.phase, "resuming a large file where it stopped");
                show(&|s| s.rows_done = p.rows_done);
                (p.phase, p.rows_done)
            }
            None => {
                let started = Instant::now();
                let rows = match self.check_whole(path, name, identity).await {
                    Ok(rows) => rows,
                    Err(taken) => return taken,
                };
                tracing::info!(file = %name, rows, seconds = started.elapsed().as_secs_f32(), "large file checked whole; taking it in parts");
                show(&|s| s.rows_total = Some(rows));
                loop {
                    let (file, snapshot) = (file.clone(), snapshot.clone());
                    match self
                        .queue
                        .call(move |q| q.begin_file(&file, snapshot.as_deref(), SWEEP))
                        .await
                    {
                        Ok(true) => break,
                        Ok(false) => continue,
                        Err(e) => {
                            tracing::error!(file = %name, error = %e, "cannot start a large file; will try again");
                            return Taken::Later;
                        }
                    }
                }
                (FilePhase::Ingest, 0)
            }
        };
        let steps = async {
            if phase == FilePhase::Ingest {
                show(&|s| s.phase = "queuing");
                self.queue_parts(path, &file, rows_done, identity).await?;
                phase = if snapshot.is_some() {
                    FilePhase::Delete
                } else {
                    FilePhase::Done
                };
            }
            if let Some(collection) = &snapshot {
                if phase == FilePhase::Delete {
                    tracing::info!(file = %file.name, "snapshot: every part queued; deleting the records it lacks");
                    show(&|s| s.phase = "deleting absent records");
                    self.sweep(&file, collection, true).await?;
                    phase = FilePhase::ClearMarks;
                }
                if phase == FilePhase::ClearMarks {
                    tracing::info!(file = %file.name, "snapshot: deletes queued; clearing its marks");
                    show(&|s| s.phase = "clearing marks");
                    self.sweep(&file, collection, false).await?;
                }
            }
            Ok::<(), Stop>(())
        };
        match steps.await {
            Ok(()) => {}
            Err(Stop::Later) => return Taken::Later,
            Err(Stop::Gone) => return Taken::Gone,
        }
        if let Err(e) = self.remove_or_archive(path, name, identity) {
            tracing::error!(file = %path.display(), error = %e, "taken whole, but cannot remove it from the inbox");
            return Taken::Accepted;
        }
        let forget = file.clone();
        if let Err(e) = self.queue.call(move |q| q.forget_file(&forget)).await {
            tracing::warn!(file = %name, error = %e, "cannot forget a finished large file's progress");
        }
        IngestStats::add(&self.stats.files_accepted, 1);
        tracing::info!(file = %name, "large file accepted");
        Taken::Accepted
    }

    /// The first pass: the whole file parses. Returns how many changes it holds.
    async fn check_whole(&self, path: &Path, name: &str, identity: Identity) -> Result<u64, Taken> {
        let (watch, limits, file_name, p, routing) = (
            self.watch.clone(),
            self.limits,
            name.to_string(),
            path.to_path_buf(),
            self.routing.clone(),
        );
        let checked = tokio::task::spawn_blocking(move || {
            let (file, _) = open_limited(&p, limits.max_file_bytes).map_err(|_| None)?;
            // A change for a collection no connector receives rejects the file
            // whole, as it does a small one (SPEC §4 "Unrouted collections").
            let check =
                &mut |c: Change| routing.check(&c.record.collection).map_err(ParseError::msg);
            let snapshot_collection = watch.snapshot.then(|| watch.collection.clone());
            if let Some(c) = &snapshot_collection {
                routing.check(c).map_err(|e| Some(ParseError::msg(e)))?;
            }
            stream_file(&file_name, file, &watch, &limits, check).map_err(Some)
        })
        .await;
        match checked {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(Some(e))) => {
                if path.symlink_metadata().ok().map(|m| Identity::of(&m)) != Some(identity) {
                    return Err(Taken::Gone);
                }
                Err(self.reject(path, name, &e.to_string()))
            }
            Ok(Err(None)) => Err(Taken::Later),
            Err(_) => Err(self.reject(
                path,
                name,
                "hms-sync's parser failed on this file (a bug in hms-sync: please report it with the file)",
            )),
        }
    }

    /// The second pass: the changes after `rows_done`, a part at a time.
    async fn queue_parts(
        &self,
        path: &Path,
        file: &FileRef,
        rows_done: u64,
        identity: Identity,
    ) -> Result<(), Stop> {
        let (tx, mut rx) = mpsc::channel::<Arc<Vec<Change>>>(1);
        let (watch, limits, name, p) = (
            self.watch.clone(),
            self.limits,
            file.name.clone(),
            path.to_path_buf(),
        );
        let parser = tokio::task::spawn_blocking(move || {
            let (reader, now) = open_limited(&p, limits.max_file_bytes)
                .map_err(|_| ParseError::msg("the file went away"))?;
            if now != identity {
                return Err(ParseError::msg("the file changed"));
            }
            let mut seen = 0u64;
            let mut part = Vec::with_capacity(PART);
            stream_file(&name, reader, &watch, &limits, &mut |c| {
                seen += 1;
                if seen <= rows_done {
                    return Ok(());
                }
                part.push(c);
                if part.len() == PART {
                    let full = std::mem::replace(&mut part, Vec::with_capacity(PART));
                    tx.blocking_send(Arc::new(full))
                        .map_err(|_| ParseError::msg("stopped"))?;
                }
                Ok(())
            })?;
            if !part.is_empty() {
                tx.blocking_send(Arc::new(part))
                    .map_err(|_| ParseError::msg("stopped"))?;
            }
            Ok(())
        });
        let mut next_row = rows_done;
        let mut last_log = Instant::now();
        while let Some(part) = rx.recv().await {
            let count = part.len() as u64;
            self.queue_one_part(file, next_row, part.clone()).await?;
            self.routing
                .count_accepted(part.iter().map(|c| c.record.collection.as_str()));
            next_row += count;
            IngestStats::add(&self.stats.changes, count);
            self.stats
                .progress(&self.watch.dir, Some(&|s| s.rows_done = next_row));
            if last_log.elapsed() >= LOG_EVERY {
                tracing::info!(file = %file.name, rows_done = next_row, "large file in progress");
                last_log = Instant::now();
            }
        }
        match parser.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(file = %file.name, error = %e, "a large file changed or went away while it was taken; it is looked at again");
                return Err(Stop::Gone);
            }
            Err(_) => return Err(Stop::Later),
        }
        let done = file.clone();
        let snapshot = self.watch.snapshot;
        self.queue
            .call(move |q| q.file_ingested(&done, snapshot))
            .await
            .map_err(|e| {
                tracing::error!(file = %file.name, error = %e, "cannot finish a large file; will try again");
                Stop::Later
            })
    }

    /// One part, waiting out backpressure (SPEC §3.8) as a small file would.
    async fn queue_one_part(
        &self,
        file: &FileRef,
        first_row: u64,
        part: Arc<Vec<Change>>,
    ) -> Result<(), Stop> {
        loop {
            if *self.shutdown.borrow() {
                return Err(Stop::Later);
            }
            let (f, changes, snapshot) = (file.clone(), part.clone(), self.watch.snapshot);
            match self
                .queue
                .call(move |q| q.ingest_part(&f, first_row, &changes, snapshot))
                .await
            {
                Ok(_) => return Ok(()),
                Err(QueueError::Busy(reason)) => {
                    IngestStats::add(&self.stats.busy, 1);
                    tracing::debug!(file = %file.name, %reason, "ingestion paused; the large file waits");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    tracing::error!(file = %file.name, error = %e, "cannot queue a part of a large file; will try again");
                    return Err(Stop::Later);
                }
            }
        }
    }

    /// A snapshot's deletes (`deletes`) or the removal of its marks, a sweep at
    /// a time until done.
    async fn sweep(&self, file: &FileRef, collection: &str, deletes: bool) -> Result<(), Stop> {
        loop {
            if *self.shutdown.borrow() {
                return Err(Stop::Later);
            }
            let (f, c) = (file.clone(), collection.to_string());
            let step = if deletes {
                self.queue
                    .call(move |q| q.snapshot_deletes(&f, &c, SWEEP).map(|(_, done)| done))
                    .await
            } else {
                self.queue.call(move |q| q.clear_marks(&f, &c, SWEEP)).await
            };
            match step {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(QueueError::Busy(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => {
                    tracing::error!(file = %file.name, error = %e, "cannot finish a snapshot; will try again");
                    return Err(Stop::Later);
                }
            }
        }
    }
}
