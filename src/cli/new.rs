//! `hms-sync new NAME --transport file|soap|serial`: scaffolds `connectors/NAME/connector.toml`
//! with every key commented, ready to edit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::UsageError;
use crate::connector::valid_name;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TransportKind {
    Soap,
    File,
    Serial,
}

/// `--format`: a format that needs more than the scaffold's default.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatKind {
    // No doc comment here: clap would switch every option's help to the long
    // layout; `--format`'s own help says what `fixed` is.
    Fixed,
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// The target's name (letters, digits, `-`, `_`, `.`).
    name: String,
    /// How it delivers: batch files into a folder (default), a SOAP web
    /// service, or a serial line.
    #[arg(long, value_enum)]
    transport: Option<TransportKind>,
    /// `fixed`: fixed-width records laid out by the COBOL copybook given with `--copybook`.
    #[arg(long, value_enum, requires = "copybook")]
    format: Option<FormatKind>,
    /// The importer's copybook: copied into the connector's folder, and every
    /// elementary item listed in `[format.map]` with its PIC and offset.
    #[arg(long, value_name = "FILE.cpy", requires = "format")]
    copybook: Option<PathBuf>,
    /// The collection it receives.
    #[arg(long, default_value = "permits")]
    collection: String,
    /// A sample record (a JSON object, as a producer sends it): its fields become
    /// the columns / fields of the scaffold (nested objects as dotted paths,
    /// e.g. "address.city") instead of the permit example.
    #[arg(long, value_name = "RECORD.json", conflicts_with = "format")]
    sample: Option<PathBuf>,
    /// With --sample: the field that holds the record's key (default: `id`, or
    /// the first field named like `*_id`, `*_number`, `*_no` or `key`, else the
    /// first field).
    #[arg(long, value_name = "FIELD", requires = "sample")]
    key: Option<String>,
}

/// The dotted paths of a sample record and the one holding its key.
fn sample_fields(path: &Path, key: Option<&str>) -> anyhow::Result<(Vec<String>, String)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("--sample {}: cannot read it: {e}", path.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        UsageError(format!(
            "--sample {}: line {}, column {}: not JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        ))
    })?;
    let serde_json::Value::Object(doc) = value else {
        return Err(UsageError(format!(
            "--sample {}: give one record, a JSON object like {{\"id\": \"1\", \"status\": \"open\"}}",
            path.display()
        ))
        .into());
    };
    let flat = crate::diff::flatten(&doc, 32)
        .map_err(|e| UsageError(format!("--sample {}: {e}", path.display())))?;
    let mut paths: Vec<String> = flat.into_keys().collect();
    if paths.is_empty() {
        return Err(UsageError(format!(
            "--sample {}: the record has no fields",
            path.display()
        ))
        .into());
    }
    let key = match key {
        Some(k) if paths.iter().any(|p| p == k) => k.to_string(),
        Some(k) => {
            return Err(UsageError(format!(
                "--key {k}: the sample has no such field; its fields: {}",
                paths.join(", ")
            ))
            .into());
        }
        None => paths
            .iter()
            .find(|p| *p == "id")
            .or_else(|| {
                paths.iter().find(|p| {
                    ["_id", "_number", "_no", "key"]
                        .iter()
                        .any(|end| p.to_ascii_lowercase().ends_with(end))
                })
            })
            .unwrap_or(&paths[0])
            .clone(),
    };
    paths.retain(|p| *p != key);
    paths.insert(0, key.clone());
    Ok((paths, key))
}

/// `snake_case.path` -> `SnakeCasePath` (an XML element name).
fn camel(path: &str) -> String {
    path.split(['_', '.', '-', ' '])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// The scaffold with the sample's fields in place of the permit example.
fn with_sample(text: &str, collection: &str, paths: &[String], key: &str) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let singular = collection.strip_suffix('s').unwrap_or(collection);
    text.replace(
        "columns = [\"permit_number\", \"status\"]",
        &format!("columns = [{}]", list(paths)),
    )
    .replace(
        "# key_column = \"permit_number\"",
        &format!("key_column = \"{key}\""),
    )
    .replace(
        "# fields = [\"status\", \"inspector.name\"]",
        &format!("# fields = [{}]", list(&paths[1..])),
    )
    .replace(
        "root = \"PermitUpdate\"",
        &format!("root = \"{}Update\"", camel(singular)),
    )
    .replace(
        "key_element = \"PermitNumber\"",
        &format!("key_element = \"{}\"", camel(key)),
    )
}

fn connectors_dir(config: Option<&Path>) -> PathBuf {
    // Read only `connectors_dir`, so that `new` works even while another
    // connector is broken.
    let (text, base) = match config {
        Some(p) => (
            std::fs::read_to_string(p).unwrap_or_default(),
            p.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        None => (
            crate::config::DEFAULT_CONFIG.to_string(),
            PathBuf::from("."),
        ),
    };
    let dir = toml::from_str::<toml::Table>(&text)
        .ok()
        .and_then(|t| {
            t.get("connectors_dir")
                .and_then(|v| v.as_str())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("connectors"));
    if dir.is_absolute() {
        dir
    } else {
        base.join(dir)
    }
}

pub fn run(config: Option<&Path>, args: NewArgs) -> anyhow::Result<ExitCode> {
    if !valid_name(&args.name) {
        return Err(UsageError(format!(
            "`{}` cannot be a target name: use letters, digits, `-`, `_` and `.` (not first)",
            args.name
        ))
        .into());
    }
    let transport = args.transport.unwrap_or(TransportKind::File);
    let mut text = scaffold(transport, &args.name, &args.collection);
    if let Some(sample) = &args.sample {
        let (paths, key) = sample_fields(sample, args.key.as_deref())?;
        text = with_sample(&text, &args.collection, &paths, &key);
        println!(
            "from {}: key `{key}`{}, {} field(s): {}",
            sample.display(),
            if args.key.is_some() {
                ""
            } else {
                " (guessed; --key FIELD to choose)"
            },
            paths.len(),
            paths.join(", ")
        );
    }
    let folder = connectors_dir(config).join(&args.name);
    let mut copy = None;
    if let (Some(FormatKind::Fixed), Some(copybook)) = (args.format, &args.copybook) {
        let source = std::fs::read(copybook)
            .map_err(|e| UsageError(format!("cannot read {}: {e}", copybook.display())))?;
        let layouts = crate::translator::copybook::parse(&source)
            .map_err(|e| UsageError(format!("{}: {e}", copybook.display())))?;
        let file_name = copybook
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "record.cpy".into());
        text = with_fixed_format(&text, &file_name, &layouts);
        copy = Some((file_name, source));
    }
    if folder.join("connector.toml").exists() {
        return Err(UsageError(format!(
            "{} already exists; not overwriting it",
            folder.join("connector.toml").display()
        ))
        .into());
    }
    std::fs::create_dir_all(&folder)?;
    if let Some((file_name, source)) = copy {
        std::fs::write(folder.join(&file_name), source)?;
        println!(
            "copied the copybook to {}",
            folder.join(&file_name).display()
        );
    }
    std::fs::write(folder.join("connector.toml"), text)?;
    println!("created {}", folder.join("connector.toml").display());
    println!(
        "edit it, then run `hms-sync check` and `hms-sync reload` (or `systemctl reload hms-sync`)"
    );
    Ok(ExitCode::SUCCESS)
}

/// `connector.toml` for `kind`: the transport's own intro and sections between the
/// parts every connector has (collections, fields, retry).
fn scaffold(kind: TransportKind, name: &str, collection: &str) -> String {
    let (intro, sections) = match kind {
        TransportKind::File => file_template(name),
        TransportKind::Serial => serial_template(name),
        TransportKind::Soap => soap_template(name),
    };
    format!(
        r#"{intro}

# Collections this system receives.
collections = ["{collection}"]

# Optional: only these fields (a name also selects its sub-fields: "address"
# selects "address.street"). Leave it out to send every field.
# fields = ["status", "inspector.name"]

{sections}
[retry]
# After this many refusals a change becomes a dead letter (see `hms-sync dead list`).
max_attempts = 20
# First wait after a failure, doubled each time up to max_backoff.
backoff = "1s"
max_backoff = "5m"
"#
    )
}

fn file_template(name: &str) -> (String, String) {
    (
        format!(
            r#"# Connector "{name}": delivers changes as batch files into a folder the legacy
# system reads. The folder name ({name}) is the target's name in status and logs."#
        ),
        format!(
            r#"[format]
# csv: one row a change, with the record's latest values.
kind = "csv"
# The columns, in order. Nested fields use dots: "address.street".
columns = ["permit_number", "status"]
# The column that holds the record key (default: the first column).
# key_column = "permit_number"

[transport]
kind = "file"
# The outbox folder. Relative paths start at the folder of hms-sync.toml.
dir = "var/outbox/{name}"
# Create the folder at start-up if it is missing. Leave false for a network
# share: an unmounted share is then an outage, not files on the local disk.
create_dir = false
# At most this many changes in one file.
batch_max = 500
# Wait this long to gather changes into one file ("0s": write at once).
batch_window = "200ms"
# When a file counts as delivered: "none" once it is in the folder (default),
# "consumed" once the importer has moved or deleted it, "ack_file" once the
# importer writes <file>.ack (or <file>.err: a refusal, see the README).
# pickup = "ack_file"
# No answer within this long makes the target "down" (never a dead letter).
# pickup_timeout = "10m"

"#
        ),
    )
}

fn serial_template(name: &str) -> (String, String) {
    (
        format!(
            r#"# Connector "{name}": delivers changes one framed record at a time over a
# serial line (RS-232) to a terminal controller or mainframe front end that
# answers ACK or NAK. The folder name ({name}) is the target's name in status
# and logs. The service needs access to the port: see systemd/serial.conf."#
        ),
        r#"[format]
# csv: one line a change: delivery_id,op,<columns...>. The delivery id lets the
# device drop a repeat (after a lost ACK the same frame may come twice).
kind = "csv"
columns = ["permit_number", "status"]
# key_column = "permit_number"

[transport]
kind = "serial"
# The device. A USB adapter: a stable name from `ls -l /dev/serial/by-id/`.
port = "/dev/ttyS0"
# Line settings: ask the legacy system's manual. 9600 8N1 is the usual default.
baud = 9600
data_bits = 8          # 8 or 7
parity = "none"        # none, odd, even
stop_bits = 1          # 1 or 2
flow_control = "none"  # none, software (XON/XOFF), hardware (RTS/CTS)
# stx_etx_lrc: STX, the record, ETX, LRC check byte; answered by ACK or NAK bytes.
# line: the record then CR LF; answered by the lines ack_line / nak_line.
framing = "stx_etx_lrc"
# ack_line = "ACK"     # framing = "line" only
# nak_line = "NAK"     # framing = "line" only
# How long to wait for the answer once the frame is sent.
ack_timeout = "2s"
# Sends of the same frame again after NAK, noise or silence. A NAK to the last
# one counts as a refusal (see [retry]); silence to the last one means the
# device is down (nothing is counted, hms-sync waits and tries again, forever).
retransmits = 3
# Quiet time before each frame, for slow devices.
inter_frame_delay = "0s"
# Text on the wire: utf8, ascii (anything else is refused), latin1.
encoding = "ascii"

"#
        .to_string(),
    )
}

/// Replaces the scaffold's `[format]` with kind "fixed" for the copybook's first
/// record: every elementary item listed in `[format.map]`, commented, with its
/// PIC and offset, ready to fill in.
fn with_fixed_format(
    text: &str,
    copybook: &str,
    layouts: &[crate::translator::copybook::Layout],
) -> String {
    use std::fmt::Write;
    let layout = &layouts[0];
    let others: Vec<&str> = layouts.iter().map(|l| l.name.as_str()).collect();
    let mut format = format!(
        r#"[format]
# fixed: one fixed-width record a change, laid out by the COBOL copybook.
kind = "fixed"
copybook = "{copybook}"
# The 01-level to write ({copybook} has: {}). {} bytes.
record = "{}"
# ascii, latin1, or EBCDIC: cp037, cp1047, cp1140.
encoding = "ascii"
# none (RECFM=F, the usual for EBCDIC), lf, crlf.
record_end = "lf"
# The item that holds the record key (default: an item mapped to "@key", else
# the first item mapped to a record path).
# key_item = "..."

[format.op_codes]
# What an item mapped to "@op" holds for each kind of change.
create = "A"
update = "C"
delete = "D"

[format.map]
# copybook item = record path ("status", "address.city"), or "@op", "@key",
# "@delivery_id", "@attempt". Uncomment and fill in; an unmapped item holds
# its VALUE, else spaces (text) or zero (numbers). A value that does not fit
# its PIC is a rejection of that change, never truncated or rounded.
"#,
        others.join(", "),
        layout.length,
        layout.name
    );
    let width = layout
        .fields
        .iter()
        .map(|f| toml_key(&f.name).len())
        .max()
        .unwrap_or(0);
    for field in &layout.fields {
        let key = toml_key(&field.name);
        let what = match &field.fill {
            Some(_) => "  (FILLER with a VALUE: written as it is)".to_string(),
            None if field.is_filler() => "  (FILLER: spaces or zero)".to_string(),
            None => String::new(),
        };
        let _ = writeln!(
            format,
            "# {key:width$} = \"\"   # {}, offset {}, {} byte{}{what}",
            field.describe(),
            field.offset,
            field.length,
            if field.length == 1 { "" } else { "s" }
        );
    }
    if layouts.len() > 1 {
        format.push_str(
            "\n# Optional batch control records: another 01-level of the copybook first\n\
             # ([format.header]) or last ([format.trailer]) in each file. Map items to\n\
             # \"@record_count\", \"@batch_seq\", \"@run_date\" (see date_format) or \"@sum:<path>\".\n",
        );
        for (table, other) in ["header", "trailer"].iter().zip(layouts.iter().skip(1)) {
            let _ = writeln!(
                format,
                "# [format.{table}]\n# record = \"{}\"\n# [format.{table}.map]",
                other.name
            );
            for field in other.fields.iter().filter(|f| !f.is_filler()) {
                let _ = writeln!(
                    format,
                    "# {} = \"\"   # {}, offset {}{}",
                    toml_key(&field.name),
                    field.describe(),
                    field.offset,
                    if field.fill.is_some() {
                        " (has a VALUE)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    format.push('\n');
    match (text.find("[format]"), text.find("[transport]")) {
        (Some(a), Some(b)) => format!("{}{format}{}", &text[..a], &text[b..]),
        _ => text.to_string(),
    }
}

/// A copybook name as a TOML key: quoted if it holds `(` or `,` (OCCURS items).
fn toml_key(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_string()
    } else {
        format!("\"{name}\"")
    }
}

/// Like `connectors/county-cobol/connector.toml.example`, with every key commented.
fn soap_template(name: &str) -> (String, String) {
    (
        format!(
            r#"# Connector "{name}": delivers each change as a SOAP request to a legacy
# system's web service, retrying until it answers "got it" (a 2xx without a
# SOAP Fault). The folder name ({name}) is the target's name in status and logs."#
        ),
        format!(
            r#"[format]
# xml: <PermitUpdate op="update"><PermitNumber>123</PermitNumber><Field name="status">APPROVED</Field></PermitUpdate>
kind = "xml"
root = "PermitUpdate"
key_element = "PermitNumber"
# Or a template file in this folder, named *.xml.j2 so values are escaped:
# kind = "template"
# template = "update.xml.j2"

[transport]
kind = "soap"
# The service's address (http:// or https://).
url = "http://127.0.0.1:8080/PermitService"
# SOAPAction (1.1) or action (1.2).
soap_action = "urn:UpdatePermit"
# "1.1" or "1.2".
soap_version = "1.1"
# Longest wait for a whole answer, and to connect. Past them the system is
# "down": hms-sync waits and tries again; nothing is lost or counted.
timeout = "10s"
connect_timeout = "5s"
# Optional xmlns for the body's root element.
# namespace = "urn:county:permits"
# Optional login. The password file holds only the password; it is read at
# start-up and never shown. auth: "basic", "ws-security-text", "ws-security-digest".
# username = "hmssync"
# password_file = "/etc/hms-sync/secrets/{name}.pw"
# auth = "basic"
# Optional: the county's own CA (PEM) for https. Certificate checks cannot be
# switched off; TLS 1.2 or 1.3 only.
# ca_file = "/etc/hms-sync/county-ca.pem"
# Deliveries on the wire at once (different records; one record stays in order).
max_in_flight = 1
# true: a Client/Sender Fault dead-letters at once instead of after max_attempts.
dead_letter_on_client_fault = false
# Success is a 2xx carrying a SOAP envelope without a Fault. true: a 2xx with an
# empty body counts too (only for a service known to answer so; behind a proxy
# an empty 200 may mean the request never arrived).
accept_empty_2xx = false

"#
        ),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fixed_scaffold_lists_every_item_and_loads_once_filled_in() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("assessor");
        std::fs::create_dir_all(&folder).unwrap();
        let cpy = "       01  PERMIT-UPD.\n           05  PU-ACTION PIC X.\n           05  PU-NO PIC 9(8).\n           05  PU-AMT PIC S9(5)V99 COMP-3 OCCURS 2.\n           05  FILLER PIC X(3) VALUE SPACES.\n";
        std::fs::write(folder.join("P.cpy"), cpy).unwrap();
        let layouts = crate::translator::copybook::parse(cpy.as_bytes()).unwrap();
        let text = super::with_fixed_format(
            &super::scaffold(super::TransportKind::File, "assessor", "permits"),
            "P.cpy",
            &layouts,
        );
        for line in [
            "# PU-ACTION   = \"\"   # PIC X, offset 0, 1 byte",
            "# PU-NO       = \"\"   # PIC 9(8), offset 1, 8 bytes",
            "# \"PU-AMT(2)\" = \"\"   # PIC S9(5)V99 COMP-3, offset 13, 4 bytes",
            "# FILLER      = \"\"   # PIC X(3), offset 17, 3 bytes  (FILLER with a VALUE",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        assert!(!text.contains("kind = \"csv\""), "{text}");
        let filled = text
            .replace("# PU-ACTION   = \"\"", "PU-ACTION = \"@op\"")
            .replace("# PU-NO       = \"\"", "PU-NO = \"permit_number\"");
        std::fs::write(folder.join("connector.toml"), filled).unwrap();
        let c = crate::connector::load(&folder, tmp.path()).unwrap();
        assert!(matches!(c.format, crate::connector::Format::Fixed(_)));
    }

    #[test]
    fn a_sample_record_becomes_the_columns_with_its_key_first_and_the_connector_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let sample = tmp.path().join("parcel.json");
        std::fs::write(
            &sample,
            r#"{"owner": "Ann", "parcel_no": "0042", "address": {"city": "Ely", "zip": "89301"}}"#,
        )
        .unwrap();
        let (paths, key) = super::sample_fields(&sample, None).unwrap();
        assert_eq!(key, "parcel_no");
        assert_eq!(paths, ["parcel_no", "address.city", "address.zip", "owner"]);
        use super::TransportKind::*;
        for kind in [File, Serial, Soap] {
            let folder = tmp.path().join(format!("{kind:?}"));
            std::fs::create_dir_all(&folder).unwrap();
            let text = super::with_sample(
                &super::scaffold(kind, "x", "parcels"),
                "parcels",
                &paths,
                &key,
            );
            assert!(!text.contains("permit_number"), "{text}");
            match kind {
                Soap => {
                    assert!(text.contains("root = \"ParcelUpdate\""), "{text}");
                    assert!(text.contains("key_element = \"ParcelNo\""), "{text}");
                }
                _ => assert!(
                    text.contains(
                        "columns = [\"parcel_no\", \"address.city\", \"address.zip\", \"owner\"]"
                    ) && text.contains("key_column = \"parcel_no\""),
                    "{text}"
                ),
            }
            std::fs::write(folder.join("connector.toml"), &text).unwrap();
            crate::connector::load(&folder, tmp.path())
                .unwrap_or_else(|e| panic!("{kind:?}: {e:?}\n{text}"));
        }
        let err = super::sample_fields(&sample, Some("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no such field; its fields: address.city"),
            "{err}"
        );
        std::fs::write(&sample, "[1, 2]").unwrap();
        let err = super::sample_fields(&sample, None).unwrap_err().to_string();
        assert!(err.contains("give one record, a JSON object"), "{err}");
    }

    #[test]
    fn the_template_is_a_valid_connector() {
        use super::TransportKind::*;
        for kind in [File, Serial, Soap] {
            let text = super::scaffold(kind, "x", "permits");
            assert!(
                !text.contains("{name}") && !text.contains("{collection}"),
                "{text}"
            );
            assert!(text.contains("collections = [\"permits\"]") && text.contains("[retry]"));
        }
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("x");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("connector.toml"),
            super::scaffold(super::TransportKind::File, "x", "permits"),
        )
        .unwrap();
        crate::connector::load(&folder, tmp.path()).unwrap();
        std::fs::write(
            folder.join("connector.toml"),
            super::scaffold(super::TransportKind::Serial, "x", "permits"),
        )
        .unwrap();
        let c = crate::connector::load(&folder, tmp.path()).unwrap();
        assert!(matches!(
            c.transport,
            crate::connector::TransportSpec::Serial(_)
        ));
        std::fs::write(
            folder.join("connector.toml"),
            super::scaffold(super::TransportKind::Soap, "x", "permits"),
        )
        .unwrap();
        let c = crate::connector::load(&folder, tmp.path()).unwrap();
        assert!(matches!(
            c.transport,
            crate::connector::TransportSpec::Soap(_)
        ));
    }
}
