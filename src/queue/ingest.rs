//! Changes in: each change is diffed against the record's snapshot and its
//! delta queued for every target that receives it, merged into the delta that
//! already waits for the record, into the dead letter that holds it, or at the
//! end of the queue (SPEC §2 "Coalescing", §3.6).

use std::collections::{BTreeMap, HashSet};

use super::keys::{
    counters_key, dead_key, hold_key, key_of, pending_key, record_of_snapshot_key, seq_value,
};
use super::txn::{Txn, decode_err};
use super::{Counters, Ingested, Queue, QueueError, QueuedDelta, RecordEntry, Target, codec};
use crate::diff;
use crate::record::{ChangeSet, Delta, Flat, RecordId, now_ms};

impl Queue {
    /// Diffs every change against its snapshot and queues the deltas, each set
    /// whole or not at all; refuses with [`QueueError::Busy`] while backpressure
    /// holds. Not durable until [`Queue::commit`].
    pub fn ingest(&mut self, sets: &[ChangeSet]) -> Result<Vec<Ingested>, QueueError> {
        if let Some(reason) = self.busy_reason() {
            return Err(QueueError::Busy(reason));
        }
        let mut txn = Txn::new(&self.store)?;
        let results = self.ingest_into(&mut txn, sets)?;
        self.apply(txn)?;
        Ok(results)
    }

    /// [`Queue::ingest`]'s work, into a batch the caller applies.
    pub(super) fn ingest_into(
        &mut self,
        txn: &mut Txn,
        sets: &[ChangeSet],
    ) -> Result<Vec<Ingested>, QueueError> {
        let now = now_ms();
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
                    enqueue(txn, target, c, &record, &mut entry, projected, now)?;
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
        self.save_counters(txn, counters);
        Ok(results)
    }

    /// Writes changed counters into the batch and adopts them in memory.
    pub(super) fn save_counters(&mut self, txn: &mut Txn, counters: BTreeMap<String, Counters>) {
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
}

/// Queues `delta` for `record` at `target`: into a dead letter that holds the
/// record, or merged into the record's waiting delta, or at the end of the queue.
pub(super) fn enqueue(
    txn: &mut Txn,
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
    if let Some(seq) = entry.waiting_for(name)
        && !target.in_flight.contains_key(&seq)
    {
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
