//! The queue's store: one ordered map of byte keys to byte values in one file,
//! `<state_dir>/queue.redb`, written only by the queue writer. The only file
//! that touches the storage crate (redb).
//!
//! Two kinds of write, as the queue needs them:
//! - [`Store::apply`]: one batch of puts and removes, atomic and at once visible
//!   to later reads, but not yet on disk (a redb commit with `Durability::None`);
//! - [`Store::commit`]: everything applied so far reaches the disk (a redb commit
//!   with `Durability::Immediate`: pages, then the commit slot, then `fdatasync`).
//!
//! **Invariants:**
//! - After `commit` returns, a power cut cannot undo any apply before it: the
//!   file's data is synced, and the folder that names the file was synced when
//!   the file was created ([`Store::open`]).
//! - A read sees every apply made before it (each [`Reader`] is a snapshot taken
//!   when it is made).
//!
//! redb replaced sled 0.34 here: sled never fsyncs its blob files, its `conf`
//! file or the rename of its snapshot, and a simulated power cut on a queue of
//! 20,000 records broke it on the first or second cut (ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

/// The one table. Keys are the queue's own layout (see `keys.rs`).
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("hms");

/// The store's file name inside the state folder.
pub const FILE_NAME: &str = "queue.redb";

/// Set (to `1`) only by the power-loss test, to prove that it catches a queue
/// that skips its fsync: commits then never reach the disk.
pub const SKIP_FSYNC_VAR: &str = "HMS_SYNC_UNSAFE_SKIP_FSYNC";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the queue file {path} cannot be opened: {error} (with the daemon stopped, `hms-sync recover` copies what can still be read into a fresh queue)"
    )]
    Open {
        path: PathBuf,
        /// Said in the message itself (not a `source`), so it shows once.
        error: redb::DatabaseError,
    },
    #[error("the queue file {path} is in use by another process (is the daemon running?)")]
    Locked { path: PathBuf },
    /// Not damage: this user may not open the file (an operator running a
    /// command as themselves while the daemon is stopped).
    #[error(
        "no permission to open the queue file {path} ({error}); run the command as the service's user, e.g. `sudo -u hms-sync hms-sync …`"
    )]
    NoAccess {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot sync the folder {path}: {source}")]
    SyncFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the queue file {path} failed: {source}")]
    Failed { path: PathBuf, source: redb::Error },
}

pub struct Store {
    db: redb::Database,
    path: PathBuf,
    /// Test-only: commits skip the disk (see [`SKIP_FSYNC_VAR`]).
    skip_fsync: bool,
}

impl Store {
    /// Opens `<dir>/queue.redb`, creating it (and syncing `dir` and its parent,
    /// so that the new names survive a power cut) if it is not there. redb checks and repairs the
    /// file after a crash here: that walks the whole file.
    pub fn open(dir: &Path, cache_mib: u64) -> Result<Store, StoreError> {
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let db = redb::Builder::new()
            .set_cache_size((cache_mib.max(1) as usize) << 20)
            .create(&path)
            .map_err(|source| match source {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::Locked { path: path.clone() }
                }
                redb::DatabaseError::Storage(redb::StorageError::Io(error))
                    if error.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    StoreError::NoAccess {
                        path: path.clone(),
                        error,
                    }
                }
                error => StoreError::Open {
                    path: path.clone(),
                    error,
                },
            })?;
        if !existed {
            // The new name, and the folder's own name in its parent (the state
            // folder is often made just before, by the daemon or an installer).
            sync_folder(dir)?;
            if let Some(parent) = std::fs::canonicalize(dir)
                .ok()
                .as_deref()
                .and_then(Path::parent)
            {
                sync_folder(parent)?;
            }
        }
        let skip_fsync = std::env::var(SKIP_FSYNC_VAR).is_ok_and(|v| v == "1");
        if skip_fsync {
            tracing::warn!(
                variable = SKIP_FSYNC_VAR,
                "TEST ONLY: the queue does not sync its commits; a power cut loses accepted changes"
            );
        }
        let store = Store {
            db,
            path,
            skip_fsync,
        };
        // The table exists from the first commit on, so readers never miss it.
        store.write(redb::Durability::Immediate, |_| Ok(()))?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A snapshot of everything applied so far.
    pub fn reader(&self) -> Result<Reader, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.failed(e))?;
        let table = txn.open_table(TABLE).map_err(|e| self.failed(e))?;
        Ok(Reader {
            table,
            path: self.path.clone(),
        })
    }

    /// Puts (`Some`) and removes (`None`), all or nothing; visible at once,
    /// durable at the next [`Store::commit`].
    pub fn apply(&self, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), StoreError> {
        self.write(redb::Durability::None, |table| {
            for (k, v) in &writes {
                match v {
                    Some(v) => {
                        table.insert(k.as_slice(), v.as_slice())?;
                    }
                    None => {
                        table.remove(k.as_slice())?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Makes every apply so far durable.
    pub fn commit(&self) -> Result<(), StoreError> {
        let durability = if self.skip_fsync {
            redb::Durability::None
        } else {
            redb::Durability::Immediate
        };
        self.write(durability, |_| Ok(()))
    }

    fn write(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.failed(e))?;
        txn.set_durability(durability).map_err(|e| self.failed(e))?;
        {
            let mut table = txn.open_table(TABLE).map_err(|e| self.failed(e))?;
            f(&mut table).map_err(|e| self.failed(e))?;
        }
        txn.commit().map_err(|e| self.failed(e))
    }

    fn failed(&self, source: impl Into<redb::Error>) -> StoreError {
        StoreError::Failed {
            path: self.path.clone(),
            source: source.into(),
        }
    }
}

/// Fsyncs a folder, so that the names created, renamed or removed in it survive
/// a power cut.
pub fn sync_folder(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::SyncFolder {
            path: dir.to_path_buf(),
            source,
        })
}

/// A read-only snapshot of the store.
pub struct Reader {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    path: PathBuf,
}

/// A value (or key) read from the store, borrowed from its page.
pub struct Bytes(redb::AccessGuard<'static, &'static [u8]>);

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.value()
    }
}

impl Reader {
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(self.table.get(key).map_err(|e| self.failed(e))?.map(Bytes))
    }

    /// Entries between the bounds, in key order (reversible).
    pub fn range(
        &self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
    ) -> Result<impl DoubleEndedIterator<Item = Result<(Bytes, Bytes), StoreError>> + '_, StoreError>
    {
        let range = self
            .table
            .range::<&[u8]>((from, to))
            .map_err(|e| self.failed(e))?;
        Ok(range.map(|kv| {
            kv.map(|(k, v)| (Bytes(k), Bytes(v)))
                .map_err(|e| self.failed(e))
        }))
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> Result<impl Iterator<Item = Result<(Bytes, Bytes), StoreError>> + 'a, StoreError> {
        Ok(self
            .range(Bound::Included(prefix), Bound::Unbounded)?
            .take_while(move |kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(prefix))))
    }

    /// How many entries the store holds.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.table.len().map_err(|e| self.failed(e))
    }

    fn failed(&self, source: impl Into<redb::Error>) -> StoreError {
        StoreError::Failed {
            path: self.path.clone(),
            source: source.into(),
        }
    }
}
