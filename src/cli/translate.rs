//! `hms-sync translate NAME CHANGE.json [--from OLD.json] [--full]`: what
//! connector NAME would send for a change, against the record's last known
//! state (or OLD.json); with `--full`, a create of the whole record and how it
//! would travel (the HTTP request's headers, or the outbox file's name).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use super::UsageError;
use crate::config::Config;
use crate::connector::TransportSpec;
use crate::control::Request;
use crate::record::{Change, Flat};
use crate::translator::{Item, Translator};
use crate::watcher::parse::{self, Shape};

#[derive(Args, Debug)]
pub struct TranslateArgs {
    /// The connector (folder name under connectors/).
    name: String,
    /// A change: an envelope, or a bare record of the connector's first collection.
    change: PathBuf,
    /// Compare with this earlier state instead of the record's last known state.
    #[arg(long, value_name = "OLD.json", conflicts_with = "full")]
    from: Option<PathBuf>,
    /// Preview a create of the whole record (every field, not only what
    /// changed) and show how it would travel: the HTTP method, URL and
    /// headers (SOAP), or the outbox file's name (file).
    #[arg(long)]
    full: bool,
}

fn read_change(cfg: &Config, collection: &str, path: &PathBuf) -> anyhow::Result<Change> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let is_envelope = serde_json::from_slice::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.as_object().map(|o| {
                o.contains_key("collection") && (o.contains_key("doc") || o.contains_key("deleted"))
            })
        })
        .unwrap_or(false);
    let key_field = cfg
        .watches
        .iter()
        .find(|w| w.collection == collection)
        .and_then(|w| w.key.clone());
    let shape = match (&key_field, is_envelope) {
        (_, true) => Shape::Envelope,
        (Some(k), false) => Shape::Bare { collection, key: k },
        (None, false) => {
            return Err(UsageError(format!(
                "{}: a bare record needs a [[watch]] for collection `{collection}` with `key` set; or write an envelope",
                path.display()
            ))
            .into());
        }
    };
    parse::parse_line(
        &text
            .iter()
            .map(|&b| if b == b'\n' { b' ' } else { b })
            .collect::<Vec<_>>(),
        &shape,
        &cfg.limits,
    )
    .map_err(|e| UsageError(format!("{}: {e}", path.display())).into())
}

pub fn run(cfg: &Config, args: TranslateArgs) -> anyhow::Result<ExitCode> {
    let Some(connector) = cfg.connector(&args.name) else {
        let known: Vec<&str> = cfg.connectors.iter().map(|c| c.name.as_str()).collect();
        return Err(UsageError(format!(
            "unknown connector `{}`; known: {}",
            args.name,
            known.join(", ")
        ))
        .into());
    };
    let collection = connector.collections[0].clone();
    let change = read_change(cfg, &collection, &args.change)?;
    if !connector.receives(&change.record.collection) {
        println!(
            "{} does not receive collection `{}`: nothing would be sent",
            connector.name, change.record.collection
        );
        return Ok(ExitCode::SUCCESS);
    }
    let old: Option<Flat> = match &args.from {
        _ if args.full => None,
        Some(p) => read_change(cfg, &collection, p)?.doc,
        None => {
            let req = Request::Snapshot {
                collection: change.record.collection.clone(),
                key: change.record.key.clone(),
            };
            match super::request(cfg, req) {
                Ok(Ok(Value::Object(map))) => Some(map.into_iter().collect()),
                _ => None,
            }
        }
    };
    if args.full && change.doc.is_none() {
        return Err(UsageError(format!(
            "{}: --full previews a create of the whole record, but this change is a delete",
            args.change.display()
        ))
        .into());
    }
    let Some(delta) = crate::diff::compute(old.as_ref(), change.doc.as_ref()) else {
        println!("no change against the record's last known state: nothing would be sent");
        return Ok(ExitCode::SUCCESS);
    };
    let Some(delta) = crate::diff::project(&delta, connector.fields.as_deref()) else {
        println!(
            "no field that {} receives changed: nothing would be sent",
            connector.name
        );
        return Ok(ExitCode::SUCCESS);
    };
    let translator = Translator::new(&connector.format);
    // A fixed record may carry the seq in a numeric item: 0 stands for "not queued".
    let id = match translator {
        Translator::Fixed(_) => format!("{}:0", connector.name),
        _ => format!("{}:preview", connector.name),
    };
    let bytes = payload(
        connector,
        &id,
        1,
        &change.record,
        &delta,
        change.doc.as_ref(),
    )?;
    // The file this batch would be: its number frames fixed records too.
    let next_file = match &connector.transport {
        TransportSpec::File { dir, .. } => Some((
            dir,
            crate::transport::file::next_file(dir, &connector.name, translator.file_extension()),
        )),
        _ => None,
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if args.full {
        match (&connector.transport, &next_file) {
            (TransportSpec::Soap(spec), _) => {
                write!(out, "{}", crate::transport::soap::request_preview(spec))?;
            }
            (TransportSpec::File { .. }, Some((dir, (_, name)))) => {
                writeln!(out, "file: {}", dir.join(name).display())?;
            }
            (TransportSpec::Serial(spec), _) => {
                writeln!(
                    out,
                    "serial: {}",
                    crate::transport::serial::describe(spec).0
                )?;
            }
            _ => {}
        }
        writeln!(out)?;
    } else if let TransportSpec::Soap(spec) = &connector.transport {
        // Not on stdout: that stays the exact envelope.
        eprintln!(
            "delivered when: {}",
            crate::transport::soap::answer::explain_success(
                spec.answer.as_ref(),
                spec.accept_empty_2xx
            )
        );
    }
    if let Translator::Fixed(spec) = &translator {
        // Fixed records are read by offset: show the ruler, not raw (maybe EBCDIC) bytes.
        let batch_seq = next_file.as_ref().map_or(1, |(_, (n, _))| *n);
        let (header, trailer) = spec
            .frame(&[&bytes], batch_seq)
            .map_err(|e| anyhow::anyhow!("{} cannot frame this record: {e}", connector.name))?;
        if let Some(control) = &spec.header {
            write!(out, "{}", spec.control_ruler("header", control, &header))?;
        }
        write!(out, "{}", spec.ruler(&bytes))?;
        if let Some(control) = &spec.trailer {
            write!(out, "{}", spec.control_ruler("trailer", control, &trailer))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    out.write_all(&bytes)?;
    Ok(ExitCode::SUCCESS)
}

/// What `connector` sends for `delta` as delivery `id`, attempt `attempt`: the
/// whole SOAP envelope, or a batch file holding just this delta.
pub fn payload(
    connector: &crate::connector::Connector,
    id: &str,
    attempt: u32,
    record_id: &crate::record::RecordId,
    delta: &crate::record::Delta,
    record: Option<&crate::record::Flat>,
) -> anyhow::Result<Vec<u8>> {
    let translator = Translator::new(&connector.format);
    let item = Item {
        id,
        attempt,
        record_id,
        delta,
        record,
    };
    let transport =
        crate::transport::Transport::new(&connector.name, &connector.transport, &translator);
    match transport.rendering() {
        // A SOAP connector shows the whole envelope that would be sent.
        crate::transport::Rendering::Standalone => translator.render(&item).and_then(|body| {
            transport
                .preview(id, attempt, body)
                .map_err(crate::translator::TranslateError::Other)
        }),
        crate::transport::Rendering::FileEntry => {
            translator.render_file_entry(&item).map(|entry| {
                let mut whole = translator.file_header();
                whole.extend(entry);
                whole.extend(translator.file_footer());
                whole
            })
        }
    }
    .map_err(|e| anyhow::anyhow!("{} cannot render this change: {e}", connector.name))
}
