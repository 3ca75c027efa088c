//! The ingest parsers: a dropped file (`.json`, `.ndjson`, `.csv`; bare records
//! or envelopes; snapshot or not) or a socket line, chosen by the first byte.
//! Checks: no panic, and every accepted record honours the record invariants
//! (a flat document holds no non-empty object; a named collection). Paths may
//! hold more dots than `max_depth` levels: a CSV header or a JSON name like
//! `address.street` already is a path. For bare `.json` files: no value lost
//! in flattening (as many paths as the parsed object has leaves).
#![no_main]

use std::path::PathBuf;

use hms_sync::config::{Limits, Watch};
use hms_sync::record::Change;
use hms_sync::watcher::parse::{Shape, parse_file, parse_line};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Values a flattened object must keep: scalars, arrays and empty objects.
fn leaves(v: &Value) -> usize {
    match v {
        Value::Object(m) if !m.is_empty() => m.values().map(leaves).sum(),
        _ => 1,
    }
}

fn check(c: &Change) {
    assert!(!c.record.collection.is_empty(), "empty collection: {c:?}");
    let Some(doc) = &c.doc else { return };
    for (path, value) in doc {
        if let Value::Object(m) = value {
            assert!(m.is_empty(), "{path} holds an object: {c:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_file_bytes: 1 << 20,
        max_line_bytes: 4096,
        max_depth: 8,
    };
    let watch = Watch {
        dir: PathBuf::from("inbox"),
        collection: "permits".into(),
        key: (pick & 1 == 0).then(|| "permit_number".to_string()),
        snapshot: pick & 2 != 0,
        archive_dir: None,
        poll: false,
    };
    let name = ["a.json", "a.ndjson", "a.CSV", "a.jsonl", "line"][usize::from(pick >> 2) % 5];
    if name == "line" {
        if let Ok(c) = parse_line(rest, &Shape::of(&watch), &limits) {
            check(&c);
        }
    } else if let Ok(set) = parse_file(name, rest, &watch, &limits) {
        for c in &set.changes {
            check(c);
            if watch.snapshot {
                assert_eq!(c.record.collection, "permits");
            }
        }
        if name == "a.json" && watch.key.is_some() {
            let text = rest.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(rest);
            let docs = match serde_json::from_slice::<Value>(text).unwrap() {
                Value::Array(items) => items,
                one => vec![one],
            };
            for (doc, c) in docs.iter().zip(&set.changes) {
                let flat = c.doc.as_ref().map_or(0, |d| d.len());
                assert_eq!(leaves(doc), flat, "a value was lost flattening {doc}");
            }
        }
    }
});
