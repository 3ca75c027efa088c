//! `format.kind = "template"`: a minijinja template from the connector folder
//! renders each delta, for legacy schemas that do not fit the default shape.
//! The template sees `op`, `set`, `unset`, `id`, `attempt`, `collection`, `key`
//! and `record` (the record's latest state, flattened: `record["address.city"]`).
//!
//! **Invariants:** the file name ends in `.xml.j2`, so every value is escaped for
//! XML (`&`, `<`, `>`, `"`, `'`) unless the template marks it `|safe`; `none` prints
//! as nothing; a control character XML cannot carry is an error, as in `xml.rs`.

use std::path::Path;
use std::sync::Arc;

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State};

use super::Format;
use super::{Item, TranslateError};
use crate::problem::{Problem, Problems};

#[derive(Clone, Debug)]
pub struct TemplateFormat {
    env: Arc<Environment<'static>>,
    name: String,
}

const XML: AutoEscape = AutoEscape::Custom("xml");

fn xml_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    if value.is_none() || value.is_undefined() {
        return Ok(());
    }
    if state.auto_escape() != XML || value.is_safe() {
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

/// The environment every template runs in: XML escaping for `*.xml.j2`.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".xml.j2") || name.ends_with(".xml") {
            XML
        } else {
            AutoEscape::None
        }
    });
    env.set_formatter(xml_formatter);
    // A field the record lacks prints nothing, as a null one does.
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    env
}

/// `[format] kind = "template"` as written.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Raw {
    /// A minijinja file in the connector's folder, named `*.xml.j2`.
    pub template: Option<std::path::PathBuf>,
}

/// The `[format]` keys of kind "template".
pub const KEYS: &[&str] = &["template"];

/// Validates `[format] kind = "template"`: reads and compiles the template, so
/// that `check` reports its syntax errors with the template's file and line.
pub fn validate(f: &Raw, folder: &Path, problems: &mut Problems<'_>) -> Option<Format> {
    let before = problems.len();
    let Some(name) = &f.template else {
        problems.at(
            Some("format"),
            "kind",
            "[format] kind \"template\" needs `template = \"NAME.xml.j2\"` (a file in the connector's folder)",
        );
        return None;
    };
    let file_name = name.to_string_lossy().into_owned();
    if name.components().count() != 1 || !file_name.ends_with(".xml.j2") {
        problems.at(
            Some("format"),
            "template",
            format!(
                "[format] template `{file_name}` must be a file name in the connector's folder ending in `.xml.j2` (so that values are escaped for XML)"
            ),
        );
        return None;
    }
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
    let mut env = environment();
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
    Some(Format::Template {
        name: file_name,
        source,
    })
}

impl TemplateFormat {
    pub fn new(name: &str, source: &str) -> TemplateFormat {
        let mut env = environment();
        // Compiled once at load already; an error here leaves the template
        // missing, and every render says so.
        let _ = env.add_template_owned(name.to_string(), source.to_string());
        TemplateFormat {
            env: Arc::new(env),
            name: name.to_string(),
        }
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
            out.push('\n');
        }
        Ok(out.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Delta, Flat, Op, RecordId};
    use serde_json::json;

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
        TemplateFormat::new("t.xml.j2", source)
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
}
