//! `format.kind = "fixed"` end to end: the real binary writes COBOL records laid
//! out by a copybook into the outbox; a value that does not fit its PIC is a
//! rejection (then a dead letter) naming item, PIC and value, and the rest of
//! the batch is delivered; `check`, `translate` and `new` speak copybook.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

const MAP: &str = "[format.map]\nPU-ACTION = \"@op\"\nPU-PERMIT-NO = \"permit_number\"\nPU-STATUS = \"status\"\nPU-FEE = \"fee\"\nPU-UNITS = \"units\"\nPU-SEQ = \"@delivery_id\"\n";

fn fixed_connector(format_extra: &str) -> String {
    format!(
        "collections = [\"permits\"]\n[format]\nkind = \"fixed\"\ncopybook = \"PERMIT-UPD.cpy\"\n{format_extra}\n{MAP}[transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\nbatch_window = \"0s\"\n[retry]\nmax_attempts = 2\nbackoff = \"20ms\"\nmax_backoff = \"50ms\"\n"
    )
}

fn daemon(format_extra: &str) -> TestDaemon {
    let d = TestDaemon::new().connector("county", &fixed_connector(format_extra));
    std::fs::copy(
        fixtures().join("cobol/PERMIT-UPD.cpy"),
        d.path().join("connectors/county/PERMIT-UPD.cpy"),
    )
    .unwrap();
    d
}

/// Every record delivered to `name`, in order: 37 bytes and LF each (not split
/// at LF bytes: a binary item may hold 0x0A).
fn records(d: &TestDaemon, name: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in d.outbox_files(name) {
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!(bytes.len() % 38, 0, "{}", f.display());
        for r in bytes.chunks(38) {
            assert_eq!(r[37], b'\n');
            out.push(r[..37].to_vec());
        }
    }
    out
}

fn record(
    action: &str,
    key: &str,
    status: &str,
    fee: [u8; 5],
    units: [u8; 2],
    seq: u64,
) -> Vec<u8> {
    let mut r = format!("{action}{key:0>8}{status:<10}").into_bytes();
    r.extend(fee);
    r.extend(units);
    r.extend(format!("{seq:09}**").into_bytes());
    r
}

#[test]
fn records_reach_the_outbox_and_a_value_that_does_not_fit_is_a_dead_letter_naming_item_pic_and_value()
 {
    let d = daemon("").start();
    let mut c = d.client();
    let send = |c: &mut Client, key: &str, doc: serde_json::Value| {
        assert_eq!(c.call(&envelope(key, doc))["ok"], true);
    };
    send(
        &mut c,
        "125",
        json!({"permit_number": "125", "status": "NEW", "fee": 95.5, "units": 3}),
    );
    d.wait_for(Duration::from_secs(10), "the create", |d| {
        records(d, "county").len() == 1
    });
    // Too many decimals for PIC S9(7)V99: refused, never rounded.
    send(
        &mut c,
        "126",
        json!({"permit_number": "126", "status": "NEW", "fee": 1.005}),
    );
    send(
        &mut c,
        "125",
        json!({"permit_number": "125", "status": "APPROVED", "fee": -12.34, "units": -2}),
    );
    d.wait_for(
        Duration::from_secs(15),
        "the dead letter and the update",
        |d| d.target_status("county")["dead"] == 1 && records(d, "county").len() == 2,
    );
    assert_eq!(
        c.call(&json!({"collection": "permits", "key": "125", "deleted": true}).to_string())["ok"],
        true
    );
    d.wait_for(Duration::from_secs(15), "the delete", |d| {
        records(d, "county").len() == 3
    });
    let got = records(&d, "county");
    assert_eq!(
        got[0],
        record(
            "A",
            "125",
            "NEW",
            [0x00, 0x00, 0x09, 0x55, 0x0C],
            [0x00, 0x03],
            1
        )
    );
    assert_eq!(
        got[1],
        record(
            "C",
            "125",
            "APPROVED",
            [0x00, 0x00, 0x01, 0x23, 0x4D],
            [0xFF, 0xFE],
            3
        )
    );
    // A delete: the key and the op; other items blank (packed zero stays valid).
    assert_eq!(
        got[2],
        record(
            "D",
            "125",
            "",
            [0x00, 0x00, 0x00, 0x00, 0x0C],
            [0x00, 0x00],
            4
        )
    );
    let list = d.cli(&["dead", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["key"], "126");
    let reason = list[0]["last_error"].as_str().unwrap();
    assert!(
        reason.contains(
            "PU-FEE (PIC S9(7)V99 COMP-3) cannot hold 1.005: 3 decimals; the item holds 2"
        ),
        "{reason}"
    );
}

#[test]
fn ebcdic_records_are_fixed_length_without_a_record_end() {
    let d = daemon("encoding = \"cp037\"").start();
    let mut c = d.client();
    assert_eq!(
        c.call(&envelope(
            "7",
            json!({"permit_number": "7", "status": "OK", "fee": 0, "units": 0})
        ))["ok"],
        true
    );
    d.wait_for(Duration::from_secs(10), "the record", |d| {
        !d.outbox_files("county").is_empty()
    });
    let bytes = std::fs::read(&d.outbox_files("county")[0]).unwrap();
    assert_eq!(bytes.len(), 37, "RECFM=F: one 37-byte record, no LF");
    assert_eq!(
        &bytes[..11],
        &[
            0xC1, 0xF0, 0xF0, 0xF0, 0xF0, 0xF0, 0xF0, 0xF0, 0xF7, 0xD6, 0xD2
        ]
    );
    assert_eq!(&bytes[35..], &[0x5C, 0x5C], "the FILLER's '**' in cp037");
}

#[test]
fn check_names_the_copybook_line_and_column_and_the_map_item() {
    let d = daemon("");
    std::fs::write(
        d.path().join("connectors/county/PERMIT-UPD.cpy"),
        "       01  PERMIT-UPD.\n           05  PU-ACTION PIC X.\n           05  PU-ALT REDEFINES PU-ACTION PIC 9.\n",
    )
    .unwrap();
    d.write_config();
    let out = d.cli(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connectors/county/PERMIT-UPD.cpy: line 3: column 23: REDEFINES on PU-ALT is not supported"),
        "{err}"
    );
    std::fs::copy(
        fixtures().join("cobol/PERMIT-UPD.cpy"),
        d.path().join("connectors/county/PERMIT-UPD.cpy"),
    )
    .unwrap();
    let toml = d.path().join("connectors/county/connector.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replace("PU-UNITS = ", "PU-UNIT = ")).unwrap();
    let out = d.cli(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connector.toml: line 11: [format.map] the copybook's record PERMIT-UPD has no elementary item `PU-UNIT`"),
        "{err}"
    );
}

#[test]
fn translate_shows_the_ruler_and_new_scaffolds_the_map() {
    let d = daemon("");
    d.write_config();
    let out = d.cli(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "format: county: fixed records PERMIT-UPD of PERMIT-UPD.cpy (37 bytes, 6 items mapped, ascii, record_end lf)"
        ),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let change = d.path().join("change.json");
    std::fs::write(
        &change,
        json!({"collection": "permits", "key": "125", "doc": {"permit_number": "125", "status": "APPROVED", "fee": 95.5, "units": 12}}).to_string(),
    )
    .unwrap();
    let out = d.cli(&["translate", "county", change.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "record PERMIT-UPD of PERMIT-UPD.cpy: 37 bytes, encoding ascii, record_end lf",
        "     0    1  PU-ACTION     PIC X                         \"A\"  <- @op",
        "    19    5  PU-FEE        PIC S9(7)V99 COMP-3           x'000009550C'  <- fee",
        "    24    2  PU-UNITS      PIC S9(4) COMP                x'000C'  <- units",
        "    35    2  FILLER        PIC X(2)                      \"**\"  (VALUE)",
        "text: |A00000125APPROVED  .......000000000**|",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    let out = d.cli(&[
        "new",
        "assessor",
        "--format",
        "fixed",
        "--copybook",
        fixtures().join("cobol/PERMIT-UPD.cpy").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scaffold =
        std::fs::read_to_string(d.path().join("connectors/assessor/connector.toml")).unwrap();
    assert!(
        scaffold.contains("# PU-FEE       = \"\"   # PIC S9(7)V99 COMP-3, offset 19, 5 bytes"),
        "{scaffold}"
    );
    assert!(
        d.path()
            .join("connectors/assessor/PERMIT-UPD.cpy")
            .is_file()
    );
}

#[test]
fn a_batch_file_is_framed_by_header_and_trailer_with_count_and_hash_total() {
    let control = "[format.header]\nrecord = \"PERMIT-HDR\"\n[format.header.map]\nPH-BATCH = \"@batch_seq\"\nPH-DATE = \"@run_date\"\n\
                   [format.trailer]\nrecord = \"PERMIT-TRL\"\n[format.trailer.map]\nPT-COUNT = \"@record_count\"\nPT-FEE-TOTAL = \"@sum:fee\"\n";
    let text =
        fixed_connector(control).replace("batch_window = \"0s\"", "batch_window = \"300ms\"");
    let d = TestDaemon::new().connector("county", &text);
    std::fs::copy(
        fixtures().join("cobol/PERMIT-UPD.cpy"),
        d.path().join("connectors/county/PERMIT-UPD.cpy"),
    )
    .unwrap();
    let d = d.start();
    let mut c = d.client();
    for (key, fee) in [("1", json!(10.25)), ("2", json!(-0.5)), ("3", json!(1000))] {
        assert_eq!(
            c.call(&envelope(
                key,
                json!({"permit_number": key, "status": "NEW", "fee": fee, "units": 1})
            ))["ok"],
            true
        );
    }
    d.wait_for(Duration::from_secs(10), "the batch", |d| {
        d.target_status("county")["delivered"] == 3
    });
    let files = d.outbox_files("county");
    let bytes: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    // One file a batch; each starts with its header and ends with its trailer.
    let headers: Vec<&&str> = lines.iter().filter(|l| l.starts_with('H')).collect();
    assert_eq!(headers.len(), files.len(), "{text}");
    assert!(headers[0].starts_with("H00000001"), "{text}");
    assert_eq!(headers[0].len(), 37);
    let trailers: Vec<&&str> = lines.iter().filter(|l| l.starts_with('T')).collect();
    assert_eq!(trailers.len(), files.len());
    if files.len() == 1 {
        // 10.25 - 0.50 + 1000.00 = 1009.75: trailing overpunch, positive.
        assert_eq!(
            *trailers[0], "T00000003000000000100975             ",
            "{text}"
        );
    }
    let counted: usize = trailers
        .iter()
        .map(|t| t[1..9].parse::<usize>().unwrap())
        .sum();
    assert_eq!(counted, 3);
}
