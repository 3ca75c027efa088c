//! Large files, taken in parts (SPEC §4 "Large files"): each part of a file's
//! changes is queued in one atomic write together with how far the file has
//! come (`'f'` key), so that a crash part-way resumes after the last part,
//! neither losing nor repeating a change. A snapshot file also marks every
//! record it holds (`'g'` keys); once all its parts are in, the records of the
//! collection without a mark are deleted, part by part, and the marks removed.
//! Memory stays that of one part, whatever the file's size.
//!
//! **Invariants:**
//! - A part is queued only if the file's progress says its first row is next: a
//!   part is never queued twice.
//! - A snapshot deletes only after every part of the file is queued, and only
//!   records the file does not hold: never a record that is in the file.
//! - One snapshot of a collection at a time: starting one clears the marks an
//!   unfinished earlier one left.

use std::ops::Bound;

use super::codec::{self, FilePhase, FileProgress};
use super::keys::{file_key, key_of, mark_key, record_of_snapshot_key, snapshot_key};
use super::txn::{Txn, decode_err};
use super::{Ingested, Queue, QueueError};
use crate::record::{Change, ChangeSet, RecordId};

/// A file in a drop folder, as the queue knows it.
#[derive(Clone, Debug)]
pub struct FileRef {
    pub dir: String,
    pub name: String,
    /// Device, inode, length, modification time (ns).
    pub identity: (u64, u64, u64, i64),
}

impl FileRef {
    fn key(&self) -> Vec<u8> {
        file_key(&self.dir, &self.name)
    }
}

impl Queue {
    /// How far `file` has come; `None` if it has not started (or a different file
    /// had its name: that one's progress no longer counts).
    pub fn file_progress(&self, file: &FileRef) -> Result<Option<FileProgress>, QueueError> {
        let key = file.key();
        let Some(bytes) = self.store.reader()?.get(&key)? else {
            return Ok(None);
        };
        let progress = codec::decode_progress(&bytes).map_err(decode_err(&key))?;
        Ok((progress.identity == file.identity).then_some(progress))
    }

    /// Starts `file` at its first change. For a snapshot of `collection`, first
    /// removes up to `limit` marks that an unfinished earlier snapshot left;
    /// `Ok(false)`: call again.
    pub fn begin_file(
        &mut self,
        file: &FileRef,
        snapshot: Option<&str>,
        limit: usize,
    ) -> Result<bool, QueueError> {
        let mut txn = Txn::new(&self.store)?;
        if let Some(collection) = snapshot
            && !self.remove_marks(&mut txn, collection, limit)?
        {
            self.apply(txn)?;
            return Ok(false);
        }
        let progress = FileProgress {
            identity: file.identity,
            rows_done: 0,
            phase: FilePhase::Ingest,
            checked_up_to: None,
        };
        txn.insert(file.key(), codec::encode_progress(&progress));
        self.apply(txn)?;
        Ok(true)
    }

    /// Queues the changes of `file` from row `first_row` on (one part), marking
    /// each record for a snapshot. Refuses with [`QueueError::Busy`] while
    /// backpressure holds, and with [`QueueError::FileProgress`] if the part is
    /// not the one that comes next.
    pub fn ingest_part(
        &mut self,
        file: &FileRef,
        first_row: u64,
        changes: &[Change],
        snapshot: bool,
    ) -> Result<Ingested, QueueError> {
        if let Some(reason) = self.busy_reason() {
            return Err(QueueError::Busy(reason));
        }
        let mut progress = self.expect_phase(file, FilePhase::Ingest)?;
        if progress.rows_done != first_row {
            return Err(QueueError::FileProgress(format!(
                "{}: the next part starts at change {}, not {first_row}",
                file.name, progress.rows_done
            )));
        }
        let mut txn = Txn::new(&self.store)?;
        if snapshot {
            for c in changes {
                txn.insert(mark_key(&c.record), Vec::new());
            }
        }
        progress.rows_done += changes.len() as u64;
        let set = ChangeSet {
            changes: changes.to_vec(),
            full_collections: Vec::new(),
        };
        let done = self.ingest_into(&mut txn, std::slice::from_ref(&set))?;
        txn.insert(file.key(), codec::encode_progress(&progress));
        self.apply(txn)?;
        Ok(done[0])
    }

    /// Every change of `file` is queued: a snapshot goes on to its deletes, any
    /// other file is done.
    pub fn file_ingested(&mut self, file: &FileRef, snapshot: bool) -> Result<(), QueueError> {
        let mut progress = self.expect_phase(file, FilePhase::Ingest)?;
        progress.phase = if snapshot {
            FilePhase::Delete
        } else {
            FilePhase::Done
        };
        self.save_progress(file, &progress)
    }

    /// Deletes the records of `collection` that the snapshot `file` does not hold,
    /// checking up to `limit` records a call. Returns what it queued and whether
    /// every record has been checked.
    pub fn snapshot_deletes(
        &mut self,
        file: &FileRef,
        collection: &str,
        limit: usize,
    ) -> Result<(Ingested, bool), QueueError> {
        if let Some(reason) = self.busy_reason() {
            return Err(QueueError::Busy(reason));
        }
        let mut progress = self.expect_phase(file, FilePhase::Delete)?;
        let reader = self.store.reader()?;
        let prefix = key_of(b's', &[collection], None);
        let after = progress
            .checked_up_to
            .as_ref()
            .map(|k| snapshot_key(&RecordId::new(collection, k.as_str())));
        let start = match &after {
            Some(k) => Bound::Excluded(k.as_slice()),
            None => Bound::Included(prefix.as_slice()),
        };
        let mut deletes = Vec::new();
        let mut finished = true;
        for (checked, kv) in reader.range(start, Bound::Unbounded)?.enumerate() {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            if checked >= limit {
                finished = false;
                break;
            }
            let Some(record) = record_of_snapshot_key(&k) else {
                continue;
            };
            let has_state = codec::decode_record(&v)
                .map_err(decode_err(&k))?
                .state
                .is_some();
            if has_state && reader.get(&mark_key(&record))?.is_none() {
                deletes.push(Change {
                    record: record.clone(),
                    doc: None,
                });
            }
            progress.checked_up_to = Some(record.key);
        }
        drop(reader);
        if finished {
            progress.phase = FilePhase::ClearMarks;
        }
        let mut txn = Txn::new(&self.store)?;
        let set = ChangeSet {
            changes: deletes,
            full_collections: Vec::new(),
        };
        let done = self.ingest_into(&mut txn, std::slice::from_ref(&set))?;
        txn.insert(file.key(), codec::encode_progress(&progress));
        self.apply(txn)?;
        Ok((done[0], finished))
    }

    /// Removes up to `limit` of the snapshot's marks; `Ok(true)`: none left, the
    /// file is done.
    pub fn clear_marks(
        &mut self,
        file: &FileRef,
        collection: &str,
        limit: usize,
    ) -> Result<bool, QueueError> {
        let mut progress = self.expect_phase(file, FilePhase::ClearMarks)?;
        let mut txn = Txn::new(&self.store)?;
        let cleared = self.remove_marks(&mut txn, collection, limit)?;
        if cleared {
            progress.phase = FilePhase::Done;
            txn.insert(file.key(), codec::encode_progress(&progress));
        }
        self.apply(txn)?;
        Ok(cleared)
    }

    /// The file has left the inbox: its progress goes.
    pub fn forget_file(&mut self, file: &FileRef) -> Result<(), QueueError> {
        let mut txn = Txn::new(&self.store)?;
        txn.remove(file.key());
        self.apply(txn)
    }

    /// Up to `limit` marks of `collection` into the batch as removals; whether
    /// that was all of them.
    fn remove_marks(
        &self,
        txn: &mut Txn,
        collection: &str,
        limit: usize,
    ) -> Result<bool, QueueError> {
        let reader = self.store.reader()?;
        let prefix = key_of(b'g', &[collection], None);
        for (removed, kv) in reader.scan_prefix(&prefix)?.enumerate() {
            if removed >= limit {
                return Ok(false);
            }
            let (k, _) = kv?;
            txn.remove(k.to_vec());
        }
        Ok(true)
    }

    fn expect_phase(&self, file: &FileRef, phase: FilePhase) -> Result<FileProgress, QueueError> {
        match self.file_progress(file)? {
            Some(p) if p.phase == phase => Ok(p),
            other => Err(QueueError::FileProgress(format!(
                "{}: expected to be at {phase:?}, but it is at {:?}",
                file.name,
                other.map(|p| p.phase)
            ))),
        }
    }

    fn save_progress(&mut self, file: &FileRef, progress: &FileProgress) -> Result<(), QueueError> {
        let mut txn = Txn::new(&self.store)?;
        txn.insert(file.key(), codec::encode_progress(progress));
        self.apply(txn)
    }
}
