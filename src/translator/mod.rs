//! Translator: a queued delta (and the record's latest state) in, the bytes a
//! legacy system reads out — XML, CSV rows or JSON.
//!
//! **Invariants:** no I/O; every format escapes or quotes by its own rules through
//! a real writer (quick-xml, csv), never by string concatenation; a value the
//! format cannot carry is a [`TranslateError`] (the delta is rejected), never a
//! silently altered payload.

pub mod codepage;
pub mod copybook;
pub mod csv;
pub mod fixed;
pub mod json;
pub mod template;
pub mod xml;

use serde_json::Value;

use crate::problem::Problems;
use crate::record::{Delta, Flat, RecordId};

/// A connector's `[format]`, validated: the closed set of formats.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Xml {
        root: String,
        key_element: String,
    },
    Csv {
        columns: Vec<String>,
        key_column: String,
    },
    Json,
    /// `name` is the file name in the connector folder, `source` its text.
    Template {
        name: String,
        source: String,
    },
    /// Fixed-width records laid out by a COBOL copybook.
    Fixed(std::sync::Arc<fixed::FixedSpec>),
}

/// The format kinds and the `[format]` keys each takes (besides `kind`). A key
/// of one kind written under another is refused with "does not apply".
pub const KINDS: &[(&str, &[&str])] = &[
    ("xml", xml::KEYS),
    ("csv", csv::KEYS),
    ("json", json::KEYS),
    ("template", template::KEYS),
    ("fixed", fixed::KEYS),
];

/// Validates `[format]` of kind `kind` (a known one), read from the connector
/// file `text`; `folder` is the connector's folder (templates, copybooks).
pub fn validate(
    kind: &str,
    text: &str,
    folder: &std::path::Path,
    problems: &mut Problems<'_>,
) -> Option<Format> {
    match kind {
        "xml" => xml::validate(
            &crate::problem::section(text, "format", problems)?,
            problems,
        ),
        "csv" => csv::validate(
            &crate::problem::section(text, "format", problems)?,
            problems,
        ),
        "json" => Some(Format::Json),
        "template" => template::validate(
            &crate::problem::section(text, "format", problems)?,
            folder,
            problems,
        ),
        "fixed" => fixed::validate(
            &crate::problem::section(text, "format", problems)?,
            folder,
            problems,
        ),
        _ => None,
    }
}

/// One delta as a translator sees it.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    /// The delivery id, `<target>:<seq>`.
    pub id: &'a str,
    /// 1 for the first try; grows with each rejection.
    pub attempt: u32,
    pub record_id: &'a RecordId,
    pub delta: &'a Delta,
    /// The record's latest known state (`None` once deleted).
    pub record: Option<&'a Flat>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TranslateError {
    #[error("field `{path}` holds a character {format} cannot carry ({what})")]
    Unrepresentable {
        path: String,
        format: &'static str,
        what: String,
    },
    /// A fixed-width item cannot hold the value (never truncated or rounded).
    #[error("copybook item {item} ({pic}) cannot hold {value}: {why}")]
    DoesNotFit {
        item: String,
        pic: String,
        value: String,
        why: String,
    },
    #[error("{0}")]
    Other(String),
}

/// The closed set of formats.
#[derive(Clone, Debug)]
pub enum Translator {
    Xml(xml::XmlFormat),
    Csv(csv::CsvFormat),
    Json,
    Template(template::TemplateFormat),
    Fixed(std::sync::Arc<fixed::FixedSpec>),
}

impl Translator {
    pub fn new(format: &Format) -> Translator {
        match format {
            Format::Xml { root, key_element } => Translator::Xml(xml::XmlFormat {
                root: root.clone(),
                key_element: key_element.clone(),
            }),
            Format::Csv {
                columns,
                key_column,
            } => Translator::Csv(csv::CsvFormat {
                columns: columns.clone(),
                key_column: key_column.clone(),
            }),
            Format::Json => Translator::Json,
            Format::Template { name, source } => {
                Translator::Template(template::TemplateFormat::new(name, source))
            }
            Format::Fixed(spec) => Translator::Fixed(spec.clone()),
        }
    }

    /// The payload for one delta on its own (what a SOAP body or a serial frame carries).
    pub fn render(&self, item: &Item<'_>) -> Result<Vec<u8>, TranslateError> {
        match self {
            Translator::Xml(f) => f.render(item),
            Translator::Csv(f) => f.row(item),
            Translator::Json => json::render(item),
            Translator::Template(f) => f.render(item),
            Translator::Fixed(f) => f.render(item),
        }
    }

    /// One entry of a batch file (the delivery id travels inside the file).
    pub fn render_file_entry(&self, item: &Item<'_>) -> Result<Vec<u8>, TranslateError> {
        match self {
            Translator::Xml(f) => f.render_file_entry(item),
            Translator::Csv(f) => f.row(item),
            Translator::Json => json::render(item).map(|mut v| {
                v.push(b'\n');
                v
            }),
            Translator::Template(f) => f.render(item),
            Translator::Fixed(f) => f.render(item),
        }
    }

    pub fn file_header(&self) -> Vec<u8> {
        match self {
            Translator::Xml(_) => {
                b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Deliveries>\n".to_vec()
            }
            Translator::Csv(f) => f.header(),
            Translator::Json | Translator::Template(_) | Translator::Fixed(_) => Vec::new(),
        }
    }

    pub fn file_footer(&self) -> Vec<u8> {
        match self {
            Translator::Xml(_) => b"</Deliveries>\n".to_vec(),
            _ => Vec::new(),
        }
    }

    pub fn file_extension(&self) -> &'static str {
        match self {
            Translator::Xml(_) => "xml",
            Translator::Csv(_) => "csv",
            Translator::Json => "ndjson",
            Translator::Template(_) => "xml",
            Translator::Fixed(_) => "dat",
        }
    }
}

/// A value as legacy text: strings as they are, `null` as `None`, everything else
/// (numbers, booleans, arrays) as its JSON text.
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}
