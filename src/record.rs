//! The shared nouns every piece speaks: a record's identity, a change to it, and a delta.
//!
//! **Invariants:** a [`Flat`] never holds a JSON object as a value except the empty
//! object (nested objects are flattened to dotted paths); a `Delta` with op `Delete`
//! carries no `set` (its `unset` lists the paths the record had, which the merge
//! rules need when a create follows).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A flattened document: dotted path -> value. Sorted, so output is stable.
pub type Flat = BTreeMap<String, Value>;

/// Which record: `(collection, key)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordId {
    pub collection: String,
    pub key: String,
}

impl RecordId {
    pub fn new(collection: impl Into<String>, key: impl Into<String>) -> Self {
        RecordId {
            collection: collection.into(),
            key: key.into(),
        }
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.collection, self.key)
    }
}

/// The new full state of a record (`doc`), or its deletion (`doc == None`).
/// Sources send changes; the Diff Engine turns them into deltas.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub record: RecordId,
    pub doc: Option<Flat>,
}

/// A set of changes that must be accepted all together or not at all (one file,
/// or one socket line).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChangeSet {
    pub changes: Vec<Change>,
    /// Collections this set describes in full (`snapshot = true` watches): every
    /// known record of such a collection that is absent from `changes` is deleted.
    pub full_collections: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The minimal difference between two states of one record.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta {
    pub op: Op,
    /// Path -> new value.
    pub set: Flat,
    /// Paths that disappeared (for a delete: every path the record had).
    pub unset: BTreeSet<String>,
}

/// Milliseconds since the Unix epoch, the only clock format stored on disk.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, as the delivery log and `dead list` show time.
pub fn format_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}
