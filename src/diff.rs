//! Diff Engine: a record's last known state and its new state in, the minimal
//! [`Delta`] out; plus the per-connector projection and the merge of two deltas
//! that wait for the same record (SPEC §2).
//!
//! **Invariants:** pure functions, no I/O, no clock. `compute` returns `None` when
//! nothing changed, so ingesting the same document twice queues nothing.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::record::{Delta, Flat, Op};

/// Why a document cannot be flattened.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FlattenError {
    /// The document nests deeper than the configured limit.
    #[error("document nests deeper than {limit} levels (at `{path}`)")]
    TooDeep { limit: usize, path: String },
    /// A name with a dot and a nested object name the same path
    /// (`{"a.b": 1, "a": {"b": 2}}`): one value would silently replace the other.
    #[error("two fields are the same path `{path}` (a name with a dot and a nested object)")]
    SamePath { path: String },
}

/// Flattens nested objects into dotted paths; arrays and scalars are whole values.
/// An empty object is kept as a value so that it does not silently vanish.
pub fn flatten(doc: &Map<String, Value>, max_depth: usize) -> Result<Flat, FlattenError> {
    let mut out = Flat::new();
    flatten_into(&mut out, "", doc, 1, max_depth)?;
    Ok(out)
}

fn flatten_into(
    out: &mut Flat,
    prefix: &str,
    doc: &Map<String, Value>,
    depth: usize,
    max_depth: usize,
) -> Result<(), FlattenError> {
    for (name, value) in doc {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                if depth >= max_depth {
                    return Err(FlattenError::TooDeep {
                        limit: max_depth,
                        path,
                    });
                }
                flatten_into(out, &path, inner, depth + 1, max_depth)?;
            }
            Value::Array(items) if depth + array_depth(items) > max_depth => {
                return Err(FlattenError::TooDeep {
                    limit: max_depth,
                    path,
                });
            }
            _ => {
                if out.contains_key(&path) {
                    return Err(FlattenError::SamePath { path });
                }
                out.insert(path, value.clone());
            }
        }
    }
    Ok(())
}

/// How deep containers inside an array go (arrays are kept whole, but still count).
fn array_depth(items: &[Value]) -> usize {
    1 + items
        .iter()
        .map(|v| match v {
            Value::Array(inner) => array_depth(inner),
            Value::Object(map) => 1 + map.values().map(value_depth).max().unwrap_or(0),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

fn value_depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => array_depth(items),
        Value::Object(map) => 1 + map.values().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The delta that turns `old` into `new`; `None` for "no record" on either side.
pub fn compute(old: Option<&Flat>, new: Option<&Flat>) -> Option<Delta> {
    match (old, new) {
        (None, None) => None,
        (None, Some(new)) => Some(Delta {
            op: Op::Create,
            set: new.clone(),
            unset: BTreeSet::new(),
        }),
        (Some(old), None) => Some(Delta {
            op: Op::Delete,
            set: Flat::new(),
            unset: old.keys().cloned().collect(),
        }),
        (Some(old), Some(new)) => {
            let set: Flat = new
                .iter()
                .filter(|(path, value)| old.get(*path) != Some(value))
                .map(|(p, v)| (p.clone(), v.clone()))
                .collect();
            let unset: BTreeSet<String> = old
                .keys()
                .filter(|p| !new.contains_key(*p))
                .cloned()
                .collect();
            if set.is_empty() && unset.is_empty() {
                None
            } else {
                Some(Delta {
                    op: Op::Update,
                    set,
                    unset,
                })
            }
        }
    }
}

/// Does `path` fall under one of the connector's `fields`? A field names a path or
/// a whole subtree: `address` selects `address.street` and `address.city`.
pub fn selected(fields: &[String], path: &str) -> bool {
    fields.iter().any(|f| {
        path == f
            || (path.len() > f.len()
                && path.starts_with(f.as_str())
                && path.as_bytes()[f.len()] == b'.')
    })
}

/// Keeps only the connector's fields. An update left empty is dropped; creates and
/// deletes always stay (the legacy system must learn that the record exists or not).
pub fn project(delta: &Delta, fields: Option<&[String]>) -> Option<Delta> {
    let Some(fields) = fields else {
        return Some(delta.clone());
    };
    let set: Flat = delta
        .set
        .iter()
        .filter(|(p, _)| selected(fields, p))
        .map(|(p, v)| (p.clone(), v.clone()))
        .collect();
    let unset: BTreeSet<String> = delta
        .unset
        .iter()
        .filter(|p| selected(fields, p))
        .cloned()
        .collect();
    if delta.op == Op::Update && set.is_empty() && unset.is_empty() {
        return None;
    }
    Some(Delta {
        op: delta.op,
        set,
        unset,
    })
}

/// `older ∘ newer` for two deltas of the same record, by the table of SPEC §2.
/// `None` means nothing is left to send (a create followed by a delete).
pub fn merge(older: Delta, newer: Delta) -> Option<Delta> {
    match (older.op, newer.op) {
        (Op::Create, Op::Delete) => None,
        (Op::Update, Op::Delete) => {
            // The legacy system still has the paths the update would have removed.
            let mut unset = older.unset;
            unset.extend(newer.unset);
            Some(Delta {
                op: Op::Delete,
                set: Flat::new(),
                unset,
            })
        }
        (_, Op::Delete) => Some(newer),
        (Op::Delete, Op::Create) | (Op::Delete, Op::Update) => {
            // The legacy system holds the record as it was before the delete:
            // send the whole new record and take away what it no longer has.
            let unset = older
                .unset
                .iter()
                .filter(|p| !newer.set.contains_key(*p))
                .cloned()
                .collect();
            Some(Delta {
                op: Op::Update,
                set: newer.set,
                unset,
            })
        }
        (Op::Create, _) => {
            // The legacy system has never seen the record: still one create.
            let mut merged = apply(older, newer);
            merged.op = Op::Create;
            merged.unset.clear();
            Some(merged)
        }
        (Op::Update, _) => Some(apply(older, newer)),
    }
}

/// Later value of each path wins; an unset after a set takes the path out of `set`
/// and the other way round.
fn apply(mut older: Delta, newer: Delta) -> Delta {
    for path in newer.unset {
        older.set.remove(&path);
        older.unset.insert(path);
    }
    for (path, value) in newer.set {
        older.unset.remove(&path);
        older.set.insert(path, value);
    }
    older
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flat(v: Value) -> Flat {
        flatten(v.as_object().expect("object"), 32).expect("flat")
    }

    fn delta(op: Op, set: Value, unset: &[&str]) -> Delta {
        Delta {
            op,
            set: flat(set),
            unset: unset.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn check(old: Option<Value>, new: Option<Value>, expected: Option<Delta>) {
        let old = old.map(flat);
        let new = new.map(flat);
        assert_eq!(compute(old.as_ref(), new.as_ref()), expected);
    }

    #[test]
    fn flatten_nests_objects_and_keeps_arrays_whole() {
        let f = flat(json!({"a": {"b": {"c": 1}}, "l": [1, {"x": 2}], "e": {}, "n": null}));
        assert_eq!(f.get("a.b.c"), Some(&json!(1)));
        assert_eq!(f.get("l"), Some(&json!([1, {"x": 2}])));
        assert_eq!(f.get("e"), Some(&json!({})));
        assert_eq!(f.get("n"), Some(&Value::Null));
        assert_eq!(f.len(), 4);
    }

    #[test]
    fn flatten_refuses_deep_nesting() {
        let mut v = json!(1);
        for _ in 0..40 {
            v = json!({ "x": v });
        }
        let err = flatten(v.as_object().unwrap(), 32).unwrap_err();
        assert!(
            matches!(err, FlattenError::TooDeep { limit: 32, .. }),
            "{err:?}"
        );
        let mut arr = json!(1);
        for _ in 0..40 {
            arr = json!([arr]);
        }
        assert!(flatten(json!({ "a": arr }).as_object().unwrap(), 32).is_err());
    }

    /// Found while reading a fuzz run (fuzz/, target ingest: dotted names): a
    /// dotted name and a nested object naming the same path kept only one of
    /// the two values, silently.
    #[test]
    fn flatten_refuses_two_fields_with_the_same_path() {
        for doc in [
            json!({"a.b": 1, "a": {"b": 2}}),
            json!({"a": {"b.c": 1, "b": {"c": 2}}}),
            json!({"a.b": {}, "a": {"b": {}}}),
        ] {
            let err = flatten(doc.as_object().unwrap(), 32).unwrap_err();
            assert!(
                matches!(err, FlattenError::SamePath { .. }),
                "{doc}: {err:?}"
            );
        }
        // A dotted name alone, or beside a different nested path, is fine.
        let f = flat(json!({"a.b": 1, "a": {"c": 2}}));
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn compute_table() {
        check(None, None, None);
        check(
            None,
            Some(json!({"a": 1})),
            Some(delta(Op::Create, json!({"a": 1}), &[])),
        );
        check(
            Some(json!({"a": 1, "b": {"c": 2}})),
            None,
            Some(delta(Op::Delete, json!({}), &["a", "b.c"])),
        );
        check(Some(json!({"a": 1})), Some(json!({"a": 1})), None);
        check(
            Some(json!({"a": 1, "b": 2})),
            Some(json!({"a": 2, "c": 3})),
            Some(delta(Op::Update, json!({"a": 2, "c": 3}), &["b"])),
        );
        check(
            Some(json!({"a": 1})),
            Some(json!({"a": null})),
            Some(delta(Op::Update, json!({"a": null}), &[])),
        );
        check(
            Some(json!({"a": [1, 2]})),
            Some(json!({"a": [2, 1]})),
            Some(delta(Op::Update, json!({"a": [2, 1]}), &[])),
        );
        check(
            Some(json!({"a": 1})),
            Some(json!({"a": "1"})),
            Some(delta(Op::Update, json!({"a": "1"}), &[])),
        );
    }

    #[test]
    fn the_fixture_pair_gives_the_expected_delta() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let read = |p: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(p)).expect("fixture"))
                .expect("json")
        };
        let expected = read("expected/permit-123-approved.delta.json");
        let got = compute(
            Some(&flat(read("permits/permit-123.json"))),
            Some(&flat(read("permits/permit-123-approved.json"))),
        )
        .expect("a delta");
        assert_eq!(got.op, Op::Update);
        assert_eq!(
            Value::Object(got.set.into_iter().collect()),
            expected["set"]
        );
        let unset: Vec<Value> = got.unset.into_iter().map(Value::String).collect();
        assert_eq!(Value::Array(unset), expected["unset"]);
    }

    #[test]
    fn projection_table() {
        let fields = vec!["status".to_string(), "address".to_string()];
        let f = Some(fields.as_slice());
        let d = delta(
            Op::Update,
            json!({"status": "A", "address": {"city": "R"}, "addressee": 1}),
            &["fee", "address.zip"],
        );
        assert_eq!(
            project(&d, f),
            Some(delta(
                Op::Update,
                json!({"status": "A", "address": {"city": "R"}}),
                &["address.zip"]
            ))
        );
        assert_eq!(project(&delta(Op::Update, json!({"fee": 1}), &[]), f), None);
        assert_eq!(
            project(&delta(Op::Create, json!({"fee": 1}), &[]), f),
            Some(delta(Op::Create, json!({}), &[]))
        );
        assert_eq!(
            project(&delta(Op::Delete, json!({}), &["fee"]), f),
            Some(delta(Op::Delete, json!({}), &[]))
        );
        assert_eq!(project(&d, None), Some(d.clone()));
    }

    #[test]
    fn merge_table() {
        let m = |a: Delta, b: Delta| merge(a, b);
        // create ∘ update: create with merged fields
        assert_eq!(
            m(
                delta(Op::Create, json!({"a": 1, "b": 1}), &[]),
                delta(Op::Update, json!({"a": 2}), &["b"])
            ),
            Some(delta(Op::Create, json!({"a": 2}), &[]))
        );
        // create ∘ delete: nothing
        assert_eq!(
            m(
                delta(Op::Create, json!({"a": 1}), &[]),
                delta(Op::Delete, json!({}), &["a"])
            ),
            None
        );
        // update ∘ update: later value wins, unset after set and set after unset
        assert_eq!(
            m(
                delta(Op::Update, json!({"a": 1, "b": 1}), &["c"]),
                delta(Op::Update, json!({"a": 2, "c": 3}), &["b"])
            ),
            Some(delta(Op::Update, json!({"a": 2, "c": 3}), &["b"]))
        );
        // update ∘ delete: delete, remembering what the update would have removed
        assert_eq!(
            m(
                delta(Op::Update, json!({"a": 1}), &["z"]),
                delta(Op::Delete, json!({}), &["a", "b"])
            ),
            Some(delta(Op::Delete, json!({}), &["a", "b", "z"]))
        );
        // update ∘ delete ∘ create: the field the update removed still goes
        let gone = m(
            delta(Op::Update, json!({"n": 0}), &["a"]),
            delta(Op::Delete, json!({}), &["n"]),
        )
        .unwrap();
        assert_eq!(
            m(gone, delta(Op::Create, json!({"b": 0}), &[])),
            Some(delta(Op::Update, json!({"b": 0}), &["a", "n"]))
        );
        // delete ∘ create: update that sets every new field, unsets old ones absent
        assert_eq!(
            m(
                delta(Op::Delete, json!({}), &["a", "b"]),
                delta(Op::Create, json!({"a": 5, "c": 6}), &[])
            ),
            Some(delta(Op::Update, json!({"a": 5, "c": 6}), &["b"]))
        );
    }

    #[test]
    fn merge_is_associative_on_a_sequence() {
        // Three updates merged pairwise in either grouping give the same delta.
        let a = delta(Op::Update, json!({"x": 1}), &["y"]);
        let b = delta(Op::Update, json!({"y": 2}), &["x"]);
        let c = delta(Op::Update, json!({"x": 3}), &[]);
        let left = merge(merge(a.clone(), b.clone()).unwrap(), c.clone());
        let right = merge(a, merge(b, c).unwrap());
        assert_eq!(left, right);
    }
}
