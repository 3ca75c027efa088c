//! `hms-sync recover`: copies whatever can still be read out of a damaged
//! `queue.redb` into a fresh one, sets the damaged file aside, and says what was
//! saved and what was not.
//!
//! Every value is decoded before it is kept: a key whose value cannot be read is
//! reported and left out. The counters are counted again from what was kept, a
//! record's pointer to a waiting delta that was lost is cleared (its next change
//! queues a new delta), and a hold without its dead letter is dropped.
//!
//! **Invariant:** the damaged file is only opened (which lets redb repair what it
//! can, as every start does) and renamed aside, and only after the fresh store is
//! complete and synced.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use super::keys::{hold_key, record_of_snapshot_key, seq_of_key, strings_of_key};
use super::store::{self, Store};
use super::{Counters, QueueError, codec};

/// What `recover` saved and lost.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// The damaged file, now set aside (None: there was no file).
    pub damaged: Option<PathBuf>,
    /// Why the damaged file could not be opened at all (nothing saved then).
    pub open_error: Option<String>,
    pub records: u64,
    pub pending: u64,
    pub dead_letters: u64,
    /// Keys (or ranges) that could not be read, with the reason.
    pub lost: Vec<String>,
}

/// Rebuilds the queue in `state_dir`. Fails if the daemon holds the queue.
pub fn recover(state_dir: &Path, cache_mib: u64) -> Result<Report, QueueError> {
    let path = state_dir.join(store::FILE_NAME);
    let mut report = Report::default();
    if !path.exists() {
        return Ok(report);
    }
    let fresh_dir = state_dir.join("recovering");
    let io = |p: &Path| {
        let path = p.to_path_buf();
        move |source| QueueError::Migrate { path, source }
    };
    if fresh_dir.exists() {
        std::fs::remove_dir_all(&fresh_dir).map_err(io(&fresh_dir))?;
    }
    std::fs::create_dir_all(&fresh_dir).map_err(io(&fresh_dir))?;
    {
        let fresh = Store::open(&fresh_dir, cache_mib)?;
        match Store::open(state_dir, cache_mib) {
            Ok(damaged) => copy_readable(&damaged, &fresh, &mut report)?,
            Err(e @ store::StoreError::Locked { .. }) => return Err(e.into()),
            Err(e) => report.open_error = Some(e.to_string()),
        }
        fresh.commit()?;
    }
    let aside = state_dir.join(format!(
        "{}.damaged-{}",
        store::FILE_NAME,
        crate::record::now_ms() / 1000
    ));
    std::fs::rename(&path, &aside).map_err(io(&path))?;
    let from = fresh_dir.join(store::FILE_NAME);
    std::fs::rename(&from, &path).map_err(io(&from))?;
    store::sync_folder(state_dir)?;
    let _ = std::fs::remove_dir(&fresh_dir);
    report.damaged = Some(aside);
    Ok(report)
}

/// Everything that decodes, tag by tag; the counters are rebuilt.
fn copy_readable(from: &Store, to: &Store, report: &mut Report) -> Result<(), QueueError> {
    let reader = from.reader()?;
    let mut entries: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut old_counters: HashMap<String, Counters> = HashMap::new();
    let mut pending: HashSet<(String, u64)> = HashSet::new();
    let mut counts: BTreeMap<String, Counters> = BTreeMap::new();
    let mut dead: HashSet<(String, u64)> = HashSet::new();
    for tag in [b'c', b'p', b'd', b's', b'h', b'f', b'g'] {
        let prefix = [tag];
        let mut after: Option<Vec<u8>> = None;
        // A read error ends the scan; one more try starts past the last good key.
        for _attempt in 0..2 {
            let start = match &after {
                Some(k) => Bound::Excluded(k.as_slice()),
                None => Bound::Included(&prefix[..]),
            };
            let mut failed = None;
            let range = match reader.range(start, Bound::Unbounded) {
                Ok(r) => r,
                Err(e) => {
                    report
                        .lost
                        .push(format!("keys '{}' after {after:?}: {e}", tag as char));
                    continue;
                }
            };
            for kv in range {
                let (k, v) = match kv {
                    Ok(kv) => kv,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                if !k.starts_with(&prefix) {
                    break;
                }
                after = Some(k.to_vec());
                match keep(
                    tag,
                    &k,
                    &v,
                    &mut old_counters,
                    &mut counts,
                    &mut pending,
                    &mut dead,
                ) {
                    Ok(()) => {
                        entries.insert(k.to_vec(), v.to_vec());
                    }
                    Err(reason) => report
                        .lost
                        .push(format!("{}: {reason}", super::keys::describe_key(&k))),
                }
            }
            match failed {
                Some(e) => report.lost.push(format!(
                    "keys '{}' after {}: {e}",
                    tag as char,
                    after
                        .as_deref()
                        .map(super::keys::describe_key)
                        .unwrap_or_default()
                )),
                None => break,
            }
        }
    }
    // Holds point at dead letters; record entries at waiting deltas.
    let mut writes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for (k, v) in entries {
        match k[0] {
            b'h' => {
                let strings = strings_of_key(&k).unwrap_or_default();
                let Some(target) = strings.first() else {
                    continue;
                };
                if !dead.contains(&(target.clone(), super::keys::seq_value(&v))) {
                    report.lost.push(format!(
                        "{}: its dead letter was lost",
                        super::keys::describe_key(&k)
                    ));
                    continue;
                }
                writes.insert(k, Some(v));
            }
            b's' => {
                let mut entry = codec::decode_record(&v).expect("decoded in keep()");
                let waiting = entry.waiting.clone();
                for (target, seq) in waiting {
                    if !pending.contains(&(target.clone(), seq)) {
                        entry.set_waiting(&target, None);
                    }
                }
                report.records += u64::from(entry.state.is_some());
                if !entry.is_empty() {
                    writes.insert(k, Some(codec::encode_record(&entry)));
                }
            }
            b'c' => {}
            _ => {
                writes.insert(k, Some(v));
            }
        }
        if writes.len() >= 10_000 {
            to.apply(std::mem::take(&mut writes))?;
        }
    }
    // Every dead letter holds its record, as the queue expects.
    for (target, seq) in &dead {
        if let Ok(Some(d)) = reader.get(&super::keys::dead_key(target, *seq))
            && let Ok(letter) = codec::decode_dead(*seq, &d)
        {
            writes.insert(
                hold_key(target, &letter.queued.record),
                Some(seq.to_be_bytes().to_vec()),
            );
        }
    }
    for (target, mut c) in counts {
        if let Some(old) = old_counters.get(&target) {
            c.next_seq = c.next_seq.max(old.next_seq);
            c.delivered = old.delivered;
        }
        report.pending += c.pending;
        report.dead_letters += c.dead;
        writes.insert(
            super::keys::counters_key(&target),
            Some(codec::encode_counters(&c)),
        );
    }
    to.apply(writes)?;
    Ok(())
}

/// Decodes one entry and counts it. Err: why it cannot be kept.
fn keep(
    tag: u8,
    k: &[u8],
    v: &[u8],
    old_counters: &mut HashMap<String, Counters>,
    counts: &mut BTreeMap<String, Counters>,
    pending: &mut HashSet<(String, u64)>,
    dead: &mut HashSet<(String, u64)>,
) -> Result<(), String> {
    match tag {
        b'c' => {
            let [target] = strings_of_key(k)
                .ok_or("not a key of this layout")?
                .try_into()
                .map_err(|_| "not a key of this layout")?;
            let c = codec::decode_counters(v).map_err(|e| e.to_string())?;
            counts.entry(target.clone()).or_default();
            old_counters.insert(target, c);
        }
        b'p' => {
            let target = target_of_seq_key(k)?;
            let key_seq = seq_of_key(k);
            let c = counts.entry(target.clone()).or_default();
            for (seq, bytes) in codec::chunk_entries(key_seq, v).map_err(|e| e.to_string())? {
                codec::decode_queued(seq, bytes).map_err(|e| format!("delta {seq}: {e}"))?;
                c.pending += 1;
                c.pending_bytes += bytes.len() as u64;
                c.next_seq = c.next_seq.max(seq);
                pending.insert((target.clone(), seq));
            }
        }
        b'd' => {
            let target = target_of_seq_key(k)?;
            let seq = seq_of_key(k);
            codec::decode_dead(seq, v).map_err(|e| e.to_string())?;
            let c = counts.entry(target.clone()).or_default();
            c.dead += 1;
            c.next_seq = c.next_seq.max(seq);
            dead.insert((target, seq));
        }
        b's' => {
            record_of_snapshot_key(k).ok_or("not a key of this layout")?;
            codec::decode_record(v).map_err(|e| e.to_string())?;
        }
        b'h' | b'g' => {
            strings_of_key(k).ok_or("not a key of this layout")?;
        }
        b'f' => {
            strings_of_key(k).ok_or("not a key of this layout")?;
            codec::decode_progress(v).map_err(|e| e.to_string())?;
        }
        _ => return Err("unknown key".into()),
    }
    Ok(())
}

/// The target of a `'p'` or `'d'` key (tag, target string, seq).
fn target_of_seq_key(k: &[u8]) -> Result<String, String> {
    let bad = || "not a key of this layout".to_string();
    let body = k
        .get(..k.len().checked_sub(8).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    match strings_of_key(body).as_deref() {
        Some([target]) => Ok(target.clone()),
        _ => Err(bad()),
    }
}
