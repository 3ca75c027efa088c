//! CSV rows for the file transport (SPEC §5): header `delivery_id,op,<columns…>`,
//! one row a delta holding the record's latest known values (a delete: the key only),
//! in the connector's dialect: `delimiter`, `quote`, `header`, `line_end`, `encoding`.
//!
//! **Invariants:** the csv crate quotes; with `quote = "never"` a value that
//! would need quoting (the delimiter, a `"`, a line break or separator) is a rejection of
//! its delta naming the column, and a character the `encoding` lacks is one too:
//! never a silently broken or altered row.

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
    /// One character between values. Default ",". `"\t"` for tabs.
    pub delimiter: Option<String>,
    /// "minimal" (default: only values that need it), "always" or "never".
    pub quote: Option<String>,
    /// Write the `delivery_id,op,<columns…>` line first. Default true.
    pub header: Option<bool>,
    /// "crlf" (default, RFC 4180) or "lf".
    pub line_end: Option<String>,
    /// "utf-8" (default), "latin1" or "cp1252".
    pub encoding: Option<String>,
}

/// The `[format]` keys of kind "csv".
pub const KEYS: &[&str] = &[
    "columns",
    "key_column",
    "delimiter",
    "quote",
    "header",
    "line_end",
    "encoding",
    "extension",
];

/// When a value is put in double quotes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Quote {
    /// Only a value holding the delimiter, a quote or a line break.
    Minimal,
    /// Every value.
    Always,
    /// None: a value that would need quotes is a rejection of its delta.
    Never,
}

/// The character set of the written file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TextEncoding {
    Utf8,
    /// ISO-8859-1.
    Latin1,
    /// windows-1252 (Latin-1 with `€`, curly quotes and dashes at 0x80–0x9F).
    Cp1252,
}

impl TextEncoding {
    pub fn from_name(name: &str) -> Option<TextEncoding> {
        Some(match name.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => TextEncoding::Utf8,
            "latin1" | "iso-8859-1" => TextEncoding::Latin1,
            "cp1252" | "windows-1252" => TextEncoding::Cp1252,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            TextEncoding::Utf8 => "utf-8",
            TextEncoding::Latin1 => "latin1",
            TextEncoding::Cp1252 => "cp1252",
        }
    }

    /// The first character of `text` this set lacks.
    pub fn missing(self, text: &str) -> Option<char> {
        if self == TextEncoding::Utf8 {
            return None;
        }
        text.chars().find(|&c| self.byte(c).is_none())
    }

    fn byte(self, c: char) -> Option<Option<u8>> {
        match self {
            TextEncoding::Utf8 => Some(None),
            TextEncoding::Latin1 => super::codepage::Encoding::Latin1.encode(c).map(Some),
            TextEncoding::Cp1252 => super::codepage::cp1252_encode(c).map(Some),
        }
    }

    /// `text` in this set; every character must be in it (see [`Self::missing`]).
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            TextEncoding::Utf8 => text.as_bytes().to_vec(),
            _ => text
                .chars()
                .filter_map(|c| self.byte(c).flatten())
                .collect(),
        }
    }
}

/// What `c` is, if a reader of text lines would end a line at it: LF and CR,
/// and the other line boundaries that line readers split on (Python's
/// `splitlines`, many editors and viewers): VT, FF, the file, group and record
/// separators, NEL, U+2028 and U+2029. A value holding one cannot be written
/// unquoted without breaking its line.
pub fn line_break(c: char) -> Option<String> {
    match c {
        '\n' => Some("a line break (LF)".into()),
        '\r' => Some("a line break (CR)".into()),
        '\u{0B}' | '\u{0C}' | '\u{1C}'..='\u{1E}' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
            Some(format!("a line separator (U+{:04X})", c as u32))
        }
        _ => None,
    }
}

/// How rows are written.
#[derive(Clone, Debug, PartialEq)]
pub struct Dialect {
    pub delimiter: u8,
    pub quote: Quote,
    pub header: bool,
    /// `true`: CR LF (the default, RFC 4180); `false`: LF.
    pub crlf: bool,
    pub encoding: TextEncoding,
}

impl Default for Dialect {
    fn default() -> Self {
        Dialect {
            delimiter: b',',
            quote: Quote::Minimal,
            header: true,
            crlf: true,
            encoding: TextEncoding::Utf8,
        }
    }
}

/// The delimiter as `check` and messages show it.
fn shown(delimiter: u8) -> String {
    match delimiter {
        b'\t' => "\\t (tab)".to_string(),
        d => (d as char).to_string(),
    }
}

/// Reads `delimiter` (one ASCII character, not `"`, CR or LF) for `kind`; a
/// template takes one too, to refuse values that would break its lines.
pub fn delimiter(text: &str, problems: &mut Problems<'_>) -> Option<u8> {
    let mut chars = text.chars();
    let refuse = |problems: &mut Problems<'_>, why: &str| {
        problems.at(
            Some("format"),
            "delimiter",
            format!("[format] delimiter {text:?}: {why}"),
        );
        None
    };
    match (chars.next(), chars.next()) {
        (Some('"'), None) => refuse(problems, "the quote character cannot be the delimiter"),
        (Some('\r' | '\n'), None) => refuse(problems, "a line break cannot be the delimiter"),
        (Some(c), None) if c.is_ascii() && !c.is_ascii_alphanumeric() => Some(c as u8),
        (Some(c), None) if c.is_ascii() => {
            refuse(problems, "a letter or digit cannot be the delimiter")
        }
        _ => refuse(
            problems,
            "must be one ASCII character, such as \",\", \";\", \"|\" or \"\\t\"",
        ),
    }
}

/// Reads `encoding` (of a CSV dialect or a text template); UTF-8 after a problem.
pub fn encoding(name: &str, problems: &mut Problems<'_>) -> TextEncoding {
    TextEncoding::from_name(name).unwrap_or_else(|| {
        problems.at(
            Some("format"),
            "encoding",
            format!("[format] encoding `{name}` is unknown; use \"utf-8\" (default), \"latin1\" or \"cp1252\""),
        );
        TextEncoding::Utf8
    })
}

pub fn validate(raw: &Raw, problems: &mut Problems<'_>) -> Option<Format> {
    let before = problems.len();
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
    let mut dialect = Dialect::default();
    if let Some(d) = &raw.delimiter {
        dialect.delimiter = delimiter(d, problems).unwrap_or(b',');
    }
    match raw.quote.as_deref() {
        None | Some("minimal") => {}
        Some("always") => dialect.quote = Quote::Always,
        Some("never") => dialect.quote = Quote::Never,
        Some(other) => problems.at(
            Some("format"),
            "quote",
            format!("[format] quote `{other}` is unknown; use \"minimal\" (default), \"always\" or \"never\""),
        ),
    }
    dialect.header = raw.header.unwrap_or(true);
    match raw.line_end.as_deref() {
        None | Some("crlf") => {}
        Some("lf") => dialect.crlf = false,
        Some(other) => problems.at(
            Some("format"),
            "line_end",
            format!("[format] line_end `{other}` is unknown; use \"crlf\" (default) or \"lf\""),
        ),
    }
    if let Some(name) = &raw.encoding {
        dialect.encoding = encoding(name, problems);
    }
    if problems.len() > before {
        return None;
    }
    let format = CsvFormat {
        columns,
        key_column,
        dialect,
        extension: "csv".into(),
    };
    // The header line must be writable in this dialect too.
    if format.dialect.header
        && let Err(e) = format.header()
    {
        problems.at(
            Some("format"),
            "columns",
            format!("[format] columns: the header line cannot be written: {e}"),
        );
        return None;
    }
    Some(Format::Csv(format))
}

#[derive(Clone, Debug, PartialEq)]
pub struct CsvFormat {
    pub columns: Vec<String>,
    pub key_column: String,
    pub dialect: Dialect,
    /// The outbox file's extension, without the dot.
    pub extension: String,
}

impl CsvFormat {
    /// A format with today's dialect (`,`, minimal quoting, header, CR LF, UTF-8).
    pub fn new(columns: Vec<String>, key_column: String) -> CsvFormat {
        CsvFormat {
            columns,
            key_column,
            dialect: Dialect::default(),
            extension: "csv".into(),
        }
    }

    /// The dialect in words, for `check`.
    pub fn describe(&self) -> String {
        let d = &self.dialect;
        format!(
            "csv of {} columns, delimiter {}, quote {}, {}, line end {}, {}",
            self.columns.len(),
            shown(d.delimiter),
            match d.quote {
                Quote::Minimal => "minimal",
                Quote::Always => "always",
                Quote::Never => "never",
            },
            if d.header {
                "header line"
            } else {
                "no header line"
            },
            if d.crlf { "CRLF" } else { "LF" },
            d.encoding.name()
        )
    }

    /// The header line, or nothing with `header = false`.
    pub fn header(&self) -> Result<Vec<u8>, TranslateError> {
        if !self.dialect.header {
            return Ok(Vec::new());
        }
        let mut names = vec![
            ("delivery_id", "delivery_id".to_string()),
            ("op", "op".to_string()),
        ];
        names.extend(self.columns.iter().map(|c| (c.as_str(), c.clone())));
        self.write_row(&names)
    }

    pub fn row(&self, item: &Item<'_>) -> Result<Vec<u8>, TranslateError> {
        let mut fields = vec![
            ("delivery_id", item.id.to_string()),
            ("op", item.delta.op.as_str().to_string()),
        ];
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
            fields.push((column.as_str(), text));
        }
        self.write_row(&fields)
    }

    /// One line of `(column, value)`s in this dialect; refuses a value that
    /// `quote = "never"` or the encoding cannot carry, naming its column.
    fn write_row(&self, fields: &[(&str, String)]) -> Result<Vec<u8>, TranslateError> {
        let d = &self.dialect;
        for (column, value) in fields {
            if d.quote == Quote::Never
                && let Some(c) = value
                    .chars()
                    .find(|&c| c == d.delimiter as char || c == '"' || line_break(c).is_some())
            {
                let what = match c {
                    '"' => "a double quote".to_string(),
                    '\r' | '\n' => "a line break".to_string(),
                    c if c == d.delimiter as char => {
                        format!("the delimiter {}", shown(d.delimiter))
                    }
                    c => line_break(c).unwrap_or_default(),
                };
                return Err(TranslateError::Other(format!(
                    "column `{column}` holds {value:?}, which contains {what}: with `quote = \"never\"` it cannot be written without breaking the line"
                )));
            }
            if let Some(c) = d.encoding.missing(value) {
                return Err(TranslateError::Unrepresentable {
                    path: column.to_string(),
                    format: d.encoding.name(),
                    what: format!("{c:?}, U+{:04X}, in {value:?}", c as u32),
                });
            }
        }
        let mut w = csv::WriterBuilder::new()
            .delimiter(d.delimiter)
            .quote_style(match d.quote {
                Quote::Minimal => csv::QuoteStyle::Necessary,
                Quote::Always => csv::QuoteStyle::Always,
                Quote::Never => csv::QuoteStyle::Never,
            })
            .terminator(if d.crlf {
                csv::Terminator::CRLF
            } else {
                csv::Terminator::Any(b'\n')
            })
            .from_writer(Vec::new());
        w.write_record(fields.iter().map(|(_, v)| v.as_str()))
            .map_err(|e| TranslateError::Other(format!("writing CSV: {e}")))?;
        let utf8 = w
            .into_inner()
            .map_err(|e| TranslateError::Other(format!("writing CSV: {e}")))?;
        Ok(match d.encoding {
            TextEncoding::Utf8 => utf8,
            other => other.encode(&String::from_utf8_lossy(&utf8)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Delta, Flat, RecordId};
    use serde_json::json;

    #[test]
    fn rows_hold_latest_values_quoted_and_deletes_hold_the_key() {
        let f = CsvFormat::new(
            vec![
                "permit_number".into(),
                "status".into(),
                "address.street".into(),
                "fee".into(),
            ],
            "permit_number".into(),
        );
        assert_eq!(
            String::from_utf8(f.header().unwrap()).unwrap(),
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

    fn item_of<'a>(rid: &'a RecordId, delta: &'a Delta, record: &'a Flat) -> Item<'a> {
        Item {
            id: "h:7",
            attempt: 1,
            record_id: rid,
            delta,
            record: Some(record),
        }
    }

    /// A row of `status` = `value` for record `A` in `dialect`.
    fn row_in(dialect: Dialect, value: serde_json::Value) -> Result<Vec<u8>, TranslateError> {
        let f = CsvFormat {
            dialect,
            ..CsvFormat::new(vec!["permit".into(), "status".into()], "permit".into())
        };
        let mut record = Flat::new();
        record.insert("status".into(), value);
        let rid = RecordId::new("permits", "A");
        let delta = Delta {
            op: Op::Create,
            set: record.clone(),
            unset: Default::default(),
        };
        f.row(&item_of(&rid, &delta, &record))
    }

    #[test]
    fn a_pipe_delimited_dialect_without_quotes_header_or_cr() {
        let d = Dialect {
            delimiter: b'|',
            quote: Quote::Never,
            header: false,
            crlf: false,
            encoding: TextEncoding::Utf8,
        };
        let f = CsvFormat {
            dialect: d.clone(),
            ..CsvFormat::new(vec!["permit".into(), "status".into()], "permit".into())
        };
        assert_eq!(f.header().unwrap(), b"");
        assert_eq!(
            row_in(d.clone(), json!("APPROVED, with \"care\"")).unwrap_err(),
            TranslateError::Other(
                "column `status` holds \"APPROVED, with \\\"care\\\"\", which contains a double quote: with `quote = \"never\"` it cannot be written without breaking the line".into()
            )
        );
        assert_eq!(
            row_in(d.clone(), json!("OK, fine")).unwrap(),
            b"h:7|create|A|OK, fine\n"
        );
        let err = row_in(d.clone(), json!("A|B")).unwrap_err().to_string();
        assert!(
            err.contains("column `status`") && err.contains("the delimiter |"),
            "{err}"
        );
        let err = row_in(d.clone(), json!("two\nlines"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a line break"), "{err}");
        // The other line boundaries line readers split on break the line too.
        for sep in ['\u{2028}', '\u{85}', '\u{0C}'] {
            let err = row_in(d.clone(), json!(format!("two{sep}lines")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("column `status`")
                    && err.contains(&format!("a line separator (U+{:04X})", sep as u32)),
                "{err}"
            );
        }
    }

    #[test]
    fn always_quotes_every_value_and_minimal_quotes_the_delimiter() {
        let always = Dialect {
            quote: Quote::Always,
            ..Dialect::default()
        };
        assert_eq!(
            row_in(always, json!("OK")).unwrap(),
            b"\"h:7\",\"create\",\"A\",\"OK\"\r\n"
        );
        let semi = Dialect {
            delimiter: b';',
            ..Dialect::default()
        };
        assert_eq!(
            row_in(semi, json!("a;b,c")).unwrap(),
            b"h:7;create;A;\"a;b,c\"\r\n"
        );
        let tab = Dialect {
            delimiter: b'\t',
            ..Dialect::default()
        };
        assert_eq!(
            row_in(tab, json!("a b")).unwrap(),
            b"h:7\tcreate\tA\ta b\r\n"
        );
    }

    #[test]
    fn latin1_and_cp1252_encode_or_reject_naming_the_column() {
        let latin1 = Dialect {
            encoding: TextEncoding::Latin1,
            ..Dialect::default()
        };
        assert_eq!(
            row_in(latin1.clone(), json!("Café")).unwrap(),
            b"h:7,create,A,Caf\xE9\r\n"
        );
        assert_eq!(
            row_in(latin1, json!("5 €")).unwrap_err(),
            TranslateError::Unrepresentable {
                path: "status".into(),
                format: "latin1",
                what: "'€', U+20AC, in \"5 €\"".into(),
            }
        );
        let cp1252 = Dialect {
            encoding: TextEncoding::Cp1252,
            ..Dialect::default()
        };
        assert_eq!(
            row_in(cp1252.clone(), json!("5 € – é")).unwrap(),
            b"h:7,create,A,5 \x80 \x96 \xE9\r\n"
        );
        let err = row_in(cp1252, json!("漢")).unwrap_err().to_string();
        assert!(
            err.contains("field `status`") && err.contains("cp1252"),
            "{err}"
        );
    }

    fn check(format: &str) -> Result<Format, String> {
        let text = format!("[format]\nkind = \"csv\"\ncolumns = [\"a\", \"b\"]\n{format}");
        let mut problems = Problems::new("c.toml", &text);
        let raw: Raw = crate::problem::section(&text, "format", &mut problems).unwrap();
        validate(&raw, &mut problems).ok_or_else(|| problems.joined())
    }

    #[test]
    fn check_refuses_bad_dialect_keys_with_line_and_key() {
        for (line, want) in [
            (
                "delimiter = \"\\\"\"",
                "line 4: [format] delimiter \"\\\"\": the quote character cannot be the delimiter",
            ),
            (
                "delimiter = \"\\n\"",
                "line 4: [format] delimiter \"\\n\": a line break cannot be the delimiter",
            ),
            (
                "delimiter = \"||\"",
                "line 4: [format] delimiter \"||\": must be one ASCII character",
            ),
            (
                "quote = \"sometimes\"",
                "line 4: [format] quote `sometimes` is unknown",
            ),
            (
                "line_end = \"cr\"",
                "line 4: [format] line_end `cr` is unknown",
            ),
            (
                "encoding = \"ebcdic\"",
                "line 4: [format] encoding `ebcdic` is unknown",
            ),
        ] {
            let err = check(line).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
        }
        let Format::Csv(f) = check("delimiter = \"|\"\nquote = \"never\"\nheader = false\nline_end = \"lf\"\nencoding = \"cp1252\"").unwrap() else {
            panic!("not csv")
        };
        assert_eq!(
            f.dialect,
            Dialect {
                delimiter: b'|',
                quote: Quote::Never,
                header: false,
                crlf: false,
                encoding: TextEncoding::Cp1252
            }
        );
        // A header that `never` cannot write is refused at check, not at delivery.
        let text =
            "[format]\nkind = \"csv\"\ncolumns = [\"a|b\"]\ndelimiter = \"|\"\nquote = \"never\"\n";
        let mut problems = Problems::new("c.toml", text);
        let raw: Raw = crate::problem::section(text, "format", &mut problems).unwrap();
        assert!(validate(&raw, &mut problems).is_none());
        let err = problems.into_vec()[0].to_string();
        assert!(
            err.contains(
                "line 3: [format] columns: the header line cannot be written: column `a|b`"
            ),
            "{err}"
        );
    }
}
