//! Sync Queue: changes in, ordered per-target deltas out; snapshots, coalescing,
//! leases, retries and dead letters, all in one sled tree. The only module that
//! touches sled.
//!
//! ```text
//! sled tree "hms" (one tree, so that every mutation is one atomic batch)
//!   's' coll key           -> RecordEntry: the record's last known state, and per
//!                             target the seq of its unsealed waiting delta (the
//!                             coalescing index; kept beside the state because
//!                             every change reads and writes both)
//!   'p' target seq         -> a chunk of waiting deltas, in queue order: the key's seq
//!                             is the chunk's first; chunks never overlap (codec.rs)
//!   'd' target seq         -> DeadLetter (keeps its seq: the delivery id stays the same)
//!   'h' target coll key    -> seq of the dead letter that holds the record
//!   'c' target             -> Counters (next seq, pending, bytes, dead, delivered)
//! strings are written as u32 big-endian length + bytes, so no value can forge a key.
//! ```
//!
//! **Invariants:**
//! - Every mutation is one `apply_batch`; nothing is acknowledged to a source or
//!   reported to a worker before [`Queue::commit`] (flush, then fsync of `db`).
//! - Per `(target, record)`: at most one delta that can still absorb changes, and
//!   the record's entry points at it. Leasing a delta removes that pointer (durably, before
//!   it reaches the transport): a delta the legacy system may have seen is never
//!   changed again — retried as it is, under its id — and newer changes wait
//!   behind it in a delta of their own.
//! - A record with a dead letter has no delta in `'p'`: newer deltas merge into the
//!   dead letter's `held` until an operator retries or drops it.
//! - In-flight state lives in memory only: after a restart every delta is waiting.

pub mod codec;
pub mod handle;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

pub use codec::{Counters, DeadLetter, QueuedDelta, RecordEntry};

use crate::diff;
use crate::record::{ChangeSet, Delta, Flat, RecordId, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue database in {path} cannot be opened: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("the queue database failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot make the queue durable (fsync of {path}): {source}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("queue record under {key} cannot be read: {source}")]
    Codec {
        key: String,
        source: codec::CodecError,
    },
    #[error("unknown target `{0}`")]
    UnknownTarget(String),
    #[error("no dead letter {0}")]
    NoDeadLetter(String),
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
}

/// What one change set did, for the source's answer and the ingest metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ingested {
    pub changes: usize,
    pub deltas: usize,
}

pub struct Queue {
    db: sled::Db,
    tree: sled::Tree,
    db_file: File,
    db_path: PathBuf,
    targets: BTreeMap<String, Target>,
    dirty: bool,
    /// Targets that got new work since the daemon last woke their workers.
    touched: HashSet<String>,
    /// Backpressure: `max_queue_bytes` and the free space the state disk must keep.
    max_queue_bytes: u64,
    min_free_bytes: u64,
    disk_checked: Option<(std::time::Instant, u64)>,
}

// ---- key layout ----------------------------------------------------------

fn part(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn key_of(tag: u8, parts: &[&str], seq: Option<u64>) -> Vec<u8> {
    let mut k = vec![tag];
    for p in parts {
        part(&mut k, p);
    }
    if let Some(seq) = seq {
        k.extend_from_slice(&seq.to_be_bytes());
    }
    k
}

fn snapshot_key(r: &RecordId) -> Vec<u8> {
    key_of(b's', &[&r.collection, &r.key], None)
}
fn pending_key(t: &str, seq: u64) -> Vec<u8> {
    key_of(b'p', &[t], Some(seq))
}
/// Version 1 kept the coalescing index under these keys; [`Queue::open`] moves
/// them into the record entries.
#[cfg(test)]
fn index_key(t: &str, r: &RecordId) -> Vec<u8> {
    key_of(b'i', &[t, &r.collection, &r.key], None)
}
fn dead_key(t: &str, seq: u64) -> Vec<u8> {
    key_of(b'd', &[t], Some(seq))
}
fn hold_key(t: &str, r: &RecordId) -> Vec<u8> {
    key_of(b'h', &[t, &r.collection, &r.key], None)
}
fn counters_key(t: &str) -> Vec<u8> {
    key_of(b'c', &[t], None)
}

fn seq_of_key(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[k.len() - 8..]);
    u64::from_be_bytes(b)
}

fn seq_value(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if v.len() == 8 {
        b.copy_from_slice(v);
    }
    u64::from_be_bytes(b)
}

/// The strings of a key made by [`key_of`] without a seq.
fn strings_of_key(k: &[u8]) -> Option<Vec<String>> {
    let mut rest = k.get(1..)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        out.push(String::from_utf8(rest.get(4..4 + len)?.to_vec()).ok()?);
        rest = &rest[4 + len..];
    }
    Some(out)
}

/// Reads the record id back out of an 's' key.
fn record_of_snapshot_key(k: &[u8]) -> Option<RecordId> {
    match strings_of_key(k)?.as_slice() {
        [collection, key] => Some(RecordId::new(collection, key)),
        _ => None,
    }
}

/// Version 1 kept the coalescing index under `'i'` keys; moves each pointer into
/// its record's entry. Returns whether anything changed.
fn move_index_into_records(tree: &sled::Tree) -> Result<bool, QueueError> {
    let mut txn = Txn::new(tree);
    for kv in tree.scan_prefix([b'i']) {
        let (k, v) = kv?;
        txn.remove(k.to_vec());
        if let Some([target, collection, key]) = strings_of_key(&k).as_deref() {
            let record = RecordId::new(collection, key);
            let mut entry = txn.record(&record)?;
            entry.set_waiting(target, Some(seq_value(&v)));
            txn.put_record(&record, &entry);
        }
    }
    txn.apply()
}

fn describe_key(k: &[u8]) -> String {
    String::from_utf8_lossy(k)
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect()
}

/// A delivery id as users see it: `<target>:<seq>`.
pub fn delivery_id(target: &str, seq: u64) -> String {
    format!("{target}:{seq}")
}

/// Splits `county-cobol:42` into its target and seq.
pub fn parse_delivery_id(id: &str) -> Option<(&str, u64)> {
    let (t, s) = id.rsplit_once(':')?;
    Some((t, s.parse().ok()?))
}

// ---- a batch of writes with read-your-writes ------------------------------

/// A chunk takes new deltas until it holds this many...
const CHUNK_MAX: usize = 512;
/// ...or this many bytes of them. One sled write then carries hundreds of deltas
/// (sled copies a whole node on every write: per-delta keys made it the bottleneck).
const CHUNK_BYTES: usize = 256 << 10;

/// A chunk of waiting deltas as the batch sees it.
struct Chunk {
    /// Stored in sled under its key (else new in this batch).
    stored: bool,
    /// (seq, encoded delta), in seq order.
    entries: Vec<(u64, Vec<u8>)>,
    bytes: usize,
    dirty: bool,
}

impl Chunk {
    fn position(&self, seq: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&seq, |(s, _)| *s)
    }
}

/// Writes gathered in memory and applied as one atomic sled batch.
struct Txn<'a> {
    tree: &'a sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Chunks read or changed, by (target, key seq).
    chunks: BTreeMap<(String, u64), Chunk>,
    /// Per target, the chunk this batch appends new deltas to.
    tails: HashMap<String, u64>,
}

impl<'a> Txn<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        Txn {
            tree,
            writes: BTreeMap::new(),
            chunks: BTreeMap::new(),
            tails: HashMap::new(),
        }
    }

    /// The key of the chunk whose range holds `seq` (the last chunk starting at or
    /// before it), loaded into the batch. None: `seq` is before every chunk.
    fn chunk_for(&mut self, target: &str, seq: u64) -> Result<Option<u64>, QueueError> {
        let t = target.to_string();
        let cached = self
            .chunks
            .range((t.clone(), 0)..=(t.clone(), seq))
            .next_back()
            .map(|((_, k), _)| *k);
        let stored = match self
            .tree
            .range(pending_key(target, 0)..=pending_key(target, seq))
            .next_back()
        {
            Some(kv) => Some(kv?),
            None => None,
        };
        match stored {
            Some((k, v)) if cached.is_none_or(|c| c < seq_of_key(&k)) => {
                let key_seq = seq_of_key(&k);
                let entries: Vec<(u64, Vec<u8>)> = codec::chunk_entries(key_seq, &v)
                    .map_err(decode_err(&k))?
                    .into_iter()
                    .map(|(s, b)| (s, b.to_vec()))
                    .collect();
                let bytes = entries.iter().map(|(_, b)| b.len()).sum();
                self.chunks.insert(
                    (t, key_seq),
                    Chunk {
                        stored: true,
                        entries,
                        bytes,
                        dirty: false,
                    },
                );
                Ok(Some(key_seq))
            }
            _ => Ok(cached),
        }
    }

    fn chunk(&mut self, target: &str, key_seq: u64) -> &mut Chunk {
        self.chunks
            .get_mut(&(target.to_string(), key_seq))
            .expect("chunk_for loaded it")
    }

    /// The encoded waiting delta `seq` of `target`.
    fn get_delta(&mut self, target: &str, seq: u64) -> Result<Option<Vec<u8>>, QueueError> {
        let Some(k) = self.chunk_for(target, seq)? else {
            return Ok(None);
        };
        let chunk = self.chunk(target, k);
        Ok(chunk.position(seq).ok().map(|i| chunk.entries[i].1.clone()))
    }

    /// Writes delta `seq` at its place in the queue (replacing it if present).
    fn put_delta(&mut self, target: &str, seq: u64, bytes: Vec<u8>) -> Result<(), QueueError> {
        let Some(k) = self.chunk_for(target, seq)? else {
            self.new_chunk(target, seq, bytes);
            return Ok(());
        };
        let chunk = self.chunk(target, k);
        chunk.bytes += bytes.len();
        match chunk.position(seq) {
            Ok(i) => {
                chunk.bytes -= chunk.entries[i].1.len();
                chunk.entries[i].1 = bytes;
            }
            Err(i) => chunk.entries.insert(i, (seq, bytes)),
        }
        chunk.dirty = true;
        Ok(())
    }

    /// Removes delta `seq`; returns its encoding if it was there.
    fn remove_delta(&mut self, target: &str, seq: u64) -> Result<Option<Vec<u8>>, QueueError> {
        let Some(k) = self.chunk_for(target, seq)? else {
            return Ok(None);
        };
        let chunk = self.chunk(target, k);
        let Ok(i) = chunk.position(seq) else {
            return Ok(None);
        };
        let (_, bytes) = chunk.entries.remove(i);
        chunk.bytes -= bytes.len();
        chunk.dirty = true;
        Ok(Some(bytes))
    }

    /// Adds a new delta at the end of the queue (`seq` is newer than every other).
    fn append_delta(&mut self, target: &str, seq: u64, bytes: Vec<u8>) {
        if let Some(&k) = self.tails.get(target) {
            let chunk = self.chunk(target, k);
            if chunk.entries.len() < CHUNK_MAX && chunk.bytes + bytes.len() <= CHUNK_BYTES {
                chunk.bytes += bytes.len();
                chunk.entries.push((seq, bytes));
                return;
            }
        }
        self.new_chunk(target, seq, bytes);
        self.tails.insert(target.to_string(), seq);
    }

    fn new_chunk(&mut self, target: &str, seq: u64, bytes: Vec<u8>) {
        self.chunks.insert(
            (target.to_string(), seq),
            Chunk {
                stored: false,
                bytes: bytes.len(),
                entries: vec![(seq, bytes)],
                dirty: true,
            },
        );
    }

    /// Turns changed chunks into writes: the old key goes, the entries are stored
    /// again in chunks of at most [`CHUNK_MAX`] entries / [`CHUNK_BYTES`] bytes (one
    /// delta larger than that gets a chunk of its own), each keyed by its first seq.
    fn write_chunks(&mut self) {
        let chunks = std::mem::take(&mut self.chunks);
        let changed: Vec<_> = chunks.into_iter().filter(|(_, c)| c.dirty).collect();
        for ((target, k), chunk) in &changed {
            if chunk.stored {
                self.writes.insert(pending_key(target, *k), None);
            }
        }
        for ((target, _), chunk) in changed {
            let mut group: Vec<(u64, &[u8])> = Vec::new();
            let mut bytes = 0;
            let flush = |group: &mut Vec<(u64, &[u8])>, writes: &mut BTreeMap<_, _>| {
                if let Some(&(first, _)) = group.first() {
                    let value = codec::encode_chunk(group.drain(..));
                    writes.insert(pending_key(&target, first), Some(value));
                }
            };
            for (seq, entry) in &chunk.entries {
                if !group.is_empty()
                    && (group.len() >= CHUNK_MAX || bytes + entry.len() > CHUNK_BYTES)
                {
                    flush(&mut group, &mut self.writes);
                    bytes = 0;
                }
                bytes += entry.len();
                group.push((*seq, entry));
            }
            flush(&mut group, &mut self.writes);
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, QueueError> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The record's entry (empty if the queue knows nothing of it).
    fn record(&self, r: &RecordId) -> Result<RecordEntry, QueueError> {
        let key = snapshot_key(r);
        match self.get(&key)? {
            Some(v) => codec::decode_record(&v).map_err(decode_err(&key)),
            None => Ok(RecordEntry::default()),
        }
    }

    fn put_record(&mut self, r: &RecordId, entry: &RecordEntry) {
        if entry.is_empty() {
            self.remove(snapshot_key(r));
        } else {
            self.insert(snapshot_key(r), codec::encode_record(entry));
        }
    }

    /// Keys under `prefix`, as they will be once this batch is applied.
    fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, QueueError> {
        let mut keys: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();
        for kv in self.tree.scan_prefix(prefix) {
            let (k, _) = kv?;
            keys.insert(k.to_vec());
        }
        for (k, v) in self.writes.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
    }

    fn apply(mut self) -> Result<bool, QueueError> {
        self.write_chunks();
        if self.writes.is_empty() {
            return Ok(false);
        }
        let mut batch = sled::Batch::default();
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(true)
    }
}

fn decode_err(key: &[u8]) -> impl FnOnce(codec::CodecError) -> QueueError + '_ {
    move |source| QueueError::Codec {
        key: describe_key(key),
        source,
    }
}

impl Queue {
    /// Opens (or creates) the queue in `state_dir` for these targets.
    pub fn open(
        state_dir: &Path,
        cache_mib: u64,
        specs: Vec<TargetSpec>,
    ) -> Result<Queue, QueueError> {
        let open_err = |source| QueueError::Open {
            path: state_dir.to_path_buf(),
            source,
        };
        if unsafe_skip_fsync() {
            tracing::warn!(
                "HMS_SYNC_UNSAFE_SKIP_FSYNC=1: the queue does NOT fsync its store before answering; \
                 accepted changes can be lost on a power cut. For the power-loss test only, never in production"
            );
        }
        let db = sled::Config::new()
            .path(state_dir)
            .cache_capacity(cache_mib.max(1) * 1024 * 1024)
            .open()
            .map_err(open_err)?;
        let tree = db.open_tree("hms").map_err(open_err)?;
        let db_path = state_dir.join("db");
        let db_file = File::open(&db_path).map_err(|source| QueueError::Sync {
            path: db_path.clone(),
            source,
        })?;
        let migrated = move_index_into_records(&tree)?;
        let mut targets = BTreeMap::new();
        for spec in specs {
            let counters = match tree.get(counters_key(&spec.name))? {
                Some(v) => {
                    codec::decode_counters(&v).map_err(decode_err(&counters_key(&spec.name)))?
                }
                None => Counters::default(),
            };
            targets.insert(
                spec.name.clone(),
                Target {
                    spec,
                    counters,
                    in_flight: HashMap::new(),
                    in_flight_records: HashSet::new(),
                },
            );
        }
        let mut queue = Queue {
            db,
            tree,
            db_file,
            db_path,
            targets,
            dirty: migrated,
            touched: HashSet::new(),
            max_queue_bytes: u64::MAX,
            min_free_bytes: 0,
            disk_checked: None,
        };
        queue.commit()?;
        Ok(queue)
    }

    /// Makes every mutation so far durable: sled flush, then fsync of the `db` file
    /// (sled's flush alone does not reach the disk; see DEPENDENCIES.md).
    pub fn commit(&mut self) -> Result<(), QueueError> {
        if !self.dirty {
            return Ok(());
        }
        self.db.flush()?;
        if !unsafe_skip_fsync() {
            self.db_file.sync_all().map_err(|source| QueueError::Sync {
                path: self.db_path.clone(),
                source,
            })?;
        }
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
                let free = free_bytes(&self.db_path).unwrap_or(u64::MAX);
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

    fn apply(&mut self, txn: Txn<'_>) -> Result<(), QueueError> {
        if txn.apply()? {
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

    /// Bytes of all waiting deltas, for backpressure.
    pub fn pending_bytes(&self) -> u64 {
        self.targets
            .values()
            .map(|t| t.counters.pending_bytes)
            .sum()
    }

    // ---- ingest ------------------------------------------------------------

    /// Diffs every change against its snapshot and queues the deltas, each set
    /// whole or not at all; refuses with [`QueueError::Busy`] while backpressure
    /// holds. Not durable until [`Queue::commit`].
    pub fn ingest(&mut self, sets: &[ChangeSet]) -> Result<Vec<Ingested>, QueueError> {
        if let Some(reason) = self.busy_reason() {
            return Err(QueueError::Busy(reason));
        }
        let now = now_ms();
        let tree = self.tree.clone();
        let mut txn = Txn::new(&tree);
        let mut counters: BTreeMap<String, Counters> = self
            .targets
            .iter()
            .map(|(n, t)| (n.clone(), t.counters))
            .collect();
        let mut results = Vec::with_capacity(sets.len());
        for set in sets {
            let mut done = Ingested::default();
            let mut changes: Vec<(RecordId, Option<&Flat>)> = set
                .changes
                .iter()
                .map(|c| (c.record.clone(), c.doc.as_ref()))
                .collect();
            for collection in &set.full_collections {
                let present: HashSet<&str> = set
                    .changes
                    .iter()
                    .filter(|c| &c.record.collection == collection)
                    .map(|c| c.record.key.as_str())
                    .collect();
                for k in txn.keys_with_prefix(&key_of(b's', &[collection], None))? {
                    if let Some(r) = record_of_snapshot_key(&k)
                        && !present.contains(r.key.as_str())
                        && txn.record(&r)?.state.is_some()
                    {
                        changes.push((r, None));
                    }
                }
            }
            for (record, doc) in changes {
                done.changes += 1;
                let mut entry = txn.record(&record)?;
                let Some(delta) = diff::compute(entry.state.as_ref(), doc) else {
                    continue;
                };
                entry.state = doc.cloned();
                for target in self.targets.values() {
                    if !target.spec.collections.contains(&record.collection) {
                        continue;
                    }
                    let Some(projected) = diff::project(&delta, target.spec.fields.as_deref())
                    else {
                        continue;
                    };
                    let c = counters
                        .get_mut(&target.spec.name)
                        .expect("counters for every target");
                    enqueue(&mut txn, target, c, &record, &mut entry, projected, now)?;
                    done.deltas += 1;
                }
                txn.put_record(&record, &entry);
            }
            results.push(done);
        }
        for (name, c) in &counters {
            if self.targets[name].counters.next_seq != c.next_seq
                || self.targets[name].counters.pending != c.pending
            {
                self.touched.insert(name.clone());
            }
        }
        self.save_counters(&mut txn, counters);
        self.apply(txn)?;
        Ok(results)
    }

    /// Writes changed counters into the batch and adopts them in memory.
    fn save_counters(&mut self, txn: &mut Txn<'_>, counters: BTreeMap<String, Counters>) {
        for (name, c) in counters {
            let t = self
                .targets
                .get_mut(&name)
                .expect("counters only for known targets");
            if t.counters != c {
                txn.insert(counters_key(&name), codec::encode_counters(&c));
                t.counters = c;
            }
        }
    }

    // ---- the worker's side ---------------------------------------------------

    /// Hands out up to `max` deltas that may go now: in queue order, at most one
    /// per record, none for a record already in flight or waiting for a retry.
    pub fn lease(&mut self, name: &str, max: usize, now: u64) -> Result<Lease, QueueError> {
        let tree = self.tree.clone();
        let target = self
            .targets
            .get_mut(name)
            .ok_or_else(|| QueueError::UnknownTarget(name.to_string()))?;
        let mut lease = Lease::default();
        let mut txn = Txn::new(&tree);
        let mut blocked: HashSet<RecordId> = target.in_flight_records.clone();
        'chunks: for kv in tree.scan_prefix(key_of(b'p', &[name], None)) {
            let (k, chunk) = kv?;
            for (seq, v) in codec::chunk_entries(seq_of_key(&k), &chunk).map_err(decode_err(&k))? {
                if lease.items.len() >= max {
                    break 'chunks;
                }
                if target.in_flight.contains_key(&seq) {
                    continue;
                }
                let queued = codec::decode_queued(seq, v).map_err(decode_err(&k))?;
                if blocked.contains(&queued.record) {
                    continue;
                }
                if queued.not_before_ms > now {
                    lease.next_due_ms = Some(
                        lease
                            .next_due_ms
                            .map_or(queued.not_before_ms, |d| d.min(queued.not_before_ms)),
                    );
                    blocked.insert(queued.record.clone());
                    continue;
                }
                let mut entry = txn.record(&queued.record)?;
                // Sealed from now on: newer changes queue behind it, even after a
                // restart, because the legacy system may already have processed it.
                if entry.waiting_for(name) == Some(seq) {
                    entry.set_waiting(name, None);
                    txn.put_record(&queued.record, &entry);
                }
                let record = entry.state;
                blocked.insert(queued.record.clone());
                target
                    .in_flight
                    .insert(seq, (queued.record.clone(), v.len() as u64));
                target.in_flight_records.insert(queued.record.clone());
                lease.items.push(Leased { queued, record });
            }
        }
        self.apply(txn)?;
        Ok(lease)
    }

    fn take_in_flight(&mut self, name: &str, seq: u64) -> Result<Option<RecordId>, QueueError> {
        let target = self
            .targets
            .get_mut(name)
            .ok_or_else(|| QueueError::UnknownTarget(name.to_string()))?;
        let taken = target.in_flight.remove(&seq);
        if let Some((r, _)) = &taken {
            target.in_flight_records.remove(r);
        }
        Ok(taken.map(|(r, _)| r))
    }

    /// The legacy system said "got it": the deltas leave the queue.
    pub fn ack(&mut self, name: &str, seqs: &[u64]) -> Result<(), QueueError> {
        let tree = self.tree.clone();
        let mut txn = Txn::new(&tree);
        let mut c = self.target(name)?.counters;
        let target = self
            .targets
            .get_mut(name)
            .ok_or_else(|| QueueError::UnknownTarget(name.to_string()))?;
        for &seq in seqs {
            // The coalescing entry went at lease time: only the delta itself is left.
            let Some((record, size)) = target.in_flight.remove(&seq) else {
                continue;
            };
            target.in_flight_records.remove(&record);
            txn.remove_delta(name, seq)?;
            c.pending = c.pending.saturating_sub(1);
            c.pending_bytes = c.pending_bytes.saturating_sub(size);
            c.delivered += 1;
        }
        self.finish(txn, name, c)
    }

    fn finish(&mut self, mut txn: Txn<'_>, name: &str, c: Counters) -> Result<(), QueueError> {
        let mut all = BTreeMap::new();
        all.insert(name.to_string(), c);
        self.save_counters(&mut txn, all);
        self.apply(txn)
    }

    /// The target was down: the delta goes back, its attempts unchanged.
    pub fn release(&mut self, name: &str, seq: u64) -> Result<(), QueueError> {
        self.settle_failure(name, seq, |_| {})
    }

    /// The legacy system refused: count the attempt and wait until `not_before_ms`.
    pub fn retry_later(
        &mut self,
        name: &str,
        seq: u64,
        error: &str,
        not_before_ms: u64,
    ) -> Result<(), QueueError> {
        self.settle_failure(name, seq, |q| {
            q.attempts += 1;
            q.not_before_ms = not_before_ms;
            q.last_error = Some(error.to_string());
        })
    }

    /// A failed in-flight delta goes back to waiting with its delivery id and its
    /// content unchanged (the legacy system may have processed it before failing
    /// to answer; a repeat under the same id is then dropped there). Newer changes
    /// keep waiting behind it in their own delta.
    fn settle_failure(
        &mut self,
        name: &str,
        seq: u64,
        change: impl FnOnce(&mut QueuedDelta),
    ) -> Result<(), QueueError> {
        if self.take_in_flight(name, seq)?.is_none() {
            return Ok(());
        }
        let tree = self.tree.clone();
        let mut txn = Txn::new(&tree);
        let mut c = self.target(name)?.counters;
        let pkey = pending_key(name, seq);
        let Some(bytes) = txn.get_delta(name, seq)? else {
            return Ok(());
        };
        let mut queued = codec::decode_queued(seq, &bytes).map_err(decode_err(&pkey))?;
        change(&mut queued);
        let encoded = codec::encode_queued(&queued);
        c.pending_bytes = c.pending_bytes.saturating_sub(bytes.len() as u64) + encoded.len() as u64;
        txn.put_delta(name, seq, encoded)?;
        self.finish(txn, name, c)
    }

    /// Rejected for the last time: the delta becomes a dead letter that holds its
    /// record, taking in the newer delta that waited behind it. Returns the dead
    /// letter, for the log and the alert.
    pub fn dead_letter(
        &mut self,
        name: &str,
        seq: u64,
        error: &str,
    ) -> Result<Option<DeadLetter>, QueueError> {
        if self.take_in_flight(name, seq)?.is_none() {
            return Ok(None);
        }
        let tree = self.tree.clone();
        let mut txn = Txn::new(&tree);
        let mut c = self.target(name)?.counters;
        let pkey = pending_key(name, seq);
        let Some(bytes) = txn.remove_delta(name, seq)? else {
            return Ok(None);
        };
        let mut queued = codec::decode_queued(seq, &bytes).map_err(decode_err(&pkey))?;
        queued.attempts += 1;
        queued.last_error = Some(error.to_string());
        c.pending = c.pending.saturating_sub(1);
        c.pending_bytes = c.pending_bytes.saturating_sub(bytes.len() as u64);
        let mut held = None;
        let mut entry = txn.record(&queued.record)?;
        if let Some(newer_seq) = entry.waiting_for(name) {
            let nkey = pending_key(name, newer_seq);
            if let Some(nbytes) = txn.remove_delta(name, newer_seq)? {
                held = Some(
                    codec::decode_queued(newer_seq, &nbytes)
                        .map_err(decode_err(&nkey))?
                        .delta,
                );
                c.pending = c.pending.saturating_sub(1);
                c.pending_bytes = c.pending_bytes.saturating_sub(nbytes.len() as u64);
            }
            entry.set_waiting(name, None);
            txn.put_record(&queued.record, &entry);
        }
        txn.insert(hold_key(name, &queued.record), seq.to_be_bytes().to_vec());
        c.dead += 1;
        let dead = DeadLetter {
            queued,
            dead_at_ms: now_ms(),
            held,
        };
        txn.insert(dead_key(name, seq), codec::encode_dead(&dead));
        self.finish(txn, name, c)?;
        Ok(Some(dead))
    }

    // ---- the operator's side ---------------------------------------------------

    pub fn counts(&self) -> Result<Vec<QueueCounts>, QueueError> {
        let mut out = Vec::new();
        for (name, t) in &self.targets {
            let oldest = match self.tree.scan_prefix(key_of(b'p', &[name], None)).next() {
                Some(kv) => {
                    let (k, v) = kv?;
                    let entries =
                        codec::chunk_entries(seq_of_key(&k), &v).map_err(decode_err(&k))?;
                    match entries.first() {
                        Some(&(seq, bytes)) => Some(
                            codec::decode_queued(seq, bytes)
                                .map_err(decode_err(&k))?
                                .queued_at_ms,
                        ),
                        None => None,
                    }
                }
                None => None,
            };
            let in_flight = t.in_flight.len() as u64;
            out.push(QueueCounts {
                name: name.clone(),
                pending: t.counters.pending.saturating_sub(in_flight),
                in_flight,
                dead: t.counters.dead,
                delivered: t.counters.delivered,
                oldest_queued_at_ms: oldest,
            });
        }
        Ok(out)
    }

    /// Dead letters, oldest first, of one target or all.
    pub fn dead_list(&self, target: Option<&str>) -> Result<Vec<(String, DeadLetter)>, QueueError> {
        let mut out = Vec::new();
        for name in self.targets.keys() {
            if target.is_some_and(|t| t != name) {
                continue;
            }
            for kv in self.tree.scan_prefix(key_of(b'd', &[name], None)) {
                let (k, v) = kv?;
                out.push((
                    name.clone(),
                    codec::decode_dead(seq_of_key(&k), &v).map_err(decode_err(&k))?,
                ));
            }
        }
        out.sort_by_key(|(_, d)| d.dead_at_ms);
        Ok(out)
    }

    pub fn dead_get(&self, id: &str) -> Result<(String, DeadLetter), QueueError> {
        let (name, seq) =
            parse_delivery_id(id).ok_or_else(|| QueueError::NoDeadLetter(id.to_string()))?;
        self.target(name)
            .map_err(|_| QueueError::NoDeadLetter(id.to_string()))?;
        let key = dead_key(name, seq);
        match self.tree.get(&key)? {
            Some(v) => Ok((
                name.to_string(),
                codec::decode_dead(seq, &v).map_err(decode_err(&key))?,
            )),
            None => Err(QueueError::NoDeadLetter(id.to_string())),
        }
    }

    /// Puts a dead letter back at its old place, merged with what it held, with its
    /// attempts reset. Returns the delta that will go out (None: nothing left).
    pub fn dead_retry(&mut self, id: &str) -> Result<DeadLetter, QueueError> {
        let (name, dead) = self.dead_get(id)?;
        let seq = dead.queued.seq;
        let tree = self.tree.clone();
        let mut txn = Txn::new(&tree);
        let mut c = self.target(&name)?.counters;
        txn.remove(dead_key(&name, seq));
        txn.remove(hold_key(&name, &dead.queued.record));
        c.dead = c.dead.saturating_sub(1);
        let delta = match dead.held.clone() {
            Some(held) => diff::merge(dead.queued.delta.clone(), held),
            None => Some(dead.queued.delta.clone()),
        };
        if let Some(delta) = delta {
            let queued = QueuedDelta {
                delta,
                attempts: 0,
                not_before_ms: 0,
                last_error: None,
                ..dead.queued.clone()
            };
            let encoded = codec::encode_queued(&queued);
            c.pending += 1;
            c.pending_bytes += encoded.len() as u64;
            txn.put_delta(&name, seq, encoded)?;
            let mut entry = txn.record(&queued.record)?;
            entry.set_waiting(&name, Some(seq));
            txn.put_record(&queued.record, &entry);
        }
        self.finish(txn, &name, c)?;
        self.touched.insert(name.clone());
        Ok(dead)
    }

    /// Forgets a dead letter; what it held is queued as a new delta.
    pub fn dead_drop(&mut self, id: &str) -> Result<DeadLetter, QueueError> {
        let (name, dead) = self.dead_get(id)?;
        let tree = self.tree.clone();
        let mut txn = Txn::new(&tree);
        let mut c = self.target(&name)?.counters;
        txn.remove(dead_key(&name, dead.queued.seq));
        txn.remove(hold_key(&name, &dead.queued.record));
        c.dead = c.dead.saturating_sub(1);
        if let Some(held) = dead.held.clone() {
            let target = self.target(&name)?;
            let record = &dead.queued.record;
            let mut entry = txn.record(record)?;
            enqueue(&mut txn, target, &mut c, record, &mut entry, held, now_ms())?;
            txn.put_record(record, &entry);
        }
        self.finish(txn, &name, c)?;
        self.touched.insert(name.clone());
        Ok(dead)
    }

    /// The record's last known state.
    pub fn snapshot(&self, record: &RecordId) -> Result<Option<Flat>, QueueError> {
        Ok(Txn::new(&self.tree).record(record)?.state)
    }

    /// Queues up to `limit` known records of the target's collections in full
    /// (an update that sets every field), after the record `after`. Returns how many
    /// were queued and where to continue (`None`: done).
    pub fn resync(
        &mut self,
        name: &str,
        collection: Option<&str>,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<(usize, Option<RecordId>), QueueError> {
        use std::ops::Bound;
        let spec = self.target(name)?.spec.clone();
        let mut collections: Vec<&String> = spec
            .collections
            .iter()
            .filter(|c| collection.is_none_or(|want| want == c.as_str()))
            .collect();
        collections.sort();
        let tree = self.tree.clone();
        let mut txn = Txn::new(&tree);
        let mut c = self.target(name)?.counters;
        let mut queued = 0;
        let mut last = None;
        'outer: for coll in collections {
            if after.is_some_and(|a| coll.as_str() < a.collection.as_str()) {
                continue;
            }
            let prefix = key_of(b's', &[coll], None);
            let start = match after {
                Some(a) if &a.collection == coll => Bound::Excluded(snapshot_key(a)),
                _ => Bound::Included(prefix.clone()),
            };
            for kv in tree.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
                let (k, v) = kv?;
                if !k.starts_with(&prefix) {
                    break;
                }
                if queued >= limit {
                    break 'outer;
                }
                let Some(record) = record_of_snapshot_key(&k) else {
                    continue;
                };
                let mut entry = codec::decode_record(&v).map_err(decode_err(&k))?;
                let Some(state) = entry.state.clone() else {
                    continue; // deleted; kept only for a delete that waits
                };
                let delta = Delta {
                    op: crate::record::Op::Update,
                    set: state,
                    unset: Default::default(),
                };
                if let Some(delta) = diff::project(&delta, spec.fields.as_deref()) {
                    let target = self.target(name)?;
                    enqueue(
                        &mut txn,
                        target,
                        &mut c,
                        &record,
                        &mut entry,
                        delta,
                        now_ms(),
                    )?;
                    txn.put_record(&record, &entry);
                }
                queued += 1;
                last = Some(record);
            }
        }
        let more = if queued >= limit { last } else { None };
        self.finish(txn, name, c)?;
        self.touched.insert(name.to_string());
        Ok((queued, more))
    }

    /// How many records `resync` would queue.
    pub fn count_records(&self, collections: &[String]) -> usize {
        collections
            .iter()
            .map(|c| {
                self.tree
                    .scan_prefix(key_of(b's', &[c], None))
                    .filter_map(Result::ok)
                    .filter(|(_, v)| codec::decode_record(v).is_ok_and(|e| e.state.is_some()))
                    .count()
            })
            .sum()
    }

    pub fn collections_of(&self, name: &str) -> Result<Vec<String>, QueueError> {
        Ok(self.target(name)?.spec.collections.clone())
    }
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
/// Test-only switch (`HMS_SYNC_UNSAFE_SKIP_FSYNC=1`): [`Queue::commit`] skips its
/// fsync of the store, so that the power-loss test can show that it catches a
/// store that answers before its data is durable.
fn unsafe_skip_fsync() -> bool {
    static SKIP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("HMS_SYNC_UNSAFE_SKIP_FSYNC").is_some_and(|v| v == "1"))
}

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

/// Queues `delta` for `record` at `target`: into a dead letter that holds the
/// record, or merged into the record's waiting delta, or at the end of the queue.
fn enqueue(
    txn: &mut Txn<'_>,
    target: &Target,
    c: &mut Counters,
    record: &RecordId,
    entry: &mut RecordEntry,
    delta: Delta,
    now: u64,
) -> Result<(), QueueError> {
    let name = target.spec.name.as_str();
    let hkey = hold_key(name, record);
    // Holds exist only beside dead letters: without any, skip the lookup.
    if c.dead > 0
        && let Some(v) = txn.get(&hkey)?
    {
        let seq = seq_value(&v);
        let dkey = dead_key(name, seq);
        if let Some(bytes) = txn.get(&dkey)? {
            let mut dead = codec::decode_dead(seq, &bytes).map_err(decode_err(&dkey))?;
            dead.held = match dead.held.take() {
                Some(held) => diff::merge(held, delta),
                None => Some(delta),
            };
            txn.insert(dkey, codec::encode_dead(&dead));
            return Ok(());
        }
    }
    if let Some(seq) = entry.waiting_for(name) {
        if !target.in_flight.contains_key(&seq) {
            let pkey = pending_key(name, seq);
            if let Some(bytes) = txn.get_delta(name, seq)? {
                let mut queued = codec::decode_queued(seq, &bytes).map_err(decode_err(&pkey))?;
                c.pending_bytes = c.pending_bytes.saturating_sub(bytes.len() as u64);
                match diff::merge(queued.delta, delta) {
                    Some(merged) => {
                        queued.delta = merged;
                        let encoded = codec::encode_queued(&queued);
                        c.pending_bytes += encoded.len() as u64;
                        txn.put_delta(name, seq, encoded)?;
                    }
                    None => {
                        txn.remove_delta(name, seq)?;
                        entry.set_waiting(name, None);
                        c.pending = c.pending.saturating_sub(1);
                    }
                }
                return Ok(());
            }
        }
    }
    c.next_seq += 1;
    let seq = c.next_seq;
    let queued = QueuedDelta {
        seq,
        record: record.clone(),
        delta,
        attempts: 0,
        not_before_ms: 0,
        queued_at_ms: now,
        last_error: None,
    };
    let encoded = codec::encode_queued(&queued);
    c.pending += 1;
    c.pending_bytes += encoded.len() as u64;
    txn.append_delta(name, seq, encoded);
    entry.set_waiting(name, Some(seq));
    Ok(())
}

/// Opens the queue in `dir` once an earlier handle in this process has let go of
/// sled's file lock (its background threads release it a moment after the drop).
#[cfg(test)]
fn open_when_free(dir: &Path, cache_mib: u64, specs: Vec<TargetSpec>) -> Result<Queue, QueueError> {
    let mut tries = 0;
    loop {
        match Queue::open(dir, cache_mib, specs.clone()) {
            Err(QueueError::Open { .. }) if tries < 200 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
