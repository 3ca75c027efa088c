//! Sync Queue: changes in, ordered per-target deltas out; snapshots, coalescing,
//! leases, retries and dead letters, all in one ordered key-value table of one
//! file, `<state_dir>/queue.redb`. The only module that touches the store.
//!
//! ```text
//! table "hms" in queue.redb (one table, so that every mutation is one atomic write)
//!   's' coll key           -> RecordEntry: the record's last known state, and per
//!                             target the seq of its unsealed waiting delta (the
//!                             coalescing index; kept beside the state because
//!                             every change reads and writes both)
//!   'p' target seq         -> a chunk of waiting deltas, in queue order: the key's seq
//!                             is the chunk's first; chunks never overlap (codec.rs)
//!   'd' target seq         -> DeadLetter (keeps its seq: the delivery id stays the same)
//!   'h' target coll key    -> seq of the dead letter that holds the record
//!   'c' target             -> Counters (next seq, pending, bytes, dead, delivered)
//!   'f' dir name           -> FileProgress of a large file taken in parts (files.rs)
//!   'g' coll key           -> (empty) the snapshot file in progress holds this record
//! strings are written as u32 big-endian length + bytes, so no value can forge a key.
//! ```
//!
//! The code follows that flow: `keys.rs` (the layout above), `txn.rs` (a batch
//! of writes with read-your-writes), `ingest.rs` (changes in), `worker.rs` (lease,
//! ack, retry, dead letter), `operator.rs` (status, dead letters, resync),
//! `files.rs` (large files in parts, snapshot deletes),
//! `store.rs` (the file), `migrate.rs` (older state folders), `recover.rs` (a
//! damaged file), `handle.rs` (the one writer thread and group commit).
//!
//! **Invariants:**
//! - Every mutation is one atomic store write; nothing is acknowledged to a source
//!   or reported to a worker before [`Queue::commit`] made it durable (synced).
//! - Per `(target, record)`: at most one delta that can still absorb changes, and
//!   the record's entry points at it. Leasing a delta removes that pointer (durably, before
//!   it reaches the transport): a delta the legacy system may have seen is never
//!   changed again — retried as it is, under its id — and newer changes wait
//!   behind it in a delta of their own.
//! - A record with a dead letter has no delta in `'p'`: newer deltas merge into the
//!   dead letter's `held` until an operator retries or drops it.
//! - In-flight state lives in memory only: after a restart every delta is waiting.

pub mod codec;
pub mod files;
pub mod handle;
mod ingest;
mod keys;
pub mod migrate;
mod operator;
pub mod recover;
pub mod store;
mod targets;
mod txn;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

pub use codec::{Counters, DeadLetter, QueuedDelta, RecordEntry};
pub use keys::{delivery_id, parse_delivery_id};
pub use operator::{RecordView, TargetView};
pub use store::StoreError;
pub use targets::TargetChanges;

use crate::record::{Flat, RecordId};
use keys::counters_key;
use store::Store;
use txn::{Txn, decode_err};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot upgrade the state folder ({path}): {source}")]
    Migrate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the old (sled) queue in {path} cannot be read for the upgrade: {source}")]
    SledMigrate { path: PathBuf, source: sled::Error },
    #[error("queue record under {key} cannot be read: {source}")]
    Codec {
        key: String,
        source: codec::CodecError,
    },
    #[error("unknown target `{0}`")]
    UnknownTarget(String),
    /// `forget` of a target whose connector is still configured.
    #[error(
        "`{0}` still has a connector; remove its folder from the connectors folder and reload before forgetting its queue"
    )]
    HasConnector(String),
    #[error("no dead letter {0}")]
    NoDeadLetter(String),
    /// A large file's part does not fit its recorded progress (a bug, or two
    /// watchers on one file).
    #[error("large file out of step: {0}")]
    FileProgress(String),
    /// Ingestion must pause (SPEC §3.8); the source should retry.
    #[error("{0}")]
    Busy(String),
    #[error("the queue could not be made durable, nothing was accepted: {0}")]
    CommitFailed(String),
    /// The batch this change was ingested with failed as a whole (the reason is
    /// the original error's text); nothing of it was accepted.
    #[error("nothing was accepted: {0}")]
    Batch(String),
}

impl QueueError {
    /// The same error for every source of a batch that failed together.
    pub fn duplicate(&self) -> QueueError {
        match self {
            QueueError::Busy(reason) => QueueError::Busy(reason.clone()),
            other => QueueError::Batch(other.to_string()),
        }
    }
}

/// What the queue needs to know of a connector.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    pub name: String,
    pub collections: Vec<String>,
    pub fields: Option<Vec<String>>,
}

struct Target {
    spec: TargetSpec,
    counters: Counters,
    /// seq -> (record, stored size), for deltas handed to the transport and not
    /// yet answered. A handed-out delta never changes, so its size stays true.
    in_flight: HashMap<u64, (RecordId, u64)>,
    in_flight_records: HashSet<RecordId>,
    /// No connector any more (removed by a reload, or absent at start) but
    /// deltas or dead letters left: kept, not delivered (targets.rs).
    orphaned: bool,
}

/// A delta handed to a worker, with the record's latest known state (read after
/// the last commit, so it is durable) for translators that send whole rows.
#[derive(Clone, Debug)]
pub struct Leased {
    pub queued: QueuedDelta,
    pub record: Option<Flat>,
}

#[derive(Debug, Default)]
pub struct Lease {
    pub items: Vec<Leased>,
    /// Earliest `not_before` among deltas skipped because they wait for a retry.
    pub next_due_ms: Option<u64>,
}

/// Numbers for `status`, from memory and one key lookup per target.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueueCounts {
    pub name: String,
    pub pending: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub delivered: u64,
    pub oldest_queued_at_ms: Option<u64>,
    /// Its connector was removed; its queue is kept (see `forget`).
    #[serde(default)]
    pub orphaned: bool,
}

/// What one change set did, for the source's answer and the ingest metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ingested {
    pub changes: usize,
    pub deltas: usize,
}

pub struct Queue {
    store: Store,
    /// The state folder, for the free-space check.
    state_dir: PathBuf,
    targets: BTreeMap<String, Target>,
    dirty: bool,
    /// Targets that got new work since the daemon last woke their workers.
    touched: HashSet<String>,
    /// Backpressure: `max_queue_bytes` and the free space the state disk must keep.
    max_queue_bytes: u64,
    min_free_bytes: u64,
    disk_checked: Option<(std::time::Instant, u64)>,
}

/// Whether `state_dir` holds a queue (or an older one that `open` upgrades).
pub fn exists(state_dir: &Path) -> bool {
    state_dir.join(store::FILE_NAME).exists() || migrate::has_sled(state_dir)
}

/// What `check` says of the queue in `state_dir`, without changing it (except
/// for the repair that opening after a crash does). Err: it cannot be opened.
pub fn probe(state_dir: &Path, cache_mib: u64) -> Result<String, QueueError> {
    if !state_dir.join(store::FILE_NAME).exists() {
        return Ok(if migrate::has_sled(state_dir) {
            "an older (sled) queue, moved into queue.redb at the next start".into()
        } else {
            "none yet (created at the first start)".into()
        });
    }
    match Store::open(state_dir, cache_mib) {
        Ok(store) => Ok(format!(
            "{} ({} entries)",
            store.path().display(),
            store.reader()?.count()?
        )),
        Err(StoreError::Locked { path }) => {
            Ok(format!("{} (in use by the running daemon)", path.display()))
        }
        Err(e) => Err(e.into()),
    }
}

impl Queue {
    /// Opens (or creates) the queue in `state_dir` for these targets, upgrading
    /// an older state folder first (see migrate.rs).
    pub fn open(
        state_dir: &Path,
        cache_mib: u64,
        specs: Vec<TargetSpec>,
    ) -> Result<Queue, QueueError> {
        if let Some(done) = migrate::from_sled(state_dir, cache_mib)? {
            tracing::info!(
                keys = done.keys,
                backup = %done.backup.display(),
                "moved the queue from sled into queue.redb; the old files are kept aside"
            );
        }
        let store = Store::open(state_dir, cache_mib)?;
        let migrated = migrate::move_index_into_records(&store)?;
        let reader = store.reader()?;
        let mut targets = BTreeMap::new();
        for spec in specs {
            let key = counters_key(&spec.name);
            let counters = match reader.get(&key)? {
                Some(v) => codec::decode_counters(&v).map_err(decode_err(&key))?,
                None => Counters::default(),
            };
            targets.insert(spec.name.clone(), Target::new(spec, counters));
        }
        drop(reader);
        let mut queue = Queue {
            store,
            state_dir: state_dir.to_path_buf(),
            targets,
            dirty: migrated,
            touched: HashSet::new(),
            max_queue_bytes: u64::MAX,
            min_free_bytes: 0,
            disk_checked: None,
        };
        queue.find_orphans()?;
        queue.commit()?;
        Ok(queue)
    }

    /// Makes every mutation so far durable (one fsync of the store's file).
    pub fn commit(&mut self) -> Result<(), QueueError> {
        if !self.dirty {
            return Ok(());
        }
        self.store.commit()?;
        self.dirty = false;
        Ok(())
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Targets that got new work since the last call.
    pub fn take_touched(&mut self) -> HashSet<String> {
        std::mem::take(&mut self.touched)
    }

    pub fn set_limits(&mut self, max_queue_bytes: u64, min_free_bytes: u64) {
        self.max_queue_bytes = max_queue_bytes;
        self.min_free_bytes = min_free_bytes;
    }

    /// Why ingestion must pause now, if it must (SPEC §3.8).
    pub fn busy_reason(&mut self) -> Option<String> {
        let queued = self.pending_bytes();
        if queued > self.max_queue_bytes {
            return Some(format!(
                "busy: the queue holds {} MiB, over max_queue_bytes ({} MiB); waiting for deliveries",
                queued >> 20,
                self.max_queue_bytes >> 20
            ));
        }
        if self.min_free_bytes > 0 {
            let fresh = self
                .disk_checked
                .is_some_and(|(at, _)| at.elapsed() < std::time::Duration::from_millis(500));
            if !fresh {
                let free = free_bytes(&self.state_dir).unwrap_or(u64::MAX);
                self.disk_checked = Some((std::time::Instant::now(), free));
            }
            let free = self.disk_checked.map(|(_, f)| f).unwrap_or(u64::MAX);
            if free < self.min_free_bytes {
                return Some(format!(
                    "busy: the disk of the state folder has {} MiB free, under min_free_disk_mib ({} MiB)",
                    free >> 20,
                    self.min_free_bytes >> 20
                ));
            }
        }
        None
    }

    fn apply(&mut self, txn: Txn) -> Result<(), QueueError> {
        if txn.apply(&self.store)? {
            self.dirty = true;
        }
        Ok(())
    }

    fn target(&self, name: &str) -> Result<&Target, QueueError> {
        self.targets
            .get(name)
            .ok_or_else(|| QueueError::UnknownTarget(name.to_string()))
    }

    pub fn target_names(&self) -> Vec<String> {
        self.targets.keys().cloned().collect()
    }

    /// Bytes of the waiting deltas of targets with a connector, for
    /// backpressure: an orphaned target's queue is not delivered, so it never
    /// shrinks and must not pause ingestion for everyone else (the free-disk
    /// guard still counts it).
    pub fn pending_bytes(&self) -> u64 {
        self.targets
            .values()
            .filter(|t| !t.orphaned)
            .map(|t| t.counters.pending_bytes)
            .sum()
    }
}

#[cfg(test)]
impl Queue {
    /// Bytes of `name`'s waiting deltas as stored, chunk by chunk (what
    /// `pending_bytes` must equal).
    fn stored_bytes(&self, name: &str) -> Result<u64, QueueError> {
        let reader = self.store.reader()?;
        let prefix = keys::key_of(b'p', &[name], None);
        let mut sum = 0;
        for kv in reader.scan_prefix(&prefix)? {
            let (k, v) = kv?;
            let entries = codec::chunk_entries(keys::seq_of_key(&k), &v).map_err(decode_err(&k))?;
            sum += entries.iter().map(|(_, e)| e.len() as u64).sum::<u64>();
        }
        Ok(sum)
    }
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
