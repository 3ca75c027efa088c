//! Many small files at once: they are queued a window at a time (one commit and
//! one fsync of the folder for many files), still oldest first.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::harness::*;

/// `name` from the Prometheus text at `/metrics` (0 if absent).
fn metric(d: &TestDaemon, name: &str) -> f64 {
    let (_, body) = d.http_get("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_folder_of_files_for_the_same_records_is_taken_oldest_first_in_few_commits() {
    const RECORDS: usize = 40;
    const VERSIONS: usize = 10;
    let mut d = TestDaemon::new()
        .connector(
            "housing",
            &csv_connector(&["permit_number", "n"], "batch_max = 1000", ""),
        )
        .start();
    // A sentinel proves the daemon takes files; then it stops while the folder
    // fills, so that the start-up scan finds all of them at once.
    d.drop_file("sentinel.json", br#"{"permit_number":"sentinel","n":0}"#);
    d.wait_inbox_empty();
    d.stop();
    // Record r's version v is file number v * RECORDS + r; names do not sort in
    // that order, modification times do (an hour ago, one millisecond apart).
    let base = SystemTime::now() - Duration::from_secs(3600);
    let total = RECORDS * VERSIONS;
    for i in 0..total {
        let (v, r) = (i / RECORDS, i % RECORDS);
        let name = format!("f-{:04}.json", (i * 7919) % total);
        let path = d.inbox().join(&name);
        std::fs::write(
            &path,
            format!("{{\"permit_number\":\"p{r:02}\",\"n\":{v}}}"),
        )
        .unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(base + Duration::from_millis(i as u64))
            .unwrap();
    }
    d.restart();
    d.wait_inbox_empty();
    d.wait_for(
        Duration::from_secs(30),
        "every record's last version",
        |d| {
            let mut last = BTreeMap::new();
            for row in d.outbox_rows("housing") {
                last.insert(row[2].clone(), row[3].clone());
            }
            (0..RECORDS).all(|r| last.get(&format!("p{r:02}")).map(String::as_str) == Some("9"))
        },
    );
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for row in d.outbox_rows("housing") {
        if let Ok(n) = row[3].parse() {
            seen.entry(row[2].clone()).or_default().push(n);
        }
    }
    for (key, versions) in &seen {
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "{key} went back in time: {versions:?}"
        );
    }
    // One file at a time would be one commit per file at least.
    let commits = metric(&d, "hms_sync_commit_seconds_count");
    assert!(
        commits < (total / 4) as f64,
        "{commits} commits for {total} files since the restart"
    );
}
