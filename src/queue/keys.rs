//! The queue's key layout (drawn in mod.rs): a tag byte, then strings as u32
//! big-endian length + bytes, then an optional big-endian seq, so that keys sort
//! by target and seq and no value can forge a key.

use crate::record::RecordId;

fn part(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

pub(super) fn key_of(tag: u8, parts: &[&str], seq: Option<u64>) -> Vec<u8> {
    let mut k = vec![tag];
    for p in parts {
        part(&mut k, p);
    }
    if let Some(seq) = seq {
        k.extend_from_slice(&seq.to_be_bytes());
    }
    k
}

pub(super) fn snapshot_key(r: &RecordId) -> Vec<u8> {
    key_of(b's', &[&r.collection, &r.key], None)
}
pub(super) fn pending_key(t: &str, seq: u64) -> Vec<u8> {
    key_of(b'p', &[t], Some(seq))
}
/// Version 1 kept the coalescing index under these keys; [`Queue::open`] moves
/// them into the record entries.
#[cfg(test)]
pub(super) fn index_key(t: &str, r: &RecordId) -> Vec<u8> {
    key_of(b'i', &[t, &r.collection, &r.key], None)
}
pub(super) fn dead_key(t: &str, seq: u64) -> Vec<u8> {
    key_of(b'd', &[t], Some(seq))
}
pub(super) fn hold_key(t: &str, r: &RecordId) -> Vec<u8> {
    key_of(b'h', &[t, &r.collection, &r.key], None)
}
pub(super) fn counters_key(t: &str) -> Vec<u8> {
    key_of(b'c', &[t], None)
}

/// Progress of a large file: `'f' dir name`.
pub(super) fn file_key(dir: &str, name: &str) -> Vec<u8> {
    key_of(b'f', &[dir, name], None)
}
/// A record a snapshot file in progress holds: `'g' coll key` (same layout as
/// `'s'`, so both sort alike).
pub(super) fn mark_key(r: &RecordId) -> Vec<u8> {
    key_of(b'g', &[&r.collection, &r.key], None)
}

pub(super) fn seq_of_key(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[k.len() - 8..]);
    u64::from_be_bytes(b)
}

pub(super) fn seq_value(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if v.len() == 8 {
        b.copy_from_slice(v);
    }
    u64::from_be_bytes(b)
}

/// The strings of a key made by [`key_of`] without a seq.
pub(super) fn strings_of_key(k: &[u8]) -> Option<Vec<String>> {
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
pub(super) fn record_of_snapshot_key(k: &[u8]) -> Option<RecordId> {
    match strings_of_key(k)?.as_slice() {
        [collection, key] => Some(RecordId::new(collection, key)),
        _ => None,
    }
}

pub(super) fn describe_key(k: &[u8]) -> String {
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
