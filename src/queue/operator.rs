//! The operator's side: counts for `status`, dead letters (list, show, retry,
//! drop), a record's snapshot, and `resync`.

use std::ops::Bound;

use super::ingest::enqueue;
use super::keys::{
    dead_key, hold_key, key_of, parse_delivery_id, record_of_snapshot_key, seq_of_key, snapshot_key,
};
use super::txn::{Txn, decode_err};
use super::{DeadLetter, Queue, QueueCounts, QueueError, QueuedDelta, codec};
use crate::diff;
use crate::record::{Delta, Flat, RecordId, now_ms};

impl Queue {
    pub fn counts(&self) -> Result<Vec<QueueCounts>, QueueError> {
        let mut out = Vec::new();
        for (name, t) in &self.targets {
            let reader = self.store.reader()?;
            let prefix = key_of(b'p', &[name], None);
            let oldest = match reader.scan_prefix(&prefix)?.next() {
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
                orphaned: t.orphaned,
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
            let reader = self.store.reader()?;
            let prefix = key_of(b'd', &[name], None);
            for kv in reader.scan_prefix(&prefix)? {
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
        match self.store.reader()?.get(&key)? {
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
        let mut txn = Txn::new(&self.store)?;
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
        let mut txn = Txn::new(&self.store)?;
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
        Ok(Txn::new(&self.store)?.record(record)?.state)
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
        let spec = self.target(name)?.spec.clone();
        let mut collections: Vec<&String> = spec
            .collections
            .iter()
            .filter(|c| collection.is_none_or(|want| want == c.as_str()))
            .collect();
        collections.sort();
        let mut txn = Txn::new(&self.store)?;
        let reader = self.store.reader()?;
        let mut c = self.target(name)?.counters;
        let mut queued = 0;
        let mut last = None;
        'outer: for coll in collections {
            if after.is_some_and(|a| coll.as_str() < a.collection.as_str()) {
                continue;
            }
            let prefix = key_of(b's', &[coll], None);
            let after_key = after.map(snapshot_key);
            let start = match (after, &after_key) {
                (Some(a), Some(k)) if &a.collection == coll => Bound::Excluded(k.as_slice()),
                _ => Bound::Included(prefix.as_slice()),
            };
            for kv in reader.range(start, Bound::Unbounded)? {
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
    pub fn count_records(&self, collections: &[String]) -> Result<usize, QueueError> {
        let reader = self.store.reader()?;
        let mut count = 0;
        for c in collections {
            let prefix = key_of(b's', &[c], None);
            for kv in reader.scan_prefix(&prefix)? {
                let (_, v) = kv?;
                if codec::decode_record(&v).is_ok_and(|e| e.state.is_some()) {
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    pub fn collections_of(&self, name: &str) -> Result<Vec<String>, QueueError> {
        Ok(self.target(name)?.spec.collections.clone())
    }
}

/// What the queue holds for one record at one target (see [`Queue::record_view`]).
#[derive(Clone, Debug, Default)]
pub struct TargetView {
    pub target: String,
    /// The delta that waits and can still absorb changes (the entry's pointer).
    pub waiting: Option<QueuedDelta>,
    /// Deltas named in `also` that are still queued (sealed: waiting for a retry).
    pub sealed: Vec<QueuedDelta>,
    /// Seqs handed to the transport now.
    pub in_flight: Vec<u64>,
    /// The dead letter that holds the record, with what it held.
    pub dead: Option<DeadLetter>,
}

/// One record as `where` shows it.
#[derive(Clone, Debug, Default)]
pub struct RecordView {
    /// The last known state; None: never seen, or deleted.
    pub state: Option<Flat>,
    /// Whether the queue has an entry for the record at all.
    pub known: bool,
    pub targets: Vec<TargetView>,
}

impl Queue {
    /// Read-only: one record's state and, per target that receives its
    /// collection, its waiting delta, in-flight deltas and holding dead letter —
    /// by key lookups, never a scan of the queue. `also` names (target, seq) of
    /// deltas the caller knows of (from the delivery log) that the entry no
    /// longer points at because they were leased once; they are looked up by seq.
    pub fn record_view(
        &self,
        record: &RecordId,
        also: &[(String, u64)],
    ) -> Result<RecordView, QueueError> {
        let mut txn = Txn::new(&self.store)?;
        let entry = txn.record(record)?;
        let mut view = RecordView {
            known: !entry.is_empty(),
            state: entry.state.clone(),
            targets: Vec::new(),
        };
        for (name, t) in &self.targets {
            if !t.spec.collections.contains(&record.collection) {
                continue;
            }
            let mut tv = TargetView {
                target: name.clone(),
                ..Default::default()
            };
            if let Some(seq) = entry.waiting_for(name)
                && let Some(bytes) = txn.get_delta(name, seq)?
            {
                tv.waiting = Some(
                    codec::decode_queued(seq, &bytes).map_err(decode_err(&key_of(
                        b'p',
                        &[name],
                        Some(seq),
                    )))?,
                );
            }
            if t.in_flight_records.contains(record) {
                tv.in_flight = t
                    .in_flight
                    .iter()
                    .filter(|(_, (r, _))| r == record)
                    .map(|(seq, _)| *seq)
                    .collect();
                tv.in_flight.sort();
            }
            for (_, seq) in also.iter().filter(|(t, _)| t == name) {
                if Some(*seq) == entry.waiting_for(name) || tv.in_flight.contains(seq) {
                    continue;
                }
                if let Some(bytes) = txn.get_delta(name, *seq)? {
                    let q = codec::decode_queued(*seq, &bytes).map_err(decode_err(&key_of(
                        b'p',
                        &[name],
                        Some(*seq),
                    )))?;
                    if &q.record == record {
                        tv.sealed.push(q);
                    }
                }
            }
            if t.counters.dead > 0
                && let Some(v) = txn.get(&hold_key(name, record))?
            {
                let seq = super::keys::seq_value(&v);
                let dkey = dead_key(name, seq);
                if let Some(bytes) = txn.get(&dkey)? {
                    tv.dead = Some(codec::decode_dead(seq, &bytes).map_err(decode_err(&dkey))?);
                }
            }
            view.targets.push(tv);
        }
        Ok(view)
    }

    /// Read-only: the record stored just before `record` in its collection (any
    /// state), so that `resync --key` can queue exactly one record with
    /// [`Queue::resync`] (`after` = this, `limit` = 1).
    pub fn record_before(&self, record: &RecordId) -> Result<Option<RecordId>, QueueError> {
        let reader = self.store.reader()?;
        let prefix = key_of(b's', &[&record.collection], None);
        let key = snapshot_key(record);
        let before = match reader
            .range(
                Bound::Included(prefix.as_slice()),
                Bound::Excluded(key.as_slice()),
            )?
            .next_back()
        {
            Some(kv) => Some(kv?.0),
            None => None,
        };
        Ok(before.and_then(|k| record_of_snapshot_key(&k)))
    }
}
