//! File transport: each batch is one file in the outbox, written atomically
//! (temp file, fsync, rename, fsync of the folder), named
//! `<target>-<number, 12 digits>.<ext>` so that names sort in delivery order.
//!
//! **Invariants:** a file appears whole or not at all; numbers only grow, also
//! across restarts and power cuts (the last one used is kept in
//! `<outbox>/.<target>.last`, made durable before a file appears under it, and
//! the folder's own names are checked too); any I/O failure is an outage. Temp
//! files that a crash left behind are removed when the transport starts.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Outcome, Payload, TransportSpec};
use crate::problem::{Problems, parse_duration};
use crate::translator::Translator;

/// `[transport] kind = "file"` as written.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Raw {
    /// The outbox folder (relative paths resolve against the config file's folder).
    pub dir: Option<PathBuf>,
    /// Most deltas written in one file. Default 1000 (1 for an XML template).
    pub batch_max: Option<usize>,
    /// How long to gather deltas for one file. Default "0s".
    pub batch_window: Option<String>,
    /// Create the outbox folder at start-up if it is missing. Default false: a
    /// missing folder (an unmounted share) is an outage, not a reason to write
    /// files onto the local disk.
    pub create_dir: Option<bool>,
}

/// The `[transport]` keys of kind "file".
pub const KEYS: &[&str] = &["dir", "batch_max", "batch_window", "create_dir"];

/// Validates `[transport] kind = "file"`. `one_change_per_file`: the format
/// renders one document per change (an XML template), so a file holds one.
pub fn validate(
    t: &Raw,
    base: &Path,
    one_change_per_file: bool,
    problems: &mut Problems<'_>,
) -> Option<TransportSpec> {
    let window = match t.batch_window.as_deref().map(parse_duration).transpose() {
        Ok(w) => w.unwrap_or(Duration::ZERO),
        Err(e) => {
            problems.at(
                Some("transport"),
                "batch_window",
                format!("[transport] batch_window: {e}"),
            );
            Duration::ZERO
        }
    };
    let template = one_change_per_file;
    let batch_max = t.batch_max.unwrap_or(if template { 1 } else { 1000 });
    if batch_max == 0 {
        problems.at(
            Some("transport"),
            "batch_max",
            "[transport] batch_max must be at least 1",
        );
    } else if template && batch_max > 1 {
        problems.at(
            Some("transport"),
            "batch_max",
            format!(
                "[transport] batch_max = {batch_max} with an XML template: it renders one XML document, so each file can hold only one change; set `batch_max = 1` (the default for XML templates), or write a text template (NAME.txt.j2) for many changes a file"
            ),
        );
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
            problems.at(
                Some("transport"),
                "kind",
                "[transport] kind \"file\" needs `dir = \"...\"` (the outbox folder)",
            );
            None
        }
    }
}

pub struct FileTransport {
    pub target: String,
    pub dir: PathBuf,
    pub batch_max: usize,
    pub batch_window: Duration,
    header: Vec<u8>,
    footer: Vec<u8>,
    /// Fixed records with `[format.header]`/`[format.trailer]`: control records
    /// that depend on the batch (count, hash total, file number), made per file.
    control: Option<std::sync::Arc<crate::translator::fixed::FixedSpec>>,
    extension: String,
    /// The number of the last file written; `None` until read from disk.
    last_number: Option<u64>,
}

impl FileTransport {
    pub fn new(
        target: &str,
        dir: PathBuf,
        batch_max: usize,
        batch_window: Duration,
        translator: &Translator,
    ) -> Self {
        remove_leftover_temps(&dir, target, translator.file_extension());
        FileTransport {
            target: target.to_string(),
            dir,
            batch_max,
            batch_window,
            header: translator.file_header(),
            footer: translator.file_footer(),
            control: match translator {
                Translator::Fixed(spec) if spec.header.is_some() || spec.trailer.is_some() => {
                    Some(spec.clone())
                }
                _ => None,
            },
            extension: translator.file_extension().to_string(),
            last_number: None,
        }
    }

    pub async fn deliver(&mut self, batch: &[Payload]) -> Outcome {
        let dir = self.dir.clone();
        let target = self.target.clone();
        let extension = self.extension.clone();
        let last = self.last_number;
        let (header, footer, control) = (
            self.header.clone(),
            self.footer.clone(),
            self.control.clone(),
        );
        let records: Vec<Vec<u8>> = batch.iter().map(|p| p.bytes.clone()).collect();
        // The body once the file's number is known (a trailer may carry it).
        let body = move |number: u64| -> Result<Vec<u8>, String> {
            let (header, footer) = match &control {
                Some(spec) => {
                    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
                    spec.frame(&refs, number)?
                }
                None => (header, footer),
            };
            let mut body = header;
            for r in &records {
                body.extend_from_slice(r);
            }
            body.extend_from_slice(&footer);
            Ok(body)
        };
        let result =
            tokio::task::spawn_blocking(move || write_batch(&dir, &target, &extension, last, body))
                .await;
        match result {
            Ok((used, outcome)) => {
                // A number once reserved is never written again, even if the
                // delivery failed after reserving it.
                if used.is_some() {
                    self.last_number = used;
                }
                match outcome {
                    Ok(()) => Outcome::Delivered,
                    Err(WriteError::Down(reason)) => Outcome::Down { reason },
                    Err(WriteError::Refused(reason)) => Outcome::Rejected { reason },
                }
            }
            Err(e) => Outcome::Down {
                reason: format!("file writer task failed: {e}"),
            },
        }
    }
}

/// Removes `.<target>-<n>.<ext>.tmp` and `.<target>.last.tmp`: temp files of a
/// write that a crash or power cut interrupted (never visible under a delivery
/// name, never reused). Errors are ignored: a missing outbox is an outage that
/// the first delivery reports.
fn remove_leftover_temps(dir: &Path, target: &str, extension: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let marker_tmp = format!(".{target}.last.tmp");
    let prefix = format!(".{target}-");
    let suffix = format!(".{extension}.tmp");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let batch_tmp = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(&suffix))
            .is_some_and(|n| n.len() == 12 && n.bytes().all(|b| b.is_ascii_digit()));
        if batch_tmp || name == marker_tmp {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a temp file left by a crash")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a temp file left by a crash")
                }
            }
        }
    }
}

/// `<target>-<number, 12 digits>.<extension>`.
fn file_name(target: &str, number: u64, extension: &str) -> String {
    format!("{target}-{number:012}.{extension}")
}

/// The next batch file's number and name as the outbox stands now (number 1
/// if it cannot be read), for `hms-sync translate --full`.
pub fn next_file(dir: &Path, target: &str, extension: &str) -> (u64, String) {
    let number = last_used(dir, target).map_or(1, |n| n + 1);
    (number, file_name(target, number, extension))
}

fn marker_path(dir: &Path, target: &str) -> PathBuf {
    dir.join(format!(".{target}.last"))
}

/// The highest number already used: from the marker file and the folder's names.
fn last_used(dir: &Path, target: &str) -> Result<u64, String> {
    let mut last = fs::read_to_string(marker_path(dir, target))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let entries =
        fs::read_dir(dir).map_err(|e| format!("outbox {} cannot be read: {e}", dir.display()))?;
    let prefix = format!("{target}-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(rest) = name.strip_prefix(&prefix)
            && let Some(number) = rest.split('.').next().and_then(|n| n.parse::<u64>().ok())
        {
            last = last.max(number);
        }
    }
    Ok(last)
}

/// Writes one batch file. Returns the number it reserved (if it got that far)
/// and whether the file is in place and durable.
/// Why a batch file was not written.
enum WriteError {
    /// The outbox failed (missing, full, unwritable): an outage.
    Down(String),
    /// The batch cannot be framed (a trailer's count or total does not fit its item).
    Refused(String),
}

fn write_batch(
    dir: &Path,
    target: &str,
    extension: &str,
    last: Option<u64>,
    body: impl FnOnce(u64) -> Result<Vec<u8>, String>,
) -> (Option<u64>, Result<(), WriteError>) {
    let mut refused = None;
    let (used, result) = write_numbered(dir, target, extension, last, |number| {
        body(number).map_err(|e| refused = Some(e.clone()))
    });
    match (refused, result) {
        (Some(reason), _) => (used, Err(WriteError::Refused(reason))),
        (None, result) => (used, result.map_err(WriteError::Down)),
    }
}

fn write_numbered(
    dir: &Path,
    target: &str,
    extension: &str,
    last: Option<u64>,
    body: impl FnOnce(u64) -> Result<Vec<u8>, ()>,
) -> (Option<u64>, Result<(), String>) {
    let fail = |what: &str, path: &Path, e: std::io::Error| {
        format!("outbox: cannot {what} {}: {e}", path.display())
    };
    if !dir.is_dir() {
        return (
            None,
            Err(format!("outbox folder {} does not exist", dir.display())),
        );
    }
    let number = match last
        .map(|n| Ok(n + 1))
        .unwrap_or_else(|| last_used(dir, target).map(|n| n + 1))
    {
        Ok(n) => n,
        Err(e) => return (None, Err(e)),
    };
    let name = file_name(target, number, extension);
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    let write_synced = |file: &Path, bytes: &[u8]| -> Result<(), String> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(file)
            .map_err(|e| fail("create", file, e))?;
        f.write_all(bytes).map_err(|e| fail("write", file, e))?;
        f.sync_all().map_err(|e| fail("fsync", file, e))
    };
    let Ok(body) = body(number) else {
        return (None, Err("the batch cannot be framed".into()));
    };
    if let Err(e) = write_synced(&tmp, &body) {
        let _ = fs::remove_file(&tmp);
        return (None, Err(e));
    }
    // Reserve the number, durably, before the file appears under it: a power
    // cut between the rename below and the folder's fsync takes the file back
    // (the importer may have seen it), and its number must not come back with
    // other content.
    let marker = marker_path(dir, target);
    let marker_tmp = dir.join(format!(".{target}.last.tmp"));
    let reserved = write_synced(&marker_tmp, number.to_string().as_bytes())
        .and_then(|()| {
            fs::rename(&marker_tmp, &marker).map_err(|e| fail("rename into", &marker, e))
        })
        .and_then(|()| {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| fail("fsync folder", dir, e))
        });
    if let Err(e) = reserved {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&marker_tmp);
        return (None, Err(e));
    }
    let placed = fs::rename(&tmp, &path)
        .map_err(|e| fail("rename into", &path, e))
        .and_then(|()| {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| fail("fsync folder", dir, e))
        });
    if placed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    (Some(number), placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translator::Format;

    fn transport(dir: &Path) -> FileTransport {
        let t = Translator::new(&Format::Csv(crate::translator::csv::CsvFormat::new(
            vec!["k".into()],
            "k".into(),
        )));
        FileTransport::new("out", dir.to_path_buf(), 10, Duration::ZERO, &t)
    }

    fn payload(id: &str) -> Payload {
        Payload {
            id: id.into(),
            attempt: 1,
            bytes: format!("{id},create,1\r\n").into_bytes(),
        }
    }

    #[tokio::test]
    async fn files_are_whole_and_numbers_grow_across_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = transport(tmp.path());
        assert_eq!(
            t.deliver(&[payload("out:1"), payload("out:2")]).await,
            Outcome::Delivered
        );
        assert_eq!(
            fs::read_to_string(tmp.path().join("out-000000000001.csv")).unwrap(),
            "delivery_id,op,k\r\nout:1,create,1\r\nout:2,create,1\r\n"
        );
        // The legacy system consumes the file; a restarted transport goes on counting.
        fs::remove_file(tmp.path().join("out-000000000001.csv")).unwrap();
        let mut t = transport(tmp.path());
        assert_eq!(t.deliver(&[payload("out:3")]).await, Outcome::Delivered);
        assert!(tmp.path().join("out-000000000002.csv").exists());
    }

    #[tokio::test]
    async fn a_number_is_never_reused_after_a_failure_past_its_reservation() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = transport(tmp.path());
        assert_eq!(t.deliver(&[payload("out:1")]).await, Outcome::Delivered);
        // Something in the way of file 2: its rename into place fails.
        fs::create_dir(tmp.path().join("out-000000000002.csv")).unwrap();
        fs::write(tmp.path().join("out-000000000002.csv/x"), "").unwrap();
        assert!(matches!(
            t.deliver(&[payload("out:2")]).await,
            Outcome::Down { .. }
        ));
        assert_eq!(t.deliver(&[payload("out:2")]).await, Outcome::Delivered);
        assert!(
            tmp.path().join("out-000000000003.csv").is_file(),
            "number 2 was reserved: never reused"
        );
        // A restarted transport reads the reservation too.
        fs::remove_file(tmp.path().join("out-000000000003.csv")).unwrap();
        let mut t = transport(tmp.path());
        assert_eq!(t.deliver(&[payload("out:3")]).await, Outcome::Delivered);
        assert!(tmp.path().join("out-000000000004.csv").is_file());
    }

    #[tokio::test]
    async fn temp_files_left_by_a_crash_are_removed_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let left = [".out-000000000007.csv.tmp", ".out.last.tmp"];
        let kept = [
            ".out.last",
            "out-000000000006.csv",
            ".other-000000000007.csv.tmp",
            ".out-7.csv.tmp",
            "notes.tmp",
        ];
        for name in left.iter().chain(&kept) {
            fs::write(tmp.path().join(name), "6").unwrap();
        }
        let mut t = transport(tmp.path());
        for name in left {
            assert!(!tmp.path().join(name).exists(), "{name} was left");
        }
        for name in kept {
            assert!(tmp.path().join(name).exists(), "{name} was removed");
        }
        assert_eq!(t.deliver(&[payload("out:1")]).await, Outcome::Delivered);
        assert!(tmp.path().join("out-000000000007.csv").is_file());
    }

    #[tokio::test]
    async fn a_missing_outbox_is_an_outage() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = transport(&tmp.path().join("gone"));
        assert!(matches!(
            t.deliver(&[payload("out:1")]).await,
            Outcome::Down { .. }
        ));
    }
}
