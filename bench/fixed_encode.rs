//! Encoding rate of fixed-width COBOL records against the CSV path, one core:
//! the same deltas (a permit with a key, a status, a fee and a count) through
//! `Translator::render_file_entry` for `kind = "csv"` and `kind = "fixed"`
//! (ASCII and cp037). Run: `cargo run --release --example fixed_encode`.

use std::time::Instant;

use hms_sync::problem::Problems;
use hms_sync::record::{Delta, Flat, Op, RecordId};
use hms_sync::translator::{Format, Item, Translator, fixed};
use serde_json::json;

const COPYBOOK: &str = "       01  PERMIT-UPD.
           05  PU-ACTION      PIC X.
           05  PU-PERMIT-NO   PIC 9(8).
           05  PU-STATUS      PIC X(10).
           05  PU-INSPECTOR   PIC X(20).
           05  PU-FEE         PIC S9(7)V99 COMP-3.
           05  PU-UNITS       PIC S9(4) COMP.
           05  PU-SEQ         PIC 9(9).
";

fn fixed_format(encoding: &str) -> Format {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("bench");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("P.cpy"), COPYBOOK).unwrap();
    let text = format!(
        "[format]\nkind = \"fixed\"\ncopybook = \"P.cpy\"\nencoding = \"{encoding}\"\nrecord_end = \"lf\"\n[format.map]\nPU-ACTION = \"@op\"\nPU-PERMIT-NO = \"permit_number\"\nPU-STATUS = \"status\"\nPU-INSPECTOR = \"inspector.name\"\nPU-FEE = \"fee\"\nPU-UNITS = \"units\"\nPU-SEQ = \"@delivery_id\"\n"
    );
    let mut problems = Problems::new("bench.toml", &text);
    let raw: fixed::Raw = hms_sync::problem::section(&text, "format", &mut problems).unwrap();
    let format = fixed::validate(&raw, &folder, &mut problems);
    assert!(problems.is_empty(), "{:?}", problems.into_vec());
    format.unwrap()
}

fn rate(name: &str, translator: &Translator, n: usize) -> f64 {
    let rids: Vec<RecordId> = (0..1000)
        .map(|i| RecordId::new("permits", format!("{}", 10_000 + i)))
        .collect();
    let records: Vec<Flat> = (0..1000)
        .map(|i| {
            let mut r = Flat::new();
            r.insert("permit_number".into(), json!(format!("{}", 10_000 + i)));
            r.insert("status".into(), json!("APPROVED"));
            r.insert("inspector.name".into(), json!("O'Brien"));
            r.insert("fee".into(), json!(95.5 + i as f64));
            r.insert("units".into(), json!(i % 100));
            r
        })
        .collect();
    let delta = Delta {
        op: Op::Update,
        set: records[0].clone(),
        unset: Default::default(),
    };
    let ids: Vec<String> = (0..1000).map(|i| format!("bench:{}", i + 1)).collect();
    let mut bytes = 0usize;
    let start = Instant::now();
    for i in 0..n {
        let k = i % 1000;
        let item = Item {
            id: &ids[k],
            attempt: 1,
            record_id: &rids[k],
            delta: &delta,
            record: Some(&records[k]),
        };
        bytes += translator.render_file_entry(&item).unwrap().len();
    }
    let secs = start.elapsed().as_secs_f64();
    let per_sec = n as f64 / secs;
    println!(
        "{name:12} {n} records in {secs:.3}s = {per_sec:>10.0} records/s ({} bytes each)",
        bytes / n
    );
    per_sec
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let csv = Translator::new(&Format::Csv(hms_sync::translator::csv::CsvFormat::new(
        vec![
            "permit_number".into(),
            "status".into(),
            "inspector.name".into(),
            "fee".into(),
            "units".into(),
        ],
        "permit_number".into(),
    )));
    let ascii = Translator::new(&fixed_format("ascii"));
    let ebcdic = Translator::new(&fixed_format("cp037"));
    // Warm up, then measure each twice and keep the better run.
    rate("warm-up", &csv, n / 10);
    let c = rate("csv", &csv, n).max(rate("csv", &csv, n));
    let a = rate("fixed ascii", &ascii, n).max(rate("fixed ascii", &ascii, n));
    let e = rate("fixed cp037", &ebcdic, n).max(rate("fixed cp037", &ebcdic, n));
    println!(
        "fixed/csv: ascii {:.2}x, cp037 {:.2}x (1.00 = as fast as CSV)",
        a / c,
        e / c
    );
}
