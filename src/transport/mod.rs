//! Transports: rendered payloads in, an [`Outcome`] out. A transport *classifies*
//! what the legacy system did (delivered, down, rejected); what to do about it
//! is the Replay Worker's business.
//!
//! **Invariants:** transports never touch the queue; "no answer" (refused, reset,
//! timeout, missing folder, full disk) is `Down`, an answer that refuses is
//! `Rejected`.

pub mod file;
pub mod pickup;
#[cfg(test)]
pub mod scripted;
pub mod serial;
pub mod soap;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::problem::Problems;
use crate::translator::Translator;

/// A connector's `[transport]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportSpec {
    File {
        dir: PathBuf,
        batch_max: usize,
        batch_window: Duration,
        create_dir: bool,
        /// When a written file counts as delivered (`pickup`, SPEC §5 "File pickup").
        pickup: pickup::Pickup,
    },
    Serial(serial::SerialSpec),
    Soap(Box<soap::SoapSpec>),
}

/// The transport kinds and the `[transport]` keys each takes (besides `kind`).
pub const KINDS: &[(&str, &[&str])] = &[
    ("file", file::KEYS),
    ("soap", soap::KEYS),
    ("serial", serial::spec::KEYS),
];

/// Validates `[transport]` of kind `kind` (a known one), read from the
/// connector file `text`. `base` resolves relative paths (the config's
/// folder); `one_change_per_file` is true for a format that renders one
/// document per change (a template).
pub fn validate(
    kind: &str,
    text: &str,
    base: &Path,
    one_change_per_file: bool,
    problems: &mut Problems<'_>,
) -> Option<TransportSpec> {
    match kind {
        "file" => {
            let raw = crate::problem::section(text, "transport", problems)?;
            file::validate(&raw, base, one_change_per_file, problems)
        }
        "serial" => {
            let raw = crate::problem::section(text, "transport", problems)?;
            serial::spec::validate(&raw, base, &mut |key, message| {
                problems.at(Some("transport"), key, format!("[transport] {message}"))
            })
            .map(TransportSpec::Serial)
        }
        "soap" => {
            let raw = crate::problem::section(text, "transport", problems)?;
            soap::validate(&raw, base, problems)
        }
        _ => None,
    }
}

/// What the legacy system did with a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It said "got it".
    Delivered,
    /// It gave no answer: the target is down; nothing counts against the deltas.
    Down { reason: String },
    /// It answered and refused: each delta's attempts grow.
    Rejected { reason: String },
    /// It answered that the message itself is wrong (SOAP `Client`/`Sender`
    /// Fault): a rejection, which the connector may ask to dead-letter at once.
    ClientFault { reason: String },
}

/// One rendered delta.
#[derive(Clone, Debug)]
pub struct Payload {
    /// Delivery id, `<target>:<seq>`.
    pub id: String,
    pub attempt: u32,
    pub bytes: Vec<u8>,
}

/// Which rendering a transport wants from the translator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rendering {
    /// The payload alone (SOAP body, serial frame).
    Standalone,
    /// An entry of a batch file.
    FileEntry,
}

/// The closed set of transports.
pub enum Transport {
    File(file::FileTransport),
    Serial(serial::SerialTransport),
    Soap(soap::SoapTransport),
    /// The Replay Worker's tests: answers from a script.
    #[cfg(test)]
    Scripted(scripted::Scripted),
}

impl Transport {
    /// The transport of target `name`.
    pub fn new(name: &str, spec: &TransportSpec, translator: &Translator) -> Transport {
        match spec {
            TransportSpec::File {
                dir,
                batch_max,
                batch_window,
                pickup,
                ..
            } => Transport::File(file::FileTransport::new(
                name,
                dir.clone(),
                *batch_max,
                *batch_window,
                pickup.clone(),
                translator,
            )),
            TransportSpec::Serial(spec) => {
                Transport::Serial(serial::SerialTransport::new(name, spec.clone()))
            }
            TransportSpec::Soap(spec) => Transport::Soap(soap::SoapTransport::new(name, spec)),
        }
    }

    /// Requests sent at once now, for a transport that sends several (SOAP).
    pub fn concurrency(&self) -> Option<usize> {
        match self {
            Transport::Soap(t) => Some(t.max_in_flight()),
            _ => None,
        }
    }

    /// The daemon's stop signal, for a transport that may wait long for an
    /// answer (a file waiting for its importer).
    pub fn watch_shutdown(&mut self, shutdown: tokio::sync::watch::Receiver<bool>) {
        if let Transport::File(t) = self {
            t.watch_shutdown(shutdown);
        }
    }

    /// Most deltas per delivery, and how long to wait to gather them.
    pub fn batch_limits(&self) -> (usize, Duration) {
        match self {
            Transport::File(t) => (t.batch_max, t.batch_window),
            // A serial device takes one frame at a time: strict queue order.
            Transport::Serial(_) => (1, Duration::ZERO),
            // Each payload is its own request; a batch is what may be in flight at once.
            Transport::Soap(t) => (t.max_in_flight(), Duration::ZERO),
            #[cfg(test)]
            Transport::Scripted(t) => (t.batch_max, t.batch_window),
        }
    }

    pub fn rendering(&self) -> Rendering {
        match self {
            Transport::File(_) => Rendering::FileEntry,
            Transport::Serial(_) => Rendering::Standalone,
            Transport::Soap(_) => Rendering::Standalone,
            #[cfg(test)]
            Transport::Scripted(_) => Rendering::Standalone,
        }
    }

    /// Whether a `ClientFault` dead-letters at once (the connector's choice).
    pub fn dead_letter_on_client_fault(&self) -> bool {
        match self {
            Transport::File(_) | Transport::Serial(_) => false,
            Transport::Soap(t) => t.dead_letter_on_client_fault(),
            #[cfg(test)]
            Transport::Scripted(_) => false,
        }
    }

    /// What one standalone payload looks like on the wire (`hms-sync translate`).
    pub fn preview(&self, id: &str, attempt: u32, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        match self {
            Transport::Soap(t) => t.preview(id, attempt, &bytes),
            Transport::Serial(t) => t.preview(&bytes),
            Transport::File(_) => Ok(bytes),
            #[cfg(test)]
            Transport::Scripted(_) => Ok(bytes),
        }
    }

    /// Delivers a batch: one outcome per payload, in the batch's order. A file
    /// batch succeeds or fails whole unless the importer answers per record
    /// (`pickup`); SOAP sends each payload on its own.
    pub async fn deliver(&mut self, batch: &[Payload]) -> Vec<Outcome> {
        match self {
            Transport::File(t) => t.deliver(batch).await,
            Transport::Serial(t) => t.deliver_each(batch).await,
            Transport::Soap(t) => t.deliver(batch).await,
            #[cfg(test)]
            Transport::Scripted(t) => t.deliver(batch).await,
        }
    }
}
