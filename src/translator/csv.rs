//! CSV rows for the file transport (SPEC §5): header `delivery_id,op,<columns…>`,
//! one row a delta holding the record's latest known values (a delete: the key only).

use super::{Format, Item, TranslateError, value_text};
use crate::problem::Problems;
use crate::record::Op;

/// `[format] kind = "csv"` as written.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Raw {
    /// The record paths written as columns, in order.
    pub columns: Option<Vec<String>>,
    /// The column that holds the record key. Default: the first column.
    pub key_column: Option<String>,
}

/// The `[format]` keys of kind "csv".
pub const KEYS: &[&str] = &["columns", "key_column"];

pub fn validate(raw: &Raw, problems: &mut Problems<'_>) -> Option<Format> {
    let columns = raw.columns.clone().unwrap_or_default();
    if columns.is_empty() {
        problems.at(
            Some("format"),
            "kind",
            "[format] kind \"csv\" needs `columns = [...]`",
        );
        return None;
    }
    let key_column = raw.key_column.clone().unwrap_or_else(|| columns[0].clone());
    if !columns.contains(&key_column) {
        problems.at(
            Some("format"),
            "key_column",
            format!("[format] key_column `{key_column}` is not one of `columns`"),
        );
        return None;
    }
    Some(Format::Csv {
        columns,
        key_column,
    })
}

#[derive(Clone, Debug)]
pub struct CsvFormat {
    pub columns: Vec<String>,
    pub key_column: String,
}

fn write_row(fields: &[String]) -> Result<Vec<u8>, TranslateError> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    w.write_record(fields)
        .map_err(|e| TranslateError::Other(format!("writing CSV: {e}")))?;
    w.into_inner()
        .map_err(|e| TranslateError::Other(format!("writing CSV: {e}")))
}

impl CsvFormat {
    pub fn header(&self) -> Vec<u8> {
        let mut names = vec!["delivery_id".to_string(), "op".to_string()];
        names.extend(self.columns.iter().cloned());
        write_row(&names).unwrap_or_default()
    }

    pub fn row(&self, item: &Item<'_>) -> Result<Vec<u8>, TranslateError> {
        let mut fields = vec![item.id.to_string(), item.delta.op.as_str().to_string()];
        for column in &self.columns {
            let text = if *column == self.key_column {
                item.record_id.key.clone()
            } else if item.delta.op == Op::Delete {
                String::new()
            } else {
                // The record's latest known state; the delta's own value if the
                // record is gone (deleted after this delta was queued).
                let value = item
                    .record
                    .and_then(|r| r.get(column))
                    .or_else(|| item.delta.set.get(column));
                value.and_then(value_text).unwrap_or_default()
            };
            fields.push(text);
        }
        write_row(&fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Delta, Flat, RecordId};
    use serde_json::json;

    #[test]
    fn rows_hold_latest_values_quoted_and_deletes_hold_the_key() {
        let f = CsvFormat {
            columns: vec![
                "permit_number".into(),
                "status".into(),
                "address.street".into(),
                "fee".into(),
            ],
            key_column: "permit_number".into(),
        };
        assert_eq!(
            String::from_utf8(f.header()).unwrap(),
            "delivery_id,op,permit_number,status,address.street,fee\r\n"
        );
        let mut record = Flat::new();
        record.insert("status".into(), json!("APPROVED"));
        record.insert("address.street".into(), json!("9 Main St, \"Apt\" 2"));
        record.insert("fee".into(), json!(95.0));
        let mut set = Flat::new();
        set.insert("status".into(), json!("OLD"));
        let rid = RecordId::new("permits", "125");
        let delta = Delta {
            op: Op::Update,
            set,
            unset: Default::default(),
        };
        let item = Item {
            id: "h:7",
            attempt: 1,
            record_id: &rid,
            delta: &delta,
            record: Some(&record),
        };
        assert_eq!(
            String::from_utf8(f.row(&item).unwrap()).unwrap(),
            "h:7,update,125,APPROVED,\"9 Main St, \"\"Apt\"\" 2\",95.0\r\n"
        );
        let del = Delta {
            op: Op::Delete,
            set: Flat::new(),
            unset: Default::default(),
        };
        let item = Item {
            delta: &del,
            record: None,
            ..item
        };
        assert_eq!(
            String::from_utf8(f.row(&item).unwrap()).unwrap(),
            "h:7,delete,125,,,\r\n"
        );
    }
}
