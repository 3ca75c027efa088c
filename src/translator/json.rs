//! JSON: one object a delta — `{"id","collection","key","op","set","unset"}`.

use serde_json::{Map, Value, json};

use super::{Item, TranslateError};

/// The `[format]` keys of kind "json": none besides `kind`.
pub const KEYS: &[&str] = &["extension"];

pub fn render(item: &Item<'_>) -> Result<Vec<u8>, TranslateError> {
    let delete = item.delta.op == crate::record::Op::Delete;
    let unset: Vec<&String> = if delete {
        Vec::new()
    } else {
        item.delta.unset.iter().collect()
    };
    let set: Map<String, Value> = item
        .delta
        .set
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let value = json!({
        "id": item.id,
        "attempt": item.attempt,
        "collection": item.record_id.collection,
        "key": item.record_id.key,
        "op": item.delta.op.as_str(),
        "set": set,
        "unset": unset,
    });
    serde_json::to_vec(&value).map_err(|e| TranslateError::Other(format!("writing JSON: {e}")))
}
