//! `format.kind = "fixed"`: a delta in, one fixed-width record out, laid out
//! by the legacy program's COBOL copybook (SPEC §5 "Fixed-width records").
//!
//! Text items are padded with spaces on the right; numbers are right-aligned and
//! zero-filled, zoned (`DISPLAY`), packed (`COMP-3`) or big-endian binary
//! (`COMP`). An update carries every mapped item at the record's latest known
//! value (a fixed record cannot leave a field out); a delete carries the key,
//! the op, `@delivery_id` and `@attempt`, every other item blank (spaces for
//! text, zero for numbers, so packed items stay valid).
//!
//! **Invariants:** a value that does not fit its item (too long, too many
//! digits or decimals, negative into an unsigned PIC, not a number, a
//! character the encoding lacks) is a [`TranslateError::DoesNotFit`] naming
//! item, PIC and value — the delta is rejected, never truncated or rounded
//! (only a text item listed in `on_overflow` with "truncate" is cut); every
//! record is exactly the layout's length plus `record_end`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::codepage::Encoding;
use super::copybook::{self, Field, Fill, Layout, Pic, Sign, Usage};
use super::{Format, Item, TranslateError, value_text};
use crate::problem::{Problem, Problems};
use crate::record::Op;

/// `[format] kind = "fixed"` as written.
#[derive(Debug, Default, Deserialize)]
pub struct Raw {
    /// The copybook file, relative to the connector folder.
    pub copybook: Option<PathBuf>,
    /// The 01-level to write. Default: the copybook's first.
    pub record: Option<String>,
    /// ascii (default) | latin1 | cp037 | cp1047 | cp1140.
    pub encoding: Option<String>,
    /// none | lf | crlf. Default lf for ascii/latin1, none (RECFM=F) for EBCDIC.
    pub record_end: Option<String>,
    /// The item that holds the record key. Default: an item mapped to `@key`,
    /// else the first item (by offset) mapped to a record path.
    pub key_item: Option<String>,
    /// What an item mapped to `@op` holds for each op. Default A / C / D.
    pub op_codes: Option<OpCodes>,
    /// Copybook item = record path, or `@op`, `@key`, `@delivery_id`, `@attempt`.
    pub map: Option<BTreeMap<String, String>>,
    /// Text item = "truncate": cut a value too long for it instead of
    /// rejecting the delta. Default for every item: reject.
    pub on_overflow: Option<BTreeMap<String, String>>,
    /// A control record written before each batch file's records.
    pub header: Option<ControlRaw>,
    /// A control record written after each batch file's records.
    pub trailer: Option<ControlRaw>,
}

/// `[format.header]` / `[format.trailer]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRaw {
    /// Its 01-level in the copybook.
    pub record: String,
    /// `@run_date`'s form: `%Y`, `%y`, `%m`, `%d`, `%j` (day of the year). Default "%Y%m%d".
    pub date_format: Option<String>,
    /// Item = `@record_count`, `@batch_seq`, `@run_date` or `@sum:<path>` (the
    /// hash total of the detail item mapped to `<path>`).
    pub map: Option<BTreeMap<String, String>>,
}

/// Where a control record item's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlSource {
    /// Its VALUE, else spaces / zero.
    Blank,
    RecordCount,
    BatchSeq,
    RunDate,
    /// The sum of this detail field (index into the detail layout) over the batch.
    Sum(usize),
}

/// A header or trailer, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlSpec {
    pub layout: Layout,
    pub sources: Vec<ControlSource>,
    pub blanks: Vec<Vec<u8>>,
    pub date_format: String,
}

/// `[format.op_codes]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpCodes {
    /// Default "A".
    pub create: Option<String>,
    /// Default "C".
    pub update: Option<String>,
    /// Default "D".
    pub delete: Option<String>,
}

/// The `[format]` keys of kind "fixed".
pub const KEYS: &[&str] = &[
    "copybook",
    "record",
    "encoding",
    "record_end",
    "key_item",
    "op_codes",
    "map",
    "on_overflow",
    "header",
    "trailer",
    "extension",
];

/// Where an item's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Not in the map (or a FILLER): its blank or its VALUE, always.
    Blank,
    /// The record key.
    Key,
    /// The op code.
    Op,
    /// The delivery id (`target:seq`; a numeric item takes the seq).
    DeliveryId,
    /// The attempt number.
    Attempt,
    /// A record path.
    Path(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RecordEnd {
    None,
    Lf,
    CrLf,
}

/// A fixed-record connector, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedSpec {
    /// The copybook's file name, for the ruler.
    pub copybook: String,
    pub layout: Layout,
    pub encoding: Encoding,
    pub record_end: RecordEnd,
    /// create, update, delete.
    pub op_codes: [String; 3],
    /// One per `layout.fields`, in the same order.
    pub sources: Vec<Source>,
    /// One per field: cut a too-long text instead of rejecting.
    pub truncate: Vec<bool>,
    /// One per field: its bytes when it carries no value (its VALUE, else
    /// spaces for text, zero for numbers).
    pub blanks: Vec<Vec<u8>>,
    pub header: Option<ControlSpec>,
    pub trailer: Option<ControlSpec>,
    /// The outbox files' extension, without the dot (default "dat").
    pub extension: String,
}

/// Validates `[format] kind = "fixed"`: reads the copybook (its problems carry
/// the copybook's file, line and column) and checks the map against it.
pub fn validate(raw: &Raw, folder: &Path, problems: &mut Problems<'_>) -> Option<Format> {
    let before = problems.len();
    let Some(copybook) = &raw.copybook else {
        problems.at(
            Some("format"),
            "kind",
            "[format] kind \"fixed\" needs `copybook = \"NAME.cpy\"` (the record's COBOL copybook, in the connector's folder)",
        );
        return None;
    };
    let path = folder.join(copybook);
    let source = match std::fs::read(&path) {
        Ok(s) => s,
        Err(e) => {
            problems.at(
                Some("format"),
                "copybook",
                format!("[format] copybook: cannot read {}: {e}", path.display()),
            );
            return None;
        }
    };
    let layouts = match copybook::parse(&source) {
        Ok(l) => l,
        Err(e) => {
            problems.push(Problem {
                file: path.display().to_string(),
                line: Some(e.line),
                key: "copybook".into(),
                message: format!("column {}: {}", e.column, e.message),
            });
            return None;
        }
    };
    let layout = match &raw.record {
        None => layouts[0].clone(),
        Some(name) => match layouts.iter().find(|l| l.name.eq_ignore_ascii_case(name)) {
            Some(l) => l.clone(),
            None => {
                let names: Vec<&str> = layouts.iter().map(|l| l.name.as_str()).collect();
                problems.at(
                    Some("format"),
                    "record",
                    format!(
                        "[format] record `{name}` is not an 01-level of {}; it has: {}",
                        copybook.display(),
                        names.join(", ")
                    ),
                );
                return None;
            }
        },
    };
    let encoding = match raw.encoding.as_deref() {
        None => Encoding::Ascii,
        Some(name) => Encoding::from_name(name).unwrap_or_else(|| {
            problems.at(
                Some("format"),
                "encoding",
                format!(
                    "[format] encoding `{name}` is unknown; use one of: {}",
                    Encoding::NAMES.join(", ")
                ),
            );
            Encoding::Ascii
        }),
    };
    let record_end = match raw.record_end.as_deref() {
        None if encoding.is_ebcdic() => RecordEnd::None,
        None | Some("lf") => RecordEnd::Lf,
        Some("none") => RecordEnd::None,
        Some("crlf") => RecordEnd::CrLf,
        Some(other) => {
            problems.at(
                Some("format"),
                "record_end",
                format!("[format] record_end `{other}` is unknown; use none, lf or crlf"),
            );
            RecordEnd::None
        }
    };
    let codes = raw.op_codes.as_ref();
    let op_codes = [
        codes.and_then(|c| c.create.clone()).unwrap_or("A".into()),
        codes.and_then(|c| c.update.clone()).unwrap_or("C".into()),
        codes.and_then(|c| c.delete.clone()).unwrap_or("D".into()),
    ];

    let mut sources = vec![Source::Blank; layout.fields.len()];
    let map = raw.map.clone().unwrap_or_default();
    if map.is_empty() {
        problems.at(
            Some("format"),
            "kind",
            "[format] kind \"fixed\" needs a `[format.map]`: copybook item = record path (or @op, @key, @delivery_id, @attempt)",
        );
    }
    let index_of = |name: &str| layout.fields.iter().position(|f| f.name == name);
    for (item, source) in &map {
        let field = match layout.field(item) {
            Ok(f) => f,
            Err(e) => {
                problems.at(Some("format.map"), item, format!("[format.map] {e}"));
                continue;
            }
        };
        if field.is_filler() {
            problems.at(
                Some("format.map"),
                item,
                "[format.map] a FILLER cannot be mapped",
            );
            continue;
        }
        let i = index_of(&field.name).expect("found above");
        sources[i] = match source.as_str() {
            "@op" => Source::Op,
            "@key" => Source::Key,
            "@delivery_id" => Source::DeliveryId,
            "@attempt" => Source::Attempt,
            s if s.starts_with('@') => {
                problems.at(
                    Some("format.map"),
                    item,
                    format!(
                        "[format.map] {item} = \"{s}\": unknown; use a record path or @op, @key, @delivery_id, @attempt"
                    ),
                );
                continue;
            }
            "" => {
                problems.at(
                    Some("format.map"),
                    item,
                    format!("[format.map] {item} = \"\": name a record path"),
                );
                continue;
            }
            path => Source::Path(path.to_string()),
        };
    }
    // The key item: @key, else `key_item`, else the first item mapped to a path.
    if !sources.contains(&Source::Key) && !map.is_empty() {
        let key = match &raw.key_item {
            Some(name) => match layout.field(name) {
                Ok(f) => index_of(&f.name).filter(|&i| matches!(sources[i], Source::Path(_))),
                Err(e) => {
                    problems.at(
                        Some("format"),
                        "key_item",
                        format!("[format] key_item: {e}"),
                    );
                    None
                }
            }
            .or_else(|| {
                problems.at(
                    Some("format"),
                    "key_item",
                    format!(
                        "[format] key_item `{name}` is not mapped to a record path in [format.map]"
                    ),
                );
                None
            }),
            None => sources.iter().position(|s| matches!(s, Source::Path(_))),
        };
        match key {
            Some(i) => sources[i] = Source::Key,
            None if raw.key_item.is_none() => problems.at(
                Some("format"),
                "kind",
                "[format.map] no item holds the record key: map one to `@key` (or to the key's path)",
            ),
            None => {}
        }
    }
    if !map.is_empty() && !sources.contains(&Source::Op) {
        problems.at(
            Some("format"),
            "kind",
            "[format.map] no item is mapped to `@op`: a fixed record must say whether it adds, changes or deletes",
        );
    }
    let mut truncate = vec![false; layout.fields.len()];
    for (item, what) in raw.on_overflow.iter().flatten() {
        let field = match layout.field(item) {
            Ok(f) => f,
            Err(e) => {
                problems.at(
                    Some("format.on_overflow"),
                    item,
                    format!("[format.on_overflow] {e}"),
                );
                continue;
            }
        };
        match (what.as_str(), field.pic) {
            ("reject", _) => {}
            ("truncate", Pic::Text { .. }) => {
                truncate[index_of(&field.name).expect("found above")] = true
            }
            ("truncate", Pic::Number { .. }) => problems.at(
                Some("format.on_overflow"),
                item,
                format!(
                    "[format.on_overflow] {item} is a number ({}): a number is never truncated",
                    field.describe()
                ),
            ),
            (other, _) => problems.at(
                Some("format.on_overflow"),
                item,
                format!(
                    "[format.on_overflow] {item} = \"{other}\": use \"truncate\" or \"reject\""
                ),
            ),
        }
    }
    // Blanks and FILLER values, and what can be known to fit before any data.
    let mut blanks = Vec::with_capacity(layout.fields.len());
    for field in &layout.fields {
        let blank = match &field.fill {
            Some(fill) => fill_bytes(field, fill, encoding),
            None => Ok(blank(field, encoding)),
        };
        match blank {
            Ok(b) => blanks.push(b),
            Err(e) => {
                problems.push(Problem {
                    file: path.display().to_string(),
                    line: Some(field.line),
                    key: field.name.clone(),
                    message: format!("VALUE of {}: {e}", field.name),
                });
                blanks.push(vec![b' '; field.length]);
            }
        }
    }
    let target = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (field, source) in layout.fields.iter().zip(&sources) {
        let (what, samples): (&str, Vec<Cell<'_>>) = match source {
            Source::Op => (
                "@op",
                op_codes.iter().map(|c| Cell::Text(c.as_str())).collect(),
            ),
            Source::Attempt => ("@attempt", vec![Cell::Text("1")]),
            Source::DeliveryId => (
                "@delivery_id",
                // Room for a seq of 9 digits: a billion deliveries.
                vec![if matches!(field.pic, Pic::Number { .. }) {
                    Cell::Text("999999999")
                } else {
                    Cell::Owned(format!("{target}:999999999"))
                }],
            ),
            _ => continue,
        };
        for sample in samples {
            if let Err(e) = encode_field(field, &sample, encoding, false, &mut Vec::new()) {
                let item = layout
                    .fields
                    .iter()
                    .find(|f| f.name == field.name)
                    .map(|f| f.name.as_str())
                    .unwrap_or_default();
                problems.at(
                    Some("format.map"),
                    map.keys()
                        .find(|k| k.eq_ignore_ascii_case(item))
                        .map(String::as_str)
                        .unwrap_or(item),
                    format!("[format.map] {item} = \"{what}\" cannot fit: {e}"),
                );
                break;
            }
        }
    }
    let copybook_file = path.display().to_string();
    let mut control = |table: &str, raw: &Option<ControlRaw>| {
        let raw = raw.as_ref()?;
        control_spec(
            table,
            raw,
            &layouts,
            &layout,
            &sources,
            encoding,
            &copybook_file,
            problems,
        )
    };
    let header = control("format.header", &raw.header);
    let trailer = control("format.trailer", &raw.trailer);
    if problems.len() > before {
        return None;
    }
    Some(Format::Fixed(Arc::new(FixedSpec {
        copybook: copybook.display().to_string(),
        layout,
        encoding,
        record_end,
        op_codes,
        sources,
        truncate,
        blanks,
        header,
        trailer,
        extension: "dat".into(),
    })))
}

/// Checks `[format.header]` or `[format.trailer]` (`table`) against the copybook.
#[allow(clippy::too_many_arguments)]
fn control_spec(
    table: &str,
    raw: &ControlRaw,
    layouts: &[Layout],
    detail: &Layout,
    detail_sources: &[Source],
    encoding: Encoding,
    copybook_file: &str,
    problems: &mut Problems<'_>,
) -> Option<ControlSpec> {
    let before = problems.len();
    let Some(layout) = layouts
        .iter()
        .find(|l| l.name.eq_ignore_ascii_case(&raw.record))
        .cloned()
    else {
        let names: Vec<&str> = layouts.iter().map(|l| l.name.as_str()).collect();
        problems.at(
            Some(table),
            "record",
            format!(
                "[{table}] record `{}` is not an 01-level of the copybook; it has: {}",
                raw.record,
                names.join(", ")
            ),
        );
        return None;
    };
    let map_table = format!("{table}.map");
    let mut sources = vec![ControlSource::Blank; layout.fields.len()];
    for (item, source) in raw.map.iter().flatten() {
        let field = match layout.field(item) {
            Ok(f) => f,
            Err(e) => {
                problems.at(Some(&map_table), item, format!("[{map_table}] {e}"));
                continue;
            }
        };
        let i = layout
            .fields
            .iter()
            .position(|f| f.name == field.name)
            .expect("found above");
        let numeric = matches!(field.pic, Pic::Number { .. });
        sources[i] = match source.as_str() {
            "@record_count" | "@batch_seq" if !numeric => {
                problems.at(
                    Some(&map_table),
                    item,
                    format!(
                        "[{map_table}] {item} = \"{source}\": needs a numeric item, not {}",
                        field.describe()
                    ),
                );
                continue;
            }
            "@record_count" => ControlSource::RecordCount,
            "@batch_seq" => ControlSource::BatchSeq,
            "@run_date" => ControlSource::RunDate,
            s => match s.strip_prefix("@sum:") {
                Some(path) => {
                    let detail_field = detail_sources
                        .iter()
                        .position(|d| matches!(d, Source::Path(p) if p == path))
                        .filter(|&d| matches!(detail.fields[d].pic, Pic::Number { .. }));
                    match (detail_field, field.pic) {
                        (Some(d), Pic::Number { scale, .. }) => {
                            let Pic::Number { scale: ds, .. } = detail.fields[d].pic else {
                                unreachable!("filtered to numbers");
                            };
                            if scale != ds {
                                problems.at(
                                    Some(&map_table),
                                    item,
                                    format!(
                                        "[{map_table}] {item} ({}) holds {scale} decimals, the summed {} ({}) {ds}: give them the same V9(n)",
                                        field.describe(),
                                        detail.fields[d].name,
                                        detail.fields[d].describe()
                                    ),
                                );
                                continue;
                            }
                            ControlSource::Sum(d)
                        }
                        (None, _) => {
                            problems.at(
                                Some(&map_table),
                                item,
                                format!(
                                    "[{map_table}] {item} = \"{s}\": `{path}` is not mapped to a numeric item in [format.map]"
                                ),
                            );
                            continue;
                        }
                        (Some(_), Pic::Text { .. }) => {
                            problems.at(
                                Some(&map_table),
                                item,
                                format!("[{map_table}] {item} = \"{s}\": a hash total needs a numeric item, not {}", field.describe()),
                            );
                            continue;
                        }
                    }
                }
                None => {
                    problems.at(
                        Some(&map_table),
                        item,
                        format!(
                            "[{map_table}] {item} = \"{s}\": unknown; use @record_count, @batch_seq, @run_date or @sum:<path>"
                        ),
                    );
                    continue;
                }
            },
        };
    }
    let date_format = raw.date_format.clone().unwrap_or_else(|| "%Y%m%d".into());
    let mut blanks = Vec::new();
    for field in &layout.fields {
        match field.fill.as_ref().map(|f| fill_bytes(field, f, encoding)) {
            None => blanks.push(blank(field, encoding)),
            Some(Ok(b)) => blanks.push(b),
            Some(Err(e)) => {
                problems.push(Problem {
                    file: copybook_file.to_string(),
                    line: Some(field.line),
                    key: field.name.clone(),
                    message: format!("VALUE of {}: {e}", field.name),
                });
                blanks.push(blank(field, encoding));
            }
        }
    }
    // The date must fit now; counts and sums are checked per batch.
    for (field, source) in layout.fields.iter().zip(&sources) {
        if *source == ControlSource::RunDate {
            let date = run_date(&date_format);
            if let Err(e) = encode_field(
                field,
                &Cell::Owned(date.clone()),
                encoding,
                false,
                &mut Vec::new(),
            ) {
                problems.at(
                    Some(table),
                    "date_format",
                    format!("[{table}] {} = \"@run_date\" cannot hold `{date}` (date_format \"{date_format}\"): {e}", field.name),
                );
            }
        }
    }
    (problems.len() == before).then_some(ControlSpec {
        layout,
        sources,
        blanks,
        date_format,
    })
}

/// Today's local date in `format` (`%Y`, `%y`, `%m`, `%d`, `%j`, `%%`).
fn run_date(format: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // SAFETY: localtime_r writes only into `tm`, which lives on this stack.
    // (`time_t`'s width is libc's: named through the function, not the alias
    // that libc deprecates on musl.)
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let now = secs as _;
    unsafe { libc::localtime_r(&now, &mut tm) };
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&format!("{:04}", tm.tm_year + 1900)),
            Some('y') => out.push_str(&format!("{:02}", (tm.tm_year + 1900) % 100)),
            Some('m') => out.push_str(&format!("{:02}", tm.tm_mon + 1)),
            Some('d') => out.push_str(&format!("{:02}", tm.tm_mday)),
            Some('j') => out.push_str(&format!("{:03}", tm.tm_yday + 1)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// A value about to go into an item.
enum Cell<'a> {
    /// No value: the item's blank.
    Blank,
    Text(&'a str),
    Owned(String),
    Json(&'a Value),
}

impl FixedSpec {
    /// One record (with its `record_end`).
    pub fn render(&self, item: &Item<'_>) -> Result<Vec<u8>, TranslateError> {
        let mut out = Vec::with_capacity(self.layout.length + 2);
        let delete = item.delta.op == Op::Delete;
        for (i, (field, source)) in self.layout.fields.iter().zip(&self.sources).enumerate() {
            let cell = match source {
                Source::Blank => Cell::Blank,
                Source::Key => Cell::Text(&item.record_id.key),
                Source::Op => Cell::Text(
                    &self.op_codes[match item.delta.op {
                        Op::Create => 0,
                        Op::Update => 1,
                        Op::Delete => 2,
                    }],
                ),
                Source::DeliveryId => match field.pic {
                    Pic::Number { .. } => {
                        Cell::Text(item.id.rsplit_once(':').map_or(item.id, |(_, seq)| seq))
                    }
                    Pic::Text { .. } => Cell::Text(item.id),
                },
                Source::Attempt => Cell::Owned(item.attempt.to_string()),
                Source::Path(_) if delete => Cell::Blank,
                Source::Path(path) => {
                    // The record's latest known state; the delta's own value
                    // if the record is gone (deleted after this delta was queued).
                    match item
                        .record
                        .and_then(|r| r.get(path))
                        .or_else(|| item.delta.set.get(path))
                    {
                        None | Some(Value::Null) => Cell::Blank,
                        Some(v) => Cell::Json(v),
                    }
                }
            };
            if let Cell::Blank = cell {
                out.extend_from_slice(&self.blanks[i]);
                continue;
            }
            encode_field(field, &cell, self.encoding, self.truncate[i], &mut out).map_err(
                |why| TranslateError::DoesNotFit {
                    item: field.name.clone(),
                    pic: field.describe(),
                    value: cell.shown(),
                    why,
                },
            )?;
        }
        self.push_record_end(&mut out);
        Ok(out)
    }

    /// The header and trailer of a batch file holding `records` (each one
    /// rendered by [`FixedSpec::render`]) as file number `batch_seq`. An error
    /// (a count or hash total its item cannot hold) refuses the batch.
    pub fn frame(&self, records: &[&[u8]], batch_seq: u64) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut parts = [Vec::new(), Vec::new()];
        for (out, control) in parts.iter_mut().zip([&self.header, &self.trailer]) {
            let Some(control) = control else { continue };
            for (i, (field, source)) in control
                .layout
                .fields
                .iter()
                .zip(&control.sources)
                .enumerate()
            {
                let value = match source {
                    ControlSource::Blank => {
                        out.extend_from_slice(&control.blanks[i]);
                        continue;
                    }
                    ControlSource::RecordCount => records.len().to_string(),
                    ControlSource::BatchSeq => batch_seq.to_string(),
                    ControlSource::RunDate => run_date(&control.date_format),
                    ControlSource::Sum(d) => {
                        let detail = &self.layout.fields[*d];
                        let mut total: i128 = 0;
                        for record in records {
                            let bytes = record
                                .get(detail.offset..detail.offset + detail.length)
                                .ok_or("a record shorter than its layout")?;
                            total += decode_number(detail, bytes, self.encoding)?;
                        }
                        scaled_text(total, detail)
                    }
                };
                encode_field(
                    field,
                    &Cell::Owned(value.clone()),
                    self.encoding,
                    false,
                    out,
                )
                .map_err(|why| {
                    format!(
                        "{} item {} ({}) cannot hold {value}: {why}",
                        control.layout.name,
                        field.name,
                        field.describe()
                    )
                })?;
            }
            self.push_record_end(out);
        }
        let [header, trailer] = parts;
        Ok((header, trailer))
    }

    fn push_record_end(&self, out: &mut Vec<u8>) {
        match self.record_end {
            RecordEnd::None => {}
            RecordEnd::Lf => out.push(self.encoding.encode('\n').expect("every set has LF")),
            RecordEnd::CrLf => {
                out.push(self.encoding.encode('\r').expect("every set has CR"));
                out.push(self.encoding.encode('\n').expect("every set has LF"));
            }
        }
    }

    /// One line for `check`: which record, how long, how encoded, how framed.
    pub fn describe(&self) -> String {
        let mapped = self.sources.iter().filter(|s| **s != Source::Blank).count();
        let mut line = format!(
            "fixed records {} of {} ({} bytes, {mapped} items mapped, {}, record_end {})",
            self.layout.name,
            self.copybook,
            self.layout.length,
            self.encoding.name(),
            match self.record_end {
                RecordEnd::None => "none",
                RecordEnd::Lf => "lf",
                RecordEnd::CrLf => "crlf",
            }
        );
        for (what, control) in [("header", &self.header), ("trailer", &self.trailer)] {
            if let Some(c) = control {
                line.push_str(&format!(", {what} {}", c.layout.name));
            }
        }
        line
    }

    /// `translate`'s ruler: name, offset, length and PIC of each item, its
    /// text, and the hex of packed and binary items; then the record as text.
    pub fn ruler(&self, record: &[u8]) -> String {
        let from =
            self.sources
                .iter()
                .zip(&self.layout.fields)
                .map(|(source, field)| match source {
                    Source::Blank if field.fill.is_some() => "  (VALUE)".to_string(),
                    Source::Blank => "  (not mapped)".to_string(),
                    Source::Key => "  <- @key".to_string(),
                    Source::Op => "  <- @op".to_string(),
                    Source::DeliveryId => "  <- @delivery_id".to_string(),
                    Source::Attempt => "  <- @attempt".to_string(),
                    Source::Path(p) => format!("  <- {p}"),
                });
        self.table("record", &self.layout, from.collect(), record)
    }

    /// The ruler of the `[format.header]` or `[format.trailer]` record
    /// (`which`) that frames a batch: `bytes` as [`FixedSpec::frame`] made it.
    pub fn control_ruler(&self, which: &str, control: &ControlSpec, bytes: &[u8]) -> String {
        let from = control
            .sources
            .iter()
            .zip(&control.layout.fields)
            .map(|(source, field)| match source {
                ControlSource::Blank if field.fill.is_some() => "  (VALUE)".to_string(),
                ControlSource::Blank => "  (not mapped)".to_string(),
                ControlSource::RecordCount => "  <- @record_count".to_string(),
                ControlSource::BatchSeq => "  <- @batch_seq".to_string(),
                ControlSource::RunDate => format!("  <- @run_date ({})", control.date_format),
                ControlSource::Sum(d) => format!("  <- @sum of {}", self.layout.fields[*d].name),
            });
        self.table(which, &control.layout, from.collect(), bytes)
    }

    /// One record's ruler: a title line, a line per item (`from[i]` says where
    /// item i came from), the record as text.
    fn table(&self, what: &str, layout: &Layout, from: Vec<String>, record: &[u8]) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{what} {} of {}: {} bytes, encoding {}, record_end {}",
            layout.name,
            self.copybook,
            layout.length,
            self.encoding.name(),
            match self.record_end {
                RecordEnd::None => "none",
                RecordEnd::Lf => "lf",
                RecordEnd::CrLf => "crlf",
            }
        );
        let width = layout
            .fields
            .iter()
            .map(|f| f.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            out,
            "{:>6} {:>4}  {:width$}  {:28}  value",
            "offset", "len", "item", "picture"
        );
        for (field, from) in layout.fields.iter().zip(&from) {
            let bytes = record
                .get(field.offset..field.offset + field.length)
                .unwrap_or(&[]);
            let shown = match field.usage {
                Usage::Packed | Usage::Binary => {
                    let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
                    format!("x'{hex}'")
                }
                Usage::Display(_) => format!("\"{}\"", self.text(bytes)),
            };
            let _ = writeln!(
                out,
                "{:>6} {:>4}  {:width$}  {:28}  {shown}{from}",
                field.offset,
                field.length,
                field.name,
                field.describe(),
            );
        }
        // Packed and binary bytes are not text: dots, whatever they decode to.
        let mut text: Vec<char> = self
            .text(&record[..layout.length.min(record.len())])
            .chars()
            .collect();
        for field in &layout.fields {
            if matches!(field.usage, Usage::Packed | Usage::Binary) {
                for c in text.iter_mut().skip(field.offset).take(field.length) {
                    *c = '.';
                }
            }
        }
        let _ = writeln!(out, "text: |{}|", text.into_iter().collect::<String>());
        out
    }

    /// Bytes as text for the ruler: control characters (packed, binary) as `.`.
    fn text(&self, bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|&b| {
                let c = self.encoding.decode(b);
                if c.is_control() { '.' } else { c }
            })
            .collect()
    }
}

impl Cell<'_> {
    fn shown(&self) -> String {
        let text = match self {
            Cell::Blank => String::new(),
            Cell::Text(t) => format!("\"{t}\""),
            Cell::Owned(t) => format!("\"{t}\""),
            Cell::Json(v) => v.to_string(),
        };
        if text.chars().count() > 60 {
            let cut: String = text.chars().take(57).collect();
            format!("{cut}...")
        } else {
            text
        }
    }
}

/// A scaled integer (`scale` implied decimals of `field`) as decimal text.
fn scaled_text(value: i128, field: &Field) -> String {
    let Pic::Number { scale, .. } = field.pic else {
        return value.to_string();
    };
    let digits = value.unsigned_abs().to_string();
    let scale = scale as usize;
    let sign = if value < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// The value of a numeric item's bytes, as an integer of its implied decimals
/// (the inverse of [`encode_number`], for hash totals).
fn decode_number(field: &Field, bytes: &[u8], encoding: Encoding) -> Result<i128, String> {
    let bad = || format!("{} holds bytes that are not its number", field.name);
    let Pic::Number { signed, .. } = field.pic else {
        return Err(bad());
    };
    let mut negative = false;
    let mut value: i128 = 0;
    match field.usage {
        Usage::Display(sign) => {
            let minus = encoding.encode('-').expect("every set has -");
            let plus = encoding.encode('+').expect("every set has +");
            let (digits, sign_at) = match (signed, sign) {
                (true, Sign::LeadingSeparate) => (&bytes[1..], Some(bytes[0])),
                (true, Sign::TrailingSeparate) => {
                    (&bytes[..bytes.len() - 1], bytes.last().copied())
                }
                _ => (bytes, None),
            };
            if let Some(s) = sign_at {
                negative = s == minus;
                if s != minus && s != plus {
                    return Err(bad());
                }
            }
            let last = digits.len() - 1;
            for (i, &b) in digits.iter().enumerate() {
                let punched = signed
                    && match sign {
                        Sign::TrailingOverpunch => i == last,
                        Sign::LeadingOverpunch => i == 0,
                        _ => false,
                    };
                let d = if encoding.is_ebcdic() {
                    if punched && b >> 4 == 0xD {
                        negative = true;
                    }
                    b & 0x0F
                } else if punched && (0x70..=0x79).contains(&b) {
                    negative = true;
                    b - 0x70
                } else {
                    b.wrapping_sub(b'0')
                };
                if d > 9 {
                    return Err(bad());
                }
                value = value * 10 + d as i128;
            }
        }
        Usage::Packed => {
            for (i, &b) in bytes.iter().enumerate() {
                let (hi, lo) = (b >> 4, b & 0x0F);
                if hi > 9 {
                    return Err(bad());
                }
                value = value * 10 + hi as i128;
                if i + 1 == bytes.len() {
                    negative = lo == 0x0D;
                } else {
                    if lo > 9 {
                        return Err(bad());
                    }
                    value = value * 10 + lo as i128;
                }
            }
        }
        Usage::Binary => {
            let mut full = if signed && bytes[0] & 0x80 != 0 {
                [0xFFu8; 16]
            } else {
                [0u8; 16]
            };
            full[16 - bytes.len()..].copy_from_slice(bytes);
            return Ok(i128::from_be_bytes(full));
        }
    }
    Ok(if negative { -value } else { value })
}

/// The bytes of `field` holding no value.
fn blank(field: &Field, encoding: Encoding) -> Vec<u8> {
    match field.pic {
        Pic::Text { .. } => {
            vec![encoding.encode(' ').expect("every set has a space"); field.length]
        }
        Pic::Number { .. } => {
            let mut out = Vec::new();
            encode_number(field, "0", encoding, &mut out).expect("zero fits every number");
            out
        }
    }
}

fn fill_bytes(field: &Field, fill: &Fill, encoding: Encoding) -> Result<Vec<u8>, String> {
    let space = encoding.encode(' ').expect("every set has a space");
    let mut out = Vec::new();
    match (fill, field.pic) {
        (Fill::Spaces, _) => out = vec![space; field.length],
        (Fill::HighValues, _) => out = vec![0xFF; field.length],
        (Fill::LowValues, _) => out = vec![0x00; field.length],
        (Fill::Zeros, Pic::Text { .. }) => {
            out = vec![encoding.encode('0').expect("every set has digits"); field.length]
        }
        (Fill::Zeros, Pic::Number { .. }) => encode_number(field, "0", encoding, &mut out)?,
        (Fill::Number(n), Pic::Number { .. }) => encode_number(field, n, encoding, &mut out)?,
        (Fill::Text { text, all: true }, Pic::Text { .. }) if !text.is_empty() => {
            let repeated: String = text.chars().cycle().take(field.length).collect();
            encode_text(field, &repeated, encoding, false, &mut out)?
        }
        (Fill::Text { text, .. }, Pic::Text { .. }) => {
            encode_text(field, text, encoding, false, &mut out)?
        }
        (Fill::Number(n), Pic::Text { .. }) => encode_text(field, n, encoding, false, &mut out)?,
        (Fill::Bytes(b), Pic::Text { .. }) if b.len() <= field.length => {
            out = b.clone();
            out.resize(field.length, space);
        }
        (Fill::Bytes(b), _) => {
            return Err(format!(
                "X'..' of {} bytes does not fit {}",
                b.len(),
                field.describe()
            ));
        }
        (Fill::Text { .. }, Pic::Number { .. }) => {
            return Err("a quoted literal for a numeric item".into());
        }
    }
    Ok(out)
}

/// Appends `cell` as `field`'s bytes; the reason it does not fit otherwise.
fn encode_field(
    field: &Field,
    cell: &Cell<'_>,
    encoding: Encoding,
    truncate: bool,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match field.pic {
        Pic::Text { .. } => {
            let owned;
            let text = match cell {
                Cell::Blank => "",
                Cell::Text(t) => t,
                Cell::Owned(t) => t.as_str(),
                Cell::Json(Value::String(s)) => s.as_str(),
                Cell::Json(v) => {
                    owned = value_text(v).unwrap_or_default();
                    owned.as_str()
                }
            };
            encode_text(field, text, encoding, truncate, out)
        }
        Pic::Number { .. } => {
            let owned;
            let text = match cell {
                Cell::Blank => "0",
                Cell::Text(t) => t.trim(),
                Cell::Owned(t) => t.trim(),
                Cell::Json(Value::Number(n)) => {
                    owned = NumberText::of(n);
                    owned.as_str()
                }
                Cell::Json(Value::String(s)) => s.trim(),
                Cell::Json(_) => return Err("not a number".into()),
            };
            encode_number(field, text, encoding, out)
        }
    }
}

fn encode_text(
    field: &Field,
    text: &str,
    encoding: Encoding,
    truncate: bool,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let start = out.len();
    let alphabetic = matches!(field.pic, Pic::Text { alphabetic: true });
    for (count, c) in text.chars().enumerate() {
        if count == field.length {
            if truncate {
                break;
            }
            out.truncate(start);
            return Err(format!(
                "{} characters, the item holds {}",
                text.chars().count(),
                field.length
            ));
        }
        if c.is_control() {
            out.truncate(start);
            return Err(format!(
                "a control character (U+{:04X}) in a fixed-width record",
                c as u32
            ));
        }
        if alphabetic && !(c.is_alphabetic() || c == ' ') {
            out.truncate(start);
            return Err(format!("`{c}` in an alphabetic (PIC A) item"));
        }
        match encoding.encode(c) {
            Some(b) => out.push(b),
            None => {
                out.truncate(start);
                return Err(format!(
                    "`{c}` (U+{:04X}) has no code point in {}",
                    c as u32,
                    encoding.name()
                ));
            }
        }
    }
    let space = encoding.encode(' ').expect("every set has a space");
    out.resize(start + field.length, space);
    Ok(())
}

/// A decimal number as written: sign, integer digits (no leading zeros) and
/// fraction digits (no trailing zeros). `1e3`, `-0.50`, `.5` and `+7` are numbers;
/// `""`, `1,5`, `NaN` are not. Borrows from `text` unless it has an exponent.
fn parse_decimal(text: &str) -> Option<(bool, Cow<'_, str>, Cow<'_, str>)> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()?),
        None => (rest, 0),
    };
    if !(-400..=400).contains(&exponent) {
        return None;
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let (int, frac): (Cow<'_, str>, Cow<'_, str>) = if exponent == 0 {
        (int.into(), frac.into())
    } else {
        let digits: String = format!("{int}{frac}");
        let point = int.len() as i64 + exponent as i64;
        if point <= 0 {
            (
                String::new().into(),
                format!("{}{digits}", "0".repeat((-point) as usize)).into(),
            )
        } else if point as usize >= digits.len() {
            (
                format!("{digits}{}", "0".repeat(point as usize - digits.len())).into(),
                String::new().into(),
            )
        } else {
            (
                digits[..point as usize].to_string().into(),
                digits[point as usize..].to_string().into(),
            )
        }
    };
    let int = trim(int, |s| s.trim_start_matches('0'));
    let frac = trim(frac, |s| s.trim_end_matches('0'));
    Some((negative && !(int.is_empty() && frac.is_empty()), int, frac))
}

fn trim<'a>(text: Cow<'a, str>, f: impl Fn(&str) -> &str) -> Cow<'a, str> {
    match text {
        Cow::Borrowed(s) => Cow::Borrowed(f(s)),
        Cow::Owned(s) => Cow::Owned(f(&s).to_string()),
    }
}

/// A number's text without a heap allocation (JSON numbers are at most ~25 bytes).
struct NumberText {
    bytes: [u8; 48],
    len: usize,
}

impl std::fmt::Write for NumberText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.bytes.len() {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl NumberText {
    fn of(n: &serde_json::Number) -> NumberText {
        use std::fmt::Write;
        let mut t = NumberText {
            bytes: [0; 48],
            len: 0,
        };
        let _ = write!(t, "{n}");
        t
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

/// Appends the number `text` in `field`'s PIC and USAGE; the reason it does not
/// fit otherwise. Public for the differential test against GnuCOBOL.
pub fn encode_number(
    field: &Field,
    text: &str,
    encoding: Encoding,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let Pic::Number {
        signed,
        digits,
        scale,
    } = field.pic
    else {
        return Err("not a numeric item".into());
    };
    let (negative, int, frac) = parse_decimal(text).ok_or("not a number")?;
    let (digits, scale) = (digits as usize, scale as usize);
    if frac.len() > scale {
        return Err(if scale == 0 {
            format!("{} decimals; the item holds whole numbers", frac.len())
        } else {
            format!("{} decimals; the item holds {scale}", frac.len())
        });
    }
    if int.len() > digits - scale {
        return Err(format!(
            "{} digits before the point; the item holds {}",
            int.len(),
            digits - scale
        ));
    }
    if negative && !signed {
        return Err("negative, and the PIC has no S".into());
    }
    // Exactly `digits` digits (at most 31), the implied point `scale` from the right.
    let mut buffer = [0u8; 32];
    let all = &mut buffer[..digits];
    let start = digits - scale - int.len();
    for (d, b) in all[start..].iter_mut().zip(int.bytes().chain(frac.bytes())) {
        *d = b - b'0';
    }
    let all = &buffer[..digits];
    match field.usage {
        Usage::Display(sign) => {
            let digit = |d: u8| encoding.encode((b'0' + d) as char).expect("digits");
            let overpunch = |d: u8| match (encoding.is_ebcdic(), negative) {
                // Zone C (positive) / D (negative), as IBM COBOL writes them.
                (true, false) => 0xC0 | d,
                (true, true) => 0xD0 | d,
                // ASCII runtimes (GnuCOBOL, Micro Focus): plain digit / 0x70 + digit.
                (false, false) => b'0' + d,
                (false, true) => 0x70 + d,
            };
            let sign_char = || {
                encoding
                    .encode(if negative { '-' } else { '+' })
                    .expect("every set has + and -")
            };
            if !signed {
                out.extend(all.iter().map(|&d| digit(d)));
                return Ok(());
            }
            match sign {
                Sign::TrailingOverpunch => {
                    let (last, rest) = all.split_last().expect("at least one digit");
                    out.extend(rest.iter().map(|&d| digit(d)));
                    out.push(overpunch(*last));
                }
                Sign::LeadingOverpunch => {
                    let (first, rest) = all.split_first().expect("at least one digit");
                    out.push(overpunch(*first));
                    out.extend(rest.iter().map(|&d| digit(d)));
                }
                Sign::LeadingSeparate => {
                    out.push(sign_char());
                    out.extend(all.iter().map(|&d| digit(d)));
                }
                Sign::TrailingSeparate => {
                    out.extend(all.iter().map(|&d| digit(d)));
                    out.push(sign_char());
                }
            }
        }
        Usage::Packed => {
            let sign = match (signed, negative) {
                (false, _) => 0x0F,
                (true, false) => 0x0C,
                (true, true) => 0x0D,
            };
            // An odd count of nibbles before the sign: a leading 0 if digits is even.
            let mut nibbles = [0u8; 34];
            let lead = usize::from(digits.is_multiple_of(2));
            nibbles[lead..lead + digits].copy_from_slice(all);
            nibbles[lead + digits] = sign;
            let count = lead + digits + 1;
            out.extend(nibbles[..count].chunks(2).map(|p| (p[0] << 4) | p[1]));
        }
        Usage::Binary => {
            let mut value: i128 = all.iter().fold(0, |v, &d| v * 10 + d as i128);
            if negative {
                value = -value;
            }
            let bytes = value.to_be_bytes();
            out.extend_from_slice(&bytes[16 - field.length..]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Delta, Flat, RecordId};
    use serde_json::json;

    fn field(picture: &str, usage: Usage) -> Field {
        let cpy = format!(
            "       01  R.\n           05  F PIC {picture}{}.\n",
            match usage {
                Usage::Display(Sign::TrailingOverpunch) => "",
                Usage::Display(Sign::LeadingOverpunch) => " SIGN LEADING",
                Usage::Display(Sign::LeadingSeparate) => " SIGN LEADING SEPARATE",
                Usage::Display(Sign::TrailingSeparate) => " SIGN TRAILING SEPARATE",
                Usage::Packed => " COMP-3",
                Usage::Binary => " COMP",
            }
        );
        copybook::parse(cpy.as_bytes()).unwrap()[0].fields[0].clone()
    }

    fn number(
        picture: &str,
        usage: Usage,
        value: &str,
        encoding: Encoding,
    ) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        encode_number(&field(picture, usage), value, encoding, &mut out).map(|_| out)
    }

    const ZONED: Usage = Usage::Display(Sign::TrailingOverpunch);

    #[test]
    fn numbers_in_every_usage() {
        let a = Encoding::Ascii;
        let e = Encoding::Cp037;
        for (picture, usage, value, encoding, expected) in [
            ("9(5)", ZONED, "42", a, b"00042".to_vec()),
            ("9(5)", ZONED, "42", e, vec![0xF0, 0xF0, 0xF0, 0xF4, 0xF2]),
            ("S9(3)V99", ZONED, "-12.5", a, b"0125p".to_vec()),
            ("S9(3)V99", ZONED, "12.5", a, b"01250".to_vec()),
            (
                "S9(3)V99",
                ZONED,
                "-12.5",
                e,
                vec![0xF0, 0xF1, 0xF2, 0xF5, 0xD0],
            ),
            (
                "S9(3)V99",
                ZONED,
                "12.51",
                e,
                vec![0xF0, 0xF1, 0xF2, 0xF5, 0xC1],
            ),
            (
                "S9(3)",
                Usage::Display(Sign::LeadingOverpunch),
                "-7",
                a,
                b"p07".to_vec(),
            ),
            (
                "S9(3)",
                Usage::Display(Sign::LeadingSeparate),
                "-7",
                a,
                b"-007".to_vec(),
            ),
            (
                "S9(3)",
                Usage::Display(Sign::TrailingSeparate),
                "7",
                a,
                b"007+".to_vec(),
            ),
            (
                "S9(3)",
                Usage::Display(Sign::TrailingSeparate),
                "7",
                e,
                vec![0xF0, 0xF0, 0xF7, 0x4E],
            ),
            (
                "S9(7)V99",
                Usage::Packed,
                "95",
                a,
                vec![0x00, 0x00, 0x09, 0x50, 0x0C],
            ),
            (
                "S9(7)V99",
                Usage::Packed,
                "-1234567.89",
                a,
                vec![0x12, 0x34, 0x56, 0x78, 0x9D],
            ),
            ("9(4)", Usage::Packed, "1234", a, vec![0x01, 0x23, 0x4F]),
            ("S9(4)", Usage::Binary, "-2", a, vec![0xFF, 0xFE]),
            (
                "9(9)",
                Usage::Binary,
                "999999999",
                a,
                vec![0x3B, 0x9A, 0xC9, 0xFF],
            ),
            ("S9(18)", Usage::Binary, "-1", a, vec![0xFF; 8]),
            ("S9(3)V9", ZONED, "1e1", a, b"0100".to_vec()),
            ("S9(3)V9", ZONED, "-0", a, b"0000".to_vec()),
            ("V99", ZONED, ".05", a, b"05".to_vec()),
        ] {
            assert_eq!(
                number(picture, usage, value, encoding),
                Ok(expected),
                "{picture} {usage:?} {value} {encoding:?}"
            );
        }
    }

    #[test]
    fn numbers_that_do_not_fit_are_refused_not_rounded() {
        for (picture, value, says) in [
            (
                "S9(3)V99",
                "1234",
                "4 digits before the point; the item holds 3",
            ),
            ("S9(3)V99", "1.234", "3 decimals; the item holds 2"),
            ("9(3)", "1.5", "1 decimals; the item holds whole numbers"),
            ("9(3)", "-1", "negative, and the PIC has no S"),
            ("9(3)", "12a", "not a number"),
            ("9(3)", "", "not a number"),
            ("9(3)", "1,5", "not a number"),
            ("9(3)", "NaN", "not a number"),
            ("S9(3)V99", "0.30000000000000004", "17 decimals"),
        ] {
            let e = number(picture, ZONED, value, Encoding::Ascii).unwrap_err();
            assert!(e.contains(says), "{picture} {value}: {e}");
        }
    }

    fn spec(dir: &Path, copybook: &str, format: &str) -> Result<Arc<FixedSpec>, Vec<String>> {
        let folder = dir.join("county");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("P.cpy"), copybook).unwrap();
        let text = format!("[format]\nkind = \"fixed\"\ncopybook = \"P.cpy\"\n{format}");
        let raw: Raw =
            crate::problem::section(&text, "format", &mut Problems::new("c.toml", &text)).unwrap();
        let mut problems = Problems::new("c.toml", &text);
        match validate(&raw, &folder, &mut problems) {
            Some(Format::Fixed(s)) => Ok(s),
            _ => Err(problems
                .into_vec()
                .iter()
                .map(ToString::to_string)
                .collect()),
        }
    }

    const PERMIT: &str = r"      * THE IMPORTER'S RECORD
       01  PERMIT-UPD.
           05  PU-ACTION      PIC X.
           05  PU-PERMIT-NO   PIC 9(8).
           05  PU-STATUS      PIC X(10).
           05  PU-FEE         PIC S9(7)V99 COMP-3.
           05  PU-SEQ         PIC 9(9).
           05  FILLER         PIC X(2) VALUE '**'.
";

    const MAP: &str = "[format.map]\nPU-ACTION = \"@op\"\nPU-PERMIT-NO = \"permit_number\"\nPU-STATUS = \"status\"\nPU-FEE = \"fee\"\nPU-SEQ = \"@delivery_id\"\n";

    fn item<'a>(rid: &'a RecordId, delta: &'a Delta, record: Option<&'a Flat>) -> Item<'a> {
        Item {
            id: "county:42",
            attempt: 1,
            record_id: rid,
            delta,
            record,
        }
    }

    #[test]
    fn updates_carry_latest_values_and_deletes_the_key_and_op() {
        let tmp = tempfile::tempdir().unwrap();
        let s = spec(tmp.path(), PERMIT, MAP).unwrap();
        assert_eq!(s.layout.length, 35);
        let rid = RecordId::new("permits", "125");
        let mut record = Flat::new();
        record.insert("status".into(), json!("APPROVED"));
        record.insert("fee".into(), json!(95.5));
        let mut set = Flat::new();
        set.insert("status".into(), json!("APPROVED"));
        let update = Delta {
            op: Op::Update,
            set,
            unset: Default::default(),
        };
        let bytes = s.render(&item(&rid, &update, Some(&record))).unwrap();
        let mut expected = b"C00000125APPROVED  ".to_vec();
        expected.extend([0x00, 0x00, 0x09, 0x55, 0x0C]);
        expected.extend(b"000000042**\n");
        assert_eq!(bytes, expected);
        let delete = Delta {
            op: Op::Delete,
            set: Flat::new(),
            unset: Default::default(),
        };
        let bytes = s.render(&item(&rid, &delete, None)).unwrap();
        let mut expected = b"D00000125          ".to_vec();
        expected.extend([0x00, 0x00, 0x00, 0x00, 0x0C]);
        expected.extend(b"000000042**\n");
        assert_eq!(bytes, expected);
        let ruler = s.ruler(&bytes);
        assert!(ruler.contains("    19    5  PU-FEE"), "{ruler}");
        assert!(ruler.contains("x'000000000C'"), "{ruler}");
        assert!(
            ruler.contains("text: |D00000125          .....000000042**|"),
            "{ruler}"
        );
    }

    #[test]
    fn a_value_that_does_not_fit_is_a_rejection_naming_item_pic_and_value() {
        let tmp = tempfile::tempdir().unwrap();
        let ebcdic =
            format!("encoding = \"cp037\"\n[format.on_overflow]\nPU-STATUS = \"truncate\"\n{MAP}");
        let rid = RecordId::new("permits", "125");
        let delta = Delta {
            op: Op::Create,
            set: Flat::new(),
            unset: Default::default(),
        };
        for (format, status, fee, says) in [
            (
                MAP,
                json!("APPROVED-WITH-CONDITIONS"),
                json!(1),
                "PU-STATUS (PIC X(10)) cannot hold \"APPROVED-WITH-CONDITIONS\": 24 characters, the item holds 10",
            ),
            (
                MAP,
                json!("OK"),
                json!(12345678.9),
                "PU-FEE (PIC S9(7)V99 COMP-3) cannot hold 12345678.9: 8 digits before the point; the item holds 7",
            ),
            (MAP, json!("OK"), json!(1.005), "3 decimals"),
            (
                MAP,
                json!("OK"),
                json!("lots"),
                "cannot hold \"lots\": not a number",
            ),
            (
                MAP,
                json!("OK"),
                json!(true),
                "cannot hold true: not a number",
            ),
            (
                MAP,
                json!("GENEHMIGT€"),
                json!(1),
                "has no code point in ascii",
            ),
            (
                &ebcdic,
                json!("OK€"),
                json!(1),
                "`€` (U+20AC) has no code point in cp037",
            ),
            (MAP, json!("A\nB"), json!(1), "control character"),
        ] {
            let s = spec(tmp.path(), PERMIT, format).unwrap();
            let mut record = Flat::new();
            record.insert("status".into(), status);
            record.insert("fee".into(), fee);
            let e = s
                .render(&item(&rid, &delta, Some(&record)))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
        // Opt-in truncation for a text item.
        let s = spec(tmp.path(), PERMIT, &ebcdic).unwrap();
        let mut record = Flat::new();
        record.insert("status".into(), json!("APPROVED-WITH-CONDITIONS"));
        let bytes = s.render(&item(&rid, &delta, Some(&record))).unwrap();
        assert_eq!(bytes.len(), 35, "EBCDIC: record_end none by default");
        assert_eq!(s.text(&bytes[9..19]), "APPROVED-W");
        assert_eq!(bytes[0], 0xC1, "A in cp037");
    }

    const WITH_CONTROL: &str = r"       01  PERMIT-UPD.
           05  PU-ACTION      PIC X.
           05  PU-PERMIT-NO   PIC 9(8).
           05  PU-FEE         PIC S9(7)V99 COMP-3.
           05  PU-UNITS       PIC S9(4) SIGN LEADING SEPARATE.
       01  PU-HEADER.
           05  PH-TYPE        PIC X VALUE 'H'.
           05  PH-SEQ         PIC 9(6).
           05  PH-DATE        PIC X(8).
           05  FILLER         PIC X(6) VALUE SPACES.
       01  PU-TRAILER.
           05  PT-TYPE        PIC X VALUE 'T'.
           05  PT-COUNT       PIC 9(5) COMP-3.
           05  PT-FEES        PIC S9(11)V99.
           05  PT-UNITS       PIC S9(8) COMP.
";

    #[test]
    fn header_and_trailer_carry_count_hash_totals_file_number_and_date() {
        let tmp = tempfile::tempdir().unwrap();
        let format = "[format.header]\nrecord = \"PU-HEADER\"\n[format.header.map]\nPH-SEQ = \"@batch_seq\"\nPH-DATE = \"@run_date\"\n\
                      [format.trailer]\nrecord = \"PU-TRAILER\"\n[format.trailer.map]\nPT-COUNT = \"@record_count\"\nPT-FEES = \"@sum:fee\"\nPT-UNITS = \"@sum:units\"\n\
                      [format.map]\nPU-ACTION = \"@op\"\nPU-PERMIT-NO = \"permit_number\"\nPU-FEE = \"fee\"\nPU-UNITS = \"units\"\n";
        for encoding in ["ascii", "cp037"] {
            let s = spec(
                tmp.path(),
                WITH_CONTROL,
                &format!("encoding = \"{encoding}\"\nrecord_end = \"lf\"\n{format}"),
            )
            .unwrap();
            let delta = Delta {
                op: Op::Update,
                set: Flat::new(),
                unset: Default::default(),
            };
            let mut records = Vec::new();
            for (key, fee, units) in [
                ("1", json!(95.5), json!(-3)),
                ("2", json!(-0.25), json!(10)),
                ("3", json!("1000000"), json!(0)),
            ] {
                let rid = RecordId::new("permits", key);
                let mut r = Flat::new();
                r.insert("fee".into(), fee);
                r.insert("units".into(), units);
                let mut bytes = s.render(&item(&rid, &delta, Some(&r))).unwrap();
                bytes.pop();
                records.push(bytes);
            }
            let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            let (header, trailer) = s.frame(&refs, 42).unwrap();
            let text = |b: &[u8]| b.iter().map(|&b| s.encoding.decode(b)).collect::<String>();
            let date = run_date("%Y%m%d");
            assert_eq!(
                text(&header),
                format!("H000042{date}      \n"),
                "{encoding}"
            );
            assert_eq!(header.len(), 22);
            // 3 records; fees 95.50 - 0.25 + 1000000.00; units -3 + 10 + 0.
            assert_eq!(trailer[0], s.encoding.encode('T').unwrap());
            assert_eq!(&trailer[1..4], &[0x00, 0x00, 0x3F]);
            let fees = &trailer[4..17];
            let mut expected = Vec::new();
            encode_number(
                &s.trailer.as_ref().unwrap().layout.fields[2],
                "1000095.25",
                s.encoding,
                &mut expected,
            )
            .unwrap();
            assert_eq!(fees, &expected[..], "{encoding}");
            assert_eq!(&trailer[17..21], &[0, 0, 0, 7]);
            // A count its item cannot hold refuses the batch.
            let many = vec![refs[0]; 100_000];
            let e = s.frame(&many, 1).unwrap_err();
            assert!(
                e.contains("PU-TRAILER item PT-COUNT (PIC 9(5) COMP-3) cannot hold 100000"),
                "{e}"
            );
        }
        let e = spec(tmp.path(), WITH_CONTROL, "[format.trailer]\nrecord = \"PU-TRAILER\"\n[format.trailer.map]\nPT-FEES = \"@sum:status\"\nPT-TYPE = \"@record_count\"\n[format.map]\nPU-ACTION = \"@op\"\nPU-PERMIT-NO = \"k\"\n").unwrap_err().join("\n");
        assert!(
            e.contains("`status` is not mapped to a numeric item in [format.map]"),
            "{e}"
        );
        assert!(
            e.contains("PT-TYPE = \"@record_count\": needs a numeric item"),
            "{e}"
        );
    }

    #[test]
    fn check_refuses_what_cannot_be_written() {
        let tmp = tempfile::tempdir().unwrap();
        for (copybook, format, says) in [
            (
                PERMIT,
                "[format.map]\nPU-ACTION = \"@op\"\nPU-NOPE = \"x\"\n",
                "c.toml: line 6: [format.map] the copybook's record PERMIT-UPD has no elementary item `PU-NOPE`",
            ),
            (
                PERMIT,
                "[format.map]\nPU-ACTION = \"@op\"\nFILLER = \"x\"\n",
                "a FILLER cannot be mapped",
            ),
            (
                PERMIT,
                "[format.map]\nPU-PERMIT-NO = \"@op\"\n",
                "PU-PERMIT-NO = \"@op\" cannot fit: not a number",
            ),
            (
                PERMIT,
                "[format.op_codes]\nupdate = \"CHG\"\n[format.map]\nPU-ACTION = \"@op\"\nPU-PERMIT-NO = \"k\"\n",
                "PU-ACTION = \"@op\" cannot fit: 3 characters, the item holds 1",
            ),
            (
                PERMIT,
                "[format.map]\nPU-ACTION = \"@op\"\nPU-STATUS = \"@delivery_id\"\nPU-PERMIT-NO = \"k\"\n",
                "PU-STATUS = \"@delivery_id\" cannot fit: 16 characters, the item holds 10",
            ),
            (
                PERMIT,
                "[format.map]\nPU-ACTION = \"@when\"\n",
                "unknown; use a record path",
            ),
            (
                PERMIT,
                "[format.map]\nPU-PERMIT-NO = \"k\"\n",
                "no item is mapped to `@op`",
            ),
            (
                PERMIT,
                "record = \"OTHER\"\n[format.map]\nPU-ACTION = \"@op\"\n",
                "record `OTHER` is not an 01-level of P.cpy; it has: PERMIT-UPD",
            ),
            (
                PERMIT,
                "encoding = \"utf-8\"\n[format.map]\nPU-ACTION = \"@op\"\nPU-PERMIT-NO = \"k\"\n",
                "encoding `utf-8` is unknown",
            ),
            (
                PERMIT,
                "[format.on_overflow]\nPU-FEE = \"truncate\"\n[format.map]\nPU-ACTION = \"@op\"\nPU-PERMIT-NO = \"k\"\n",
                "a number is never truncated",
            ),
            (
                "       01  R.\n           05  A PIC X(4).\n           05  B REDEFINES A PIC 9(4).\n",
                "[format.map]\nA = \"@op\"\n",
                "/county/P.cpy: line 3: column 18: REDEFINES on B is not supported",
            ),
            (
                "       01  R.\n           05  A PIC X.\n           05  FILLER PIC X(2) VALUE 'TOO LONG'.\n",
                "[format.map]\nA = \"@op\"\n",
                "P.cpy: line 3: VALUE of FILLER: 8 characters, the item holds 2",
            ),
        ] {
            let e = spec(tmp.path(), copybook, format).unwrap_err().join("\n");
            assert!(e.contains(says), "{format}: {e}");
        }
    }
}
