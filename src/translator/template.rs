//! `format.kind = "template"`: a minijinja template from the connector folder
//! renders each delta, for legacy layouts that do not fit the default shapes.
//! The template sees `op`, `set`, `unset`, `id`, `attempt`, `collection`, `key`
//! and `record` (the record's latest state, flattened: `record["address.city"]`).
//!
//! The template's name says what it writes: `NAME.EXT.j2` fills `.EXT` files.
//! `*.xml.j2` is XML: every value is escaped (`&`, `<`, `>`, `"`, `'`) unless the
//! template marks it `|safe`, and each change is one document (one per file).
//! Any other extension is text (`permit.txt.j2`, `.dat`, `.csv`): values are
//! printed as they are, one or more lines per change, many changes per file.
//!
//! **Invariants:** `none` prints as nothing; a control character XML cannot
//! carry is an error, as in `xml.rs`; in a text template a value holding a line
//! break or the `delimiter` (which would break the line the importer reads) is
//! an error naming the value — the delta is rejected, never written broken.

use std::path::Path;
use std::sync::Arc;

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State};

use super::Format;
use super::csv::TextEncoding;
use super::{Item, TranslateError};
use crate::problem::{Problem, Problems};

/// `[format] kind = "template"`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateSpec {
    /// The file name in the connector folder (`permit.txt.j2`).
    pub name: String,
    pub source: String,
    /// The outbox files' extension: `[format] extension`, else the name's.
    pub extension: String,
    /// A text template's field separator: a value holding it is refused.
    pub delimiter: Option<u8>,
    /// A text template's character set (`[format] encoding`, default UTF-8).
    pub encoding: TextEncoding,
}

impl TemplateSpec {
    /// An XML template (`*.xml.j2`): escaped for XML, one document a change.
    pub fn is_xml(&self) -> bool {
        self.name.ends_with(".xml.j2")
    }
}

#[derive(Clone, Debug)]
pub struct TemplateFormat {
    env: Arc<Environment<'static>>,
    name: String,
    extension: String,
    encoding: TextEncoding,
    /// The template's own lines end in CR LF (written on Windows): so does the
    /// line break added after each change, or the file would mix line ends.
    crlf: bool,
}

const XML: AutoEscape = AutoEscape::Custom("xml");

/// A value as the XML template prints it: escaped; a character XML cannot
/// carry is an error.
fn xml_value(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    if value.is_safe() {
        return minijinja::escape_formatter(out, state, value);
    }
    let text = value.to_string();
    if let Some(c) = text.chars().find(|&c| {
        (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFE}' || c == '\u{FFFF}'
    }) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "a value holds a character XML cannot carry (U+{:04X})",
                c as u32
            ),
        ));
    }
    // All five: a value may land in an attribute quoted with ' as well as ".
    let escaped = quick_xml::escape::escape(&text);
    out.write_str(&escaped).map_err(Error::from)
}

/// A value as a text template prints it: as it is, unless it would break the
/// line (a line break, or the delimiter) or the encoding lacks one of its
/// characters; `|safe` changes nothing here.
fn text_value(
    out: &mut Output,
    value: &Value,
    delimiter: Option<u8>,
    encoding: TextEncoding,
) -> Result<(), Error> {
    let text = value.to_string();
    let breaks = text.chars().find_map(|c| match super::csv::line_break(c) {
        Some(what) => Some(format!("{what}, which would break the line")),
        None if Some(c) == delimiter.map(char::from) => {
            Some(format!("the delimiter `{c}`, which would break the line"))
        }
        None => None,
    });
    let what = breaks.or_else(|| {
        encoding.missing(&text).map(|c| {
            format!(
                "{c:?} (U+{:04X}), which {} cannot carry",
                c as u32,
                encoding.name()
            )
        })
    });
    if let Some(what) = what {
        let mut shown: String = text.chars().take(80).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("the value {shown:?} holds {what}"),
        ));
    }
    out.write_str(&text).map_err(Error::from)
}

/// The environment every template runs in: XML escaping for `*.xml.j2`,
/// line-safe text for every other name.
fn environment(delimiter: Option<u8>, encoding: TextEncoding) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".xml.j2") {
            XML
        } else {
            AutoEscape::None
        }
    });
    env.set_formatter(move |out, state, value| {
        if value.is_none() || value.is_undefined() {
            return Ok(());
        }
        if state.auto_escape() == XML {
            xml_value(out, state, value)
        } else {
            text_value(out, value, delimiter, encoding)
        }
    });
    // A field the record lacks prints nothing, as a null one does.
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    env
}

/// `[format] kind = "template"` as written.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Raw {
    /// A minijinja file in the connector's folder, named `NAME.EXT.j2`:
    /// `permit.xml.j2` (XML, escaped) or `permit.txt.j2` (text, as it is).
    pub template: Option<std::path::PathBuf>,
    /// For a text template: the field separator it writes (e.g. "|"); a value
    /// holding it is refused instead of splitting a field in two.
    pub delimiter: Option<String>,
    /// For a text template: "utf-8" (default), "latin1" or "cp1252".
    pub encoding: Option<String>,
}

/// The `[format]` keys of kind "template".
pub const KEYS: &[&str] = &["template", "delimiter", "encoding", "extension"];

/// Extensions a text template cannot write safely: their formats need escaping
/// that only a dedicated writer does.
const NEEDS_ESCAPING: &[(&str, &str)] = &[
    (
        "json",
        "use `kind = \"json\"`, which writes JSON with every value escaped",
    ),
    ("html", "hms-sync has no HTML escaping"),
    ("htm", "hms-sync has no HTML escaping"),
];

/// Validates `[format] kind = "template"`: reads and compiles the template, so
/// that `check` reports its syntax errors with the template's file and line.
pub fn validate(f: &Raw, folder: &Path, problems: &mut Problems<'_>) -> Option<Format> {
    let before = problems.len();
    let Some(name) = &f.template else {
        problems.at(
            Some("format"),
            "kind",
            "[format] kind \"template\" needs `template = \"NAME.txt.j2\"` or `\"NAME.xml.j2\"` (a file in the connector's folder)",
        );
        return None;
    };
    let file_name = name.to_string_lossy().into_owned();
    let extension = file_name
        .strip_suffix(".j2")
        .and_then(|stem| stem.rsplit_once('.'))
        .map(|(base, ext)| (base, ext.to_ascii_lowercase()))
        .filter(|(base, ext)| {
            !base.is_empty() && !ext.is_empty() && ext.chars().all(|c| c.is_ascii_alphanumeric())
        })
        .map(|(_, ext)| ext);
    let Some(extension) = extension.filter(|_| name.components().count() == 1) else {
        problems.at(
            Some("format"),
            "template",
            format!(
                "[format] template `{file_name}` must be a file name in the connector's folder named NAME.EXT.j2: `permit.txt.j2` writes text as it is, `permit.xml.j2` escapes values for XML"
            ),
        );
        return None;
    };
    if let Some((_, hint)) = NEEDS_ESCAPING.iter().find(|(e, _)| *e == extension) {
        problems.at(
            Some("format"),
            "template",
            format!("[format] template `{file_name}`: a `.{extension}` template would print values unescaped; {hint}"),
        );
        return None;
    }
    let xml = extension == "xml";
    let delimiter = match &f.delimiter {
        None => None,
        Some(_) if xml => {
            problems.at(
                Some("format"),
                "delimiter",
                "[format] delimiter applies to text templates only (an XML template escapes its values)",
            );
            None
        }
        Some(d) => super::csv::delimiter(d, problems),
    };
    let encoding = match &f.encoding {
        None => TextEncoding::Utf8,
        Some(_) if xml => {
            problems.at(
                Some("format"),
                "encoding",
                "[format] encoding applies to text templates only (an XML template is written as UTF-8)",
            );
            TextEncoding::Utf8
        }
        Some(name) => super::csv::encoding(name, problems),
    };
    let path = folder.join(name);
    let source = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) => {
            problems.at(
                Some("format"),
                "template",
                format!("[format] template: cannot read {}: {e}", path.display()),
            );
            return None;
        }
    };
    // A byte-order mark (Notepad saves one) is not text to write before each change.
    let source = match source.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => source,
    };
    // The template's own text goes into every file: a character the encoding
    // lacks would refuse every change, so `check` says so now.
    if let Some((line, c)) = unwritable_text(&source, encoding) {
        problems.push(Problem {
            file: path.display().to_string(),
            line: Some(line),
            key: "template".into(),
            message: format!(
                "the template's text holds {c:?} (U+{:04X}), which {} cannot carry: every change would be refused",
                c as u32,
                encoding.name()
            ),
        });
    }
    let mut env = environment(delimiter, encoding);
    if let Err(e) = env.add_template_owned(file_name.clone(), source.clone()) {
        problems.push(Problem {
            file: path.display().to_string(),
            line: Some(e.line().unwrap_or(0)),
            key: "template".into(),
            message: format!(
                "template error: {}",
                e.detail().unwrap_or(&e.kind().to_string())
            ),
        });
    }
    if problems.len() > before {
        return None;
    }
    Some(Format::Template(TemplateSpec {
        name: file_name,
        source,
        extension,
        delimiter,
        encoding,
    }))
}

/// The first character of the template's literal text (outside `{{ }}`,
/// `{% %}` and `{# #}`) that `encoding` lacks, with its line.
fn unwritable_text(source: &str, encoding: TextEncoding) -> Option<(usize, char)> {
    let mut rest = source;
    let mut line = 1;
    loop {
        let open = ["{{", "{%", "{#"]
            .iter()
            .filter_map(|o| rest.find(o).map(|at| (at, *o)))
            .min();
        let text = open.map_or(rest, |(at, _)| &rest[..at]);
        for c in text.chars() {
            if encoding.missing(c.encode_utf8(&mut [0; 4])).is_some() {
                return Some((line, c));
            }
            line += usize::from(c == '\n');
        }
        let (at, opened) = open?;
        let close = match opened {
            "{{" => "}}",
            "{%" => "%}",
            _ => "#}",
        };
        let tag_end = rest[at..].find(close).map_or(rest.len(), |e| at + e + 2);
        line += rest[at..tag_end].matches('\n').count();
        rest = &rest[tag_end..];
    }
}

impl TemplateFormat {
    pub fn new(spec: &TemplateSpec) -> TemplateFormat {
        let mut env = environment(spec.delimiter, spec.encoding);
        // Compiled once at load already; an error here leaves the template
        // missing, and every render says so.
        let _ = env.add_template_owned(spec.name.clone(), spec.source.clone());
        TemplateFormat {
            env: Arc::new(env),
            name: spec.name.clone(),
            extension: spec.extension.clone(),
            encoding: spec.encoding,
            crlf: spec.source.contains("\r\n"),
        }
    }

    pub fn extension(&self) -> &str {
        &self.extension
    }

    pub fn render(&self, item: &Item<'_>) -> Result<Vec<u8>, TranslateError> {
        let template = self
            .env
            .get_template(&self.name)
            .map_err(|e| TranslateError::Other(format!("template {}: {e}", self.name)))?;
        let set: serde_json::Map<String, serde_json::Value> = item
            .delta
            .set
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let record: Option<serde_json::Map<String, serde_json::Value>> = item
            .record
            .map(|r| r.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        let ctx = minijinja::context! {
            op => item.delta.op.as_str(),
            set => Value::from_serialize(&set),
            unset => Value::from_serialize(&item.delta.unset),
            id => item.id,
            attempt => item.attempt,
            collection => &item.record_id.collection,
            key => &item.record_id.key,
            record => Value::from_serialize(&record),
        };
        let mut out = template.render(ctx).map_err(|e| {
            TranslateError::Other(format!(
                "template {} line {}: {}",
                self.name,
                e.line().unwrap_or(0),
                e.detail()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.kind().to_string())
            ))
        })?;
        if !out.ends_with('\n') {
            out.push_str(if self.crlf { "\r\n" } else { "\n" });
        }
        // Values were checked as they were printed; this is the template's own text.
        if let Some(c) = self.encoding.missing(&out) {
            return Err(TranslateError::Other(format!(
                "template {} writes {c:?} (U+{:04X}), which {} cannot carry",
                self.name,
                c as u32,
                self.encoding.name()
            )));
        }
        Ok(self.encoding.encode(&out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Delta, Flat, Op, RecordId};
    use serde_json::json;

    fn spec(name: &str, source: &str, delimiter: Option<u8>) -> TemplateSpec {
        TemplateSpec {
            name: name.into(),
            source: source.into(),
            extension: "x".into(),
            delimiter,
            encoding: TextEncoding::Utf8,
        }
    }

    fn render(source: &str, set: Flat, record: Option<&Flat>) -> Result<String, TranslateError> {
        let rid = RecordId::new("permits", "1<2");
        let delta = Delta {
            op: Op::Update,
            set,
            unset: ["gone".to_string()].into_iter().collect(),
        };
        let item = Item {
            id: "t:7",
            attempt: 2,
            record_id: &rid,
            delta: &delta,
            record,
        };
        TemplateFormat::new(&spec("t.xml.j2", source, None))
            .render(&item)
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn values_are_escaped_for_xml_and_null_or_missing_prints_nothing() {
        let mut set = Flat::new();
        set.insert("name".into(), json!("O'Brien & \"Sons\" <c>"));
        set.insert("notes".into(), json!(null));
        let got = render(
            r#"<U id="{{ id }}" a="{{ attempt }}" k="{{ key }}" n="{{ set.name }}">{{ set.notes }}|{{ record["nope"] }}|{{ unset|join(",") }}|{{ "<b/>"|safe }}</U>"#,
            set,
            None,
        )
        .unwrap();
        assert_eq!(
            got,
            "<U id=\"t:7\" a=\"2\" k=\"1&lt;2\" n=\"O&apos;Brien &amp; &quot;Sons&quot; &lt;c&gt;\">||gone|<b/></U>\n"
        );
    }

    #[test]
    fn a_value_cannot_close_a_single_quoted_attribute() {
        let mut set = Flat::new();
        set.insert("v".into(), json!("x' evil='1"));
        let got = render("<U name='{{ set.v }}'/>", set, None).unwrap();
        assert_eq!(got, "<U name='x&apos; evil=&apos;1'/>\n");
    }

    #[test]
    fn a_control_character_is_an_error_not_altered_output() {
        let mut set = Flat::new();
        set.insert("n".into(), json!("bell\u{7}"));
        let err = render("<U>{{ set.n }}</U>", set, None).unwrap_err();
        assert!(err.to_string().contains("U+0007"), "{err}");
    }

    fn text(source: &str, value: serde_json::Value) -> Result<String, TranslateError> {
        let rid = RecordId::new("permits", "A");
        let mut record = Flat::new();
        record.insert("status".into(), value);
        let delta = Delta {
            op: Op::Update,
            set: record.clone(),
            unset: Default::default(),
        };
        let item = Item {
            id: "t:7",
            attempt: 1,
            record_id: &rid,
            delta: &delta,
            record: Some(&record),
        };
        TemplateFormat::new(&spec("permit.txt.j2", source, Some(b'|')))
            .render(&item)
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn a_text_template_prints_values_as_they_are_without_safe() {
        let got = text(
            "{{ key }}|{{ record.status }}|{{ op }}",
            json!("O'Brien & <Sons>"),
        )
        .unwrap();
        assert_eq!(got, "A|O'Brien & <Sons>|update\n");
    }

    #[test]
    fn a_text_value_that_would_break_the_line_is_refused_naming_it() {
        for (value, what) in [
            (json!("two\nlines"), "a line break (LF)"),
            (json!("cr\r"), "a line break (CR)"),
            (json!("A|B"), "the delimiter `|`"),
        ] {
            let err = text("{{ key }}|{{ record.status }}", value.clone()).unwrap_err();
            let err = err.to_string();
            assert!(
                err.contains(&format!(
                    "the value {:?} holds {what}, which would break the line",
                    value.as_str().unwrap()
                )),
                "{err}"
            );
            // `|safe` does not let it through in a text template.
            let err = text("{{ record.status|safe }}", value).unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn a_crlf_template_ends_each_change_with_crlf_too() {
        // Saved by Notepad: every line ends in CR LF, the last one too.
        assert_eq!(
            text("H|{{ key }}\r\nD|{{ record.status }}\r\n", json!("OK")).unwrap(),
            "H|A\r\nD|OK\r\n"
        );
        assert_eq!(
            text("H|{{ key }}\r\nD|{{ record.status }}", json!("OK")).unwrap(),
            "H|A\r\nD|OK\r\n"
        );
        // LF templates stay LF.
        assert_eq!(
            text("H|{{ key }}\nD|{{ record.status }}\n", json!("OK")).unwrap(),
            "H|A\nD|OK\n"
        );
    }

    #[test]
    fn a_unicode_or_control_line_separator_is_refused_too() {
        // Line readers (Python's splitlines, editors) end a line at each of these:
        // written as they are, the importer would see the record cut in two.
        for (c, code) in [
            ('\u{2028}', "U+2028"),
            ('\u{2029}', "U+2029"),
            ('\u{85}', "U+0085"),
            ('\u{0B}', "U+000B"),
            ('\u{0C}', "U+000C"),
            ('\u{1E}', "U+001E"),
        ] {
            let value = format!("first{c}second");
            let err = text("{{ key }}|{{ record.status }}", json!(value))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "the value {value:?} holds a line separator ({code}), which would break the line"
                )),
                "{err}"
            );
        }
        // A tab or a non-breaking space does not end a line.
        assert_eq!(
            text("{{ record.status }}", json!("a\tb\u{a0}c")).unwrap(),
            "a\tb\u{a0}c\n"
        );
    }

    fn check(template: &str, extra: &str) -> Result<Format, String> {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["p.txt.j2", "p.xml.j2", "p.json.j2", "p.j2"] {
            std::fs::write(tmp.path().join(name), "{{ key }}").unwrap();
        }
        let text = format!("[format]\nkind = \"template\"\ntemplate = \"{template}\"\n{extra}");
        let mut problems = Problems::new("c.toml", &text);
        let raw: Raw = crate::problem::section(&text, "format", &mut problems).unwrap();
        validate(&raw, tmp.path(), &mut problems).ok_or_else(|| problems.joined())
    }

    #[test]
    fn check_refuses_template_text_the_encoding_lacks_and_drops_a_bom() {
        let load = |source: &[u8], encoding: &str| {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(tmp.path().join("p.txt.j2"), source).unwrap();
            let text = format!(
                "[format]\nkind = \"template\"\ntemplate = \"p.txt.j2\"\nencoding = \"{encoding}\"\n"
            );
            let mut problems = Problems::new("c.toml", &text);
            let raw: Raw = crate::problem::section(&text, "format", &mut problems).unwrap();
            validate(&raw, tmp.path(), &mut problems).ok_or_else(|| problems.joined())
        };
        // A literal the set lacks, on line 2 (a comment or tag may hold anything).
        let err = load(
            "{# Gebühr in € #}H|{{ key }}\nFee in \u{20ac}|{{ record.fee }}\n".as_bytes(),
            "latin1",
        )
        .unwrap_err();
        assert!(
            err.contains("line 2")
                && err
                    .contains("the template's text holds '€' (U+20AC), which latin1 cannot carry"),
            "{err}"
        );
        assert!(load("{# € #}{{ \"x\" }}|{{ key }}".as_bytes(), "latin1").is_ok());
        assert!(load("Fee in \u{20ac}|{{ key }}".as_bytes(), "cp1252").is_ok());
        // Notepad's byte-order mark is dropped, not written before every change.
        let Format::Template(spec) = load(b"\xEF\xBB\xBF{{ key }}|x", "cp1252").unwrap() else {
            panic!()
        };
        assert_eq!(spec.source, "{{ key }}|x");
        let Format::Template(spec) = load(b"\xEF\xBB\xBF{{ key }}|x", "utf-8").unwrap() else {
            panic!()
        };
        assert!(!spec.source.starts_with('\u{feff}'));
    }

    #[test]
    fn the_template_name_gives_extension_and_escaping() {
        let Format::Template(t) = check("p.txt.j2", "delimiter = \"|\"").unwrap() else {
            panic!()
        };
        assert_eq!(
            (t.extension.as_str(), t.is_xml(), t.delimiter),
            ("txt", false, Some(b'|'))
        );
        let Format::Template(t) = check("p.xml.j2", "").unwrap() else {
            panic!()
        };
        assert_eq!((t.extension.as_str(), t.is_xml()), ("xml", true));
        let err = check("p.j2", "").unwrap_err();
        assert!(err.contains("line 3: [format] template `p.j2` must be a file name in the connector's folder named NAME.EXT.j2"), "{err}");
        let err = check("p.json.j2", "").unwrap_err();
        assert!(err.contains("use `kind = \"json\"`"), "{err}");
        let err = check("p.xml.j2", "encoding = \"latin1\"").unwrap_err();
        assert!(
            err.contains("line 4: [format] encoding applies to text templates only"),
            "{err}"
        );
        let Format::Template(t) = check("p.txt.j2", "encoding = \"cp1252\"").unwrap() else {
            panic!()
        };
        assert_eq!(t.encoding, TextEncoding::Cp1252);
        let err = check("p.xml.j2", "delimiter = \"|\"").unwrap_err();
        assert!(
            err.contains("line 4: [format] delimiter applies to text templates only"),
            "{err}"
        );
    }

    #[test]
    fn a_latin1_text_template_encodes_or_refuses_naming_the_value() {
        let rid = RecordId::new("permits", "A");
        let mut record = Flat::new();
        let delta = Delta {
            op: Op::Update,
            set: Flat::new(),
            unset: Default::default(),
        };
        let t = TemplateFormat::new(&TemplateSpec {
            encoding: TextEncoding::Latin1,
            ..spec("p.txt.j2", "{{ key }};{{ record.status }}", None)
        });
        let mut go = |status: &str| {
            record.insert("status".into(), json!(status));
            t.render(&Item {
                id: "t:7",
                attempt: 1,
                record_id: &rid,
                delta: &delta,
                record: Some(&record),
            })
        };
        assert_eq!(go("Café").unwrap(), b"A;Caf\xE9\n");
        let err = go("5 €").unwrap_err().to_string();
        assert!(
            err.contains("the value \"5 €\" holds '€' (U+20AC), which latin1 cannot carry"),
            "{err}"
        );
        // The template's own text is checked too.
        let t = TemplateFormat::new(&TemplateSpec {
            encoding: TextEncoding::Latin1,
            ..spec("p.txt.j2", "€{{ key }}", None)
        });
        let err = t
            .render(&Item {
                id: "t:7",
                attempt: 1,
                record_id: &rid,
                delta: &delta,
                record: None,
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("template p.txt.j2 writes '€' (U+20AC), which latin1 cannot carry"),
            "{err}"
        );
    }
}
