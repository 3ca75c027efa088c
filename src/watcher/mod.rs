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
    /// Socket connections open now.
    pub socket_clients: AtomicU64,
    /// Per watched folder: the last file taken and when (ms since the epoch).
    pub last_taken: std::sync::Mutex<std::collections::BTreeMap<std::path::PathBuf, (String, u64)>>,
    /// Per watched folder: the large file being taken in parts now.
    pub in_progress: std::sync::Mutex<std::collections::BTreeMap<std::path::PathBuf, FileProgress>>,
}

/// How far a large file is (`status`, the page), updated as it goes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileProgress {
    pub file: String,
    /// "checking", "queuing", "deleting absent records", "clearing marks".
    pub phase: &'static str,
    /// Rows queued so far.
    pub rows_done: u64,
    /// Rows in the file, once the check has counted them.
    pub rows_total: Option<u64>,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
}

impl IngestStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn took_file(&self, dir: &std::path::Path, name: &str) {
        let mut map = self.last_taken.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            dir.to_path_buf(),
            (name.to_string(), crate::record::now_ms()),
        );
    }

    pub fn last_taken(&self, dir: &std::path::Path) -> Option<(String, u64)> {
        let map = self.last_taken.lock().unwrap_or_else(|p| p.into_inner());
        map.get(dir).cloned()
    }

    /// Updates (or, with `None`, ends) the progress of `dir`'s large file.
    pub fn progress(&self, dir: &std::path::Path, update: Option<&dyn Fn(&mut FileProgress)>) {
        let mut map = self.in_progress.lock().unwrap_or_else(|p| p.into_inner());
        match update {
            Some(f) => {
                if let Some(p) = map.get_mut(dir) {
                    f(p)
                }
            }
            None => {
                map.remove(dir);
            }
        }
    }

    /// Starts showing `file` of `dir` as in progress.
    pub fn begin_progress(&self, dir: &std::path::Path, file: &str, rows_done: u64) {
        let mut map = self.in_progress.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            dir.to_path_buf(),
            FileProgress {
                file: file.to_string(),
                phase: "checking",
                rows_done,
                rows_total: None,
                started_ms: crate::record::now_ms(),
            },
        );
    }

    /// Every large file in progress now, with its folder.
    pub fn files_in_progress(&self) -> Vec<(std::path::PathBuf, FileProgress)> {
        let map = self.in_progress.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(d, p)| (d.clone(), p.clone())).collect()
    }
}

/// Which collections some connector receives (SPEC §4 "Unrouted collections"):
/// a change for any other is refused, or kept and counted with
/// `[collections] keep_unrouted = true`. Never accepted and silently dropped.
#[derive(Debug, Default)]
pub struct Routing {
    /// Collections some connector receives, sorted (a reload replaces them).
    known: std::sync::RwLock<Vec<String>>,
    pub keep_unrouted: bool,
    /// Unrouted changes kept since the daemon started, per collection.
    unrouted: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Routing {
    pub fn new(known: Vec<String>, keep_unrouted: bool) -> Routing {
        Routing {
            known: std::sync::RwLock::new(known),
            keep_unrouted,
            unrouted: Default::default(),
        }
    }

    pub fn from_config(cfg: &crate::config::Config) -> Routing {
        Routing::new(cfg.routed_collections(), cfg.keep_unrouted)
    }

    fn known(&self) -> std::sync::RwLockReadGuard<'_, Vec<String>> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether some connector receives `collection`.
    pub fn is_known(&self, collection: &str) -> bool {
        self.known().iter().any(|k| k == collection)
    }

    /// After a reload: the collections the connectors receive now.
    pub fn set_known(&self, known: Vec<String>) {
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = known;
    }

    /// Err: the refusal the source gets (the collection is unrouted and not kept).
    pub fn check(&self, collection: &str) -> Result<(), String> {
        if self.keep_unrouted || self.is_known(collection) {
            return Ok(());
        }
        Err(self.refusal(collection))
    }

    pub fn refusal(&self, collection: &str) -> String {
        let known = self.known();
        let known = if known.is_empty() {
            "none: add a connector".to_string()
        } else {
            known.join(", ")
        };
        format!("no connector receives collection '{collection}' (known: {known})")
    }

    /// Counts accepted changes of collections no connector receives.
    pub fn count_accepted<'a>(&self, collections: impl Iterator<Item = &'a str>) {
        let mut map = self.unrouted.lock().unwrap_or_else(|p| p.into_inner());
        for c in collections {
            if !self.is_known(c) {
                *map.entry(c.to_string()).or_default() += 1;
            }
        }
    }

    /// (collection, changes kept since start), for `status`, the page and metrics.
    pub fn unrouted(&self) -> Vec<(String, u64)> {
        let map = self.unrouted.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(c, n)| (c.clone(), *n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrouted_collections_are_refused_with_the_known_ones_named() {
        let r = Routing::new(vec!["parcels".into(), "permits".into()], false);
        assert!(r.check("permits").is_ok());
        assert_eq!(
            r.check("x").unwrap_err(),
            "no connector receives collection 'x' (known: parcels, permits)"
        );
        let kept = Routing::new(vec!["permits".into()], true);
        assert!(kept.check("x").is_ok());
        kept.count_accepted(["x", "permits", "x"].into_iter());
        assert_eq!(kept.unrouted(), vec![("x".to_string(), 2)]);
    }
}
