//! Drop directories: inotify (or polling) plus a scan at start-up and after an
//! overflow. Each file is parsed whole, committed to the queue, and only then
//! deleted or archived; a bad file moves to `<inbox>/.rejected/` with a
//! `<name>.error` beside it.
//!
//! **Invariants:** a file leaves the inbox only after its changes are durable, or
//! whole into `.rejected/`; names starting with `.` or ending in `.tmp`/`.part`
//! are never touched; a FIFO is never opened; files are taken oldest first; no
//! single file stops its folder (one that cannot be quarantined is passed over,
//! since nothing from it is taken, and tried again at the next scan); every name
//! the file system allows fits in `.rejected/` with its note (shortened within
//! [`NAME_MAX`] when it must be; the note keeps the original name).

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::IngestStats;
use super::parse::parse_file;
use crate::config::{Limits, Watch};
use crate::queue::QueueError;
use crate::queue::handle::QueueHandle;
use crate::record::{ChangeSet, format_ms, now_ms};

/// How long a file must stay unmodified before a scan takes it (events take
/// closed files at once); protects files still being written at start-up.
const SETTLE: Duration = Duration::from_millis(500);
/// A scan at this interval catches anything the events missed.
const RESCAN_EVERY: Duration = Duration::from_secs(10);
/// The longest file name, in bytes, of the Linux file systems (ext4, xfs, btrfs,
/// tmpfs): a name we make from a dropped file's name must fit in it.
const NAME_MAX: usize = 255;
/// A quarantined name is at most this long, so that its note's temporary name,
/// `.<name>.error.part`, fits in [`NAME_MAX`] too.
const REJECTED_NAME_MAX: usize = NAME_MAX - ".".len() - ".error.part".len();

pub fn ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

enum Signal {
    Path(PathBuf),
    Rescan,
}

pub struct DropDir {
    pub watch: Watch,
    pub limits: Limits,
    pub queue: QueueHandle,
    pub stats: Arc<IngestStats>,
    /// Which collections are taken: a file with a change no connector receives
    /// is rejected whole (unless `keep_unrouted`).
    pub routing: Arc<super::Routing>,
    pub shutdown: watch::Receiver<bool>,
}

/// What became of one file.
#[derive(Debug, PartialEq)]
pub(super) enum Taken {
    Accepted,
    Rejected,
    Gone,
    /// Not now (busy queue, failed commit): try again later, before newer files.
    Later,
    /// Still being written (poll mode): look again shortly.
    NotYet,
    /// Bad, but it could not be moved to `.rejected/`: nothing from it is taken,
    /// so newer files go on past it; the next scan tries it again.
    Stuck,
}

/// A small file read and parsed, its changes waiting to be queued with its
/// neighbours'.
pub(super) struct Ready {
    path: PathBuf,
    name: String,
    identity: Identity,
    size: u64,
    set: ChangeSet,
}

/// What reading a file gave.
enum Prepared {
    /// Done with it (rejected, gone, not yet, later).
    Done(Taken),
    Ready(Ready),
    /// Over [`super::parts::PARTS_FROM_BYTES`]: taken in parts, on its own.
    Large(String),
}

/// Files read, oldest first, to be queued together.
#[derive(Default)]
struct Window {
    files: Vec<Ready>,
    bytes: u64,
}

impl Window {
    /// Most files queued in one write.
    const MAX_FILES: usize = 512;
    /// Most bytes of files held at once: the largest file taken whole
    /// ([`super::parts::PARTS_FROM_BYTES`]), so that a window's parsed changes
    /// (several times their bytes) cost no more memory than one such file did
    /// before windows.
    const MAX_BYTES: u64 = super::parts::PARTS_FROM_BYTES;

    /// Whether a file of `size` bytes would take the window past its bytes:
    /// queue the window before reading the file.
    fn no_room_for(&self, size: u64) -> bool {
        !self.files.is_empty() && self.bytes + size > Self::MAX_BYTES
    }

    fn push(&mut self, ready: Ready) {
        self.bytes += ready.size;
        self.files.push(ready);
    }

    fn is_full(&self) -> bool {
        self.files.len() >= Self::MAX_FILES || self.bytes >= Self::MAX_BYTES
    }
}

impl DropDir {
    /// Creates the folders and starts watching; returns once events flow, so the
    /// caller can say `ready`.
    pub fn start(self) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        use anyhow::Context;
        let dir = &self.watch.dir;
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the drop folder {}", dir.display()))?;
        fs::create_dir_all(dir.join(".rejected"))
            .with_context(|| format!("cannot create {}", dir.join(".rejected").display()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = make_watcher(dir, self.watch.poll, tx.clone())
            .with_context(|| format!("cannot watch the drop folder {}", dir.display()))?;
        // Watcher first, then the scan of what is already there.
        let _ = tx.send(Signal::Rescan);
        Ok(tokio::spawn(async move {
            let _keep_alive = watcher;
            self.run(rx).await
        }))
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Signal>) {
        let mut todo: BTreeSet<PathBuf> = BTreeSet::new();
        let mut rescan = true;
        let mut next_scan = tokio::time::Instant::now() + RESCAN_EVERY;
        // After a busy queue held files back: the next window is one file, so
        // that a queue still busy costs one file read, not a whole window's.
        let mut probe = false;
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            // Drain signals without waiting.
            while let Ok(sig) = rx.try_recv() {
                match sig {
                    Signal::Path(p) => {
                        todo.insert(p);
                    }
                    Signal::Rescan => rescan = true,
                }
            }
            let mut unsettled = false;
            let mut held_back = false;
            let mut passes: Vec<Vec<PathBuf>> = Vec::new();
            if rescan {
                rescan = false;
                next_scan = tokio::time::Instant::now() + RESCAN_EVERY;
                let (ready, fresh) = self.scan();
                unsettled |= fresh;
                passes.push(ready);
            }
            let mut paths: Vec<PathBuf> = std::mem::take(&mut todo).into_iter().collect();
            paths.sort_by_key(|p| (modified(p), p.clone()));
            passes.push(paths);
            'passes: for pass in passes {
                // Small files are read and parsed one by one, then queued a window
                // at a time: one commit, one fsync of the folder, for many files.
                let mut window = Window::default();
                for p in pass {
                    // Read a file only once there is room for it: the files
                    // held, parsed, stay within the window's bytes.
                    let size = p.symlink_metadata().map_or(0, |m| m.len());
                    if window.no_room_for(size)
                        && self.queue_window(&mut window).await == Taken::Later
                    {
                        held_back = true;
                        break 'passes;
                    }
                    let taken = match self.prepare(&p).await {
                        Prepared::Ready(ready) => {
                            window.push(ready);
                            if !window.is_full() && !probe {
                                continue;
                            }
                            // Taken: full windows again (held back: set below).
                            probe = false;
                            self.queue_window(&mut window).await
                        }
                        Prepared::Large(name) => match self.queue_window(&mut window).await {
                            Taken::Later => Taken::Later,
                            _ => self.take_in_parts(&p, &name).await,
                        },
                        Prepared::Done(Taken::Later) => {
                            // The files before it go first; it and newer ones wait.
                            self.queue_window(&mut window).await;
                            Taken::Later
                        }
                        Prepared::Done(taken) => taken,
                    };
                    match taken {
                        Taken::NotYet => unsettled = true,
                        // A file that must wait holds back every newer one, or a
                        // newer state could overtake it. The next scan, oldest
                        // first, takes them all in order.
                        Taken::Later => {
                            held_back = true;
                            break 'passes;
                        }
                        _ => {}
                    }
                    if *self.shutdown.borrow() {
                        return;
                    }
                }
                if self.queue_window(&mut window).await == Taken::Later {
                    held_back = true;
                    break 'passes;
                }
            }
            if held_back {
                probe = true;
                todo.clear();
                next_scan = tokio::time::Instant::now() + Duration::from_secs(1);
            } else if unsettled {
                next_scan = next_scan.min(tokio::time::Instant::now() + Duration::from_millis(250));
            }
            tokio::select! {
                sig = rx.recv() => match sig {
                    Some(Signal::Path(p)) if !held_back => { todo.insert(p); }
                    Some(Signal::Path(_)) => {}
                    Some(Signal::Rescan) => rescan = true,
                    None => return,
                },
                _ = tokio::time::sleep_until(next_scan) => rescan = true,
                _ = self.shutdown.changed() => return,
            }
            if held_back {
                // Whatever woke us, the next pass is the ordered scan.
                rescan = true;
                tokio::select! {
                    _ = tokio::time::sleep_until(next_scan) => {}
                    _ = self.shutdown.changed() => return,
                }
            }
        }
    }

    /// Candidate files, oldest first; and whether some were too fresh to take.
    fn scan(&self) -> (Vec<PathBuf>, bool) {
        let Ok(entries) = fs::read_dir(&self.watch.dir) else {
            tracing::warn!(dir = %self.watch.dir.display(), "cannot read the drop folder");
            return (Vec::new(), true);
        };
        let now = SystemTime::now();
        let mut unsettled = false;
        let mut files: Vec<(SystemTime, PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if ignored(&name.to_string_lossy()) {
                continue;
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if meta.is_file() && now.duration_since(mtime).unwrap_or_default() < SETTLE {
                unsettled = true;
                continue;
            }
            files.push((mtime, entry.path()));
        }
        files.sort();
        (files.into_iter().map(|(_, p)| p).collect(), unsettled)
    }

    /// Reads and parses one file: what became of it, or its changes ready to
    /// be queued (a large file is taken in parts instead).
    async fn prepare(&self, path: &Path) -> Prepared {
        match self.read_and_parse(path).await {
            Ok(ready) => ready,
            Err(taken) => Prepared::Done(taken),
        }
    }

    async fn read_and_parse(&self, path: &Path) -> Result<Prepared, Taken> {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Err(Taken::Gone);
        };
        if ignored(&name) || path.parent() != Some(self.watch.dir.as_path()) {
            return Err(Taken::Gone);
        }
        if self.watch.poll && modified(path).elapsed().unwrap_or_default() < SETTLE {
            // Polling sees a file as soon as it appears, maybe half-copied.
            return Err(Taken::NotYet);
        }
        if path
            .symlink_metadata()
            .is_ok_and(|m| m.is_file() && m.len() > super::parts::PARTS_FROM_BYTES)
        {
            return Ok(Prepared::Large(name));
        }
        let (bytes, identity) = match read_limited(path, self.limits.max_file_bytes) {
            Ok(b) => b,
            Err(ReadError::Gone) => return Err(Taken::Gone),
            Err(ReadError::Directory) => return Err(Taken::Gone),
            Err(ReadError::Bad(reason)) => return Err(self.reject(path, &name, &reason)),
            // The file's own mode: waiting will not change it, and it must not
            // hold back every newer file.
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(self.reject(path, &name, &format!("cannot read it: {e}")));
            }
            Err(ReadError::Io(e)) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read a dropped file; will try again");
                return Err(Taken::Later);
            }
        };
        let size = bytes.len() as u64;
        // Parsing a large file takes a while: keep it off the async threads.
        let (watch, limits, file_name) = (self.watch.clone(), self.limits, name.clone());
        let parsed =
            tokio::task::spawn_blocking(move || parse_file(&file_name, &bytes, &watch, &limits))
                .await;
        let parsed = match parsed {
            Ok(p) => p,
            // A bug of ours, but the same file would stop the parser again, and
            // every newer file with it.
            Err(e) if e.is_panic() => {
                tracing::error!(file = %name, "the parser failed on this file (a bug in hms-sync)");
                return Err(self.reject(
                    path,
                    &name,
                    "hms-sync's parser failed on this file (a bug in hms-sync: please report it with the file)",
                ));
            }
            Err(_) => {
                tracing::error!(file = %name, "the parser stopped unexpectedly; will try again");
                return Err(Taken::Later);
            }
        };
        let set = match parsed {
            Ok(s) => s,
            Err(e) => {
                if path.symlink_metadata().ok().map(|m| Identity::of(&m)) != Some(identity) {
                    // A newer file took the name meanwhile: judge that one instead.
                    return Err(Taken::Gone);
                }
                return Err(self.reject(path, &name, &e.to_string()));
            }
        };
        let unrouted = set
            .changes
            .iter()
            .map(|c| c.record.collection.as_str())
            .chain(set.full_collections.iter().map(String::as_str))
            .find_map(|c| self.routing.check(c).err());
        if let Some(reason) = unrouted {
            return Err(self.reject(path, &name, &reason));
        }
        Ok(Prepared::Ready(Ready {
            path: path.to_path_buf(),
            name,
            identity,
            size,
            set,
        }))
    }

    /// Queues the window's files in one atomic write (all or none) and, once
    /// that is durable, removes them from the inbox (one fsync of the folder
    /// for all). Empty: nothing to do.
    async fn queue_window(&self, window: &mut Window) -> Taken {
        if window.files.is_empty() {
            return Taken::Accepted;
        }
        let files = std::mem::take(&mut window.files);
        window.bytes = 0;
        let mut sets = Vec::with_capacity(files.len());
        let mut taken = Vec::with_capacity(files.len());
        for f in files {
            let collections: Vec<String> = f
                .set
                .changes
                .iter()
                .map(|c| c.record.collection.clone())
                .collect();
            taken.push((
                f.path,
                f.name,
                f.identity,
                f.set.changes.len() as u64,
                collections,
            ));
            sets.push(f.set);
        }
        match self.queue.ingest_all(sets).await {
            Ok(_) => {
                for (path, name, identity, changes, collections) in &taken {
                    self.routing
                        .count_accepted(collections.iter().map(String::as_str));
                    IngestStats::add(&self.stats.changes, *changes);
                    IngestStats::add(&self.stats.files_accepted, 1);
                    if let Err(e) = self.remove_unsynced(path, name, *identity) {
                        // Accepted and durable; taking it again later changes nothing.
                        tracing::error!(file = %path.display(), error = %e, "accepted, but cannot remove it from the inbox");
                    }
                    self.stats.took_file(&self.watch.dir, name);
                    tracing::info!(file = %name, changes, "file accepted");
                }
                if let Err(e) = fs::File::open(&self.watch.dir).and_then(|d| d.sync_all()) {
                    tracing::error!(dir = %self.watch.dir.display(), error = %e, "accepted, but cannot make the removals from the inbox durable");
                }
                Taken::Accepted
            }
            Err(QueueError::Busy(reason)) => {
                IngestStats::add(&self.stats.busy, taken.len() as u64);
                tracing::debug!(files = taken.len(), %reason, "ingestion paused; the files wait in the inbox");
                Taken::Later
            }
            Err(e) => {
                tracing::error!(files = taken.len(), error = %e, "cannot queue files; they stay in the inbox");
                Taken::Later
            }
        }
    }

    pub(super) fn remove_or_archive(
        &self,
        path: &Path,
        name: &str,
        identity: Identity,
    ) -> std::io::Result<()> {
        if self.remove_unsynced(path, name, identity)? {
            fs::File::open(&self.watch.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// [`DropDir::remove_or_archive`] without the folder's fsync (the caller
    /// does it once for many files); false if a newer file holds the name.
    fn remove_unsynced(
        &self,
        path: &Path,
        name: &str,
        identity: Identity,
    ) -> std::io::Result<bool> {
        let removed = remove_if_unchanged(path, name, identity, self.watch.archive_dir.as_deref())?;
        if !removed {
            tracing::info!(file = %name, "a newer file took this name meanwhile; it is taken next");
        }
        Ok(removed)
    }

    /// Moves the file whole to `.rejected/` and writes `<name>.error` beside it
    /// (the name shortened if the note's name would not fit in [`NAME_MAX`]).
    pub(super) fn reject(&self, path: &Path, name: &str, reason: &str) -> Taken {
        let rejected = self.watch.dir.join(".rejected");
        let dest = free_name(&rejected, name, REJECTED_NAME_MAX);
        if let Err(e) = fs::create_dir_all(&rejected).and_then(|_| fs::rename(path, &dest)) {
            tracing::error!(file = %path.display(), error = %e, "cannot move a bad file to .rejected; newer files go on, this one is tried again later");
            return Taken::Stuck;
        }
        IngestStats::add(&self.stats.files_rejected, 1);
        let dest_name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let renamed = if dest_name == name {
            String::new()
        } else {
            format!("moved as: {dest_name}\n")
        };
        let note = format!(
            "hms-sync could not take this file; nothing from it was ingested.\n\
             file:   {}\n\
             {renamed}\
             when:   {}\n\
             reason: {reason}\n\
             Fix the file and move it back into {} to try again.\n",
            path.display(),
            format_ms(now_ms()),
            self.watch.dir.display()
        );
        // Written aside and renamed, so that whoever sees the note reads all of it.
        let tmp = rejected.join(format!(".{dest_name}.error.part"));
        let note_path = rejected.join(format!("{dest_name}.error"));
        if let Err(e) = fs::write(&tmp, note).and_then(|_| fs::rename(&tmp, &note_path)) {
            tracing::warn!(error = %e, "cannot write the .error note");
        }
        tracing::warn!(file = %name, %reason, moved_to = %dest.display(), "file rejected");
        Taken::Rejected
    }
}

/// Removes (or archives) the file we read — not a newer one renamed onto the same
/// name meanwhile, which its own event brings in. False if the name now holds
/// another file. (The caller fsyncs the folder, so an old file cannot come back
/// after a power loss.)
fn remove_if_unchanged(
    path: &Path,
    name: &str,
    identity: Identity,
    archive: Option<&Path>,
) -> std::io::Result<bool> {
    if path.symlink_metadata().ok().map(|m| Identity::of(&m)) != Some(identity) {
        return Ok(false);
    }
    match archive {
        // Already gone (the writer removed it): nothing left to do.
        None => match fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            other => other.map(|()| true),
        },
        Some(archive) => {
            fs::create_dir_all(archive)?;
            move_file(path, &free_name(archive, name, NAME_MAX)).map(|()| true)
        }
    }
}

fn modified(p: &Path) -> SystemTime {
    p.symlink_metadata()
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A free name in `dir` at most `max` bytes long: `name` itself, else
/// `name.<ms>`; when that is too long, the start of `name`, `~<ms>` and its
/// extension (`<start>~<ms>.json`), cut on a character boundary.
fn free_name(dir: &Path, name: &str, max: usize) -> PathBuf {
    let plain = dir.join(name);
    if name.len() <= max && plain.symlink_metadata().is_err() {
        return plain;
    }
    let mut n = now_ms();
    loop {
        let candidate = dir.join(disambiguated(name, n, max));
        if candidate.symlink_metadata().is_err() {
            return candidate;
        }
        n += 1;
    }
}

/// `name.<n>` if it fits in `max` bytes, else `<start of name>~<n><extension>`.
fn disambiguated(name: &str, n: u64, max: usize) -> String {
    let plain = format!("{name}.{n}");
    if plain.len() <= max {
        return plain;
    }
    // Keep a short extension, so the file still says what it is.
    let ext = name
        .rfind('.')
        .map(|i| &name[i..])
        .filter(|e| e.len() <= 16 && e.len() < name.len())
        .unwrap_or("");
    let tail = format!("~{n}{ext}");
    let mut cut = max.saturating_sub(tail.len()).min(name.len() - ext.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{tail}", &name[..cut])
}

/// rename, or copy + fsync + remove across filesystems.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            fs::copy(from, to)?;
            fs::File::open(to)?.sync_all()?;
            fs::remove_file(from)
        }
        Err(e) => Err(e),
    }
}

pub(super) enum ReadError {
    Gone,
    Directory,
    /// The file itself is unacceptable: quarantine it.
    Bad(String),
    Io(std::io::Error),
}

/// Which file a path named when we read it (a producer may rename a newer file
/// onto the same name while we work).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Identity {
    /// Device, inode, length, modification time (ns), as the queue keeps them.
    pub(super) fn as_tuple(&self) -> (u64, u64, u64, i64) {
        (self.dev, self.ino, self.len, self.mtime_ns as i64)
    }

    pub(super) fn of(m: &fs::Metadata) -> Identity {
        use std::os::unix::fs::MetadataExt;
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        }
    }
}

/// Reads a regular file of at most `limit` bytes without following links or
/// blocking on FIFOs.
fn read_limited(path: &Path, limit: u64) -> Result<(Vec<u8>, Identity), ReadError> {
    let (file, identity) = open_limited(path, limit)?;
    let mut bytes = Vec::with_capacity(identity.len.min(limit) as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64, limit));
    }
    Ok((bytes, identity))
}

fn too_big(len: u64, limit: u64) -> ReadError {
    ReadError::Bad(format!(
        "file is {len} bytes, over the limit of {limit} bytes ([limits] max_file_bytes)"
    ))
}

/// Opens a regular file of at most `limit` bytes without following links or
/// blocking on FIFOs.
pub(super) fn open_limited(path: &Path, limit: u64) -> Result<(fs::File, Identity), ReadError> {
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Gone),
        Err(e) => return Err(ReadError::Io(e)),
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(ReadError::Directory);
    }
    if !ft.is_file() {
        let what = if ft.is_symlink() {
            "a symbolic link"
        } else if ft.is_fifo() {
            "a FIFO (named pipe)"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(ReadError::Bad(format!(
            "not a regular file but {what}; drop plain files only"
        )));
    }
    if meta.len() > limit {
        return Err(too_big(meta.len(), limit));
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::Gone,
            _ => ReadError::Io(e),
        })?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::Bad(
            "the file was replaced by something that is not a regular file".into(),
        ));
    }
    Ok((file, Identity::of(&meta)))
}

fn make_watcher(
    dir: &Path,
    poll: bool,
    tx: mpsc::UnboundedSender<Signal>,
) -> notify::Result<Box<dyn Watcher + Send>> {
    // Never block notify's thread: forward into the channel.
    let handler = move |res: notify::Result<notify::Event>| {
        let event = match res {
            Ok(ev) => ev,
            Err(_) => {
                let _ = tx.send(Signal::Rescan);
                return;
            }
        };
        if event.need_rescan() {
            let _ = tx.send(Signal::Rescan);
            return;
        }
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        let path = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => event.paths.first(),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => event.paths.first(),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.get(1),
            // Polling sees creations and changes only.
            EventKind::Create(_) | EventKind::Modify(_) if poll => event.paths.first(),
            // A created regular file is taken when it is closed; anything else (a
            // FIFO, a link) will never be "closed after writing": look at it now.
            EventKind::Create(CreateKind::File | CreateKind::Other | CreateKind::Any) => event
                .paths
                .first()
                .filter(|p| p.symlink_metadata().is_ok_and(|m| !m.is_file())),
            _ => None,
        };
        if let Some(p) = path {
            let _ = tx.send(Signal::Path(p.clone()));
        }
    };
    let mut watcher: Box<dyn Watcher + Send> = if poll {
        let config = notify::Config::default().with_poll_interval(Duration::from_secs(2));
        Box::new(notify::PollWatcher::new(handler, config)?)
    } else {
        Box::new(notify::recommended_watcher(handler)?)
    };
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_file_renamed_onto_the_name_is_not_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("permits.json");
        fs::write(&path, "{\"v\":1}").unwrap();
        let (_, identity) = read_limited(&path, 100).ok().unwrap();
        // The producer renames version 2 onto the same name while we work.
        fs::write(tmp.path().join(".v2.part"), "{\"v\":2}").unwrap();
        fs::rename(tmp.path().join(".v2.part"), &path).unwrap();
        assert!(!remove_if_unchanged(&path, "permits.json", identity, None).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"v\":2}");
        let (_, identity) = read_limited(&path, 100).ok().unwrap();
        assert!(remove_if_unchanged(&path, "permits.json", identity, None).unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn ignored_names() {
        assert!(ignored(".hidden.json"));
        assert!(ignored("a.json.tmp"));
        assert!(ignored("a.json.part"));
        assert!(!ignored("a.json"));
    }

    #[test]
    fn fifo_symlink_and_size_limit_are_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("p.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(matches!(read_limited(&fifo, 100), Err(ReadError::Bad(m)) if m.contains("FIFO")));
        let target = tmp.path().join("real.json");
        fs::write(&target, "{}").unwrap();
        let link = tmp.path().join("l.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(
            matches!(read_limited(&link, 100), Err(ReadError::Bad(m)) if m.contains("symbolic link"))
        );
        let sparse = tmp.path().join("big.json");
        fs::File::create(&sparse)
            .unwrap()
            .set_len(10 << 30)
            .unwrap();
        assert!(
            matches!(read_limited(&sparse, 1 << 20), Err(ReadError::Bad(m)) if m.contains("max_file_bytes"))
        );
        assert!(matches!(
            read_limited(&tmp.path().join("nope"), 100),
            Err(ReadError::Gone)
        ));
        assert_eq!(
            read_limited(&target, 100).ok().map(|(b, _)| b),
            Some(b"{}".to_vec())
        );
    }

    #[test]
    fn made_up_names_fit_and_keep_their_extension() {
        assert_eq!(disambiguated("a.json", 7, 255), "a.json.7");
        let long = format!("{}.json", "n".repeat(250));
        let d = disambiguated(&long, 1_700_000_000_000, REJECTED_NAME_MAX);
        assert_eq!(d.len(), REJECTED_NAME_MAX, "{d}");
        assert!(d.ends_with("~1700000000000.json"), "{d}");
        // Cut on a character boundary: 'é' is two bytes.
        let accented = format!("{}.csv", "\u{e9}".repeat(126));
        let d = disambiguated(&accented, 5, REJECTED_NAME_MAX);
        assert!(d.len() <= REJECTED_NAME_MAX && d.ends_with("~5.csv"), "{d}");
        // No extension, or one too long to be one.
        let d = disambiguated(&"x".repeat(255), 5, 100);
        assert_eq!(d, format!("{}~5", "x".repeat(98)));
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(&long), "").unwrap();
        let free = free_name(tmp.path(), &long, REJECTED_NAME_MAX);
        assert!(free.file_name().unwrap().len() <= REJECTED_NAME_MAX);
        assert_ne!(free, tmp.path().join(&long));
    }
}
