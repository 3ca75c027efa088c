//! File transport: each batch is one file in the outbox, written atomically
//! (temp file, fsync, rename, fsync of the folder), named
//! `<target>-<number, 12 digits>.<ext>` so that names sort in delivery order.
//!
//! **Invariants:** a file appears whole or not at all; numbers only grow, also
//! across restarts and power cuts (the last one used is kept in
//! `<outbox>/.<target>.last`, made durable before a file appears under it, and
//! the folder's own names are checked too); any I/O failure is an outage. Temp
//! files that a crash left behind are removed when the transport starts.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use super::pickup::{self, Pickup, PickupMode};
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
    /// When a written file counts as delivered: "none" | "consumed" | "ack_file".
    pub pickup: Option<String>,
    /// How long to wait for the importer's answer before the target counts as down.
    pub pickup_timeout: Option<String>,
    /// `<file><ack_suffix>`: the importer took the file. Default ".ack".
    pub ack_suffix: Option<String>,
    /// `<file><err_suffix>`: the importer refused (some of) it. Default ".err".
    pub err_suffix: Option<String>,
}

/// The `[transport]` keys of kind "file".
pub const KEYS: &[&str] = &[
    "dir",
    "batch_max",
    "batch_window",
    "create_dir",
    "pickup",
    "pickup_timeout",
    "ack_suffix",
    "err_suffix",
];

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
    let pickup = validate_pickup(t, problems);
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
            pickup,
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

/// `pickup`, `pickup_timeout`, `ack_suffix`, `err_suffix`: the importer's "got it".
fn validate_pickup(t: &Raw, problems: &mut Problems<'_>) -> Pickup {
    let mut p = Pickup::default();
    // Keys that only one mode uses are refused under another (not when `pickup`
    // itself is wrong: that is the one problem to fix).
    let known = matches!(
        t.pickup.as_deref(),
        None | Some("none" | "consumed" | "ack_file")
    );
    match t.pickup.as_deref() {
        None | Some("none") => {}
        Some("consumed") => p.mode = PickupMode::Consumed,
        Some("ack_file") => p.mode = PickupMode::AckFile,
        Some(other) => problems.at(
            Some("transport"),
            "pickup",
            format!(
                "[transport] pickup = \"{other}\" is not known; use \"none\" (delivered once written), \"consumed\" (once the importer moved or deleted the file) or \"ack_file\" (once the importer wrote <file>.ack)"
            ),
        ),
    }
    if let Some(text) = &t.pickup_timeout {
        match parse_duration(text) {
            Ok(d) if d.is_zero() => problems.at(
                Some("transport"),
                "pickup_timeout",
                "[transport] pickup_timeout must be more than 0s",
            ),
            Ok(d) => p.timeout = d,
            Err(e) => problems.at(
                Some("transport"),
                "pickup_timeout",
                format!("[transport] pickup_timeout: {e}"),
            ),
        }
        if known && p.mode == PickupMode::None {
            problems.at(
                Some("transport"),
                "pickup_timeout",
                "[transport] pickup_timeout applies only with pickup = \"consumed\" or \"ack_file\"",
            );
        }
    }
    for (key, value, slot) in [
        ("ack_suffix", &t.ack_suffix, &mut p.ack_suffix),
        ("err_suffix", &t.err_suffix, &mut p.err_suffix),
    ] {
        let Some(value) = value else { continue };
        if value.is_empty() || value.contains('/') || value.contains('\0') {
            problems.at(
                Some("transport"),
                key,
                format!(
                    "[transport] {key} = \"{value}\": it must be a non-empty ending of a file name (no '/'), such as \".ack\""
                ),
            );
        } else {
            *slot = value.clone();
        }
        if known && p.mode != PickupMode::AckFile {
            problems.at(
                Some("transport"),
                key,
                format!("[transport] {key} applies only with pickup = \"ack_file\""),
            );
        }
    }
    if p.ack_suffix == p.err_suffix {
        problems.at(
            Some("transport"),
            "err_suffix",
            format!(
                "[transport] ack_suffix and err_suffix are both \"{}\"; the importer's two answers need two names",
                p.ack_suffix
            ),
        );
    }
    p
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
    /// When a file counts as delivered (`pickup.rs`).
    pickup: Pickup,
    /// The daemon's stop signal: a file waiting for its answer stops waiting.
    shutdown: Option<watch::Receiver<bool>>,
    /// Answer files for files nobody waits for, already logged.
    strays: HashSet<String>,
}

/// How a group of a batch's payloads (indices) is to be sent.
struct Group {
    members: Vec<usize>,
    /// Refused whole already: send in halves.
    halve: bool,
}

impl FileTransport {
    pub fn new(
        target: &str,
        dir: PathBuf,
        batch_max: usize,
        batch_window: Duration,
        pickup: Pickup,
        translator: &Translator,
    ) -> Self {
        if pickup.mode != PickupMode::None {
            finish_interrupted_placement(&dir, target);
        } else if pickup::manifest_path(&dir, target).exists() {
            // `pickup` was switched off while a file waited: that file now counts
            // as delivered when written; its deltas, not acked yet, go out again.
            tracing::warn!(target_name = %target, outbox = %dir.display(), "pickup is now \"none\": no longer waiting for the importer's answer to the last file; its deltas are written again");
            let _ = pickup::forget(&dir, target);
        }
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
            pickup,
            shutdown: None,
            strays: HashSet::new(),
        }
    }

    /// The daemon's stop signal, so that a file waiting for its answer does not
    /// hold up a shutdown.
    pub fn watch_shutdown(&mut self, shutdown: watch::Receiver<bool>) {
        self.shutdown = Some(shutdown);
    }

    /// Delivers a batch: one outcome per payload. With `pickup = "none"` the
    /// batch is one file and shares its outcome; otherwise each delta is settled
    /// by the importer's answer (see [`FileTransport::deliver_with_pickup`]).
    pub async fn deliver(&mut self, batch: &[Payload]) -> Vec<Outcome> {
        let all: Vec<usize> = (0..batch.len()).collect();
        if self.pickup.mode == PickupMode::None {
            let outcome = match self.write(batch, &all, false).await {
                Ok(_) => Outcome::Delivered,
                Err(o) => o,
            };
            return vec![outcome; batch.len()];
        }
        self.deliver_with_pickup(batch).await
    }

    /// `pickup = "consumed" | "ack_file"`. A file still waiting (a restart, or
    /// an earlier `pickup_timeout`) is answered first and nothing else is
    /// written while it waits. Then the batch is written and waited for; an
    /// `.err` naming records rejects those and writes the rest again; one naming
    /// none is retried in halves until the refused delta stands alone.
    async fn deliver_with_pickup(&mut self, batch: &[Payload]) -> Vec<Outcome> {
        let n = batch.len();
        let mut out: Vec<Option<Outcome>> = vec![None; n];
        let mut todo: VecDeque<Group> = VecDeque::new();
        let dir = self.dir.clone();
        let target = self.target.clone();
        let waiting = tokio::task::spawn_blocking(move || pickup::read_manifest(&dir, &target))
            .await
            .unwrap_or_else(|e| Err(format!("file task failed: {e}")));
        match waiting {
            Err(reason) => return vec![Outcome::Down { reason }; n],
            Ok(None) => todo.push_back(Group {
                members: (0..n).collect(),
                halve: false,
            }),
            Ok(Some(w)) => {
                let (mine, others): (Vec<usize>, Vec<usize>) =
                    (0..n).partition(|&i| w.ids.contains(&batch[i].id));
                tracing::info!(target_name = %self.target, file = %w.file, deltas = w.ids.len(), "waiting for the importer's answer to a file written before");
                let answer = self.wait(&w).await;
                if !self
                    .settle(batch, &w, &mine, answer, &mut out, &mut todo)
                    .await
                {
                    return finish(out, "no file written while another waits");
                }
                todo.push_back(Group {
                    members: others,
                    halve: false,
                });
            }
        }
        while let Some(group) = todo.pop_front() {
            if group.members.is_empty() {
                continue;
            }
            if group.halve {
                halve(group.members, &mut todo);
                continue;
            }
            let w = match self.write(batch, &group.members, true).await {
                Ok(file) => pickup::Waiting {
                    file,
                    ids: group.members.iter().map(|&i| batch[i].id.clone()).collect(),
                },
                Err(outcome @ Outcome::Rejected { .. }) => {
                    for &i in &group.members {
                        out[i] = Some(outcome.clone());
                    }
                    continue;
                }
                Err(outcome) => {
                    for &i in &group.members {
                        out[i] = Some(outcome.clone());
                    }
                    break;
                }
            };
            let answer = self.wait(&w).await;
            if !self
                .settle(batch, &w, &group.members, answer, &mut out, &mut todo)
                .await
            {
                break;
            }
        }
        finish(out, "not written: the outbox or the importer is down")
    }

    async fn wait(&mut self, w: &pickup::Waiting) -> pickup::Answer {
        pickup::wait(
            pickup::Watch {
                dir: &self.dir,
                target: &self.target,
                pickup: &self.pickup,
                shutdown: &mut self.shutdown,
                strays: &mut self.strays,
            },
            w,
        )
        .await
    }

    /// Settles the payloads `members` (indices into `batch`) of waiting file `w`
    /// by `answer`; queues what is to be written again. False: stop writing
    /// (the importer or the outbox is down, or the daemon stops).
    async fn settle(
        &mut self,
        batch: &[Payload],
        w: &pickup::Waiting,
        members: &[usize],
        answer: pickup::Answer,
        out: &mut [Option<Outcome>],
        todo: &mut VecDeque<Group>,
    ) -> bool {
        use pickup::Answer;
        // Deltas of the waiting file that this batch does not hold (it was made
        // smaller since the file was written, e.g. a lower batch_max): when the
        // file was taken and this batch is all from it, they stay waiting on
        // the same answer, for the next batch, instead of being written again.
        let here: std::collections::HashSet<&str> =
            members.iter().map(|&i| batch[i].id.as_str()).collect();
        let rest: Vec<String> = w
            .ids
            .iter()
            .filter(|id| !here.contains(id.as_str()))
            .cloned()
            .collect();
        let batch_within_file = members.len() == batch.len();
        let keep_rest = batch_within_file && !rest.is_empty() && answer == Answer::Taken;
        let down = |out: &mut [Option<Outcome>], reason: String| {
            for &i in members {
                out[i] = Some(Outcome::Down {
                    reason: reason.clone(),
                });
            }
        };
        let timeout = humantime::format_duration(self.pickup.timeout);
        match answer {
            Answer::Silent { trouble } => {
                let trouble = trouble
                    .map(|e| format!(" (last trouble looking for it: {e})"))
                    .unwrap_or_default();
                down(
                    out,
                    format!(
                        "the importer has not taken {} within pickup_timeout ({timeout}); it stays in the outbox and is waited for again{trouble}",
                        w.file
                    ),
                );
                return false;
            }
            Answer::Stopping => {
                down(
                    out,
                    format!("stopping while {} waits for the importer", w.file),
                );
                return false;
            }
            Answer::Vanished => {
                let (dir, target) = (self.dir.clone(), self.target.clone());
                let forgot = tokio::task::spawn_blocking(move || pickup::forget(&dir, &target))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                let again = if forgot.is_ok() {
                    "its deltas will be written again"
                } else {
                    "it is waited for again"
                };
                down(
                    out,
                    format!(
                        "{} left the outbox without {} or {} within pickup_timeout ({timeout}); {again}",
                        w.file, self.pickup.ack_suffix, self.pickup.err_suffix
                    ),
                );
                return false;
            }
            Answer::Taken => {
                for &i in members {
                    out[i] = Some(Outcome::Delivered);
                }
            }
            Answer::Refused { reason, named } => {
                let file_err = format!("{}{}", w.file, self.pickup.err_suffix);
                let mut rest = Vec::new();
                for &i in members {
                    match named.iter().find(|(id, _)| *id == batch[i].id) {
                        Some((_, own)) => {
                            out[i] = Some(Outcome::Rejected {
                                reason: format!("the importer refused it ({file_err}): {own}"),
                            })
                        }
                        None => rest.push(i),
                    }
                }
                if rest.len() < members.len() {
                    // The records it named are refused; the others go again.
                    todo.push_front(Group {
                        members: rest,
                        halve: false,
                    });
                } else if w.ids.len() <= 1 {
                    // It stands alone: this is the record the importer refuses.
                    for i in rest {
                        out[i] = Some(Outcome::Rejected {
                            reason: format!("the importer refused it ({file_err}): {reason}"),
                        });
                    }
                } else {
                    // Refused whole, naming none: never blame the neighbours.
                    // Send it again in halves until the refused one stands alone
                    // (after a restart, only part of the file may be in this batch:
                    // that part goes again as it is).
                    tracing::info!(target_name = %self.target, file = %w.file, deltas = rest.len(), %reason, "the importer refused the whole file; sending it again in halves to find the refused records");
                    let whole = rest.len() == w.ids.len();
                    todo.push_front(Group {
                        halve: whole && rest.len() > 1,
                        members: rest,
                    });
                }
            }
        }
        if keep_rest {
            let narrowed = pickup::Waiting {
                file: w.file.clone(),
                ids: rest,
            };
            let (dir, target) = (self.dir.clone(), self.target.clone());
            tracing::info!(target_name = %self.target, file = %w.file, left = narrowed.ids.len(), "the importer took the file; its other deltas settle with the next batch");
            return match tokio::task::spawn_blocking(move || {
                pickup::narrow_manifest(&dir, &target, &narrowed)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
            {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(target_name = %self.target, error = %e, "cannot narrow the waiting file's manifest");
                    false
                }
            };
        }
        let (dir, target, w, p) = (
            self.dir.clone(),
            self.target.clone(),
            w.clone(),
            self.pickup.clone(),
        );
        match tokio::task::spawn_blocking(move || pickup::remove_settled(&dir, &target, &w, &p))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        {
            Ok(()) => true,
            Err(e) => {
                // Settled, but the answer could not be cleared: nothing more is
                // written until it is (the next delivery looks again).
                tracing::warn!(target_name = %self.target, error = %e, "cannot remove a settled file's answer");
                false
            }
        }
    }

    /// Writes the payloads `members` (indices into `batch`) as one file; its
    /// name, or the outcome for them all. `wait`: name it in the manifest
    /// before it appears (pickup).
    async fn write(
        &mut self,
        batch: &[Payload],
        members: &[usize],
        wait: bool,
    ) -> Result<String, Outcome> {
        let dir = self.dir.clone();
        let target = self.target.clone();
        let extension = self.extension.clone();
        let last = self.last_number;
        let (header, footer, control) = (
            self.header.clone(),
            self.footer.clone(),
            self.control.clone(),
        );
        let records: Vec<Vec<u8>> = members.iter().map(|&i| batch[i].bytes.clone()).collect();
        let ids: Option<Vec<String>> =
            wait.then(|| members.iter().map(|&i| batch[i].id.clone()).collect());
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
        let result = tokio::task::spawn_blocking(move || {
            write_batch(&dir, &target, &extension, last, ids, body)
        })
        .await;
        match result {
            Ok((used, outcome)) => {
                // A number once reserved is never written again, even if the
                // delivery failed after reserving it.
                if used.is_some() {
                    self.last_number = used;
                }
                match (outcome, used) {
                    (Ok(()), Some(number)) => Ok(file_name(&self.target, number, &self.extension)),
                    (Ok(()), None) => Err(Outcome::Down {
                        reason: "file writer reserved no number".into(),
                    }),
                    (Err(WriteError::Down(reason)), _) => Err(Outcome::Down { reason }),
                    (Err(WriteError::Refused(reason)), _) => Err(Outcome::Rejected { reason }),
                }
            }
            Err(e) => Err(Outcome::Down {
                reason: format!("file writer task failed: {e}"),
            }),
        }
    }
}

/// The outcomes, with any payload left unsettled counted as an outage.
fn finish(out: Vec<Option<Outcome>>, why: &str) -> Vec<Outcome> {
    out.into_iter()
        .map(|o| {
            o.unwrap_or_else(|| Outcome::Down {
                reason: why.to_string(),
            })
        })
        .collect()
}

/// A group refused whole, as two groups to send in turn (first half first).
fn halve(mut members: Vec<usize>, todo: &mut VecDeque<Group>) {
    if members.len() < 2 {
        todo.push_front(Group {
            members,
            halve: false,
        });
        return;
    }
    let second = members.split_off(members.len() / 2);
    todo.push_front(Group {
        members: second,
        halve: false,
    });
    todo.push_front(Group {
        members,
        halve: false,
    });
}

/// A crash between the manifest's fsync and the waiting file's rename left
/// the file under its temp name (fsynced: it holds the whole batch). Put it in
/// place, so the restart waits for it instead of writing a second copy.
fn finish_interrupted_placement(dir: &Path, target: &str) {
    let Ok(Some(w)) = pickup::read_manifest(dir, target) else {
        return;
    };
    let (path, tmp) = (dir.join(&w.file), dir.join(format!(".{}.tmp", w.file)));
    if path.exists() || !tmp.exists() {
        return;
    }
    let placed = fs::rename(&tmp, &path).and_then(|()| File::open(dir)?.sync_all());
    match placed {
        Ok(()) => {
            tracing::info!(target_name = %target, file = %path.display(), "put in place a waiting file a crash left under its temp name")
        }
        Err(e) => {
            // Better written again than taken for consumed: forget the wait.
            tracing::warn!(target_name = %target, file = %path.display(), error = %e, "cannot put a waiting file in place; its deltas will be written again");
            let _ = fs::remove_file(pickup::manifest_path(dir, target));
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
    let manifest_tmp = format!(".{target}.wait.tmp");
    let prefix = format!(".{target}-");
    let suffix = format!(".{extension}.tmp");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let batch_tmp = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(&suffix))
            .is_some_and(|n| n.len() == 12 && n.bytes().all(|b| b.is_ascii_digit()));
        if batch_tmp || name == marker_tmp || name == manifest_tmp {
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
    // The file a manifest waits for (it may be gone by now) was numbered too.
    if let Ok(Some(w)) = pickup::read_manifest(dir, target)
        && let Some(number) = w
            .file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<u64>().ok())
    {
        last = last.max(number);
    }
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
    wait: Option<Vec<String>>,
    body: impl FnOnce(u64) -> Result<Vec<u8>, String>,
) -> (Option<u64>, Result<(), WriteError>) {
    let mut refused = None;
    let (used, result) = write_numbered(dir, target, extension, last, wait, |number| {
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
    wait: Option<Vec<String>>,
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
    // With pickup, the temp's name must be durable before the manifest's: a
    // manifest naming a file that is neither in place nor under its temp name
    // reads as "consumed" after a power cut.
    if wait.is_some()
        && let Err(e) = File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail("fsync folder", dir, e))
    {
        let _ = fs::remove_file(&tmp);
        return (None, Err(e));
    }
    // Reserve the number, durably, before the file appears under it: a power
    // cut between the rename below and the folder's fsync takes the file back
    // (the importer may have seen it), and its number must not come back with
    // other content.
    // With pickup, the manifest naming the file and its deltas is made
    // durable by the same folder fsync, before the file appears: a restart
    // then waits for this file rather than writing a second copy.
    let marker = marker_path(dir, target);
    let marker_tmp = dir.join(format!(".{target}.last.tmp"));
    let manifest = pickup::manifest_path(dir, target);
    let manifest_tmp = pickup::manifest_tmp_path(dir, target);
    let reserved = write_synced(&marker_tmp, number.to_string().as_bytes())
        .and_then(|()| {
            fs::rename(&marker_tmp, &marker).map_err(|e| fail("rename into", &marker, e))
        })
        .and_then(|()| match wait {
            Some(ids) => {
                let w = pickup::Waiting {
                    file: name.clone(),
                    ids,
                };
                write_synced(&manifest_tmp, &pickup::encode(&w)).and_then(|()| {
                    fs::rename(&manifest_tmp, &manifest)
                        .map_err(|e| fail("rename into", &manifest, e))
                })
            }
            None => Ok(()),
        })
        .and_then(|()| {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| fail("fsync folder", dir, e))
        });
    if let Err(e) = reserved {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&marker_tmp);
        let _ = fs::remove_file(&manifest_tmp);
        // A manifest that names a file never placed would be waited for.
        let _ = fs::remove_file(&manifest);
        return (None, Err(e));
    }
    let placed = fs::rename(&tmp, &path)
        .map_err(|e| fail("rename into", &path, e))
        .and_then(|()| {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| fail("fsync folder", dir, e))
        });
    if placed.is_err() && !path.exists() {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&manifest);
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
        FileTransport::new(
            "out",
            dir.to_path_buf(),
            10,
            Duration::ZERO,
            Pickup::default(),
            &t,
        )
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
            t.deliver(&[payload("out:1"), payload("out:2")]).await[0],
            Outcome::Delivered
        );
        assert_eq!(
            fs::read_to_string(tmp.path().join("out-000000000001.csv")).unwrap(),
            "delivery_id,op,k\r\nout:1,create,1\r\nout:2,create,1\r\n"
        );
        // The legacy system consumes the file; a restarted transport goes on counting.
        fs::remove_file(tmp.path().join("out-000000000001.csv")).unwrap();
        let mut t = transport(tmp.path());
        assert_eq!(t.deliver(&[payload("out:3")]).await[0], Outcome::Delivered);
        assert!(tmp.path().join("out-000000000002.csv").exists());
    }

    #[tokio::test]
    async fn a_number_is_never_reused_after_a_failure_past_its_reservation() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = transport(tmp.path());
        assert_eq!(t.deliver(&[payload("out:1")]).await[0], Outcome::Delivered);
        // Something in the way of file 2: its rename into place fails.
        fs::create_dir(tmp.path().join("out-000000000002.csv")).unwrap();
        fs::write(tmp.path().join("out-000000000002.csv/x"), "").unwrap();
        assert!(matches!(
            t.deliver(&[payload("out:2")]).await[0],
            Outcome::Down { .. }
        ));
        assert_eq!(t.deliver(&[payload("out:2")]).await[0], Outcome::Delivered);
        assert!(
            tmp.path().join("out-000000000003.csv").is_file(),
            "number 2 was reserved: never reused"
        );
        // A restarted transport reads the reservation too.
        fs::remove_file(tmp.path().join("out-000000000003.csv")).unwrap();
        let mut t = transport(tmp.path());
        assert_eq!(t.deliver(&[payload("out:3")]).await[0], Outcome::Delivered);
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
        assert_eq!(t.deliver(&[payload("out:1")]).await[0], Outcome::Delivered);
        assert!(tmp.path().join("out-000000000007.csv").is_file());
    }

    fn with_pickup(dir: &Path, mode: PickupMode) -> FileTransport {
        let t = Translator::new(&Format::Csv(crate::translator::csv::CsvFormat::new(
            vec!["k".into()],
            "k".into(),
        )));
        let pickup = Pickup {
            mode,
            timeout: Duration::from_secs(20),
            ..Pickup::default()
        };
        FileTransport::new("out", dir.to_path_buf(), 10, Duration::ZERO, pickup, &t)
    }

    fn waiting(dir: &Path, file: &str, ids: &[&str]) {
        let w = pickup::Waiting {
            file: file.into(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        fs::write(pickup::manifest_path(dir, "out"), pickup::encode(&w)).unwrap();
    }

    /// Plays the importer: acks each `out-*.csv` of `dir` as it appears, until
    /// `n` are acked; returns their names and contents in order.
    fn acking_importer(dir: PathBuf, n: usize) -> std::thread::JoinHandle<Vec<(String, String)>> {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while seen.len() < n && std::time::Instant::now() < deadline {
                let mut names: Vec<String> = fs::read_dir(&dir)
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("out-") && n.ends_with(".csv"))
                    .collect();
                names.sort();
                for name in names {
                    if seen.iter().any(|(s, _)| *s == name) {
                        continue;
                    }
                    let text = fs::read_to_string(dir.join(&name)).unwrap();
                    fs::write(dir.join(format!("{name}.ack")), "").unwrap();
                    seen.push((name, text));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        })
    }

    #[tokio::test]
    async fn a_cut_between_manifest_and_rename_puts_the_waiting_file_in_place_not_a_second_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        waiting(dir, "out-000000000001.csv", &["out:1"]);
        fs::write(dir.join(".out-000000000001.csv.tmp"), "the batch").unwrap();
        fs::write(dir.join(".out.last"), "1").unwrap();
        let mut t = with_pickup(dir, PickupMode::Consumed);
        assert_eq!(
            fs::read_to_string(dir.join("out-000000000001.csv")).unwrap(),
            "the batch"
        );
        assert!(!dir.join(".out-000000000001.csv.tmp").exists());
        // The importer takes it: the re-leased delta is delivered, nothing rewritten.
        let file = dir.join("out-000000000001.csv");
        let taker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            fs::remove_file(file).unwrap();
        });
        assert_eq!(
            t.deliver(&[payload("out:1")]).await,
            vec![Outcome::Delivered]
        );
        taker.join().unwrap();
        assert_eq!(
            fs::read_dir(dir).unwrap().count(),
            1,
            "only .out.last is left"
        );
    }

    #[tokio::test]
    async fn a_file_still_waiting_is_answered_first_and_the_rest_of_the_batch_written_after() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        waiting(dir, "out-000000000001.csv", &["out:1", "out:9"]);
        fs::write(dir.join("out-000000000001.csv"), "written before").unwrap();
        fs::write(dir.join(".out.last"), "1").unwrap();
        let importer = acking_importer(dir.to_path_buf(), 2);
        let mut t = with_pickup(dir, PickupMode::AckFile);
        let got = t
            .deliver(&[payload("out:1"), payload("out:2"), payload("out:3")])
            .await;
        assert_eq!(got, vec![Outcome::Delivered; 3]);
        let seen = importer.join().unwrap();
        assert_eq!(seen[0].1, "written before");
        assert_eq!(seen[1].0, "out-000000000002.csv");
        assert_eq!(
            seen[1].1,
            "delivery_id,op,k\r\nout:2,create,1\r\nout:3,create,1\r\n"
        );
        assert!(!pickup::manifest_path(dir, "out").exists());
        assert_eq!(
            fs::read_dir(dir).unwrap().count(),
            1,
            "only .out.last is left"
        );
    }

    #[tokio::test]
    async fn a_file_taken_whole_settles_its_rest_with_the_next_smaller_batch_not_a_second_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // A file of four deltas waits (written before a restart with a larger
        // batch_max); the importer has taken it.
        let ids = ["out:1", "out:2", "out:3", "out:4"];
        waiting(dir, "out-000000000001.csv", &ids);
        fs::write(dir.join("out-000000000001.csv"), "written before").unwrap();
        fs::write(dir.join("out-000000000001.csv.ack"), "").unwrap();
        fs::write(dir.join(".out.last"), "1").unwrap();
        let mut t = with_pickup(dir, PickupMode::AckFile);
        // Now batches of two: the first two settle, the other two wait on the
        // same answer, and no file is written.
        let got = t.deliver(&[payload("out:1"), payload("out:2")]).await;
        assert_eq!(got, vec![Outcome::Delivered; 2]);
        let w = pickup::read_manifest(dir, "out")
            .unwrap()
            .expect("still waiting");
        assert_eq!(w.ids, ["out:3", "out:4"]);
        let got = t.deliver(&[payload("out:3"), payload("out:4")]).await;
        assert_eq!(got, vec![Outcome::Delivered; 2]);
        assert!(!pickup::manifest_path(dir, "out").exists());
        let left: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [".out.last"], "no second copy of any delta");
    }

    #[tokio::test]
    async fn switching_pickup_off_forgets_the_wait_and_writes_the_deltas_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        waiting(dir, "out-000000000001.csv", &["out:1"]);
        fs::write(dir.join("out-000000000001.csv"), "written before").unwrap();
        let mut t = transport(dir);
        assert!(!pickup::manifest_path(dir, "out").exists());
        assert_eq!(t.deliver(&[payload("out:1")]).await[0], Outcome::Delivered);
        assert!(dir.join("out-000000000002.csv").is_file());
    }

    #[tokio::test]
    async fn a_missing_outbox_is_an_outage() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = transport(&tmp.path().join("gone"));
        assert!(matches!(
            t.deliver(&[payload("out:1")]).await[0],
            Outcome::Down { .. }
        ));
    }
}
