//! Translator: a queued delta (and the record's latest state) in, the bytes a
//! legacy system reads out — XML, CSV rows, JSON, a template's text or fixed records.
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

/// A connector's `[format]`, validated: the closed set of formats. Each one
/// knows the extension of the outbox files it fills (`[format] extension`).
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Xml {
        root: String,
        key_element: String,
        extension: String,
    },
    Csv(csv::CsvFormat),
    Json {
        extension: String,
    },
    /// `name` is the file name in the connector folder, `source` its text.
    Template(template::TemplateSpec),
    /// Fixed-width records laid out by a COBOL copybook.
    Fixed(std::sync::Arc<fixed::FixedSpec>),
}

impl Format {
    /// The extension of the outbox files, without the dot.
    pub fn extension(&self) -> &str {
        match self {
            Format::Xml { extension, .. } | Format::Json { extension } => extension,
            Format::Csv(f) => &f.extension,
            Format::Template(t) => &t.extension,
            Format::Fixed(f) => &f.extension,
        }
    }

    fn set_extension(&mut self, value: String) {
        match self {
            Format::Xml { extension, .. } | Format::Json { extension } => *extension = value,
            Format::Csv(f) => f.extension = value,
            Format::Template(t) => t.extension = value,
            Format::Fixed(f) => std::sync::Arc::make_mut(f).extension = value,
        }
    }

    /// One line for `check`: what is written and how; `files`: into outbox
    /// files (which then get their extension).
    pub fn describe(&self, files: bool) -> String {
        let what = match self {
            Format::Xml {
                root, key_element, ..
            } => format!("xml <{root}> with the key in <{key_element}>"),
            Format::Csv(f) => f.describe(),
            Format::Json { .. } => "json, one object a change".to_string(),
            Format::Template(t) if t.is_xml() => format!(
                "XML template {} (values escaped for XML; one change a file)",
                t.name
            ),
            Format::Template(t) => format!(
                "text template {} in {} (values as they are; one holding a line break{} is refused)",
                t.name,
                t.encoding.name(),
                match t.delimiter {
                    Some(d) => format!(" or `{}`", char::from(d)),
                    None => String::new(),
                }
            ),
            Format::Fixed(f) => f.describe(),
        };
        if files {
            format!("{what} -> .{} files", self.extension())
        } else {
            what
        }
    }

    /// Whether each change is a document of its own (an XML template), so that
    /// a batch file can hold only one.
    pub fn one_change_per_file(&self) -> bool {
        matches!(self, Format::Template(t) if t.is_xml())
    }
}

/// `[format] extension`, common to every kind.
#[derive(Debug, Default, serde::Deserialize)]
struct ExtensionRaw {
    /// The outbox files' extension, without the dot. Default: the format's own.
    extension: Option<String>,
}

/// Letters and digits only: no dot, no slash, nothing a shell or share minds.
fn valid_extension(text: &str) -> bool {
    !text.is_empty() && text.len() <= 16 && text.chars().all(|c| c.is_ascii_alphanumeric())
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
    let mut format = match kind {
        "xml" => xml::validate(
            &crate::problem::section(text, "format", problems)?,
            problems,
        ),
        "csv" => csv::validate(
            &crate::problem::section(text, "format", problems)?,
            problems,
        ),
        "json" => Some(Format::Json {
            extension: "ndjson".into(),
        }),
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
    };
    let raw: ExtensionRaw = crate::problem::section(text, "format", problems)?;
    if let Some(written) = raw.extension {
        // ".txt" means "txt": the dot is ours to write.
        let extension = written.strip_prefix('.').unwrap_or(&written).to_string();
        if !valid_extension(&extension) {
            let extension = written;
            problems.at(
                Some("format"),
                "extension",
                format!(
                    "[format] extension `{extension}`: letters and digits only (no dot or slash), such as \"txt\" or \"dat\""
                ),
            );
            return None;
        }
        if let Some(f) = &mut format {
            f.set_extension(extension);
        }
    }
    format
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
    Json { extension: String },
    Template(template::TemplateFormat),
    Fixed(std::sync::Arc<fixed::FixedSpec>),
}

impl Translator {
    pub fn new(format: &Format) -> Translator {
        match format {
            Format::Xml {
                root,
                key_element,
                extension,
            } => Translator::Xml(xml::XmlFormat {
                root: root.clone(),
                key_element: key_element.clone(),
                extension: extension.clone(),
            }),
            Format::Csv(f) => Translator::Csv(f.clone()),
            Format::Json { extension } => Translator::Json {
                extension: extension.clone(),
            },
            Format::Template(spec) => Translator::Template(template::TemplateFormat::new(spec)),
            Format::Fixed(spec) => Translator::Fixed(spec.clone()),
        }
    }

    /// The payload for one delta on its own (what a SOAP body or a serial frame carries).
    pub fn render(&self, item: &Item<'_>) -> Result<Vec<u8>, TranslateError> {
        match self {
            Translator::Xml(f) => f.render(item),
            Translator::Csv(f) => f.row(item),
            Translator::Json { .. } => json::render(item),
            Translator::Template(f) => f.render(item),
            Translator::Fixed(f) => f.render(item),
        }
    }

    /// One entry of a batch file (the delivery id travels inside the file).
    pub fn render_file_entry(&self, item: &Item<'_>) -> Result<Vec<u8>, TranslateError> {
        match self {
            Translator::Xml(f) => f.render_file_entry(item),
            Translator::Csv(f) => f.row(item),
            Translator::Json { .. } => json::render(item).map(|mut v| {
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
            // Checked when the connector was loaded: it can be written.
            Translator::Csv(f) => f.header().unwrap_or_default(),
            Translator::Json { .. } | Translator::Template(_) | Translator::Fixed(_) => Vec::new(),
        }
    }

    pub fn file_footer(&self) -> Vec<u8> {
        match self {
            Translator::Xml(_) => b"</Deliveries>\n".to_vec(),
            _ => Vec::new(),
        }
    }

    /// The outbox files' extension (`[format] extension`, or the format's own).
    pub fn file_extension(&self) -> &str {
        match self {
            Translator::Xml(f) => &f.extension,
            Translator::Csv(f) => &f.extension,
            Translator::Json { extension } => extension,
            Translator::Template(f) => f.extension(),
            Translator::Fixed(f) => &f.extension,
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
