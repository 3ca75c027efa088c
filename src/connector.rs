//! `connectors/<name>/connector.toml`: one legacy system = which collections it
//! receives, its translator (format), its transport and its retry policy.
//!
//! **Invariants:** the folder name is the target's name and is a safe file name;
//! a key that does not apply to the chosen `kind` is an error, never ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::toml_error;
use crate::problem::{Problem, Problems, parse_duration};

/// `connector.toml` as written. `[format]` and `[transport]` stay tables here:
/// their `kind` says which kind's own raw struct reads the rest (each kind's
/// keys, struct and `validate` live beside its code, in `translator/` and
/// `transport/`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorFile {
    /// Collections this legacy system receives.
    pub collections: Vec<String>,
    /// Optional projection: only these paths (or subtrees) are sent.
    pub fields: Option<Vec<String>>,
    /// `kind` (xml | csv | json | template) and that kind's keys.
    pub format: toml::Table,
    /// `kind` (file | soap | serial) and that kind's keys.
    pub transport: toml::Table,
    pub retry: Option<RetryFile>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Rejections before a delta becomes a dead letter. Default 20.
    pub max_attempts: Option<u32>,
    /// First wait after a failure. Default "1s".
    pub backoff: Option<String>,
    /// Longest wait between tries. Default "5m".
    pub max_backoff: Option<String>,
}

/// A validated connector.
#[derive(Debug, Clone)]
pub struct Connector {
    pub name: String,
    pub folder: PathBuf,
    pub collections: Vec<String>,
    pub fields: Option<Vec<String>>,
    pub format: Format,
    pub transport: TransportSpec,
    pub retry: RetryPolicy,
}

pub use crate::translator::Format;
pub use crate::transport::TransportSpec;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 20,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Is `name` usable as a target name and folder name?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Loads every `<dir>/<name>/connector.toml`, sorted by name. Returns every problem.
pub fn load_all(dir: &Path, base: &Path) -> Result<Vec<Connector>, Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            return Err(vec![format!(
                "{}: cannot read the connectors folder: {e}",
                dir.display()
            )]);
        }
    };
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("connector.toml").is_file())
        .collect();
    folders.sort();
    let mut connectors = Vec::new();
    let mut problems = Vec::new();
    for folder in folders {
        match load(&folder, base) {
            Ok(c) => connectors.push(c),
            Err(mut e) => problems.append(&mut e),
        }
    }
    problems.extend(shared_ports(&connectors));
    if problems.is_empty() {
        Ok(connectors)
    } else {
        Err(problems)
    }
}

/// Loads one connector folder. `base` resolves relative paths (the config's folder).
pub fn load(folder: &Path, base: &Path) -> Result<Connector, Vec<String>> {
    check(folder, base).map_err(|problems| problems.iter().map(ToString::to_string).collect())
}

/// Loads one connector folder: every problem, typed.
pub fn check(folder: &Path, base: &Path) -> Result<Connector, Vec<Problem>> {
    let path = folder.join("connector.toml");
    let file_name = path.display().to_string();
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let whole = |message: String| Problem {
        file: file_name.clone(),
        line: None,
        key: String::new(),
        message,
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| vec![whole(format!("cannot read: {e}"))])?;
    let raw: ConnectorFile = toml::from_str(&text).map_err(|e| {
        // toml_error already says "file: line L, column C: ".
        let full = toml_error(&file_name, &text, &e);
        let message = full
            .strip_prefix(&format!("{file_name}: "))
            .unwrap_or(&full)
            .to_string();
        vec![whole(message)]
    })?;
    let mut problems = Problems::new(file_name.clone(), &text);
    if !valid_name(&name) {
        problems.at(
            None,
            "",
            format!(
                "the folder name `{name}` is the target's name and may hold only letters, digits, `-`, `_` and `.`"
            ),
        );
    }
    if raw.collections.is_empty() {
        problems.at(
            None,
            "collections",
            "`collections` is empty: name at least one collection",
        );
    }

    // `kind` first; then the keys, against that kind's list.
    let format_kind = kind_of(
        &raw.format,
        "format",
        crate::translator::KINDS,
        &mut problems,
    );
    let format = format_kind
        .and_then(|kind| crate::translator::validate(kind, &text, folder, &mut problems));
    let transport_kind = kind_of(
        &raw.transport,
        "transport",
        crate::transport::KINDS,
        &mut problems,
    );
    // An XML template's change is one document: one a file.
    let one_change_per_file = format.as_ref().is_some_and(Format::one_change_per_file);
    let transport = transport_kind.and_then(|kind| {
        crate::transport::validate(kind, &text, base, one_change_per_file, &mut problems)
    });

    // A SOAP body is an XML element: a text template cannot be one.
    if let (Some(Format::Template(t)), Some(TransportSpec::Soap(_))) = (&format, &transport)
        && !t.is_xml()
    {
        problems.at(
            Some("format"),
            "template",
            format!(
                "[format] template `{}` writes text, but a SOAP body must be XML: name it NAME.xml.j2 (text templates are for file and serial connectors)",
                t.name
            ),
        );
    }

    let r = raw.retry.unwrap_or_default();
    let defaults = RetryPolicy::default();
    let mut duration = |key: &str, value: &Option<String>, default: Duration| match value
        .as_deref()
        .map(parse_duration)
    {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            problems.at(Some("retry"), key, format!("[retry] {key}: {e}"));
            default
        }
    };
    let retry = RetryPolicy {
        max_attempts: r.max_attempts.unwrap_or(defaults.max_attempts),
        backoff: duration("backoff", &r.backoff, defaults.backoff),
        max_backoff: duration("max_backoff", &r.max_backoff, defaults.max_backoff),
    };
    if retry.max_attempts == 0 {
        problems.at(
            Some("retry"),
            "max_attempts",
            "[retry] max_attempts must be at least 1",
        );
    }
    if retry.backoff < Duration::from_millis(10) {
        problems.at(
            Some("retry"),
            "backoff",
            "[retry] backoff must be at least \"10ms\" (a down target is probed that often at first)",
        );
    }
    if retry.max_backoff < retry.backoff {
        problems.at(
            Some("retry"),
            "max_backoff",
            "[retry] max_backoff is shorter than backoff",
        );
    }

    match (format, transport) {
        (Some(format), Some(transport)) if problems.is_empty() => Ok(Connector {
            name,
            folder: folder.to_path_buf(),
            collections: raw.collections,
            fields: raw.fields,
            format,
            transport,
            retry,
        }),
        _ => Err(problems.into_vec()),
    }
}

/// Reads `kind` of `[table]` and checks the table's other keys against that
/// kind's list: a key of another kind "does not apply", a key of no kind is
/// unknown (with the known keys). Returns the kind if it is a known one.
fn kind_of<'k>(
    section: &toml::Table,
    table: &str,
    kinds: &[(&'k str, &[&str])],
    problems: &mut Problems<'_>,
) -> Option<&'k str> {
    let names: Vec<&str> = kinds.iter().map(|(k, _)| *k).collect();
    let kind = match section.get("kind") {
        Some(toml::Value::String(kind)) => kind.as_str(),
        Some(_) => {
            problems.at(
                Some(table),
                "kind",
                format!(
                    "[{table}] kind must be a string, one of: {}",
                    names.join(", ")
                ),
            );
            return None;
        }
        None => {
            problems.at(
                Some(table),
                "",
                format!(
                    "[{table}] needs `kind = \"...\"`; known kinds: {}",
                    names.join(", ")
                ),
            );
            return None;
        }
    };
    let Some(&(kind, own)) = kinds.iter().find(|(k, _)| *k == kind) else {
        problems.at(
            Some(table),
            "kind",
            format!(
                "[{table}] kind `{kind}` is unknown; known kinds: {}",
                names.join(", ")
            ),
        );
        return None;
    };
    for key in section.keys().filter(|k| *k != "kind") {
        if own.contains(&key.as_str()) {
            continue;
        }
        match kinds.iter().find(|(_, keys)| keys.contains(&key.as_str())) {
            Some((other, _)) => problems.at(
                Some(table),
                key,
                format!(
                    "[{table}] `{key}` does not apply to {table} kind \"{kind}\" (it is a {other} key)"
                ),
            ),
            None => {
                let mut known = vec!["kind"];
                known.extend_from_slice(own);
                problems.at(
                    Some(table),
                    key,
                    format!(
                        "[{table}] unknown field `{key}`; the keys of {table} kind \"{kind}\" are: {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }
    Some(kind)
}

/// Two serial connectors on one port would lock each other out (a port opens
/// for one program at a time): one problem for each port used twice.
pub fn shared_ports(connectors: &[Connector]) -> Vec<String> {
    let mut by_port: std::collections::BTreeMap<PathBuf, Vec<&Connector>> = Default::default();
    for c in connectors {
        if let TransportSpec::Serial(s) = &c.transport {
            let port = std::fs::canonicalize(&s.port).unwrap_or_else(|_| s.port.clone());
            by_port.entry(port).or_default().push(c);
        }
    }
    by_port
        .into_iter()
        .filter(|(_, users)| users.len() > 1)
        .map(|(port, users)| {
            let files: Vec<String> = users
                .iter()
                .map(|c| c.folder.join("connector.toml").display().to_string())
                .collect();
            format!(
                "{}: [transport] port: these connectors all use serial port {}; a port opens for one connector at a time: give each its own port, or send both collections through one connector",
                files.join(", "),
                port.display()
            )
        })
        .collect()
}

impl Connector {
    pub fn receives(&self, collection: &str) -> bool {
        self.collections.iter().any(|c| c == collection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("connector.toml"), text).unwrap();
        folder
    }

    #[test]
    fn loads_a_file_connector() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = write(
            tmp.path(),
            "housing",
            "collections = [\"permits\"]\n[format]\nkind = \"csv\"\ncolumns = [\"permit_number\", \"status\"]\n[transport]\nkind = \"file\"\ndir = \"out\"\nbatch_window = \"200ms\"\n",
        );
        let c = load(&folder, tmp.path()).unwrap();
        assert_eq!(c.name, "housing");
        assert_eq!(
            c.transport,
            TransportSpec::File {
                dir: tmp.path().join("out"),
                batch_max: 1000,
                batch_window: Duration::from_millis(200),
                create_dir: false,
                pickup: crate::transport::pickup::Pickup::default(),
            }
        );
        assert_eq!(
            c.format,
            Format::Csv(crate::translator::csv::CsvFormat::new(
                vec!["permit_number".into(), "status".into()],
                "permit_number".into()
            ))
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_known_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = write(
            tmp.path(),
            "x",
            "collections = [\"p\"]\n[format]\nkind = \"json\"\n[transport]\nkind = \"file\"\ndri = \"out\"\n",
        );
        let err = load(&folder, tmp.path()).unwrap_err().join("\n");
        assert!(err.contains("connector.toml: line 6"), "{err}");
        assert!(err.contains("dri") && err.contains("batch_window"), "{err}");
    }

    #[test]
    fn problems_are_typed_with_file_line_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = write(
            tmp.path(),
            "x",
            "collections = [\"p\"]\n[format]\nkind = \"csv\"\ncolumns = [\"a\"]\nroot = \"R\"\n[transport]\nkind = \"file\"\ndir = \"o\"\nbatch_max = \"many\"\n",
        );
        let problems = check(&folder, tmp.path()).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert_eq!(problems[0].key, "root");
        assert_eq!(problems[0].line, Some(5));
        assert!(problems[0].file.ends_with("x/connector.toml"));
        assert!(
            problems[0]
                .message
                .contains("`root` does not apply to format kind \"csv\" (it is a xml key)"),
            "{problems:#?}"
        );
        // A wrong type in a kind's own struct keeps its line.
        assert_eq!(problems[1].line, Some(9), "{problems:#?}");
    }

    #[test]
    fn xml_element_names_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = write(
            tmp.path(),
            "x",
            "collections = [\"p\"]\n[format]\nkind = \"xml\"\nroot = \"Permit Update\"\n[transport]\nkind = \"file\"\ndir = \"o\"\n",
        );
        let err = load(&folder, tmp.path()).unwrap_err().join("\n");
        assert!(
            err.contains("line 4") && err.contains("`Permit Update` is not an XML element name"),
            "{err}"
        );
    }

    #[test]
    fn keys_of_another_kind_and_bad_values_are_all_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = write(
            tmp.path(),
            "x",
            "collections = []\n[format]\nkind = \"xml\"\ncolumns = [\"a\"]\n[transport]\nkind = \"file\"\n[retry]\nbackoff = \"soon\"\n",
        );
        let err = load(&folder, tmp.path()).unwrap_err();
        assert_eq!(err.len(), 4, "{err:#?}");
        assert!(
            err.iter()
                .any(|e| e.contains("line 4") && e.contains("`columns` does not apply"))
        );
        assert!(err.iter().any(|e| e.contains("needs `dir")));
        assert!(
            err.iter()
                .any(|e| e.contains("line 8") && e.contains("soon"))
        );
    }
}

#[cfg(test)]
mod soap_tests {
    use super::*;

    #[test]
    fn a_template_writes_one_change_per_file() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("x");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("t.xml.j2"), "<U>{{ key }}</U>").unwrap();
        let text = "collections = [\"p\"]\n[format]\nkind = \"template\"\ntemplate = \"t.xml.j2\"\n[transport]\nkind = \"file\"\ndir = \"o\"\n";
        std::fs::write(folder.join("connector.toml"), text).unwrap();
        let c = load(&folder, tmp.path()).unwrap();
        assert!(matches!(
            c.transport,
            TransportSpec::File { batch_max: 1, .. }
        ));
        std::fs::write(
            folder.join("connector.toml"),
            format!("{text}batch_max = 10\n"),
        )
        .unwrap();
        let err = load(&folder, tmp.path()).unwrap_err().join("\n");
        assert!(
            err.contains("line 8: [transport] batch_max = 10") && err.contains("batch_max = 1"),
            "{err}"
        );
    }

    #[test]
    fn a_text_template_cannot_be_a_soap_body() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("x");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("t.txt.j2"), "{{ key }}").unwrap();
        let text = "collections = [\"p\"]\n[format]\nkind = \"template\"\ntemplate = \"t.txt.j2\"\n[transport]\nkind = \"soap\"\nurl = \"http://x/\"\n";
        std::fs::write(folder.join("connector.toml"), text).unwrap();
        let err = load(&folder, tmp.path()).unwrap_err().join("\n");
        assert!(
            err.contains(
                "line 4: [format] template `t.txt.j2` writes text, but a SOAP body must be XML"
            ),
            "{err}"
        );
    }

    #[test]
    fn soap_keys_are_refused_for_a_file_connector_and_file_keys_for_soap() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("x");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("connector.toml"),
            "collections = [\"p\"]\n[format]\nkind = \"json\"\n[transport]\nkind = \"file\"\ndir = \"o\"\nurl = \"http://x\"\n",
        )
        .unwrap();
        let err = load(&folder, tmp.path()).unwrap_err().join("\n");
        assert!(
            err.contains("line 7: [transport] `url` does not apply"),
            "{err}"
        );
        std::fs::write(
            folder.join("connector.toml"),
            "collections = [\"p\"]\n[format]\nkind = \"xml\"\n[transport]\nkind = \"soap\"\nurl = \"http://u:pw@x/\"\ndir = \"o\"\nmax_in_flight = 0\n",
        )
        .unwrap();
        let err = load(&folder, tmp.path()).unwrap_err();
        assert_eq!(err.len(), 3, "{err:#?}");
        assert!(
            err.iter()
                .any(|e| e.contains("line 6") && e.contains("password_file"))
        );
        assert!(!err.iter().any(|e| e.contains("pw@")), "{err:#?}");
        assert!(
            err.iter()
                .any(|e| e.contains("line 7") && e.contains("`dir`")
                    || e.contains("line 7: [transport] dir"))
        );
        assert!(
            err.iter()
                .any(|e| e.contains("line 8") && e.contains("max_in_flight"))
        );
    }
}
