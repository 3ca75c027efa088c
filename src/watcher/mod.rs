//! Change Watcher: the sources of changes — drop directories ([`dropdir`]) and
//! the ingest Unix socket ([`socket`]) — turned into change sets by [`parse`] and
//! handed to the queue. A watcher never waits on delivery, only on the commit.

pub mod dropdir;
pub mod parse;
mod parts;
pub mod socket;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Ingest counters for `/metrics`.
#[derive(Default, Debug)]
pub struct IngestStats {
    pub files_accepted: AtomicU64,
    pub files_rejected: AtomicU64,
    pub lines_accepted: AtomicU64,
    pub lines_refused: AtomicU64,
    pub changes: AtomicU64,
    pub busy: AtomicU64,
}

impl IngestStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}
