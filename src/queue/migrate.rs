//! Upgrades of the state folder, each run once by [`super::Queue::open`]:
//! - a sled database (versions up to 0.1 kept the queue in sled 0.34) is copied
//!   key by key into `queue.redb`, and its files are set aside in
//!   `sled-backup-<unix seconds>/`;
//! - version 1 of the layout kept the coalescing index under `'i'` keys: each
//!   pointer moves into its record's entry.
//!
//! **Invariant:** every step can be cut by a crash or a power cut and run again.
//! `queue.redb` appears (by rename, then a folder sync) only once it holds every
//! key; the sled files are moved aside only after that, and a start that finds
//! both moves them aside again.

use std::path::{Path, PathBuf};

use super::QueueError;
use super::keys::{seq_value, strings_of_key};
use super::store::{self, Store};
use super::txn::Txn;
use crate::record::RecordId;

/// The files sled 0.34 keeps in its folder.
fn sled_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            matches!(name, "conf" | "db" | "blobs") || name.starts_with("snap.")
        })
        .collect();
    files.sort();
    files
}

/// Whether `dir` holds a sled database (its `conf` and `db`).
pub fn has_sled(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

/// What a migration from sled did, for the log.
#[derive(Debug)]
pub struct FromSled {
    pub keys: u64,
    pub backup: PathBuf,
}

/// Copies a sled queue in `dir` into `queue.redb` (unless that exists already)
/// and sets the sled files aside. Nothing to do: `Ok(None)`.
pub fn from_sled(dir: &Path, cache_mib: u64) -> Result<Option<FromSled>, QueueError> {
    if !has_sled(dir) {
        return Ok(None);
    }
    let mut keys = 0;
    if !dir.join(store::FILE_NAME).exists() {
        keys = copy_sled(dir, cache_mib)?;
    }
    let backup = dir.join(format!("sled-backup-{}", crate::record::now_ms() / 1000));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QueueError::Migrate { path, source }
    };
    std::fs::create_dir_all(&backup).map_err(io(&backup))?;
    for file in sled_files(dir) {
        let to = backup.join(file.file_name().expect("listed files have names"));
        std::fs::rename(&file, &to).map_err(io(&file))?;
    }
    store::sync_folder(&backup)?;
    store::sync_folder(dir)?;
    Ok(Some(FromSled { keys, backup }))
}

/// Every key of sled's tree `hms` into a new `queue.redb`; returns how many.
fn copy_sled(dir: &Path, cache_mib: u64) -> Result<u64, QueueError> {
    let sled_err = |source: sled::Error| QueueError::SledMigrate {
        path: dir.to_path_buf(),
        source,
    };
    let partial = dir.join("migrating");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|source| QueueError::Migrate {
            path: partial.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(&partial).map_err(|source| QueueError::Migrate {
        path: partial.clone(),
        source,
    })?;
    let mut keys = 0;
    {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mib.max(1) << 20)
            .open()
            .map_err(sled_err)?;
        let tree = db.open_tree("hms").map_err(sled_err)?;
        let target = Store::open(&partial, cache_mib)?;
        let mut batch = std::collections::BTreeMap::new();
        for kv in tree.iter() {
            let (k, v) = kv.map_err(sled_err)?;
            batch.insert(k.to_vec(), Some(v.to_vec()));
            keys += 1;
            if batch.len() >= 10_000 {
                target.apply(std::mem::take(&mut batch))?;
            }
        }
        target.apply(batch)?;
        target.commit()?;
    }
    let from = partial.join(store::FILE_NAME);
    let to = dir.join(store::FILE_NAME);
    std::fs::rename(&from, &to).map_err(|source| QueueError::Migrate {
        path: from.clone(),
        source,
    })?;
    store::sync_folder(dir)?;
    let _ = std::fs::remove_dir(&partial);
    Ok(keys)
}

/// Version 1 kept the coalescing index under `'i'` keys; moves each pointer into
/// its record's entry. Returns whether anything changed.
pub fn move_index_into_records(store: &Store) -> Result<bool, QueueError> {
    let mut txn = Txn::new(store)?;
    let reader = store.reader()?;
    for kv in reader.scan_prefix(b"i")? {
        let (k, v) = kv?;
        txn.remove(k.to_vec());
        if let Some([target, collection, key]) = strings_of_key(&k).as_deref() {
            let record = RecordId::new(collection, key);
            let mut entry = txn.record(&record)?;
            entry.set_waiting(target, Some(seq_value(&v)));
            txn.put_record(&record, &entry);
        }
    }
    txn.apply(store)
}
