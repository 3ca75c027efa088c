//! The Replay Worker's side: lease the deltas that may go now, then settle each
//! one as delivered (ack), down (release), refused (retry later) or dead.

use std::collections::{BTreeMap, HashSet};

use super::keys::{dead_key, hold_key, key_of, pending_key, seq_of_key};
use super::txn::{Txn, decode_err};
use super::{Counters, DeadLetter, Lease, Leased, Queue, QueueError, QueuedDelta, codec};
use crate::record::{RecordId, now_ms};

impl Queue {
    /// Hands out up to `max` deltas that may go now: in queue order, at most one
    /// per record, none for a record already in flight or waiting for a retry.
    pub fn lease(&mut self, name: &str, max: usize, now: u64) -> Result<Lease, QueueError> {
        let target = self
            .targets
            .get_mut(name)
            .ok_or_else(|| QueueError::UnknownTarget(name.to_string()))?;
        let mut lease = Lease::default();
        let mut txn = Txn::new(&self.store)?;
        let mut blocked: HashSet<RecordId> = target.in_flight_records.clone();
        let reader = self.store.reader()?;
        let prefix = key_of(b'p', &[name], None);
        'chunks: for kv in reader.scan_prefix(&prefix)? {
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
        let mut txn = Txn::new(&self.store)?;
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

    pub(super) fn finish(
        &mut self,
        mut txn: Txn,
        name: &str,
        c: Counters,
    ) -> Result<(), QueueError> {
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
        let mut txn = Txn::new(&self.store)?;
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
        let mut txn = Txn::new(&self.store)?;
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
}
