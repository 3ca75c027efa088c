//! Which targets an operator paused (`hms-sync pause TARGET`), kept in
//! `<state_dir>/paused.json` beside the queue, not in it: the queue's stored
//! format stays as it is, and a pause is an operator's setting, not queue data.
//!
//! **Invariants:** the file is replaced atomically (temp file, fsync, rename,
//! fsync of the folder), so a pause survives `kill -9` and a power cut once the
//! command said so; a missing file means nothing is paused.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "paused.json";

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Stored {
    /// Paused targets, by name.
    paused: BTreeSet<String>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// The paused targets. A file that cannot be read is an error naming it: delivery
/// must not restart behind an operator's back because a file got damaged.
pub fn load(state_dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    let p = path(state_dir);
    match std::fs::read(&p) {
        Ok(bytes) => {
            let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{}: cannot read the paused targets ({e}); fix or remove the file (removing it resumes every target)",
                    p.display()
                )
            })?;
            Ok(stored.paused)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(anyhow::anyhow!("{}: cannot read it: {e}", p.display())),
    }
}

/// Pauses (`paused = true`) or resumes `target`, durably. Returns whether it changed.
pub fn set(state_dir: &Path, target: &str, paused: bool) -> anyhow::Result<bool> {
    let mut set = load(state_dir)?;
    let changed = if paused {
        set.insert(target.to_string())
    } else {
        set.remove(target)
    };
    if changed {
        save(state_dir, &set)?;
    }
    Ok(changed)
}

fn save(state_dir: &Path, set: &BTreeSet<String>) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create the state folder {}", state_dir.display()))?;
    let p = path(state_dir);
    let tmp = state_dir.join(format!(".{FILE_NAME}.tmp"));
    let body = serde_json::to_vec_pretty(&Stored {
        paused: set.clone(),
    })?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().with_context(|| format!("cannot write {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_kept_and_a_missing_file_means_none() {
        let dir = std::env::temp_dir().join(format!("hms-paused-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load(&dir).unwrap().is_empty());
        assert!(set(&dir, "cobol", true).unwrap());
        assert!(!set(&dir, "cobol", true).unwrap());
        assert_eq!(
            load(&dir).unwrap().into_iter().collect::<Vec<_>>(),
            ["cobol"]
        );
        assert!(set(&dir, "cobol", false).unwrap());
        assert!(load(&dir).unwrap().is_empty());
        std::fs::write(path(&dir), "{not json").unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("paused.json"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
