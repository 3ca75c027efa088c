//! `connectors/<name>/connector.toml`: one legacy system = which collections it
//! receives, its translator (format), its transport and its retry policy.
//!
//! **Invariants:** the folder name is the target's name and is a safe file name;
//! a key that does not apply to the chosen `kind` is an error, never ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{line_of, parse_duration, toml_error};

/// `connector.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorFile {
    /// Collections this legacy system receives.
    pub collections: Vec<String>,
    /// Optional projection: only these paths (or subtrees) are sent.
    pub fields: Option<Vec<String>>,
    pub format: FormatFile,
    pub transport: TransportFile,
    pub retry: Option<RetryFile>,
}

/// `[format]`: every key of every kind; `validate` refuses keys of another kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatFile {
    /// xml | csv | json | template
    pub kind: String,
    /// xml: the element around each delta. Default "RecordUpdate".
    pub root: Option<String>,
    /// xml: the element holding the record key. Default "Key".
    pub key_element: Option<String>,
    /// csv: the record paths written as columns, in order.
    pub columns: Option<Vec<String>>,
    /// csv: the column that holds the record key. Default: the first column.
    pub key_column: Option<String>,
    /// template: a minijinja file in the connector's folder, named `*.xml.j2`.
    pub template: Option<PathBuf>,
}

/// `[transport]`: every key of every kind; `validate` refuses keys of another kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportFile {
    /// file | soap (serial comes with its own issue)
    pub kind: String,
    /// file: the outbox folder (relative paths resolve against the config file's folder).
    pub dir: Option<PathBuf>,
    /// file: most deltas written in one file. Default 1000.
    pub batch_max: Option<usize>,
    /// file: how long to gather deltas for one file. Default "0s".
    pub batch_window: Option<String>,
    /// file: create the outbox folder at start-up if it is missing. Default false:
    /// a missing folder (an unmounted share) is an outage, not a reason to write
    /// files onto the local disk.
    pub create_dir: Option<bool>,
    // --- kind = "serial" (checked in transport/serial/spec.rs) ---
    /// serial: the device, e.g. "/dev/ttyS0" or "/dev/serial/by-id/usb-...".
    pub port: Option<PathBuf>,
    /// serial: line speed. Default 9600.
    pub baud: Option<u32>,
    /// serial: 8 (default) or 7.
    pub data_bits: Option<u8>,
    /// serial: none (default) | odd | even.
    pub parity: Option<String>,
    /// serial: 1 (default) or 2.
    pub stop_bits: Option<u8>,
    /// serial: none (default) | software (XON/XOFF) | hardware (RTS/CTS).
    pub flow_control: Option<String>,
    /// serial: stx_etx_lrc (default) | line.
    pub framing: Option<String>,
    /// serial, framing "line": the device's "got it" line. Default "ACK".
    pub ack_line: Option<String>,
    /// serial, framing "line": the device's "refused" line. Default "NAK".
    pub nak_line: Option<String>,
    /// serial: how long to wait for ACK/NAK after a frame is on the wire. Default "2s".
    pub ack_timeout: Option<String>,
    /// serial: extra sends of a frame after NAK, noise or silence. Default 3.
    pub retransmits: Option<u32>,
    /// serial: quiet time before each frame, for slow devices. Default "0s".
    pub inter_frame_delay: Option<String>,
    /// serial: utf8 (default) | ascii | latin1: how payload text goes on the wire.
    pub encoding: Option<String>,
    /// soap: the service's address, `http://` or `https://`.
    pub url: Option<String>,
    /// soap: the SOAPAction (1.1) or `action` (1.2). Default: empty.
    pub soap_action: Option<String>,
    /// soap: "1.1" (default) or "1.2".
    pub soap_version: Option<String>,
    /// soap: longest wait for the whole answer. Default "30s".
    pub timeout: Option<String>,
    /// soap: longest wait to connect. Default "10s".
    pub connect_timeout: Option<String>,
    /// soap: user name for `auth`.
    pub username: Option<String>,
    /// soap: a file holding only the password (read at start-up, never shown).
    pub password_file: Option<PathBuf>,
    /// soap: "basic" (default with `username`), "ws-security-text", "ws-security-digest".
    pub auth: Option<String>,
    /// soap: PEM file of the CA to trust for https (instead of the system's).
    pub ca_file: Option<PathBuf>,
    /// soap: `xmlns` for the body's root element.
    pub namespace: Option<String>,
    /// soap: deliveries at once (each of a different record). Default 1.
    pub max_in_flight: Option<usize>,
    /// soap: dead-letter at once on a Client/Sender Fault. Default false.
    pub dead_letter_on_client_fault: Option<bool>,
    /// soap: a 2xx with an empty body counts as delivered (for a service known
    /// to answer so). Default false: it is an outage, like any 2xx that is not a
    /// SOAP envelope.
    pub accept_empty_2xx: Option<bool>,
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
}

#[derive(Debug, Clone, PartialEq)]
pub enum TransportSpec {
    File {
        dir: PathBuf,
        batch_max: usize,
        batch_window: Duration,
        create_dir: bool,
    },
    Serial(crate::transport::serial::SerialSpec),
    Soap(Box<crate::transport::soap::SoapSpec>),
}

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
    problems.extend(crate::transport::serial::spec::shared_ports(&connectors));
    if problems.is_empty() {
        Ok(connectors)
    } else {
        Err(problems)
    }
}

/// Loads one connector folder. `base` resolves relative paths (the config's folder).
pub fn load(folder: &Path, base: &Path) -> Result<Connector, Vec<String>> {
    let path = folder.join("connector.toml");
    let file_name = path.display().to_string();
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| vec![format!("{file_name}: cannot read: {e}")])?;
    let raw: ConnectorFile =
        toml::from_str(&text).map_err(|e| vec![toml_error(&file_name, &text, &e)])?;
    let mut problems = Vec::new();
    let at = |table: Option<&str>, key: &str| match line_of(&text, table, key) {
        Some(l) => format!("{file_name}: line {l}: "),
        None => format!("{file_name}: "),
    };
    if !valid_name(&name) {
        problems.push(format!(
            "{file_name}: the folder name `{name}` is the target's name and may hold only letters, digits, `-`, `_` and `.`"
        ));
    }
    if raw.collections.is_empty() {
        problems.push(format!(
            "{}`collections` is empty: name at least one collection",
            at(None, "collections")
        ));
    }
    let mut not_for = |table: &str, key: &str, kind: &str, present: bool| {
        if present {
            problems.push(format!(
                "{}[{table}] `{key}` does not apply to {table} kind \"{kind}\"",
                at(Some(table), key)
            ));
        }
    };

    let f = &raw.format;
    let format = match f.kind.as_str() {
        "xml" => {
            not_for("format", "columns", "xml", f.columns.is_some());
            not_for("format", "key_column", "xml", f.key_column.is_some());
            not_for("format", "template", "xml", f.template.is_some());
            let root = f.root.clone().unwrap_or_else(|| "RecordUpdate".into());
            let key_element = f.key_element.clone().unwrap_or_else(|| "Key".into());
            for (key, name) in [("root", &root), ("key_element", &key_element)] {
                if !crate::translator::xml::valid_element_name(name) {
                    problems.push(format!(
                        "{}[format] {key} `{name}` is not an XML element name (letters, digits, `_`, `-`, `.`; starting with a letter or `_`)",
                        at(Some("format"), key)
                    ));
                }
            }
            Some(Format::Xml { root, key_element })
        }
        "csv" => {
            not_for("format", "root", "csv", f.root.is_some());
            not_for("format", "key_element", "csv", f.key_element.is_some());
            not_for("format", "template", "csv", f.template.is_some());
            let columns = f.columns.clone().unwrap_or_default();
            if columns.is_empty() {
                problems.push(format!(
                    "{}[format] kind \"csv\" needs `columns = [...]`",
                    at(Some("format"), "kind")
                ));
                None
            } else {
                let key_column = f.key_column.clone().unwrap_or_else(|| columns[0].clone());
                if !columns.contains(&key_column) {
                    problems.push(format!(
                        "{}[format] key_column `{key_column}` is not one of `columns`",
                        at(Some("format"), "key_column")
                    ));
                }
                Some(Format::Csv {
                    columns,
                    key_column,
                })
            }
        }
        "json" => {
            for (key, present) in [
                ("root", f.root.is_some()),
                ("key_element", f.key_element.is_some()),
                ("columns", f.columns.is_some()),
                ("key_column", f.key_column.is_some()),
                ("template", f.template.is_some()),
            ] {
                not_for("format", key, "json", present);
            }
            Some(Format::Json)
        }
        "template" => crate::translator::template::spec(f, &at, folder, &mut problems),
        other => {
            problems.push(format!(
                "{}[format] kind `{other}` is unknown; known kinds: xml, csv, json, template",
                at(Some("format"), "kind")
            ));
            None
        }
    };

    let t = &raw.transport;
    // A key of another known kind is an error, never ignored.
    if ["file", "soap", "serial"].contains(&t.kind.as_str()) {
        for (key, kind) in transport_keys(t) {
            if kind != t.kind {
                problems.push(format!(
                    "{}[transport] `{key}` does not apply to transport kind \"{}\" (it is a {kind} key)",
                    at(Some("transport"), key),
                    t.kind
                ));
            }
        }
    }
    let transport = match t.kind.as_str() {
        "file" => {
            let window = match t.batch_window.as_deref().map(parse_duration).transpose() {
                Ok(w) => w.unwrap_or(Duration::ZERO),
                Err(e) => {
                    problems.push(format!(
                        "{}[transport] batch_window: {e}",
                        at(Some("transport"), "batch_window")
                    ));
                    Duration::ZERO
                }
            };
            // A template renders one XML document: one change per file, or the
            // file would hold several roots (not XML).
            let template = matches!(format, Some(Format::Template { .. }));
            let batch_max = t.batch_max.unwrap_or(if template { 1 } else { 1000 });
            if batch_max == 0 {
                problems.push(format!(
                    "{}[transport] batch_max must be at least 1",
                    at(Some("transport"), "batch_max")
                ));
            } else if template && batch_max > 1 {
                problems.push(format!(
                    "{}[transport] batch_max = {batch_max} with [format] kind \"template\": a template renders one XML document, so each file can hold only one change; set `batch_max = 1` (the default for templates)",
                    at(Some("transport"), "batch_max")
                ));
            }
            match &t.dir {
                Some(dir) => Some(TransportSpec::File {
                    dir: if dir.is_absolute() {
                        dir.clone()
                    } else {
                        base.join(dir)
                    },
                    batch_max,
                    batch_window: window,
                    create_dir: t.create_dir.unwrap_or(false),
                }),
                None => {
                    problems.push(format!(
                        "{}[transport] kind \"file\" needs `dir = \"...\"` (the outbox folder)",
                        at(Some("transport"), "kind")
                    ));
                    None
                }
            }
        }
        "serial" => crate::transport::serial::spec::validate(t, base, &mut |key, message| {
            problems.push(format!(
                "{}[transport] {message}",
                at(Some("transport"), key)
            ))
        })
        .map(TransportSpec::Serial),
        "soap" => crate::transport::soap::spec(t, &at, base, &mut problems),
        other => {
            problems.push(format!(
                "{}[transport] kind `{other}` is unknown; known kinds: file, soap, serial",
                at(Some("transport"), "kind")
            ));
            None
        }
    };

    let r = raw.retry.unwrap_or_default();
    let defaults = RetryPolicy::default();
    let mut duration = |key: &str, value: &Option<String>, default: Duration| match value
        .as_deref()
        .map(parse_duration)
    {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            problems.push(format!("{}[retry] {key}: {e}", at(Some("retry"), key)));
            default
        }
    };
    let retry = RetryPolicy {
        max_attempts: r.max_attempts.unwrap_or(defaults.max_attempts),
        backoff: duration("backoff", &r.backoff, defaults.backoff),
        max_backoff: duration("max_backoff", &r.max_backoff, defaults.max_backoff),
    };
    if retry.max_attempts == 0 {
        problems.push(format!(
            "{}[retry] max_attempts must be at least 1",
            at(Some("retry"), "max_attempts")
        ));
    }
    if retry.backoff < Duration::from_millis(10) {
        problems.push(format!(
            "{}[retry] backoff must be at least \"10ms\" (a down target is probed that often at first)",
            at(Some("retry"), "backoff")
        ));
    }
    if retry.max_backoff < retry.backoff {
        problems.push(format!(
            "{}[retry] max_backoff is shorter than backoff",
            at(Some("retry"), "max_backoff")
        ));
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
        _ => Err(problems),
    }
}

/// Every kind-specific `[transport]` key the file sets, with the kind it belongs to.
fn transport_keys(t: &TransportFile) -> Vec<(&'static str, &'static str)> {
    let file = [
        ("dir", t.dir.is_some()),
        ("batch_max", t.batch_max.is_some()),
        ("batch_window", t.batch_window.is_some()),
        ("create_dir", t.create_dir.is_some()),
    ];
    let file = file.into_iter().map(|(k, p)| (k, p, "file"));
    let soap = crate::transport::soap::KEYS
        .iter()
        .map(|&k| (k, crate::transport::soap::key_present(t, k), "soap"));
    let serial = crate::transport::serial::spec::keys_present(t)
        .into_iter()
        .map(|(k, p)| (k, p, "serial"));
    file.chain(soap)
        .chain(serial)
        .filter(|&(_, present, _)| present)
        .map(|(key, _, kind)| (key, kind))
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
                create_dir: false
            }
        );
        assert_eq!(
            c.format,
            Format::Csv {
                columns: vec!["permit_number".into(), "status".into()],
                key_column: "permit_number".into()
            }
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
