//! A batch of queue writes with read-your-writes: reads see the store as of the
//! batch's start plus the batch's own writes; [`Txn::apply`] hands all of it to
//! the store as one atomic write.
//!
//! Waiting deltas live in *chunks*: many deltas of one target under one key, in
//! seq order, so that one write carries many deltas (codec.rs has the format).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use super::codec;
use super::keys::{describe_key, pending_key, seq_of_key, snapshot_key};
use super::store::{Reader, Store};
use super::{QueueError, RecordEntry};
use crate::record::RecordId;

/// A chunk takes new deltas until it holds this many...
const CHUNK_MAX: usize = 512;
/// ...or this many bytes of them. Each write of a chunk rewrites it whole, so a
/// chunk stays small enough that appending one delta costs little.
const CHUNK_BYTES: usize = 64 << 10;

/// A chunk of waiting deltas as the batch sees it.
struct Chunk {
    /// Stored under its key (else new in this batch).
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

/// Writes gathered in memory and applied as one atomic store write.
pub(super) struct Txn {
    reader: Reader,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Chunks read or changed, by (target, key seq).
    chunks: BTreeMap<(String, u64), Chunk>,
    /// Per target, the chunk this batch appends new deltas to.
    tails: HashMap<String, u64>,
}

impl Txn {
    pub(super) fn new(store: &Store) -> Result<Self, QueueError> {
        Ok(Txn {
            reader: store.reader()?,
            writes: BTreeMap::new(),
            chunks: BTreeMap::new(),
            tails: HashMap::new(),
        })
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
        let (lo, hi) = (pending_key(target, 0), pending_key(target, seq));
        let stored = match self
            .reader
            .range(Bound::Included(&lo), Bound::Included(&hi))?
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
    pub(super) fn get_delta(
        &mut self,
        target: &str,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, QueueError> {
        let Some(k) = self.chunk_for(target, seq)? else {
            return Ok(None);
        };
        let chunk = self.chunk(target, k);
        Ok(chunk.position(seq).ok().map(|i| chunk.entries[i].1.clone()))
    }

    /// Writes delta `seq` at its place in the queue (replacing it if present).
    pub(super) fn put_delta(
        &mut self,
        target: &str,
        seq: u64,
        bytes: Vec<u8>,
    ) -> Result<(), QueueError> {
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
    pub(super) fn remove_delta(
        &mut self,
        target: &str,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, QueueError> {
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
    pub(super) fn append_delta(&mut self, target: &str, seq: u64, bytes: Vec<u8>) {
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

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, QueueError> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        Ok(self.reader.get(key)?.map(|v| v.to_vec()))
    }

    pub(super) fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub(super) fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The record's entry (empty if the queue knows nothing of it).
    pub(super) fn record(&self, r: &RecordId) -> Result<RecordEntry, QueueError> {
        let key = snapshot_key(r);
        match self.get(&key)? {
            Some(v) => codec::decode_record(&v).map_err(decode_err(&key)),
            None => Ok(RecordEntry::default()),
        }
    }

    pub(super) fn put_record(&mut self, r: &RecordId, entry: &RecordEntry) {
        if entry.is_empty() {
            self.remove(snapshot_key(r));
        } else {
            self.insert(snapshot_key(r), codec::encode_record(entry));
        }
    }

    /// Keys under `prefix`, as they will be once this batch is applied.
    pub(super) fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, QueueError> {
        let mut keys: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();
        for kv in self.reader.scan_prefix(prefix)? {
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

    /// Hands every write to the store at once. Returns whether there were any.
    pub(super) fn apply(mut self, store: &Store) -> Result<bool, QueueError> {
        self.write_chunks();
        if self.writes.is_empty() {
            return Ok(false);
        }
        drop(self.reader);
        store.apply(self.writes)?;
        Ok(true)
    }
}

pub(super) fn decode_err(key: &[u8]) -> impl FnOnce(codec::CodecError) -> QueueError + '_ {
    move |source| QueueError::Codec {
        key: describe_key(key),
        source,
    }
}
