//! The delivery log (SPEC §7): one JSON line per outcome, appended by the workers
//! and the operator's commands, rotated by size (`delivery.log.1` is the newest
//! rotated file). `tail` reads it and follows it across rotation.
//!
//! **Invariants:** a line is written with one `write` call on an `O_APPEND` file, so
//! lines from several writers never interleave; a failed write is logged and
//! never stops a delivery.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::record::{format_ms, now_ms};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub ts: String,
    pub target: String,
    pub id: String,
    pub collection: String,
    pub key: String,
    pub op: String,
    /// delivered | rejected | down | dead | retried | dropped
    pub outcome: String,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl Entry {
    pub fn now(
        target: &str,
        id: &str,
        collection: &str,
        key: &str,
        op: &str,
        outcome: &str,
        attempt: u32,
    ) -> Entry {
        Entry {
            ts: format_ms(now_ms()),
            target: target.into(),
            id: id.into(),
            collection: collection.into(),
            key: key.into(),
            op: op.into(),
            outcome: outcome.into(),
            attempt,
            latency_ms: None,
            error: None,
        }
    }

    /// One line for people: time, id, outcome, record, op, attempt, latency, error.
    pub fn human(&self) -> String {
        let mut line = format!(
            "{} {:<24} {:<9} {}/{} {} attempt={}",
            self.ts, self.id, self.outcome, self.collection, self.key, self.op, self.attempt
        );
        if let Some(ms) = self.latency_ms {
            line.push_str(&format!(" {ms}ms"));
        }
        if let Some(e) = &self.error {
            line.push_str(&format!(" error: {e}"));
        }
        line
    }
}

pub struct DeliveryLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Mutex<Option<File>>,
}

impl DeliveryLog {
    pub fn new(path: PathBuf, max_bytes: u64, keep: u32) -> DeliveryLog {
        DeliveryLog {
            path,
            max_bytes: max_bytes.max(4096),
            keep: keep.max(1),
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&self, entry: &Entry) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "delivery log entry cannot be encoded");
                return;
            }
        };
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.write_locked(&mut guard, &line) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the delivery log");
            *guard = None;
        }
    }

    fn write_locked(&self, file: &mut Option<File>, line: &[u8]) -> std::io::Result<()> {
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            *file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let f = file.as_mut().expect("opened above");
        f.write_all(line)?;
        if f.metadata()?.len() >= self.max_bytes {
            self.rotate()?;
            *file = None;
        }
        Ok(())
    }

    /// delivery.log -> .1 -> .2 …; the oldest beyond `keep` is removed.
    fn rotate(&self) -> std::io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = fs::rename(numbered(n), numbered(n + 1));
        }
        fs::rename(&self.path, numbered(1))
    }
}

/// Which entries `tail` shows.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub target: Option<String>,
    pub key: Option<String>,
    pub outcome: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &Entry) -> bool {
        self.target.as_ref().is_none_or(|t| *t == e.target)
            && self.key.as_ref().is_none_or(|k| *k == e.key)
            && self.outcome.as_ref().is_none_or(|o| *o == e.outcome)
    }
}

/// The last `n` matching entries (0: all), oldest first, from the rotated files
/// and the current one.
pub fn read_last(path: &Path, filter: &Filter, n: usize) -> std::io::Result<Vec<Entry>> {
    let mut files: Vec<PathBuf> = (1..=100)
        .map(|i| PathBuf::from(format!("{}.{i}", path.display())))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    let mut out = std::collections::VecDeque::new();
    for f in files {
        let Ok(file) = File::open(&f) else { continue };
        for line in BufReader::new(file).lines() {
            let line = line?;
            if let Ok(e) = serde_json::from_str::<Entry>(&line)
                && filter.matches(&e)
            {
                out.push_back(e);
                if n > 0 && out.len() > n {
                    out.pop_front();
                }
            }
        }
    }
    Ok(out.into())
}

/// The newest entries of one record, newest first, read backwards from the end
/// of the log and then its rotated files: stops after `max_lines` entries or
/// `max_bytes` read, whichever comes first (the log can be large; `where` and
/// the page must answer quickly).
pub fn read_record_backwards(
    path: &Path,
    collection: &str,
    key: &str,
    max_lines: usize,
    max_bytes: u64,
) -> std::io::Result<Vec<Entry>> {
    const BLOCK: u64 = 64 * 1024;
    let needle = serde_json::to_string(key).unwrap_or_default();
    let mut out = Vec::new();
    let mut budget = max_bytes;
    let files = std::iter::once(path.to_path_buf())
        .chain((1..=100).map(|i| PathBuf::from(format!("{}.{i}", path.display()))));
    for f in files {
        let Ok(mut file) = File::open(&f) else { break };
        let mut end = file.metadata()?.len();
        // Bytes of a line cut by the block boundary, waiting for its start.
        let mut tail: Vec<u8> = Vec::new();
        while end > 0 && budget > 0 {
            let start = end.saturating_sub(BLOCK.min(budget));
            let mut block = vec![0u8; (end - start) as usize];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut block)?;
            budget -= end - start;
            block.extend_from_slice(&tail);
            // Everything after the first newline is whole lines (unless start == 0).
            let (keep, lines) = match (start, block.iter().position(|&b| b == b'\n')) {
                (0, _) => (Vec::new(), &block[..]),
                (_, Some(i)) => (block[..i].to_vec(), &block[i + 1..]),
                (_, None) => (block.clone(), &block[..0]),
            };
            for line in lines.rsplit(|&b| b == b'\n') {
                if line.is_empty() || !contains(line, needle.as_bytes()) {
                    continue;
                }
                if let Ok(e) = serde_json::from_slice::<Entry>(line)
                    && e.collection == collection
                    && e.key == key
                {
                    out.push(e);
                    if out.len() >= max_lines {
                        return Ok(out);
                    }
                }
            }
            tail = keep;
            end = start;
        }
        if budget == 0 {
            break;
        }
    }
    Ok(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Follows the log from its current end, calling `each` for every matching entry,
/// reopening it when it is rotated or recreated. Runs until `each` returns false.
pub fn follow(
    path: &Path,
    filter: &Filter,
    mut each: impl FnMut(&Entry) -> bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let open = |from_end: bool| -> Option<(BufReader<File>, u64)> {
        let mut f = File::open(path).ok()?;
        let ino = f.metadata().ok()?.ino();
        if from_end {
            f.seek(SeekFrom::End(0)).ok()?;
        }
        Some((BufReader::new(f), ino))
    };
    let mut current = open(true);
    let mut partial = String::new();
    /// Reads what `reader` has now; false once `each` asked to stop.
    fn drain(
        reader: &mut BufReader<File>,
        partial: &mut String,
        filter: &Filter,
        each: &mut impl FnMut(&Entry) -> bool,
    ) -> std::io::Result<(bool, bool)> {
        let mut progressed = false;
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            progressed = true;
            partial.push_str(&line);
            line.clear();
            if !partial.ends_with('\n') {
                continue;
            }
            if let Ok(e) = serde_json::from_str::<Entry>(partial.trim_end())
                && filter.matches(&e)
                && !each(&e)
            {
                return Ok((progressed, false));
            }
            partial.clear();
        }
        Ok((progressed, true))
    }
    loop {
        let mut progressed = false;
        if let Some((reader, _)) = current.as_mut() {
            let (p, go_on) = drain(reader, &mut partial, filter, &mut each)?;
            if !go_on {
                return Ok(());
            }
            progressed = p;
        }
        if !progressed {
            // Rotated or recreated? Then read the new file from its start.
            let now_ino = fs::metadata(path).ok().map(|m| m.ino());
            let open_ino = current.as_ref().map(|(_, ino)| *ino);
            if now_ino.is_some() && now_ino != open_ino {
                // Rotated: finish the old file (lines may have landed since our
                // last read), then read the new one from its start.
                if let Some((reader, _)) = current.as_mut()
                    && !drain(reader, &mut partial, filter, &mut each)?.1
                {
                    return Ok(());
                }
                partial.clear();
                // Several rotations may have happened since the last look: read,
                // oldest first, the rotated files that came after the one we had.
                let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
                let had = (1..=100)
                    .find(|&n| fs::metadata(numbered(n)).ok().map(|m| m.ino()) == open_ino);
                for n in (1..had.unwrap_or(1)).rev() {
                    let Ok(f) = File::open(numbered(n)) else {
                        continue;
                    };
                    for line in BufReader::new(f).lines() {
                        if let Ok(e) = serde_json::from_str::<Entry>(&line?)
                            && filter.matches(&e)
                            && !each(&e)
                        {
                            return Ok(());
                        }
                    }
                }
                current = open(false);
                continue;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_rotates_and_reads_back_across_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("delivery.log");
        let log = DeliveryLog::new(path.clone(), 4096, 3);
        for i in 0..100 {
            log.append(&Entry::now(
                "t",
                &format!("t:{i}"),
                "permits",
                &i.to_string(),
                "update",
                "delivered",
                1,
            ));
        }
        assert!(PathBuf::from(format!("{}.1", path.display())).exists());
        assert!(!PathBuf::from(format!("{}.4", path.display())).exists());
        let last = read_last(&path, &Filter::default(), 5).unwrap();
        assert_eq!(last.len(), 5);
        assert_eq!(last[4].id, "t:99");
        let only = read_last(
            &path,
            &Filter {
                key: Some("98".into()),
                ..Filter::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(only.len(), 1);
    }
}

#[cfg(test)]
mod follow_tests {
    use super::*;

    #[test]
    fn follow_continues_across_rotation() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("delivery.log");
        let log = std::sync::Arc::new(DeliveryLog::new(path.clone(), 4096, 3));
        log.append(&Entry::now("t", "t:0", "p", "0", "update", "delivered", 1));
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                // Enough lines to rotate the 4 KiB log several times.
                for i in 1..=120 {
                    log.append(&Entry::now(
                        "t",
                        &format!("t:{i}"),
                        "p",
                        &i.to_string(),
                        "update",
                        "delivered",
                        1,
                    ));
                    if i % 10 == 0 {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        };
        let mut seen = Vec::new();
        follow(&path, &Filter::default(), |e| {
            seen.push(e.id.clone());
            e.id != "t:120"
        })
        .unwrap();
        writer.join().unwrap();
        assert!(
            PathBuf::from(format!("{}.1", path.display())).exists(),
            "it did rotate"
        );
        assert!(
            !seen.contains(&"t:0".to_string()),
            "follow starts at the end"
        );
        assert_eq!(seen.last().map(String::as_str), Some("t:120"));
        let expected: Vec<String> = (1..=120).map(|i| format!("t:{i}")).collect();
        assert_eq!(
            seen, expected,
            "every line once, in order, across rotations"
        );
    }
}
