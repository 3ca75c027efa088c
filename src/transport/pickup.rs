//! The importer's "got it" for the file transport (SPEC §5 "File pickup"):
//! `pickup = "consumed"` (the importer moved or deleted the file) or
//! `"ack_file"` (it wrote `<file>.ack`, or `<file>.err` with a reason and,
//! on further lines, `<delivery_id> <reason>` for the records it refused).
//!
//! The file waiting for its answer is named in `<outbox>/.<target>.wait` with
//! the delivery ids it holds (this module's "manifest"), written temp + fsync +
//! rename and made durable by the same folder fsync as the number marker,
//! *before* the file appears under its name. So after a crash or power cut the
//! transport knows which file it waits for and which deltas it holds, and
//! resumes waiting instead of writing a second copy (`file.rs` drives it).
//!
//! **Invariants:** no answer within `pickup_timeout` is `Answer::Silent` (an
//! outage), never a refusal; at most `MAX_ERR_BYTES` of an `.err` are read; an
//! answer file for a file this target does not wait for is left alone and
//! logged once.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Most bytes of an `.err` file read (SPEC: at most 1 MiB).
pub const MAX_ERR_BYTES: usize = 1 << 20;

/// How often the outbox is looked at while a file waits. A poll, not inotify:
/// outboxes are often network shares, where inotify sees nothing.
const POLL: Duration = Duration::from_millis(200);

/// How often answers for files nobody waits for are looked for while waiting.
const STRAY_SCAN: Duration = Duration::from_secs(5);

/// When a written file counts as delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PickupMode {
    /// Once it is in the outbox (renamed into place, folder fsynced).
    #[default]
    None,
    /// Once the importer moved or deleted it.
    Consumed,
    /// Once `<file><ack_suffix>` appears (or `<file><err_suffix>` refuses).
    AckFile,
}

/// `[transport] pickup`, `pickup_timeout`, `ack_suffix`, `err_suffix`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Pickup {
    pub mode: PickupMode,
    pub timeout: Duration,
    pub ack_suffix: String,
    pub err_suffix: String,
}

impl Default for Pickup {
    fn default() -> Self {
        Pickup {
            mode: PickupMode::None,
            timeout: Duration::from_secs(600),
            ack_suffix: ".ack".into(),
            err_suffix: ".err".into(),
        }
    }
}

/// A file written and waiting for the importer's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    /// Its name in the outbox.
    pub file: String,
    /// The delivery ids of the deltas it holds, in file order.
    pub ids: Vec<String>,
}

const MANIFEST_HEADER: &str = "hms-sync waiting file v1";

pub fn manifest_path(dir: &Path, target: &str) -> PathBuf {
    dir.join(format!(".{target}.wait"))
}

pub fn manifest_tmp_path(dir: &Path, target: &str) -> PathBuf {
    dir.join(format!(".{target}.wait.tmp"))
}

/// The manifest's bytes: a header line, the file's name, then one id a line.
pub fn encode(w: &Waiting) -> Vec<u8> {
    let mut s = format!("{MANIFEST_HEADER}\n{}\n", w.file);
    for id in &w.ids {
        s.push_str(id);
        s.push('\n');
    }
    s.into_bytes()
}

/// The file `target` waits for, if any. A manifest that cannot be read is an
/// outage (nothing is written while it is in doubt).
pub fn read_manifest(dir: &Path, target: &str) -> Result<Option<Waiting>, String> {
    let path = manifest_path(dir, target);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut lines = text.lines();
    let (Some(MANIFEST_HEADER), Some(file)) = (lines.next(), lines.next()) else {
        return Err(format!(
            "{} is not a waiting-file manifest of hms-sync; move it away if nothing waits for an answer",
            path.display()
        ));
    };
    if file.is_empty() || file.contains('/') {
        return Err(format!("{} names no file", path.display()));
    }
    Ok(Some(Waiting {
        file: file.to_string(),
        ids: lines.filter(|l| !l.is_empty()).map(String::from).collect(),
    }))
}

/// What the importer did with a waiting file.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `.ack`, or (`consumed`) the file is gone.
    Taken,
    /// `.err`: its first line, and the `<delivery_id> <reason>` lines after it.
    Refused {
        reason: String,
        named: Vec<(String, String)>,
    },
    /// (`ack_file`) gone without an answer by `pickup_timeout`: to be written again.
    Vanished,
    /// Still in the outbox (or the outbox could not be read: `trouble`), no
    /// answer by `pickup_timeout`: an outage.
    Silent { trouble: Option<String> },
    /// The daemon is stopping; the file goes on waiting (the manifest stays).
    Stopping,
}

/// Reads an `.err` file: at most [`MAX_ERR_BYTES`].
pub fn read_err(path: &Path) -> std::io::Result<Answer> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(MAX_ERR_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    let truncated = bytes.len() > MAX_ERR_BYTES;
    bytes.truncate(MAX_ERR_BYTES);
    Ok(parse_err(&bytes, truncated))
}

/// An `.err` file's text: the first line is the reason; each further line
/// `<delivery_id> <reason>` names a refused record (no reason of its own: the
/// first line's). When the file was cut at [`MAX_ERR_BYTES`], its last, cut
/// line is not read as a record (a cut id could name another record).
pub fn parse_err(bytes: &[u8], truncated: bool) -> Answer {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<&str> = text.split('\n').collect();
    if truncated && lines.len() > 1 {
        lines.pop();
    }
    let mut lines = lines.into_iter().map(|l| l.trim_end_matches('\r'));
    let first = lines.next().unwrap_or("").trim();
    let reason = if first.is_empty() {
        "the importer refused the file without a reason (the first line of its answer is empty)"
            .to_string()
    } else if truncated && !text.contains('\n') {
        format!("{first}… (only the first {MAX_ERR_BYTES} bytes read)")
    } else {
        first.to_string()
    };
    let named = lines
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((id, own)) if !own.trim().is_empty() => (id.to_string(), own.trim().to_string()),
            Some((id, _)) => (id.to_string(), reason.clone()),
            None => (l.to_string(), reason.clone()),
        })
        .collect();
    Answer::Refused { reason, named }
}

/// One look at the outbox: the answer, if there is one yet. `Vanished` here
/// only says the file is gone (the caller decides what that means by now).
fn look(dir: &Path, w: &Waiting, p: &Pickup) -> Result<Option<Answer>, String> {
    let file = dir.join(&w.file);
    if p.mode == PickupMode::AckFile {
        if dir.join(format!("{}{}", w.file, p.ack_suffix)).exists() {
            return Ok(Some(Answer::Taken));
        }
        let err = dir.join(format!("{}{}", w.file, p.err_suffix));
        match read_err(&err) {
            Ok(answer) => return Ok(Some(answer)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", err.display())),
        }
    }
    match fs::symlink_metadata(&file) {
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !dir.is_dir() {
                return Err(format!("outbox folder {} does not exist", dir.display()));
            }
            Ok(Some(match p.mode {
                PickupMode::AckFile => Answer::Vanished,
                _ => Answer::Taken,
            }))
        }
        Err(e) => Err(format!("cannot look at {}: {e}", file.display())),
    }
}

/// Answer files (`<target>-…<suffix>`) for files other than `current`: logged
/// once each, left alone.
fn log_strays(dir: &Path, target: &str, p: &Pickup, current: &str, seen: &mut HashSet<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{target}-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(&prefix) {
            continue;
        }
        let stem = name
            .strip_suffix(p.ack_suffix.as_str())
            .or_else(|| name.strip_suffix(p.err_suffix.as_str()));
        if let Some(stem) = stem
            && stem != current
            && seen.insert(name.to_string())
        {
            tracing::warn!(target_name = %target, file = %dir.join(name).display(), "an answer for a file hms-sync is not waiting for: ignored (left in place)");
        }
    }
}

/// How `check` shows the pickup (empty for `none`).
pub fn describe(p: &Pickup) -> String {
    let timeout = humantime::format_duration(p.timeout);
    match p.mode {
        PickupMode::None => String::new(),
        PickupMode::Consumed => format!(
            ", delivered once the importer moves or deletes the file (pickup = \"consumed\", outage after {timeout})"
        ),
        PickupMode::AckFile => format!(
            ", delivered on <file>{} and refused on <file>{} (pickup = \"ack_file\", outage after {timeout})",
            p.ack_suffix, p.err_suffix
        ),
    }
}

/// Where a waiting file is watched from.
pub struct Watch<'a> {
    pub dir: &'a Path,
    pub target: &'a str,
    pub pickup: &'a Pickup,
    pub shutdown: &'a mut Option<watch::Receiver<bool>>,
    pub strays: &'a mut HashSet<String>,
}

/// Waits for the importer's answer to `w`, up to `pickup_timeout`. Sleeps
/// between looks; an outbox that cannot be read counts as no answer yet.
pub async fn wait(at: Watch<'_>, w: &Waiting) -> Answer {
    let deadline = Instant::now() + at.pickup.timeout;
    let mut next_stray_scan = Instant::now();
    let mut last_error = None;
    loop {
        let (dir, p, w2) = (at.dir.to_path_buf(), at.pickup.clone(), w.clone());
        let scan = at.pickup.mode == PickupMode::AckFile && Instant::now() >= next_stray_scan;
        let (target, mut seen) = (at.target.to_string(), std::mem::take(at.strays));
        let looked = tokio::task::spawn_blocking(move || {
            if scan {
                log_strays(&dir, &target, &p, &w2.file, &mut seen);
            }
            (look(&dir, &w2, &p), seen)
        })
        .await;
        let seen_after;
        match looked {
            Ok((result, seen)) => {
                seen_after = seen;
                match result {
                    Ok(Some(Answer::Vanished)) if Instant::now() < deadline => {}
                    Ok(Some(answer @ Answer::Refused { .. })) => {
                        // An importer may still be writing its `.err`: only an
                        // answer that reads the same twice, a poll apart, counts.
                        tokio::time::sleep(POLL).await;
                        let (dir, p, w2) = (at.dir.to_path_buf(), at.pickup.clone(), w.clone());
                        let again = tokio::task::spawn_blocking(move || look(&dir, &w2, &p)).await;
                        if let Ok(Ok(Some(again))) = again
                            && again == answer
                        {
                            *at.strays = seen_after;
                            return answer;
                        }
                        // Still changing: look again, but only after the
                        // timeout and the stop signal below have had their say
                        // (an `.err` that keeps growing must not hold a stop).
                    }
                    Ok(Some(answer)) => {
                        *at.strays = seen_after;
                        return answer;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if last_error.as_ref() != Some(&e) {
                            tracing::warn!(target_name = %at.target, error = %e, "cannot look for the importer's answer");
                        }
                        last_error = Some(e);
                    }
                }
            }
            Err(_) => seen_after = HashSet::new(),
        }
        *at.strays = seen_after;
        if scan {
            next_stray_scan = Instant::now() + STRAY_SCAN;
        }
        if Instant::now() >= deadline {
            return Answer::Silent {
                trouble: last_error,
            };
        }
        let nap = POLL.min(deadline.saturating_duration_since(Instant::now()));
        match at.shutdown.as_mut() {
            Some(rx) => {
                if *rx.borrow() {
                    return Answer::Stopping;
                }
                tokio::select! {
                    _ = tokio::time::sleep(nap) => {}
                    changed = rx.changed() => {
                        if changed.is_err() {
                            *at.shutdown = None;
                        } else if *rx.borrow() {
                            return Answer::Stopping;
                        }
                    }
                }
            }
            None => tokio::time::sleep(nap).await,
        }
    }
}

/// Narrows the manifest to `w` (the same file, fewer ids), durably: the rest
/// of a file whose answer settled only the deltas of this batch (a batch made
/// smaller since the file was written). Its file and answers stay, so the
/// next batch, holding the rest, reads the same answer.
pub fn narrow_manifest(dir: &Path, target: &str, w: &Waiting) -> Result<(), String> {
    use std::io::Write;
    let (tmp, path) = (manifest_tmp_path(dir, target), manifest_path(dir, target));
    File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&encode(w))?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &path))
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A settled file: the file itself (if the importer left it), then its answers
/// and the manifest are removed, each step made durable by a folder fsync, so
/// that a power cut never brings back a manifest without its answer's file
/// being gone first... and the importer never sees the settled file again.
pub fn remove_settled(dir: &Path, target: &str, w: &Waiting, p: &Pickup) -> Result<(), String> {
    let sync = || {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot fsync folder {}: {e}", dir.display()))
    };
    let remove = |path: PathBuf| match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    };
    remove(dir.join(&w.file))?;
    sync()?;
    if p.mode == PickupMode::AckFile {
        remove(dir.join(format!("{}{}", w.file, p.ack_suffix)))?;
        remove(dir.join(format!("{}{}", w.file, p.err_suffix)))?;
    }
    remove(manifest_path(dir, target))?;
    sync()
}

/// A file that vanished without an answer: only the manifest goes, so that
/// the deltas are written again.
pub fn forget(dir: &Path, target: &str) -> Result<(), String> {
    match fs::remove_file(manifest_path(dir, target)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove the waiting-file manifest: {e}")),
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot fsync folder {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str, truncated: bool) -> (String, Vec<(String, String)>) {
        match parse_err(text.as_bytes(), truncated) {
            Answer::Refused { reason, named } => (reason, named),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_err_file_gives_the_reason_and_the_named_records_with_their_own() {
        let (reason, named) = refused("BAD BATCH\r\nt:3 UNKNOWN STATUS 'XX'\nt:9\n\n   \n", false);
        assert_eq!(reason, "BAD BATCH");
        assert_eq!(
            named,
            vec![
                ("t:3".to_string(), "UNKNOWN STATUS 'XX'".to_string()),
                ("t:9".to_string(), "BAD BATCH".to_string())
            ]
        );
    }

    #[test]
    fn an_empty_err_file_is_a_refusal_with_a_reason_that_says_so() {
        let (reason, named) = refused("", false);
        assert!(reason.contains("without a reason"), "{reason}");
        assert!(named.is_empty());
    }

    #[test]
    fn a_cut_err_file_never_reads_its_cut_last_line_as_a_record() {
        let (_, named) = refused("BAD\nt:1 X\nt:12", true);
        assert_eq!(named, vec![("t:1".to_string(), "X".to_string())]);
    }

    #[test]
    fn at_most_one_mib_of_an_err_file_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.err");
        let mut text = String::from("TOO MUCH\n");
        while text.len() < 3 * MAX_ERR_BYTES {
            text.push_str("t:1 again and again\n");
        }
        fs::write(&path, &text).unwrap();
        match read_err(&path).unwrap() {
            Answer::Refused { reason, named } => {
                assert_eq!(reason, "TOO MUCH");
                assert!(named.len() < MAX_ERR_BYTES / 20 + 1, "{}", named.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_manifest_reads_back_what_was_written() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_manifest(tmp.path(), "t").unwrap(), None);
        let w = Waiting {
            file: "t-000000000001.dat".into(),
            ids: vec!["t:1".into(), "t:2".into()],
        };
        fs::write(manifest_path(tmp.path(), "t"), encode(&w)).unwrap();
        assert_eq!(read_manifest(tmp.path(), "t").unwrap(), Some(w));
        fs::write(manifest_path(tmp.path(), "t"), "junk").unwrap();
        assert!(read_manifest(tmp.path(), "t").is_err());
    }
}
