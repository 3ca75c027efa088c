//! `connector.toml` loading and validation through `connector::load`, the
//! daemon's own path (the input is `<tmp>/connectors/fuzz/connector.toml`).
//! Checks: no panic, and a refusal names at least one problem.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("connectors/fuzz");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("connector.toml"), text).unwrap();
    if let Err(problems) = hms_sync::connector::load(&folder, dir.path()) {
        assert!(!problems.is_empty(), "a refusal without a problem");
    }
});
