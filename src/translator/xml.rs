//! The default XML shape of SPEC §5, written with quick-xml's `Writer`:
//! `<Root op="update"><Key>123</Key><Field name="status">APPROVED</Field>…</Root>`.

use quick_xml::Writer;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::QName;

use super::{Format, Item, TranslateError, value_text};
use crate::problem::Problems;
use crate::record::Op;

/// `[format] kind = "xml"` as written.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Raw {
    /// The element around each delta. Default "RecordUpdate".
    pub root: Option<String>,
    /// The element holding the record key. Default "Key".
    pub key_element: Option<String>,
}

/// The `[format]` keys of kind "xml".
pub const KEYS: &[&str] = &["root", "key_element", "extension"];

pub fn validate(raw: &Raw, problems: &mut Problems<'_>) -> Option<Format> {
    let root = raw.root.clone().unwrap_or_else(|| "RecordUpdate".into());
    let key_element = raw.key_element.clone().unwrap_or_else(|| "Key".into());
    let before = problems.len();
    for (key, name) in [("root", &root), ("key_element", &key_element)] {
        if !valid_element_name(name) {
            problems.at(
                Some("format"),
                key,
                format!(
                    "[format] {key} `{name}` is not an XML element name (letters, digits, `_`, `-`, `.`; starting with a letter or `_`)"
                ),
            );
        }
    }
    (problems.len() == before).then_some(Format::Xml {
        root,
        key_element,
        extension: "xml".into(),
    })
}

#[derive(Clone, Debug)]
pub struct XmlFormat {
    pub root: String,
    pub key_element: String,
    /// The outbox files' extension, without the dot.
    pub extension: String,
}

/// Is `name` a plain XML element name (letters, digits, `_`, `-`, `.`; not
/// starting with a digit, `-` or `.`)? Checked when a connector is loaded.
pub fn valid_element_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// XML 1.0 cannot carry most control characters, even escaped.
fn check_chars(path: &str, text: &str) -> Result<(), TranslateError> {
    match text.chars().find(|&c| {
        (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFE}' || c == '\u{FFFF}'
    }) {
        Some(c) => Err(TranslateError::Unrepresentable {
            path: path.to_string(),
            format: "XML",
            what: format!("U+{:04X}", c as u32),
        }),
        None => Ok(()),
    }
}

type W = Writer<Vec<u8>>;

/// Text content: `&`, `<` and `>` escaped (apostrophes and quotes stay as they are).
fn text(s: &str) -> BytesText<'_> {
    BytesText::from_escaped(quick_xml::escape::partial_escape(s))
}

/// An attribute whose value has `&`, `<`, `>` and `"` escaped.
fn attr<'a>(name: &'a str, value: &str) -> Attribute<'a> {
    let escaped = quick_xml::escape::partial_escape(value).replace('"', "&quot;");
    Attribute {
        key: QName(name),
        value: escaped.into(),
    }
}

fn io(e: std::io::Error) -> TranslateError {
    TranslateError::Other(format!("writing XML: {e}"))
}

impl XmlFormat {
    pub fn render(&self, item: &Item<'_>) -> Result<Vec<u8>, TranslateError> {
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
        self.write(&mut w, item)?;
        let mut out = w.into_inner();
        out.push(b'\n');
        Ok(out)
    }

    /// `<Delivery id="t:1" attempt="1"><Root …/></Delivery>` for batch files.
    pub fn render_file_entry(&self, item: &Item<'_>) -> Result<Vec<u8>, TranslateError> {
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
        let attempt = item.attempt.to_string();
        w.write_event(Event::Start(
            BytesStart::new("Delivery")
                .with_attributes([attr("id", item.id), attr("attempt", &attempt)]),
        ))
        .map_err(io)?;
        self.write(&mut w, item)?;
        w.write_event(Event::End(BytesEnd::new("Delivery")))
            .map_err(io)?;
        let mut out = w.into_inner();
        out.push(b'\n');
        Ok(out)
    }

    /// Writes the root element into `w` (the SOAP envelope reuses this).
    pub fn write(&self, w: &mut W, item: &Item<'_>) -> Result<(), TranslateError> {
        let delta = item.delta;
        check_chars("(key)", &item.record_id.key)?;
        w.write_event(Event::Start(
            BytesStart::new(self.root.as_str()).with_attributes([attr("op", delta.op.as_str())]),
        ))
        .map_err(io)?;
        w.create_element(self.key_element.as_str())
            .write_text_content(text(&item.record_id.key))
            .map_err(io)?;
        if delta.op != Op::Delete {
            for (path, value) in &delta.set {
                check_chars(path, path)?;
                let field = w.create_element("Field").with_attribute(attr("name", path));
                match value_text(value) {
                    None => {
                        field
                            .with_attribute(attr("null", "true"))
                            .write_empty()
                            .map_err(io)?;
                    }
                    Some(value) => {
                        check_chars(path, &value)?;
                        field.write_text_content(text(&value)).map_err(io)?;
                    }
                }
            }
            for path in &delta.unset {
                check_chars(path, path)?;
                w.create_element("Field")
                    .with_attributes([attr("name", path), attr("removed", "true")])
                    .write_empty()
                    .map_err(io)?;
            }
        }
        w.write_event(Event::End(BytesEnd::new(self.root.as_str())))
            .map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Delta, Flat, RecordId};
    use serde_json::{Value, json};

    fn fixture(p: &str) -> String {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        std::fs::read_to_string(dir.join(p)).expect("fixture")
    }

    fn squash(s: &str) -> String {
        s.lines().map(str::trim).collect::<Vec<_>>().join("")
    }

    fn permit_format() -> XmlFormat {
        XmlFormat {
            root: "PermitUpdate".into(),
            key_element: "PermitNumber".into(),
            extension: "xml".into(),
        }
    }

    #[test]
    fn the_fixture_pair_renders_exactly_the_expected_xml() {
        let flat = |p: &str| {
            let v: Value = serde_json::from_str(&fixture(p)).unwrap();
            crate::diff::flatten(v.as_object().unwrap(), 32).unwrap()
        };
        let delta = crate::diff::compute(
            Some(&flat("permits/permit-123.json")),
            Some(&flat("permits/permit-123-approved.json")),
        )
        .unwrap();
        let rid = RecordId::new("permits", "123");
        let item = Item {
            id: "t:1",
            attempt: 1,
            record_id: &rid,
            delta: &delta,
            record: None,
        };
        let got = String::from_utf8(permit_format().render(&item).unwrap()).unwrap();
        assert_eq!(
            squash(&got),
            squash(&fixture("expected/permit-123-approved.xml")),
            "{got}"
        );
    }

    #[test]
    fn nulls_numbers_arrays_deletes_and_attribute_escaping() {
        let mut set = Flat::new();
        set.insert("notes".into(), Value::Null);
        set.insert("fee".into(), json!(12.5));
        set.insert("tags".into(), json!(["a", "b"]));
        set.insert("a\"b".into(), json!(true));
        let rid = RecordId::new("permits", "1<2");
        let delta = Delta {
            op: Op::Create,
            set,
            unset: Default::default(),
        };
        let item = Item {
            id: "t:1",
            attempt: 1,
            record_id: &rid,
            delta: &delta,
            record: None,
        };
        let got = squash(&String::from_utf8(permit_format().render(&item).unwrap()).unwrap());
        assert!(got.contains("<PermitNumber>1&lt;2</PermitNumber>"), "{got}");
        assert!(
            got.contains(r#"<Field name="notes" null="true"/>"#),
            "{got}"
        );
        assert!(got.contains(r#"<Field name="fee">12.5</Field>"#), "{got}");
        assert!(
            got.contains(r#"<Field name="tags">["a","b"]</Field>"#),
            "{got}"
        );
        assert!(
            got.contains(r#"<Field name="a&quot;b">true</Field>"#),
            "{got}"
        );
        let del = Delta {
            op: Op::Delete,
            set: Flat::new(),
            unset: ["fee".to_string()].into_iter().collect(),
        };
        let item = Item {
            delta: &del,
            ..item
        };
        let got = squash(&String::from_utf8(permit_format().render(&item).unwrap()).unwrap());
        assert_eq!(
            got,
            r#"<PermitUpdate op="delete"><PermitNumber>1&lt;2</PermitNumber></PermitUpdate>"#
        );
    }

    #[test]
    fn control_characters_are_an_error() {
        let mut set = Flat::new();
        set.insert("notes".into(), json!("bell\u{7}"));
        let rid = RecordId::new("p", "1");
        let delta = Delta {
            op: Op::Update,
            set,
            unset: Default::default(),
        };
        let item = Item {
            id: "t:1",
            attempt: 1,
            record_id: &rid,
            delta: &delta,
            record: None,
        };
        let err = permit_format().render(&item).unwrap_err();
        assert!(
            err.to_string().contains("notes") && err.to_string().contains("U+0007"),
            "{err}"
        );
    }

    #[test]
    fn element_names() {
        assert!(valid_element_name("PermitUpdate"));
        assert!(!valid_element_name("1abc"));
        assert!(!valid_element_name("a b"));
        assert!(!valid_element_name(""));
    }
}
