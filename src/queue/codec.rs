//! How queue records are laid out on disk: one version byte, then bincode (serde
//! path, size-limited). The only place that knows the byte format.
//!
//! **Invariants:** every stored value starts with [`VERSION`]; decoding never
//! allocates more than [`LIMIT`] bytes whatever the input; a change to any stored
//! struct bumps `VERSION` and keeps a decoder for the old one (golden-byte tests
//! below fail first).

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::record::{Delta, Flat, Op, RecordId};

pub const VERSION: u8 = 1;
/// No stored record is larger than this; a corrupted length prefix cannot make
/// the decoder allocate more.
pub const LIMIT: usize = 16 << 20;
/// The largest record the queue takes: a dead letter holds a delta and what
/// arrived since, each up to a record's size, and must still decode within LIMIT.
pub const MAX_RECORD_BYTES: usize = LIMIT / 4;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("stored record has unknown format version {0} (written by a newer hms-sync?)")]
    UnknownVersion(u8),
    #[error("stored record is empty")]
    Empty,
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Serialize, Deserialize)]
struct StoredDelta {
    op: u8,
    /// path -> value as JSON text (bincode cannot carry `serde_json::Value` itself).
    set: Vec<(String, String)>,
    unset: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredQueued {
    collection: String,
    key: String,
    delta: StoredDelta,
    attempts: u32,
    not_before_ms: u64,
    queued_at_ms: u64,
    last_error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredDead {
    queued: StoredQueued,
    dead_at_ms: u64,
    held: Option<StoredDelta>,
}

/// Per-target counters kept beside the queue so that status needs no scan.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    pub next_seq: u64,
    pub pending: u64,
    pub pending_bytes: u64,
    pub dead: u64,
    pub delivered: u64,
}

/// A delta waiting in a target's queue.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedDelta {
    pub seq: u64,
    pub record: RecordId,
    pub delta: Delta,
    /// Rejections so far (outages do not count).
    pub attempts: u32,
    /// Not to be tried before this time (ms since epoch); 0 = now.
    pub not_before_ms: u64,
    pub queued_at_ms: u64,
    pub last_error: Option<String>,
}

/// A delta that was rejected `max_attempts` times, and what arrived for its record since.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub queued: QueuedDelta,
    pub dead_at_ms: u64,
    /// Later deltas of the same record, merged, waiting for retry or drop.
    pub held: Option<Delta>,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Encoding into a Vec cannot fail for these plain structs.
    let body = bincode::serde::encode_to_vec(value, config()).expect("plain structs always encode");
    out.extend_from_slice(&body);
    out
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Corrupt(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

fn flat_out(flat: &Flat) -> Vec<(String, String)> {
    flat.iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect()
}

fn flat_in(pairs: Vec<(String, String)>) -> Result<Flat, CodecError> {
    pairs
        .into_iter()
        .map(|(k, v)| {
            let value: Value = serde_json::from_str(&v)
                .map_err(|e| CodecError::Corrupt(format!("value of {k}: {e}")))?;
            Ok((k, value))
        })
        .collect()
}

fn delta_out(d: &Delta) -> StoredDelta {
    let op = match d.op {
        Op::Create => 0,
        Op::Update => 1,
        Op::Delete => 2,
    };
    StoredDelta {
        op,
        set: flat_out(&d.set),
        unset: d.unset.iter().cloned().collect(),
    }
}

fn delta_in(s: StoredDelta) -> Result<Delta, CodecError> {
    let op = match s.op {
        0 => Op::Create,
        1 => Op::Update,
        2 => Op::Delete,
        n => return Err(CodecError::Corrupt(format!("unknown op {n}"))),
    };
    Ok(Delta {
        op,
        set: flat_in(s.set)?,
        unset: s.unset.into_iter().collect(),
    })
}

fn queued_out(q: &QueuedDelta) -> StoredQueued {
    StoredQueued {
        collection: q.record.collection.clone(),
        key: q.record.key.clone(),
        delta: delta_out(&q.delta),
        attempts: q.attempts,
        not_before_ms: q.not_before_ms,
        queued_at_ms: q.queued_at_ms,
        last_error: q.last_error.clone(),
    }
}

fn queued_in(seq: u64, s: StoredQueued) -> Result<QueuedDelta, CodecError> {
    Ok(QueuedDelta {
        seq,
        record: RecordId {
            collection: s.collection,
            key: s.key,
        },
        delta: delta_in(s.delta)?,
        attempts: s.attempts,
        not_before_ms: s.not_before_ms,
        queued_at_ms: s.queued_at_ms,
        last_error: s.last_error,
    })
}

/// The version byte of a record entry (`'s'` values) that carries the record's
/// waiting deltas. A version-1 `'s'` value is the record's state alone.
pub const RECORD_VERSION: u8 = 2;

/// What the queue keeps per record: its last known state and, per target, the
/// seq of the delta that can still absorb its changes (the coalescing index).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordEntry {
    /// None: deleted (the entry stays while a delete still waits somewhere).
    pub state: Option<Flat>,
    /// (target, seq) of each unsealed waiting delta.
    pub waiting: Vec<(String, u64)>,
}

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    state: Option<Vec<(String, String)>>,
    waiting: Vec<(String, u64)>,
}

impl RecordEntry {
    pub fn waiting_for(&self, target: &str) -> Option<u64> {
        self.waiting
            .iter()
            .find(|(t, _)| t == target)
            .map(|&(_, seq)| seq)
    }

    pub fn set_waiting(&mut self, target: &str, seq: Option<u64>) {
        self.waiting.retain(|(t, _)| t != target);
        if let Some(seq) = seq {
            self.waiting.push((target.to_string(), seq));
        }
    }

    /// Nothing to keep: no state and nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.state.is_none() && self.waiting.is_empty()
    }
}

pub fn encode_record(r: &RecordEntry) -> Vec<u8> {
    let mut out = encode(&StoredRecord {
        state: r.state.as_ref().map(flat_out),
        waiting: r.waiting.clone(),
    });
    out[0] = RECORD_VERSION;
    out
}

pub fn decode_record(bytes: &[u8]) -> Result<RecordEntry, CodecError> {
    match bytes.first() {
        Some(&RECORD_VERSION) => {
            let mut body = bytes.to_vec();
            body[0] = VERSION;
            let s: StoredRecord = decode(&body)?;
            Ok(RecordEntry {
                state: s.state.map(flat_in).transpose()?,
                waiting: s.waiting,
            })
        }
        _ => Ok(RecordEntry {
            state: Some(flat_in(decode(bytes)?)?),
            waiting: Vec::new(),
        }),
    }
}

/// A record entry as version 1 wrote it (the state alone), for migration tests.
#[cfg(test)]
pub fn encode_state_v1(flat: &Flat) -> Vec<u8> {
    encode(&flat_out(flat))
}

/// The size a record's state takes in the queue (for the size limit at parse time).
pub fn encoded_state_len(flat: &Flat) -> usize {
    encode(&flat_out(flat)).len()
}

pub fn encode_queued(q: &QueuedDelta) -> Vec<u8> {
    encode(&queued_out(q))
}

pub fn decode_queued(seq: u64, bytes: &[u8]) -> Result<QueuedDelta, CodecError> {
    queued_in(seq, decode(bytes)?)
}

/// The version byte of a chunk of waiting deltas (`'p'` values). A version-1
/// `'p'` value is one delta on its own, read as a chunk of one.
pub const CHUNK_VERSION: u8 = 2;

/// Writes a chunk: [`CHUNK_VERSION`], then per delta its seq (u64 big-endian),
/// the length of its encoding (u32 big-endian) and the encoding
/// ([`encode_queued`]). Entries stay encoded, so that a chunk can be scanned,
/// split and rewritten without decoding the deltas it only passes over.
pub fn encode_chunk<'a>(entries: impl IntoIterator<Item = (u64, &'a [u8])>) -> Vec<u8> {
    let mut out = vec![CHUNK_VERSION];
    for (seq, bytes) in entries {
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// The entries of a `'p'` value stored under `key_seq`, each as (seq, encoded
/// delta), in queue order. Only the framing is checked here; each delta is
/// decoded when it is needed ([`decode_queued`]).
pub fn chunk_entries(key_seq: u64, bytes: &[u8]) -> Result<Vec<(u64, &[u8])>, CodecError> {
    let (&version, mut rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        VERSION => return Ok(vec![(key_seq, bytes)]),
        CHUNK_VERSION => {}
        other => return Err(CodecError::UnknownVersion(other)),
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let corrupt = || CodecError::Corrupt("chunk entry cut short".into());
        let seq = u64::from_be_bytes(rest.get(..8).ok_or_else(corrupt)?.try_into().unwrap());
        let len = u32::from_be_bytes(rest.get(8..12).ok_or_else(corrupt)?.try_into().unwrap());
        let entry = rest.get(12..12 + len as usize).ok_or_else(corrupt)?;
        if out.last().is_some_and(|&(prev, _)| prev >= seq) {
            return Err(CodecError::Corrupt(format!(
                "chunk entries out of order at seq {seq}"
            )));
        }
        out.push((seq, entry));
        rest = &rest[12 + len as usize..];
    }
    if out.is_empty() {
        return Err(CodecError::Corrupt("empty chunk".into()));
    }
    Ok(out)
}

pub fn encode_dead(d: &DeadLetter) -> Vec<u8> {
    encode(&StoredDead {
        queued: queued_out(&d.queued),
        dead_at_ms: d.dead_at_ms,
        held: d.held.as_ref().map(delta_out),
    })
}

pub fn decode_dead(seq: u64, bytes: &[u8]) -> Result<DeadLetter, CodecError> {
    let s: StoredDead = decode(bytes)?;
    Ok(DeadLetter {
        queued: queued_in(seq, s.queued)?,
        dead_at_ms: s.dead_at_ms,
        held: s.held.map(delta_in).transpose()?,
    })
}

/// How far a large file has been taken, part by part (`'f'` values).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FileProgress {
    /// Device, inode, length and modification time (ns) of the file: a newer
    /// file under the same name starts over.
    pub identity: (u64, u64, u64, i64),
    /// Changes of the file (in file order) queued so far.
    pub rows_done: u64,
    pub phase: FilePhase,
    /// In [`FilePhase::Delete`]: the last record key of the collection checked.
    pub checked_up_to: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilePhase {
    /// Its changes are being queued.
    Ingest,
    /// A snapshot: records of the collection the file did not hold are deleted.
    Delete,
    /// A snapshot: the marks of the records it held are removed.
    ClearMarks,
    /// Everything is queued; the file may leave the inbox.
    Done,
}

pub fn encode_progress(p: &FileProgress) -> Vec<u8> {
    encode(p)
}

pub fn decode_progress(bytes: &[u8]) -> Result<FileProgress, CodecError> {
    decode(bytes)
}

pub fn encode_counters(c: &Counters) -> Vec<u8> {
    encode(c)
}

pub fn decode_counters(bytes: &[u8]) -> Result<Counters, CodecError> {
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> QueuedDelta {
        let mut set = Flat::new();
        set.insert("status".into(), json!("APPROVED"));
        set.insert("fee".into(), json!(12.5));
        QueuedDelta {
            seq: 42,
            record: RecordId::new("permits", "123"),
            delta: Delta {
                op: Op::Update,
                set,
                unset: ["fee_waiver".to_string()].into_iter().collect(),
            },
            attempts: 3,
            not_before_ms: 1_700_000_000_000,
            queued_at_ms: 1_690_000_000_000,
            last_error: Some("SOAP Fault".into()),
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The bytes of version 1. If this fails, the on-disk format changed: bump
    /// VERSION and keep reading the old one.
    #[test]
    fn golden_bytes_of_a_queued_delta() {
        let bytes = encode_queued(&sample());
        assert_eq!(hex(&bytes), GOLDEN_QUEUED);
        assert_eq!(decode_queued(42, &bytes).unwrap(), sample());
    }

    #[test]
    fn golden_bytes_of_counters() {
        let c = Counters {
            next_seq: 7,
            pending: 2,
            pending_bytes: 300,
            dead: 1,
            delivered: 1000,
        };
        assert_eq!(hex(&encode_counters(&c)), "010702fb2c0101fbe803");
        assert_eq!(decode_counters(&encode_counters(&c)).unwrap(), c);
    }

    #[test]
    fn round_trips_dead_letters_and_snapshots() {
        let dead = DeadLetter {
            queued: sample(),
            dead_at_ms: 5,
            held: Some(sample().delta),
        };
        assert_eq!(decode_dead(42, &encode_dead(&dead)).unwrap(), dead);
        let flat = sample().delta.set;
        // A version-1 record entry is the state alone.
        let v1 = encode(&flat_out(&flat));
        assert_eq!(
            decode_record(&v1).unwrap(),
            RecordEntry {
                state: Some(flat.clone()),
                waiting: vec![]
            }
        );
        let entry = RecordEntry {
            state: None,
            waiting: vec![("county-cobol".into(), 42)],
        };
        assert_eq!(decode_record(&encode_record(&entry)).unwrap(), entry);
    }

    #[test]
    fn corrupt_input_is_an_error_not_an_abort() {
        assert!(matches!(decode_queued(1, &[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode_queued(1, &[9, 1, 2]),
            Err(CodecError::UnknownVersion(9))
        ));
        // A length prefix claiming ~2^64 bytes must not allocate.
        let evil = [
            VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert!(matches!(
            decode_queued(1, &evil),
            Err(CodecError::Corrupt(_))
        ));
        let mut truncated = encode_queued(&sample());
        truncated.truncate(truncated.len() - 3);
        assert!(decode_queued(1, &truncated).is_err());
    }

    /// The bytes of a chunk (version 2). If this fails, the chunk format changed.
    #[test]
    fn golden_bytes_of_a_chunk_and_old_single_deltas_read_as_chunks() {
        let one = encode_queued(&sample());
        let chunk = encode_chunk([(42, one.as_slice()), (43, one.as_slice())]);
        let head = format!("02{:016x}{:08x}", 42, one.len());
        assert!(hex(&chunk).starts_with(&head), "{}", hex(&chunk));
        assert_eq!(chunk.len(), 1 + 2 * (12 + one.len()));
        let entries = chunk_entries(7, &chunk).unwrap();
        assert_eq!(entries, vec![(42, one.as_slice()), (43, one.as_slice())]);
        assert_eq!(decode_queued(43, entries[1].1).unwrap().seq, 43);
        // A version-1 value under key seq 42 is a chunk of one.
        assert_eq!(chunk_entries(42, &one).unwrap(), vec![(42, one.as_slice())]);
    }

    #[test]
    fn corrupt_chunks_are_errors() {
        let one = encode_queued(&sample());
        let mut chunk = encode_chunk([(1, one.as_slice())]);
        chunk.truncate(chunk.len() - 1);
        assert!(chunk_entries(1, &chunk).is_err());
        assert!(chunk_entries(1, &[CHUNK_VERSION]).is_err());
        let backwards = encode_chunk([(5, one.as_slice()), (4, one.as_slice())]);
        assert!(chunk_entries(5, &backwards).is_err());
        // A length claiming 4 GiB reads nothing past the end.
        let mut evil = vec![CHUNK_VERSION];
        evil.extend_from_slice(&1u64.to_be_bytes());
        evil.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(chunk_entries(1, &evil).is_err());
    }

    /// The bytes of a record entry (version 2). If this fails, the format changed.
    #[test]
    fn golden_bytes_of_a_record_entry() {
        let mut state = Flat::new();
        state.insert("status".into(), json!("OK"));
        let entry = RecordEntry {
            state: Some(state),
            waiting: vec![("t".into(), 7)],
        };
        let bytes = encode_record(&entry);
        assert_eq!(hex(&bytes), GOLDEN_RECORD);
        assert_eq!(decode_record(&bytes).unwrap(), entry);
    }

    const GOLDEN_RECORD: &str = "0201010673746174757304224f4b2201017407";
    const GOLDEN_QUEUED: &str = "01077065726d697473033132330102036665650431322e35067374617475730a22415050524f56454422010a6665655f77616976657203fd0068e5cf8b010000fd0084d97b89010000010a534f4150204661756c74";
}
