//! Transports: rendered payloads in, an [`Outcome`] out. A transport *classifies*
//! what the legacy system did (delivered, down, rejected); what to do about it
//! is the Replay Worker's business.
//!
//! **Invariants:** transports never touch the queue; "no answer" (refused, reset,
//! timeout, missing folder, full disk) is `Down`, an answer that refuses is
//! `Rejected`.

pub mod file;
pub mod serial;

use std::time::Duration;

use crate::connector::{Connector, TransportSpec};
use crate::translator::Translator;

/// What the legacy system did with a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It said "got it".
    Delivered,
    /// It gave no answer: the target is down; nothing counts against the deltas.
    Down { reason: String },
    /// It answered and refused: each delta's attempts grow.
    Rejected { reason: String },
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
}

impl Transport {
    pub fn new(connector: &Connector, translator: &Translator) -> Transport {
        match &connector.transport {
            TransportSpec::File {
                dir,
                batch_max,
                batch_window,
                ..
            } => Transport::File(file::FileTransport::new(
                &connector.name,
                dir.clone(),
                *batch_max,
                *batch_window,
                translator,
            )),
            TransportSpec::Serial(spec) => {
                Transport::Serial(serial::SerialTransport::new(&connector.name, spec.clone()))
            }
        }
    }

    /// Most deltas per delivery, and how long to wait to gather them.
    pub fn batch_limits(&self) -> (usize, Duration) {
        match self {
            Transport::File(t) => (t.batch_max, t.batch_window),
            // A serial device takes one frame at a time: strict queue order.
            Transport::Serial(_) => (1, Duration::ZERO),
        }
    }

    pub fn rendering(&self) -> Rendering {
        match self {
            Transport::File(_) => Rendering::FileEntry,
            Transport::Serial(_) => Rendering::Standalone,
        }
    }

    pub async fn deliver(&mut self, batch: &[Payload]) -> Outcome {
        match self {
            Transport::File(t) => t.deliver(batch).await,
            Transport::Serial(t) => t.deliver(batch).await,
        }
    }
}
