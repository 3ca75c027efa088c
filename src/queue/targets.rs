//! The set of targets, as the config says now: a reload adds, changes and
//! removes targets; a removed target's queue is kept (**orphaned**) until its
//! connector comes back or an operator forgets it.
//!
//! **Invariants:** an orphaned target has no worker; one orphaned by a reload
//! keeps receiving the deltas of its collections (so that a connector removed
//! and put back misses nothing: the shared snapshot moves on either way), one
//! found orphaned at start-up receives none (its collections are not stored); a target leaves the set only when its worker
//! has stopped (the caller's duty: nothing of it is in flight); `forget` keeps the
//! target's counters with its last seq, so that delivery ids are never reused if
//! a connector of that name comes back.

use std::collections::{HashMap, HashSet};

use super::keys::{counters_key, key_of, seq_of_key, strings_of_key};
use super::txn::{Txn, decode_err};
use super::{Counters, Queue, QueueError, Target, TargetSpec, codec};

/// What [`Queue::set_targets`] did, by target name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TargetChanges {
    pub added: Vec<String>,
    /// Orphaned targets whose connector came back: their queue goes out again.
    pub returned: Vec<String>,
    /// Removed from the config: kept as orphaned.
    pub orphaned: Vec<String>,
    /// Gone for good (none since removals are orphaned; kept for the report).
    pub removed: Vec<String>,
}

impl Target {
    pub(super) fn new(spec: TargetSpec, counters: Counters) -> Target {
        Target {
            spec,
            counters,
            in_flight: HashMap::new(),
            in_flight_records: HashSet::new(),
            orphaned: false,
        }
    }
}

/// A target with something queued, without a connector; `spec` is what it
/// still receives (no collections when found at start-up).
fn orphan(spec: TargetSpec, counters: Counters) -> Target {
    Target {
        orphaned: true,
        ..Target::new(spec, counters)
    }
}

fn has_work(c: &Counters) -> bool {
    c.pending > 0 || c.dead > 0
}

impl Queue {
    /// Targets with deltas or dead letters in the store that no spec names:
    /// added as orphaned (at open).
    pub(super) fn find_orphans(&mut self) -> Result<(), QueueError> {
        let reader = self.store.reader()?;
        for kv in reader.scan_prefix(b"c")? {
            let (k, v) = kv?;
            let Some(parts) = strings_of_key(&k) else {
                continue;
            };
            let [name] = parts.as_slice() else {
                continue;
            };
            let name = name.clone();
            if self.targets.contains_key(&name) {
                continue;
            }
            let counters = codec::decode_counters(&v).map_err(decode_err(&k))?;
            if has_work(&counters) {
                let spec = TargetSpec {
                    name: name.clone(),
                    collections: Vec::new(),
                    fields: None,
                };
                self.targets.insert(name, orphan(spec, counters));
            }
        }
        Ok(())
    }

    /// Adopts the connectors of a reloaded config. Targets not in `specs` must
    /// have no worker any more (nothing in flight).
    pub fn set_targets(&mut self, specs: Vec<TargetSpec>) -> Result<TargetChanges, QueueError> {
        let mut changes = TargetChanges::default();
        let wanted: HashSet<String> = specs.iter().map(|s| s.name.clone()).collect();
        let names: Vec<String> = self.targets.keys().cloned().collect();
        for name in names {
            if wanted.contains(&name) || self.targets[&name].orphaned {
                continue;
            }
            let mut t = self.targets.remove(&name).expect("listed above");
            // The worker has stopped; anything it still held goes back.
            t.in_flight.clear();
            t.in_flight_records.clear();
            // Kept, even with nothing queued, and it keeps its collections:
            // changes go on queueing for it, so that a connector removed and
            // put back misses nothing (`forget` retires it for good).
            self.targets
                .insert(name.clone(), orphan(t.spec, t.counters));
            changes.orphaned.push(name);
        }
        let reader = self.store.reader()?;
        for spec in specs {
            match self.targets.get_mut(&spec.name) {
                Some(t) => {
                    if t.orphaned {
                        changes.returned.push(spec.name.clone());
                        t.orphaned = false;
                        self.touched.insert(spec.name.clone());
                    }
                    t.spec = spec;
                }
                None => {
                    let key = counters_key(&spec.name);
                    let counters = match reader.get(&key)? {
                        Some(v) => codec::decode_counters(&v).map_err(decode_err(&key))?,
                        None => Counters::default(),
                    };
                    changes.added.push(spec.name.clone());
                    self.touched.insert(spec.name.clone());
                    self.targets
                        .insert(spec.name.clone(), Target::new(spec, counters));
                }
            }
        }
        Ok(changes)
    }

    /// The state folder (where `paused.json` lives beside the queue).
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    pub fn is_orphaned(&self, name: &str) -> bool {
        self.targets.get(name).is_some_and(|t| t.orphaned)
    }

    /// Drops the queue and dead letters of an orphaned target (its connector was
    /// removed). Returns (deltas, dead letters) dropped. Reads the target's own
    /// deltas only (to clear the records' pointers at them), never every record.
    pub fn forget(&mut self, name: &str) -> Result<(u64, u64), QueueError> {
        let t = self.target(name)?;
        if !t.orphaned {
            return Err(QueueError::HasConnector(name.to_string()));
        }
        let mut c = t.counters;
        let dropped = (c.pending, c.dead);
        let mut txn = Txn::new(&self.store)?;
        let reader = self.store.reader()?;
        for kv in reader.scan_prefix(&key_of(b'p', &[name], None))? {
            let (k, v) = kv?;
            let entries = codec::chunk_entries(seq_of_key(&k), &v).map_err(decode_err(&k))?;
            for (seq, bytes) in entries {
                let q = codec::decode_queued(seq, bytes).map_err(decode_err(&k))?;
                let mut entry = txn.record(&q.record)?;
                if entry.waiting_for(name) == Some(seq) {
                    entry.set_waiting(name, None);
                    txn.put_record(&q.record, &entry);
                }
            }
            txn.remove(k.to_vec());
        }
        for tag in [b'd', b'h'] {
            for kv in reader.scan_prefix(&key_of(tag, &[name], None))? {
                let (k, _) = kv?;
                txn.remove(k.to_vec());
            }
        }
        drop(reader);
        c.pending = 0;
        c.pending_bytes = 0;
        c.dead = 0;
        txn.insert(counters_key(name), codec::encode_counters(&c));
        self.apply(txn)?;
        self.targets.remove(name);
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Change, ChangeSet, RecordId, now_ms};

    fn spec(name: &str) -> TargetSpec {
        TargetSpec {
            name: name.into(),
            collections: vec!["permits".into()],
            fields: None,
        }
    }

    fn change(key: &str, v: i64) -> ChangeSet {
        let doc = serde_json::json!({ "v": v });
        ChangeSet {
            changes: vec![Change {
                record: RecordId::new("permits", key),
                doc: Some(crate::diff::flatten(doc.as_object().unwrap(), 8).unwrap()),
            }],
            full_collections: vec![],
        }
    }

    fn count(q: &Queue, name: &str) -> Option<crate::queue::QueueCounts> {
        q.counts().unwrap().into_iter().find(|c| c.name == name)
    }

    #[test]
    fn a_removed_target_keeps_taking_its_changes_is_orphaned_across_reopen_and_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut q = Queue::open(dir.path(), 8, vec![spec("a"), spec("b")]).unwrap();
            q.ingest(&[change("1", 1), change("2", 1)]).unwrap();
            let changes = q.set_targets(vec![spec("a")]).unwrap();
            assert_eq!(changes.orphaned, ["b"]);
            // While orphaned by the reload, b goes on taking its collections'
            // changes: record 1's newer state folds into its waiting delta,
            // record 3 is new.
            q.ingest(&[change("3", 1), change("1", 2)]).unwrap();
            let b = count(&q, "b").unwrap();
            assert!(b.orphaned && b.pending == 3, "{b:?}");
            assert_eq!(count(&q, "a").unwrap().pending, 3);
            // Its backlog is not delivered, so it does not count for backpressure.
            assert_eq!(
                q.pending_bytes(),
                q.targets["a"].counters.pending_bytes,
                "only a's bytes"
            );
            q.commit().unwrap();
        }
        let mut q = Queue::open(dir.path(), 8, vec![spec("a")]).unwrap();
        assert!(q.is_orphaned("b"));
        // Found orphaned at start-up: its collections are not stored, it takes
        // nothing new.
        q.ingest(&[change("4", 1)]).unwrap();
        assert_eq!(count(&q, "b").unwrap().pending, 3);
        let changes = q.set_targets(vec![spec("a"), spec("b")]).unwrap();
        assert_eq!(changes.returned, ["b"]);
        assert!(changes.added.is_empty());
        let lease = q.lease("b", 10, now_ms()).unwrap();
        let keys: Vec<&str> = lease
            .items
            .iter()
            .map(|l| l.queued.record.key.as_str())
            .collect();
        assert_eq!(keys, ["1", "2", "3"], "what was kept, in order");
        // A record's waiting delta still absorbs its newer changes after the return.
        q.ack("b", &[1, 2, 3]).unwrap();
        q.ingest(&[change("2", 5)]).unwrap();
        assert_eq!(count(&q, "b").unwrap().pending, 1);
    }

    #[test]
    fn forget_drops_the_queue_clears_the_records_pointers_and_never_reuses_a_seq() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), 8, vec![spec("a"), spec("b")]).unwrap();
        q.ingest(&[change("1", 1), change("2", 1)]).unwrap();
        let lease = q.lease("b", 1, now_ms()).unwrap();
        q.dead_letter("b", lease.items[0].queued.seq, "refused")
            .unwrap();
        q.ingest(&[change("1", 2)]).unwrap(); // held behind the dead letter
        assert!(matches!(q.forget("b"), Err(QueueError::HasConnector(_))));
        assert!(matches!(q.forget("zz"), Err(QueueError::UnknownTarget(_))));
        q.set_targets(vec![spec("a")]).unwrap();
        assert_eq!(q.forget("b").unwrap(), (1, 1));
        assert!(count(&q, "b").is_none());
        q.commit().unwrap();
        drop(q);
        let mut q = Queue::open(dir.path(), 8, vec![spec("a")]).unwrap();
        assert!(count(&q, "b").is_none(), "nothing left to orphan");
        q.set_targets(vec![spec("a"), spec("b")]).unwrap();
        q.ingest(&[change("2", 9)]).unwrap();
        let lease = q.lease("b", 10, now_ms()).unwrap();
        assert_eq!(lease.items.len(), 1);
        assert_eq!(lease.items[0].queued.seq, 3, "after the forgotten 1 and 2");
        assert_eq!(lease.items[0].queued.record.key, "2");
    }
}
