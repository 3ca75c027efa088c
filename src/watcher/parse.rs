//! Turns the bytes of a dropped file or a socket line into changes: JSON (one
//! object or an array), NDJSON, CSV; bare documents or envelopes.
//!
//! **Invariants:** every error says where (line, column or element) and what;
//! [`stream_file`] hands changes on as it reads, so its memory does not grow with
//! the file; no input makes it recurse deeper than serde_json's limit.

use std::io::{BufRead, BufReader, Read};

use serde_json::{Map, Value};

use crate::config::{Limits, Watch};
use crate::diff;
use crate::record::{Change, ChangeSet, RecordId};

/// What is wrong with an input, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message}", where_(.line, .column, .element))]
pub struct ParseError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// 1-based position in a JSON array.
    pub element: Option<usize>,
    pub message: String,
}

fn where_(line: &Option<usize>, column: &Option<usize>, element: &Option<usize>) -> String {
    let mut s = String::new();
    if let Some(e) = element {
        s.push_str(&format!("array element {e}: "));
    }
    match (line, column) {
        (Some(l), Some(c)) => s.push_str(&format!("line {l}, column {c}: ")),
        (Some(l), None) => s.push_str(&format!("line {l}: ")),
        _ => {}
    }
    s
}

impl ParseError {
    /// An error without a place.
    pub fn msg(message: impl Into<String>) -> Self {
        ParseError {
            line: None,
            column: None,
            element: None,
            message: message.into(),
        }
    }
    fn at_line(mut self, line: usize) -> Self {
        self.line.get_or_insert(line);
        self
    }
    fn from_json(e: &serde_json::Error, line_offset: usize) -> Self {
        let message = e.to_string();
        // serde_json appends " at line L column C"; we say it in front instead.
        let message = message
            .rsplit_once(" at line ")
            .map(|(m, _)| m.to_string())
            .unwrap_or(message);
        ParseError {
            line: (e.line() > 0).then(|| e.line() + line_offset),
            column: (e.column() > 0).then_some(e.column()),
            element: None,
            message,
        }
    }
}

/// How the records of a file are shaped.
#[derive(Clone, Debug)]
pub enum Shape<'a> {
    /// Bare documents of `collection`, keyed by the field `key`.
    Bare { collection: &'a str, key: &'a str },
    /// `{"collection","key","doc"|"deleted"}` envelopes.
    Envelope,
}

impl<'a> Shape<'a> {
    pub fn of(watch: &'a Watch) -> Shape<'a> {
        match &watch.key {
            Some(key) => Shape::Bare {
                collection: &watch.collection,
                key,
            },
            None => Shape::Envelope,
        }
    }
}

/// The UTF-8 byte-order mark that Windows tools write at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// `bytes` without a leading byte-order mark (JSON has none; CSV skips it too).
fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM).unwrap_or(bytes)
}

/// What a file's changes are handed to, one at a time, in file order. An error
/// it returns ends the reading and comes back from [`stream_file`] as it is.
pub type Each<'e> = dyn FnMut(Change) -> Result<(), ParseError> + 'e;

/// Parses a whole dropped file held in memory by its name's extension.
pub fn parse_file(
    name: &str,
    bytes: &[u8],
    watch: &Watch,
    limits: &Limits,
) -> Result<ChangeSet, ParseError> {
    let mut changes = Vec::new();
    stream_file(name, bytes, watch, limits, &mut |c| {
        changes.push(c);
        Ok(())
    })?;
    let full_collections = if watch.snapshot {
        vec![watch.collection.clone()]
    } else {
        Vec::new()
    };
    Ok(ChangeSet {
        changes,
        full_collections,
    })
}

/// Reads a file by its name's extension and hands each change to `each` as it
/// goes: memory does not grow with the file (only with its largest record).
/// Returns how many changes it handed over.
pub fn stream_file(
    name: &str,
    reader: impl Read,
    watch: &Watch,
    limits: &Limits,
    each: &mut Each<'_>,
) -> Result<u64, ParseError> {
    let shape = Shape::of(watch);
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let head = reader
        .fill_buf()
        .map_err(|e| ParseError::msg(format!("cannot read the file: {e}")))?;
    if head.starts_with(BOM) {
        reader.consume(BOM.len());
    }
    let mut count = 0;
    let mut counted = |c: Change| {
        if watch.snapshot && c.record.collection != watch.collection {
            return Err(ParseError::msg(format!(
                "this snapshot folder holds collection `{}`, but a record is for `{}`",
                watch.collection, c.record.collection
            )));
        }
        count += 1;
        each(c)
    };
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".json") {
        stream_json(reader, &shape, limits, &mut counted)?;
    } else if lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
        stream_ndjson(reader, &shape, limits, &mut counted)?;
    } else if lower.ends_with(".csv") {
        stream_csv(reader, &shape, limits, &mut counted)?;
    } else {
        return Err(ParseError::msg(
            "unknown file type: hms-sync takes *.json, *.ndjson, *.jsonl and *.csv",
        ));
    }
    Ok(count)
}

/// One object, or an array of objects read element by element.
fn stream_json(
    reader: impl Read,
    shape: &Shape<'_>,
    limits: &Limits,
    each: &mut Each<'_>,
) -> Result<(), ParseError> {
    use serde::de::Deserializer as _;
    let mut de = serde_json::Deserializer::from_reader(reader);
    let mut root = JsonRoot {
        shape,
        limits,
        each,
        failed: None,
    };
    let parsed = (&mut de).deserialize_any(&mut root).and_then(|()| de.end());
    match (root.failed, parsed) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(ParseError::from_json(&e, 0)),
        (None, Ok(())) => Ok(()),
    }
}

/// The root of a JSON file: hands each object on as soon as it is read. An error
/// of ours is kept in `failed` and ends the parse through serde's error path.
struct JsonRoot<'a, 'e> {
    shape: &'a Shape<'a>,
    limits: &'a Limits,
    each: &'a mut Each<'e>,
    failed: Option<ParseError>,
}

impl JsonRoot<'_, '_> {
    fn take<E: serde::de::Error>(&mut self, value: Value, element: Option<usize>) -> Result<(), E> {
        let result = match value {
            Value::Object(map) => {
                change_of(map, self.shape, self.limits).and_then(|c| (self.each)(c))
            }
            other if element.is_some() => Err(ParseError::msg(format!(
                "expected an object, found {}",
                kind(&other)
            ))),
            other => Err(ParseError::msg(format!(
                "expected an object or an array of objects, found {}",
                kind(&other)
            ))),
        };
        result.map_err(|mut e| {
            if e.element.is_none() {
                e.element = element;
            }
            let message = e.to_string();
            self.failed = Some(e);
            E::custom(message)
        })
    }
}

impl<'de> serde::de::Visitor<'de> for &mut JsonRoot<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object or an array of objects")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        use serde::Deserialize;
        let value = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        self.take(value, None)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut element = 0;
        while let Some(value) = seq.next_element::<Value>()? {
            element += 1;
            self.take(value, Some(element))?;
        }
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.take(Value::Bool(v), None)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.take(Value::from(v), None)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.take(Value::from(v), None)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.take(Value::from(v), None)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.take(Value::from(v), None)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.take(Value::Null, None)
    }
}

/// One object a line; blank lines are skipped. A line is never buffered past
/// `max_line_bytes`.
fn stream_ndjson(
    mut reader: impl BufRead,
    shape: &Shape<'_>,
    limits: &Limits,
    each: &mut Each<'_>,
) -> Result<(), ParseError> {
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        n += 1;
        let read = (&mut reader)
            .take(limits.max_line_bytes as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| ParseError::msg(format!("cannot read the file: {e}")).at_line(n))?;
        if read == 0 {
            return Ok(());
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        if body.len() > limits.max_line_bytes {
            return Err(ParseError::msg(format!(
                "line is over the limit of {} bytes (max_line_bytes)",
                limits.max_line_bytes
            ))
            .at_line(n));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        each(parse_line(body, shape, limits).map_err(|e| e.at_line(n))?)?;
    }
}

/// One JSON object from a line (an NDJSON line or a socket line; a leading
/// byte-order mark, as `send` of a Windows-written file passes on, is skipped).
pub fn parse_line(line: &[u8], shape: &Shape<'_>, limits: &Limits) -> Result<Change, ParseError> {
    let line = without_bom(line);
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        let mut p = ParseError::from_json(&e, 0);
        p.line = None; // the caller knows the line; the column stays
        p
    })?;
    match value {
        Value::Object(map) => change_of(map, shape, limits),
        other => Err(ParseError::msg(format!(
            "expected a JSON object, found {}",
            kind(&other)
        ))),
    }
}

fn stream_csv(
    reader: impl Read,
    shape: &Shape<'_>,
    limits: &Limits,
    each: &mut Each<'_>,
) -> Result<(), ParseError> {
    let Shape::Bare { collection, key } = shape else {
        return Err(ParseError::msg(
            "CSV files hold bare records: set `key` in this folder's [[watch]]",
        ));
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(reader);
    let csv_err = |e: csv::Error| {
        let line = e.position().map(|p| p.line() as usize);
        let message = match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => {
                format!("row has {len} fields but the header has {expected_len}")
            }
            csv::ErrorKind::Utf8 { err, .. } => {
                format!("not valid UTF-8 (field {})", err.field() + 1)
            }
            _ => e.to_string(),
        };
        ParseError {
            line,
            column: None,
            element: None,
            message,
        }
    };
    let headers = reader.headers().map_err(csv_err)?.clone();
    if !headers.iter().any(|h| h == *key) {
        return Err(ParseError::msg(format!(
            "the header has no column `{key}` (the key of this folder)"
        ))
        .at_line(1));
    }
    // Two columns with one name would each replace the other's value silently.
    if let Some((_, twice)) = headers
        .iter()
        .enumerate()
        .find(|(i, h)| headers.iter().take(*i).any(|g| g == *h))
    {
        return Err(
            ParseError::msg(format!("the header names the column `{twice}` twice")).at_line(1),
        );
    }
    for row in reader.records() {
        let row = row.map_err(csv_err)?;
        let line = row.position().map(|p| p.line() as usize).unwrap_or(0);
        if row.as_slice().len() > limits.max_line_bytes {
            return Err(ParseError::msg("row is over max_line_bytes").at_line(line));
        }
        let doc: Map<String, Value> = headers
            .iter()
            .zip(row.iter())
            .map(|(h, v)| (h.to_string(), Value::String(v.to_string())))
            .collect();
        // A header like `address.street` already is a path: insert it as one.
        let flat = doc.into_iter().collect();
        each(bare_change(flat, collection, key).map_err(|e| e.at_line(line))?)?;
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A key as text: strings as they are, numbers as their decimal text.
fn key_text(v: &Value, field: &str) -> Result<String, ParseError> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => {
            return Err(ParseError::msg(format!(
                "key field `{field}` must be a string or a number, found {}",
                kind(other)
            )));
        }
    };
    if text.is_empty() {
        return Err(ParseError::msg(format!("key field `{field}` is empty")));
    }
    Ok(text)
}

fn change_of(
    map: Map<String, Value>,
    shape: &Shape<'_>,
    limits: &Limits,
) -> Result<Change, ParseError> {
    match shape {
        Shape::Bare { collection, key } => {
            let flat = diff::flatten(&map, limits.max_depth)
                .map_err(|e| ParseError::msg(e.to_string()))?;
            bare_change(flat, collection, key)
        }
        Shape::Envelope => envelope(map, limits),
    }
}

/// Refuses a record too large for the queue to store and read back.
fn check_size(record: &RecordId, doc: &crate::record::Flat) -> Result<(), ParseError> {
    use crate::queue::codec::{MAX_RECORD_BYTES, encoded_state_len};
    let bytes = encoded_state_len(doc);
    if bytes > MAX_RECORD_BYTES {
        return Err(ParseError::msg(format!(
            "record {record} takes {bytes} bytes, over the limit of {MAX_RECORD_BYTES} bytes a record; \
             keep large payloads out of the record"
        )));
    }
    Ok(())
}

fn bare_change(
    flat: crate::record::Flat,
    collection: &str,
    key: &str,
) -> Result<Change, ParseError> {
    let value = flat
        .get(key)
        .ok_or_else(|| ParseError::msg(format!("record has no key field `{key}`")))?;
    let key = key_text(value, key)?;
    let record = RecordId::new(collection, key);
    check_size(&record, &flat)?;
    Ok(Change {
        record,
        doc: Some(flat),
    })
}

/// `{"collection":"permits","key":"123","doc":{…}}` or `{…,"deleted":true}`.
pub fn envelope(mut map: Map<String, Value>, limits: &Limits) -> Result<Change, ParseError> {
    if let Some(unknown) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "collection" | "key" | "doc" | "deleted"))
    {
        return Err(ParseError::msg(format!(
            "unknown envelope field `{unknown}`; an envelope has collection, key, and doc or deleted"
        )));
    }
    let collection = match map.remove("collection") {
        Some(Value::String(c)) if !c.is_empty() => c,
        Some(_) => {
            return Err(ParseError::msg(
                "envelope field `collection` must be a non-empty string",
            ));
        }
        None => return Err(ParseError::msg("envelope has no `collection`")),
    };
    let key = match map.remove("key") {
        Some(v) => key_text(&v, "key")?,
        None => return Err(ParseError::msg("envelope has no `key`")),
    };
    let deleted = match map.remove("deleted") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => {
            return Err(ParseError::msg(
                "envelope field `deleted` must be true or false",
            ));
        }
    };
    let doc = match (map.remove("doc"), deleted) {
        (Some(_), true) => {
            return Err(ParseError::msg(
                "envelope has both `doc` and `deleted: true`; send one",
            ));
        }
        (None, true) => None,
        (Some(Value::Object(doc)), false) => Some(
            diff::flatten(&doc, limits.max_depth).map_err(|e| ParseError::msg(e.to_string()))?,
        ),
        (Some(other), false) => {
            return Err(ParseError::msg(format!(
                "envelope field `doc` must be an object, found {}",
                kind(&other)
            )));
        }
        (None, false) => {
            return Err(ParseError::msg(
                "envelope has neither `doc` nor `deleted: true`",
            ));
        }
    };
    let record = RecordId::new(collection, key);
    if let Some(doc) = &doc {
        check_size(&record, doc)?;
    }
    Ok(Change { record, doc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn watch(key: Option<&str>) -> Watch {
        Watch {
            dir: PathBuf::from("/x"),
            collection: "permits".into(),
            key: key.map(String::from),
            snapshot: false,
            archive_dir: None,
            poll: false,
        }
    }

    fn parse(name: &str, text: &str, key: Option<&str>) -> Result<ChangeSet, ParseError> {
        parse_file(name, text.as_bytes(), &watch(key), &Limits::default())
    }

    #[test]
    fn json_object_array_and_numeric_keys() {
        let set = parse(
            "a.json",
            r#"[{"id": 7, "a": {"b": 1}}, {"id": "8"}]"#,
            Some("id"),
        )
        .unwrap();
        assert_eq!(set.changes.len(), 2);
        assert_eq!(set.changes[0].record, RecordId::new("permits", "7"));
        assert!(set.changes[0].doc.as_ref().unwrap().contains_key("a.b"));
    }

    #[test]
    fn errors_say_where() {
        let e = parse("a.json", "{\n\"id\": 1,\n\"x\": ", Some("id")).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let e = parse("a.json", r#"[{"id": 1}, {"x": 2}]"#, Some("id")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "array element 2: record has no key field `id`"
        );
        let mut nd = String::new();
        for i in 1..5000 {
            nd.push_str(&format!("{{\"id\": {i}}}\n"));
        }
        nd.push_str("{\"id\": 5000,\n");
        let e = parse("a.ndjson", &nd, Some("id")).unwrap_err();
        assert_eq!(e.line, Some(5000), "{e}");
        let e = parse("a.csv", "id,a\n1,x\n2\n", Some("id")).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("1 fields but the header has 2"), "{e}");
    }

    /// A record whose fields name one path twice is refused, not half kept:
    /// `{"a.b": 1, "a": {"b": 2}}` in JSON, a repeated column in CSV.
    #[test]
    fn two_fields_with_one_path_are_refused() {
        let e = parse(
            "a.json",
            r#"{"id": 1, "a.b": 1, "a": {"b": 2}}"#,
            Some("id"),
        )
        .unwrap_err();
        assert!(e.message.contains("same path `a.b`"), "{e}");
        let e = parse(
            "a.ndjson",
            r#"{"collection": "permits", "key": "1", "doc": {"a": {"b": 2}, "a.b": 1}}"#,
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("same path `a.b`"), "{e}");
        let e = parse("a.csv", "id,status,status\n1,a,b\n", Some("id")).unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        assert!(e.message.contains("`status` twice"), "{e}");
    }

    #[test]
    fn csv_headers_are_paths_and_values_strings() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/permits/export-2026-11-25.csv"),
        )
        .unwrap();
        let set = parse("e.csv", &text, Some("permit_number")).unwrap();
        assert_eq!(set.changes.len(), 4);
        let doc = set.changes[2].doc.as_ref().unwrap();
        assert_eq!(
            doc["address.street"],
            Value::String("9 Main St, Apt 2".into())
        );
        assert_eq!(doc["inspector.name"], Value::String(String::new()));
    }

    #[test]
    fn envelopes() {
        let set = parse(
            "e.ndjson",
            "{\"collection\":\"permits\",\"key\":\"1\",\"doc\":{\"a\":1}}\n{\"collection\":\"permits\",\"key\":2,\"deleted\":true}\n",
            None,
        )
        .unwrap();
        assert_eq!(set.changes[1].doc, None);
        assert_eq!(set.changes[1].record.key, "2");
        let e = parse(
            "e.ndjson",
            "{\"collection\":\"p\",\"key\":\"1\",\"dco\":{}}\n",
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("line 1") && e.to_string().contains("dco"),
            "{e}"
        );
    }

    #[test]
    fn deep_nesting_invalid_utf8_and_unknown_types_are_refused() {
        let deep = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert!(parse("d.json", &deep, Some("a")).is_err());
        let e = parse_file(
            "u.json",
            b"{\"id\": \"\xff\"}",
            &watch(Some("id")),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        assert!(
            parse_file(
                "u.csv",
                b"id\n\xff\n",
                &watch(Some("id")),
                &Limits::default()
            )
            .is_err()
        );
        assert!(parse("x.txt", "{}", Some("id")).is_err());
    }

    #[test]
    fn a_record_too_large_for_the_queue_is_refused() {
        let big = "x".repeat(crate::queue::codec::MAX_RECORD_BYTES + 10);
        let e = parse(
            "b.json",
            &format!("{{\"id\": 1, \"blob\": \"{big}\"}}"),
            Some("id"),
        )
        .unwrap_err();
        assert!(e.message.contains("over the limit"), "{e}");
        let small = "x".repeat(1000);
        assert!(
            parse(
                "s.json",
                &format!("{{\"id\": 1, \"blob\": \"{small}\"}}"),
                Some("id")
            )
            .is_ok()
        );
    }

    #[test]
    fn the_same_record_twice_applies_in_file_order() {
        let set = parse(
            "a.json",
            r#"[{"id": 1, "a": 1}, {"id": 1, "a": 2}]"#,
            Some("id"),
        )
        .unwrap();
        assert_eq!(
            set.changes.len(),
            2,
            "both kept; the queue applies them in order, the last wins"
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped_in_every_format() {
        let bom = "\u{feff}";
        for (name, text) in [
            ("a.json", r#"{"id": "1", "s": "A"}"#),
            ("a.json", r#"[{"id": "1", "s": "A"}]"#),
            ("a.ndjson", "{\"id\": \"1\", \"s\": \"A\"}\n"),
            ("a.jsonl", "{\"id\": \"1\", \"s\": \"A\"}\n"),
            ("a.csv", "id,s\n1,A\n"),
        ] {
            let set = parse(name, &format!("{bom}{text}"), Some("id"))
                .unwrap_or_else(|e| panic!("{name} {text}: {e}"));
            assert_eq!(set.changes.len(), 1, "{name}");
            assert_eq!(set.changes[0].record, RecordId::new("permits", "1"));
            assert!(set.changes[0].doc.as_ref().unwrap().contains_key("s"));
        }
        let line = format!("{bom}{{\"collection\":\"permits\",\"key\":\"1\",\"doc\":{{}}}}");
        assert!(parse_line(line.as_bytes(), &Shape::Envelope, &Limits::default()).is_ok());
        // Only at the start: a mark inside the text is still an error.
        assert!(parse("a.json", &format!("{bom}{bom}{{}}"), Some("id")).is_err());
    }
}
