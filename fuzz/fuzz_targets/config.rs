//! `hms-sync.toml` loading and validation, through the same `config::load` the
//! daemon calls (the input is written to a file in a temp folder that also
//! holds an empty `connectors/`). Checks: no panic, and a refusal names at
//! least one problem.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("connectors")).unwrap();
    let path = dir.path().join("hms-sync.toml");
    std::fs::write(&path, text).unwrap();
    if let Err(e) = hms_sync::config::load(Some(&path)) {
        assert!(!e.0.is_empty(), "a refusal without a problem");
    }
});
