//! `PowerFs`: a FUSE file system, run inside the test binary, that can lose power.
//!
//! Everything passes through to a backing folder, but the file system remembers
//! what a power cut would take back, and [`PowerFs::cut`] takes it back:
//!
//! - **File data.** Each write or truncate records the bytes and the length it
//!   replaced (an undo log per inode). An `fsync` or `fdatasync` of the file (the
//!   FUSE fsync op, either flag; also what `O_SYNC`/`O_DSYNC` writes turn into)
//!   clears the log. A cut rolls every file back to its content at its last
//!   fsync. `sync_file_range`, `close`, `flush` and `release` do not count.
//! - **Names.** Creating, renaming and removing a file or folder (create, mkdir,
//!   rename, unlink, rmdir) is durable only once the folder that holds the name
//!   has been fsynced (the FUSE fsyncdir op) after it; a rename across folders
//!   needs both folders fsynced (the new name's folder and the old one's). A cut
//!   undoes every name change that is not durable, newest first: a created file
//!   disappears even if its data was fsynced, a removed file comes back (with its
//!   content at its last fsync; removed files wait in a graveyard outside the
//!   mount until their removal is durable), a renamed file goes back to its old
//!   name, and a file that a rename replaced comes back too. A folder whose
//!   creation is undone disappears with everything in it. If an undo finds its
//!   way blocked (the old name taken by a durable change made later), the file
//!   it would restore is lost, which is counted in [`CutReport::conflicts`].
//!   This is stricter than ext4 (whose journal commits all name changes in order,
//!   so one fsync makes older name changes elsewhere durable too) and than LazyFS.
//! - **Nothing cached.** No writeback cache, every open replies `FOPEN_DIRECT_IO`,
//!   and entries and attributes have a zero TTL: after a cut every read comes
//!   from the backing folder.
//! - **Diagnostic mode.** `HMS_POWERFS_NAMES=at-once` makes every name change
//!   durable at once (file data still needs its fsync), like LazyFS: it tells
//!   lost data from lost names. The tests run strict.
//! - **A dead disk.** After `cut()` every operation fails with EIO until
//!   [`PowerFs::power_on`], so a process that still runs (the daemon, when the
//!   power is cut before it is killed) cannot write after the cut.
//!
//! Locks are left to the kernel (no lock ops: the kernel keeps `flock` and POSIX
//! locks locally, which is what a single machine needs). Unix sockets cannot live
//! on the mount. `statfs` passes the backing file system through (the daemon
//! checks free disk space).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;
/// The `parent` of a node that waits in the graveyard.
const GRAVE: u64 = u64::MAX;

/// What one cut took back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CutReport {
    /// Files whose data was rolled back (written since their last fsync).
    pub files_rolled_back: usize,
    /// Bytes-changing writes and truncates undone.
    pub writes_undone: usize,
    /// Name changes undone (create, mkdir, rename, unlink, rmdir).
    pub names_undone: usize,
    /// Undos that found their way blocked (see the module docs).
    pub conflicts: usize,
}

/// Counters since the mount, for test output.
#[derive(Clone, Debug, Default)]
pub struct FsStats {
    pub writes: u64,
    pub fsyncs: u64,
    pub fsyncdirs: u64,
    pub cuts: u64,
    pub eio_while_off: u64,
}

/// One write or truncate, undone by: set the length back to `old_len`, then
/// write `old` back at `offset`.
struct Undo {
    offset: u64,
    old: Vec<u8>,
    old_len: u64,
}

enum NsOp {
    Create {
        dir: u64,
        name: OsString,
        ino: u64,
    },
    Unlink {
        dir: u64,
        name: OsString,
        ino: u64,
        grave: OsString,
    },
    Rename {
        from_dir: u64,
        from_name: OsString,
        to_dir: u64,
        to_name: OsString,
        ino: u64,
        /// What the rename replaced, kept in the graveyard.
        replaced: Option<(u64, OsString)>,
    },
}

struct Pending {
    op: NsOp,
    /// Folders that still have to be fsynced for the op to be durable.
    needs: HashSet<u64>,
}

struct Node {
    parent: u64,
    name: OsString,
    backing: u64,
}

enum Handle {
    File {
        ino: u64,
        file: File,
        append: bool,
    },
    Dir {
        ino: u64,
        entries: Vec<(u64, FileType, OsString)>,
    },
}

struct State {
    data: PathBuf,
    grave: PathBuf,
    nodes: HashMap<u64, Node>,
    by_backing: HashMap<u64, u64>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    undo: HashMap<u64, Vec<Undo>>,
    log: Vec<Pending>,
    grave_seq: u64,
    powered: bool,
    /// Diagnostic mode: name changes are durable at once (data still needs
    /// fsync), as under LazyFS; separates lost data from lost names.
    names_at_once: bool,
    stats: FsStats,
}

/// `HMS_POWERFS_LOG=1` prints what each cut takes back.
fn verbose() -> bool {
    std::env::var_os("HMS_POWERFS_LOG").is_some_and(|v| v == "1")
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn kind_of(m: &fs::Metadata) -> FileType {
    FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

fn attr(ino: u64, m: &fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind_of(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

/// Opens a backing file with the flags a FUSE open passed, minus the ones this
/// file system handles itself (create, truncate, append, sync, direct).
fn open_backing(path: &Path, flags: i32, create_mode: Option<u32>) -> io::Result<File> {
    let acc = flags & libc::O_ACCMODE;
    let mut o = fs::OpenOptions::new();
    // Always readable: a write first reads the bytes it replaces (we run as root).
    o.read(true)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR);
    if let Some(mode) = create_mode {
        o.create_new(true).mode(mode).write(true);
    }
    let keep = flags & (libc::O_NOFOLLOW | libc::O_CLOEXEC);
    o.custom_flags(keep);
    o.open(path)
}

impl State {
    fn path(&self, ino: u64) -> Option<PathBuf> {
        if ino == ROOT {
            return Some(self.data.clone());
        }
        let mut names = Vec::new();
        let mut at = ino;
        for _ in 0..4096 {
            if at == ROOT {
                let mut p = self.data.clone();
                for n in names.iter().rev() {
                    p.push(n);
                }
                return Some(p);
            }
            let node = self.nodes.get(&at)?;
            if node.parent == GRAVE {
                return Some(self.grave.join(&node.name));
            }
            names.push(node.name.clone());
            at = node.parent;
        }
        None
    }

    fn child(&self, dir: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(dir).ok_or(Errno::ENOENT)?.join(name))
    }

    /// The node for a backing file found at `dir/name`, created or moved there.
    fn register(&mut self, dir: u64, name: &OsStr, m: &fs::Metadata) -> u64 {
        let backing = m.ino();
        let ino = match self.by_backing.get(&backing) {
            Some(&ino) => ino,
            None => {
                let ino = self.next_ino;
                self.next_ino += 1;
                self.by_backing.insert(backing, ino);
                ino
            }
        };
        self.nodes.insert(
            ino,
            Node {
                parent: dir,
                name: name.to_os_string(),
                backing,
            },
        );
        ino
    }

    fn forget_node(&mut self, ino: u64) {
        if let Some(node) = self.nodes.remove(&ino) {
            self.by_backing.remove(&node.backing);
        }
        self.undo.remove(&ino);
    }

    fn lookup(&mut self, dir: u64, name: &OsStr) -> Result<(u64, fs::Metadata), Errno> {
        let path = self.child(dir, name)?;
        let m = fs::symlink_metadata(&path).map_err(|e| errno(&e))?;
        let ino = self.register(dir, name, &m);
        Ok((ino, m))
    }

    fn metadata(&self, ino: u64, fh: Option<u64>) -> Result<fs::Metadata, Errno> {
        if let Some(Handle::File { file, .. }) = fh.and_then(|fh| self.handles.get(&fh)) {
            return file.metadata().map_err(|e| errno(&e));
        }
        let path = self.path(ino).ok_or(Errno::ENOENT)?;
        fs::symlink_metadata(path).map_err(|e| errno(&e))
    }

    /// Records what a write of `len` bytes at `offset` (or a truncate to
    /// `offset`, with `len` = everything after it) replaces.
    fn remember(&mut self, ino: u64, file: &File, offset: u64, len: u64) -> io::Result<()> {
        let old_len = file.metadata()?.len();
        let end = offset.saturating_add(len).min(old_len);
        let mut old = vec![0; end.saturating_sub(offset) as usize];
        if !old.is_empty() {
            file.read_exact_at(&mut old, offset)?;
        }
        self.undo.entry(ino).or_default().push(Undo {
            offset,
            old,
            old_len,
        });
        Ok(())
    }

    fn truncate(&mut self, ino: u64, file: &File, size: u64) -> io::Result<()> {
        self.remember(ino, file, size, u64::MAX)?;
        file.set_len(size)
    }

    fn log(&mut self, op: NsOp) {
        if self.names_at_once {
            return;
        }
        let needs = match &op {
            NsOp::Create { dir, .. } | NsOp::Unlink { dir, .. } => HashSet::from([*dir]),
            NsOp::Rename {
                from_dir, to_dir, ..
            } => HashSet::from([*from_dir, *to_dir]),
        };
        self.log.push(Pending { op, needs });
    }

    /// Moves `dir/name` (node `ino`) into the graveyard; returns its grave name.
    fn bury(&mut self, path: &Path, ino: u64) -> io::Result<OsString> {
        self.grave_seq += 1;
        let grave = OsString::from(format!("g{}", self.grave_seq));
        fs::rename(path, self.grave.join(&grave))?;
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.parent = GRAVE;
            node.name = grave.clone();
        }
        Ok(grave)
    }

    fn purge(&mut self, grave: &OsStr, ino: u64) {
        let path = self.grave.join(grave);
        let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
        self.forget_node(ino);
    }

    fn fsyncdir(&mut self, dir: u64) {
        self.stats.fsyncdirs += 1;
        let mut kept = Vec::with_capacity(self.log.len());
        for mut p in std::mem::take(&mut self.log) {
            p.needs.remove(&dir);
            if !p.needs.is_empty() {
                kept.push(p);
                continue;
            }
            match p.op {
                NsOp::Unlink { grave, ino, .. } => self.purge(&grave, ino),
                NsOp::Rename {
                    replaced: Some((ino, grave)),
                    ..
                } => self.purge(&grave, ino),
                _ => {}
            }
        }
        self.log = kept;
    }

    /// Makes everything durable, as if every file and folder had been fsynced.
    fn sync_everything(&mut self) {
        self.undo.clear();
        let dirs: HashSet<u64> = self.log.iter().flat_map(|p| p.needs.clone()).collect();
        for d in dirs {
            self.fsyncdir(d);
        }
        debug_assert!(self.log.is_empty());
    }

    /// Moves what is at `from` to `to` if `from` is node `ino` and `to` is free.
    fn move_back(&mut self, from: Option<PathBuf>, to: Option<PathBuf>, ino: u64) -> bool {
        let (Some(from), Some(to)) = (from, to) else {
            return false;
        };
        let is_it = fs::symlink_metadata(&from)
            .ok()
            .is_some_and(|m| self.nodes.get(&ino).is_some_and(|n| n.backing == m.ino()));
        if !is_it || fs::symlink_metadata(&to).is_ok() {
            return false;
        }
        fs::rename(&from, &to).is_ok()
    }

    fn cut(&mut self) -> CutReport {
        self.powered = false;
        self.stats.cuts += 1;
        let mut report = CutReport::default();
        // 1. File data back to its last fsync (graveyard files too: they may come back).
        for (ino, undos) in std::mem::take(&mut self.undo) {
            let Some(path) = self.path(ino) else { continue };
            let Ok(file) = fs::OpenOptions::new().read(true).write(true).open(&path) else {
                continue;
            };
            report.files_rolled_back += 1;
            if verbose() {
                let bytes: usize = undos.iter().map(|u| u.old.len()).sum();
                eprintln!(
                    "powerfs cut: {} rolled back: {} writes, {bytes} old bytes restored, length {} -> {}",
                    self.shown(&path),
                    undos.len(),
                    fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                    undos.first().map(|u| u.old_len).unwrap_or(0)
                );
            }
            for u in undos.iter().rev() {
                report.writes_undone += 1;
                let _ = file.set_len(u.old_len);
                let _ = file.write_all_at(&u.old, u.offset);
            }
        }
        // 2. Name changes that are not durable, newest first.
        for p in std::mem::take(&mut self.log).into_iter().rev() {
            report.names_undone += 1;
            if verbose() {
                eprintln!("powerfs cut: undo {}", self.describe(&p.op));
            }
            match p.op {
                NsOp::Create { dir, name, ino } => {
                    if let Some(path) = self.path(dir).map(|d| d.join(&name)) {
                        let ours = fs::symlink_metadata(&path).ok().is_some_and(|m| {
                            self.nodes.get(&ino).is_some_and(|n| n.backing == m.ino())
                        });
                        if ours {
                            let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
                        }
                    }
                    self.forget_node(ino);
                }
                NsOp::Unlink {
                    dir,
                    name,
                    ino,
                    grave,
                } => {
                    let to = self.path(dir).map(|d| d.join(&name));
                    if self.move_back(Some(self.grave.join(&grave)), to, ino) {
                        if let Some(n) = self.nodes.get_mut(&ino) {
                            n.parent = dir;
                            n.name = name;
                        }
                    } else {
                        report.conflicts += 1;
                        self.purge(&grave, ino);
                    }
                }
                NsOp::Rename {
                    from_dir,
                    from_name,
                    to_dir,
                    to_name,
                    ino,
                    replaced,
                } => {
                    let now = self.path(to_dir).map(|d| d.join(&to_name));
                    let before = self.path(from_dir).map(|d| d.join(&from_name));
                    if self.move_back(now, before, ino) {
                        if let Some(n) = self.nodes.get_mut(&ino) {
                            n.parent = from_dir;
                            n.name = from_name;
                        }
                    } else {
                        report.conflicts += 1;
                    }
                    if let Some((old, grave)) = replaced {
                        let to = self.path(to_dir).map(|d| d.join(&to_name));
                        if self.move_back(Some(self.grave.join(&grave)), to, old) {
                            if let Some(n) = self.nodes.get_mut(&old) {
                                n.parent = to_dir;
                                n.name = to_name;
                            }
                        } else {
                            report.conflicts += 1;
                            self.purge(&grave, old);
                        }
                    }
                }
            }
        }
        // 3. The graveyard holds only what is gone for good now.
        if let Ok(entries) = fs::read_dir(&self.grave) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
        }
        // 4. Forget nodes whose backing file is gone or is another file now.
        let stale: Vec<u64> = self
            .nodes
            .iter()
            .filter(|&(&ino, node)| {
                let here = self.path(ino).and_then(|p| fs::symlink_metadata(p).ok());
                here.is_none_or(|m| m.ino() != node.backing)
            })
            .map(|(&ino, _)| ino)
            .collect();
        for ino in stale {
            self.forget_node(ino);
        }
        // Handles of the dead process are released by the kernel; drop ours now
        // so that no file stays open on a file the cut removed.
        self.handles.clear();
        report
    }

    /// A backing path as the mount shows it, for messages.
    fn shown(&self, path: &Path) -> String {
        match path.strip_prefix(&self.data) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => format!("(removed) {}", path.display()),
        }
    }

    fn describe(&self, op: &NsOp) -> String {
        let at = |dir: u64, name: &OsStr| {
            self.path(dir)
                .map(|d| self.shown(&d.join(name)))
                .unwrap_or_else(|| format!("?/{}", name.to_string_lossy()))
        };
        match op {
            NsOp::Create { dir, name, .. } => format!("create {}", at(*dir, name)),
            NsOp::Unlink { dir, name, .. } => format!("remove {}", at(*dir, name)),
            NsOp::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
                replaced,
                ..
            } => format!(
                "rename {} -> {}{}",
                at(*from_dir, from_name),
                at(*to_dir, to_name),
                if replaced.is_some() {
                    " (replacing)"
                } else {
                    ""
                }
            ),
        }
    }

    fn new_fh(&mut self, h: Handle) -> u64 {
        self.next_fh += 1;
        self.handles.insert(self.next_fh, h);
        self.next_fh
    }
}

/// The FUSE side: every op takes the state's lock.
struct Ops(Arc<Mutex<State>>);

impl Ops {
    /// The state, or EIO while the power is off.
    fn on(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !s.powered {
            s.stats.eio_while_off += 1;
            return Err(Errno::EIO);
        }
        Ok(s)
    }
}

macro_rules! on_or_reply {
    ($self:ident, $reply:ident) => {
        match $self.on() {
            Ok(s) => s,
            Err(e) => return $reply.error(e),
        }
    };
}

impl Filesystem for Ops {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = on_or_reply!(self, reply);
        match s.lookup(parent.0, name) {
            Ok((ino, m)) => reply.entry(&TTL, &attr(ino, &m), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = on_or_reply!(self, reply);
        match s.metadata(ino.0, fh.map(|f| f.0)) {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = on_or_reply!(self, reply);
        let ino = ino.0;
        let Some(path) = s.path(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let result = (|| -> io::Result<()> {
            if let Some(size) = size {
                let file = match fh.and_then(|f| s.handles.get(&f.0)) {
                    Some(Handle::File { file, .. }) => file.try_clone()?,
                    _ => fs::OpenOptions::new().read(true).write(true).open(&path)?,
                };
                s.truncate(ino, &file, size)?;
            }
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid)?;
            }
            if atime.is_some() || mtime.is_some() {
                let ts = |t: Option<TimeOrNow>| match t {
                    None => libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_OMIT,
                    },
                    Some(TimeOrNow::Now) => libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_NOW,
                    },
                    Some(TimeOrNow::SpecificTime(t)) => {
                        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                        libc::timespec {
                            tv_sec: d.as_secs() as libc::time_t,
                            tv_nsec: d.subsec_nanos() as _,
                        }
                    }
                };
                let times = [ts(atime), ts(mtime)];
                let c = CString::new(path.as_os_str().as_bytes())?;
                // SAFETY: a valid NUL-terminated path and two timespecs.
                let rc = unsafe {
                    libc::utimensat(
                        libc::AT_FDCWD,
                        c.as_ptr(),
                        times.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })();
        match result.and_then(|()| fs::symlink_metadata(&path)) {
            Ok(m) => reply.attr(&TTL, &attr(ino, &m)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = on_or_reply!(self, reply);
        let path = match s.child(parent.0, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let made = fs::DirBuilder::new()
            .mode(mode & !umask & 0o7777)
            .create(&path)
            .and_then(|()| fs::symlink_metadata(&path));
        match made {
            Ok(m) => {
                let ino = s.register(parent.0, name, &m);
                s.log(NsOp::Create {
                    dir: parent.0,
                    name: name.to_os_string(),
                    ino,
                });
                reply.entry(&TTL, &attr(ino, &m), Generation(0));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Socket nodes only: the daemon binds its control socket in `state_dir`.
    /// The kernel keeps the binding on its inode; the node is a name like any
    /// other (durable once its folder is fsynced).
    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let mut s = on_or_reply!(self, reply);
        if mode & libc::S_IFMT != libc::S_IFSOCK {
            return reply.error(Errno::EPERM);
        }
        let path = match s.child(parent.0, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let made = (|| -> io::Result<fs::Metadata> {
            let c = CString::new(path.as_os_str().as_bytes())?;
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::mknod(c.as_ptr(), libc::S_IFSOCK | (mode & !umask & 0o7777), 0) } != 0
            {
                return Err(io::Error::last_os_error());
            }
            fs::symlink_metadata(&path)
        })();
        match made {
            Ok(m) => {
                let ino = s.register(parent.0, name, &m);
                s.log(NsOp::Create {
                    dir: parent.0,
                    name: name.to_os_string(),
                    ino,
                });
                reply.entry(&TTL, &attr(ino, &m), Generation(0));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = on_or_reply!(self, reply);
        let result = (|| -> Result<(), Errno> {
            if flags.contains(RenameFlags::RENAME_EXCHANGE)
                || flags.contains(RenameFlags::RENAME_WHITEOUT)
            {
                return Err(Errno::EINVAL);
            }
            let (ino, m) = s.lookup(parent.0, name)?;
            let to = s.child(newparent.0, newname)?;
            let replaced = match s.lookup(newparent.0, newname) {
                Ok((old, old_m)) => {
                    if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                        return Err(Errno::EEXIST);
                    }
                    if old == ino {
                        return Ok(());
                    }
                    if old_m.is_dir() != m.is_dir() {
                        return Err(if old_m.is_dir() {
                            Errno::EISDIR
                        } else {
                            Errno::ENOTDIR
                        });
                    }
                    if old_m.is_dir() && fs::read_dir(&to).map_err(|e| errno(&e))?.next().is_some()
                    {
                        return Err(Errno::ENOTEMPTY);
                    }
                    let grave = s.bury(&to, old).map_err(|e| errno(&e))?;
                    Some((old, grave))
                }
                Err(_) => None,
            };
            let from = s.child(parent.0, name)?;
            if let Err(e) = fs::rename(&from, &to) {
                // Put back what the rename would have replaced.
                if let Some((old, grave)) = &replaced
                    && fs::rename(s.grave.join(grave), &to).is_ok()
                    && let Some(n) = s.nodes.get_mut(old)
                {
                    n.parent = newparent.0;
                    n.name = newname.to_os_string();
                }
                return Err(errno(&e));
            }
            if let Some(n) = s.nodes.get_mut(&ino) {
                n.parent = newparent.0;
                n.name = newname.to_os_string();
            }
            s.log(NsOp::Rename {
                from_dir: parent.0,
                from_name: name.to_os_string(),
                to_dir: newparent.0,
                to_name: newname.to_os_string(),
                ino,
                replaced,
            });
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = on_or_reply!(self, reply);
        let flags = flags.0;
        let Some(path) = s.path(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let opened = (|| -> io::Result<u64> {
            let file = open_backing(&path, flags, None)?;
            if flags & libc::O_TRUNC != 0 {
                let w = fs::OpenOptions::new().read(true).write(true).open(&path)?;
                s.truncate(ino.0, &w, 0)?;
            }
            Ok(s.new_fh(Handle::File {
                ino: ino.0,
                file,
                append: flags & libc::O_APPEND != 0,
            }))
        })();
        match opened {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = on_or_reply!(self, reply);
        let path = match s.child(parent.0, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let made = (|| -> io::Result<(u64, u64, fs::Metadata)> {
            let file = open_backing(&path, flags, Some(mode & !umask & 0o7777))?;
            let m = file.metadata()?;
            let ino = s.register(parent.0, name, &m);
            s.log(NsOp::Create {
                dir: parent.0,
                name: name.to_os_string(),
                ino,
            });
            let fh = s.new_fh(Handle::File {
                ino,
                file,
                append: flags & libc::O_APPEND != 0,
            });
            Ok((ino, fh, m))
        })();
        match made {
            Ok((ino, fh, m)) => reply.created(
                &TTL,
                &attr(ino, &m),
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = on_or_reply!(self, reply);
        let Some(Handle::File { file, .. }) = s.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(&e)),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = on_or_reply!(self, reply);
        let result = (|| -> io::Result<()> {
            let Some(Handle::File { ino, file, append }) = s.handles.get(&fh.0) else {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            };
            let (ino, file, append) = (*ino, file.try_clone()?, *append);
            let offset = if append {
                file.metadata()?.len()
            } else {
                offset
            };
            s.remember(ino, &file, offset, data.len() as u64)?;
            s.stats.writes += 1;
            file.write_all_at(data, offset)
        })();
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync.
        let _s = on_or_reply!(self, reply);
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Released even while the power is off: the kernel closes a dead process's files.
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = on_or_reply!(self, reply);
        s.stats.fsyncs += 1;
        s.undo.remove(&ino.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = on_or_reply!(self, reply);
        if s.path(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        let fh = s.new_fh(Handle::Dir {
            ino: ino.0,
            entries: Vec::new(),
        });
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = on_or_reply!(self, reply);
        if offset == 0 {
            // A fresh listing at the start (also after rewinddir).
            let Some(path) = s.path(ino.0) else {
                return reply.error(Errno::ENOENT);
            };
            let read = match fs::read_dir(&path) {
                Ok(r) => r,
                Err(e) => return reply.error(errno(&e)),
            };
            let parent = s.nodes.get(&ino.0).map(|n| n.parent).unwrap_or(ROOT);
            let mut entries = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (parent, FileType::Directory, OsString::from("..")),
            ];
            for e in read.flatten() {
                let Ok(m) = e.metadata() else { continue };
                let child = s.register(ino.0, &e.file_name(), &m);
                entries.push((child, kind_of(&m), e.file_name()));
            }
            if let Some(Handle::Dir { entries: e, .. }) = s.handles.get_mut(&fh.0) {
                *e = entries;
            }
        }
        let Some(Handle::Dir { entries, .. }) = s.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (child, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = on_or_reply!(self, reply);
        s.fsyncdir(ino.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = on_or_reply!(self, reply);
        let Ok(c) = CString::new(s.data.as_os_str().as_bytes()) else {
            return reply.error(Errno::EIO);
        };
        // SAFETY: a valid NUL-terminated path and a writable statvfs.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return reply.error(errno(&io::Error::last_os_error()));
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut s = on_or_reply!(self, reply);
        let result = (|| -> io::Result<()> {
            if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
                return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
            }
            let Some(Handle::File { ino, file, .. }) = s.handles.get(&fh.0) else {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            };
            let (ino, file) = (*ino, file.try_clone()?);
            // Only a length change is visible: remember it like a write of nothing.
            s.remember(ino, &file, offset.saturating_add(length), 0)?;
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open fd.
            let rc = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    mode,
                    offset as libc::off_t,
                    length as libc::off_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

impl Ops {
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let mut s = on_or_reply!(self, reply);
        let result = (|| -> Result<(), Errno> {
            let (ino, m) = s.lookup(parent.0, name)?;
            let path = s.child(parent.0, name)?;
            if dir {
                if !m.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                if fs::read_dir(&path).map_err(|e| errno(&e))?.next().is_some() {
                    return Err(Errno::ENOTEMPTY);
                }
            } else if m.is_dir() {
                return Err(Errno::EISDIR);
            }
            let grave = s.bury(&path, ino).map_err(|e| errno(&e))?;
            s.log(NsOp::Unlink {
                dir: parent.0,
                name: name.to_os_string(),
                ino,
                grave,
            });
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted `PowerFs`; unmounted when dropped.
pub struct PowerFs {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    dir: tempfile::TempDir,
}

impl PowerFs {
    /// Mounts an empty `PowerFs` on a fresh temporary folder.
    pub fn mount() -> PowerFs {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, grave, mountpoint) = (
            dir.path().join("data"),
            dir.path().join("grave"),
            dir.path().join("mnt"),
        );
        for d in [&data, &grave, &mountpoint] {
            fs::create_dir(d).unwrap();
        }
        let root_backing = fs::metadata(&data).unwrap().ino();
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: OsString::new(),
                backing: root_backing,
            },
        );
        let state = Arc::new(Mutex::new(State {
            data,
            grave,
            nodes,
            by_backing: HashMap::from([(root_backing, ROOT)]),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 0,
            undo: HashMap::new(),
            log: Vec::new(),
            grave_seq: 0,
            powered: true,
            names_at_once: std::env::var_os("HMS_POWERFS_NAMES").is_some_and(|v| v == "at-once"),
            stats: FsStats::default(),
        }));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("powerfs".into()),
            MountOption::Subtype("powerfs".into()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        let session =
            fuser::spawn_mount(Ops(state.clone()), &mountpoint, &config).unwrap_or_else(|e| {
                panic!(
                    "cannot mount PowerFs on {} (needs /dev/fuse and fusermount3 from \
                     Debian's fuse3): {e}",
                    mountpoint.display()
                )
            });
        PowerFs {
            state,
            session: Some(session),
            mountpoint,
            dir,
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the power: takes back everything not durable, and fails every
    /// operation with EIO until [`PowerFs::power_on`].
    pub fn cut(&self) -> CutReport {
        self.state().cut()
    }

    /// Power back: the file system works again, holding what survived.
    pub fn power_on(&self) {
        self.state().powered = true;
    }

    /// Makes everything durable now (for setting up a scene).
    pub fn sync_everything(&self) {
        self.state().sync_everything();
    }

    pub fn stats(&self) -> FsStats {
        self.state().stats.clone()
    }

    /// Writes not yet fsynced and name changes not yet durable.
    pub fn unsynced(&self) -> (usize, usize) {
        let s = self.state();
        (s.undo.values().map(Vec::len).sum(), s.log.len())
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        self.power_on();
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}

// ---- the file system's own test ----------------------------------------------

fn write_synced(path: &Path, bytes: &[u8]) {
    let f = File::create(path).unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f.sync_all().unwrap();
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_cut_keeps_exactly_what_was_fsynced() {
    let pfs = PowerFs::mount();
    let root = pfs.path().to_path_buf();
    let d = root.join("d");
    let e = root.join("e");
    fs::create_dir(&d).unwrap();
    fs::create_dir(&e).unwrap();
    write_synced(&d.join("kept"), b"synced one");
    write_synced(&d.join("doomed"), b"gone after unlink");
    write_synced(&d.join("old-name"), b"renamed");
    write_synced(&d.join("moved"), b"across folders");
    write_synced(&d.join("target"), b"replaced by a rename");
    sync_dir(&d);
    sync_dir(&root);
    assert_eq!(pfs.unsynced(), (0, 0), "everything is durable now");

    // Data: a synced prefix, then unsynced writes, a truncate and an append.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(d.join("kept"))
        .unwrap();
    f.write_all_at(b"SYNCED", 0).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(b"XX", 2).unwrap();
    f.set_len(3).unwrap();
    f.write_all_at(b" plus a tail nobody synced", 3).unwrap();
    drop(f); // close is not a sync

    // Names, none of them made durable by an fsync of their folder.
    write_synced(&d.join("new-synced-data"), b"data fsynced, folder not");
    fs::write(d.join("new-plain"), b"never synced").unwrap();
    fs::remove_file(d.join("doomed")).unwrap();
    fs::rename(d.join("old-name"), d.join("new-name")).unwrap();
    fs::rename(d.join("moved"), e.join("moved")).unwrap();
    sync_dir(&e); // only the new folder: a cross-folder rename needs both
    fs::write(d.join("t.tmp"), b"the replacement").unwrap();
    fs::rename(d.join("t.tmp"), d.join("target")).unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    write_synced(
        &d.join("sub/inner"),
        b"in a folder that never became durable",
    );
    sync_dir(&d.join("sub"));

    // A name change made durable survives: create + fsync of file and folder in e.
    write_synced(&e.join("durable"), b"this one stays");
    sync_dir(&e);

    let report = pfs.cut();
    assert!(
        fs::read_dir(&root).is_err(),
        "everything fails while the power is off"
    );
    pfs.power_on();
    assert_eq!(report.conflicts, 0, "{report:?}");

    assert_eq!(fs::read(d.join("kept")).unwrap(), b"SYNCED one");
    assert_eq!(
        names(&d),
        ["doomed", "kept", "moved", "old-name", "target"],
        "creates undone (even with fsynced data), unlink and renames undone"
    );
    assert_eq!(fs::read(d.join("doomed")).unwrap(), b"gone after unlink");
    assert_eq!(fs::read(d.join("old-name")).unwrap(), b"renamed");
    assert_eq!(fs::read(d.join("moved")).unwrap(), b"across folders");
    assert_eq!(fs::read(d.join("target")).unwrap(), b"replaced by a rename");
    assert_eq!(names(&e), ["durable"]);
    assert_eq!(fs::read(e.join("durable")).unwrap(), b"this one stays");

    // The same steps with every folder fsynced survive whole.
    write_synced(&d.join("new"), b"new and durable");
    fs::remove_file(d.join("doomed")).unwrap();
    fs::rename(d.join("moved"), e.join("moved")).unwrap();
    fs::write(d.join("t.tmp"), b"the replacement").unwrap();
    File::open(d.join("t.tmp")).unwrap().sync_all().unwrap();
    fs::rename(d.join("t.tmp"), d.join("target")).unwrap();
    sync_dir(&d);
    sync_dir(&e);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(d.join("kept"))
        .unwrap();
    f.set_len(0).unwrap();
    f.sync_all().unwrap();
    assert_eq!(pfs.unsynced(), (0, 0));
    let report = pfs.cut();
    pfs.power_on();
    assert_eq!(report, CutReport::default(), "nothing to take back");
    assert_eq!(names(&d), ["kept", "new", "old-name", "target"]);
    assert_eq!(names(&e), ["durable", "moved"]);
    assert_eq!(fs::read(d.join("target")).unwrap(), b"the replacement");
    assert_eq!(fs::read(d.join("kept")).unwrap(), b"");

    // A folder whose creation is undone takes its contents with it; an rmdir comes back.
    fs::create_dir(root.join("f")).unwrap();
    write_synced(&root.join("f/x"), b"x");
    sync_dir(&root.join("f"));
    fs::remove_dir(e.join("moved")).unwrap_err();
    fs::remove_file(e.join("moved")).unwrap();
    fs::remove_file(e.join("durable")).unwrap();
    fs::remove_dir(&e).unwrap();
    pfs.cut();
    pfs.power_on();
    assert_eq!(names(&root), ["d", "e"]);
    assert_eq!(names(&e), ["durable", "moved"]);
    let st = pfs.stats();
    assert!(st.fsyncs > 0 && st.fsyncdirs > 0 && st.cuts == 3, "{st:?}");
}
