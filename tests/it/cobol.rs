//! Differential test against a real COBOL runtime (GnuCOBOL, `cobc`): the
//! program `tests/legacy/numbers.cbl` MOVEs each value of
//! `tests/legacy/values.txt` into every item of `tests/legacy/NUMBERS.cpy`
//! (zoned with each sign convention, packed, binary; signed and unsigned;
//! decimals) and writes the bytes, with a flag per item saying whether the item
//! holds the value exactly or COBOL truncated it. hms-sync reads the same
//! copybook with its own reader and must produce the same bytes for every value
//! COBOL holds exactly, and refuse every value COBOL truncated.
//!
//! Compiled as an IBM mainframe would lay the items out: binary items of 2/4/8
//! bytes (`-fbinary-size=2-4-8`), big-endian. Skipped (with a SKIPPED line)
//! only where `cobc` is missing; `.ci/run` installs gnucobol3.

use std::path::Path;
use std::process::Command;

use hms_sync::translator::codepage::Encoding;
use hms_sync::translator::copybook;
use hms_sync::translator::fixed::encode_number;

fn legacy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/legacy")
}

/// Compiles and runs numbers.cbl with extra `cobc` flags; the bytes it wrote.
fn run_cobol(dir: &Path, flags: &[&str]) -> Option<Vec<u8>> {
    if Command::new("cobc").arg("--version").output().is_err() {
        println!("SKIPPED: cobc (GnuCOBOL) is not installed; .ci/run installs gnucobol3");
        return None;
    }
    let out = Command::new("cobc")
        .args(["-x", "-fbinary-size=2-4-8", "-fbinary-byteorder=big-endian"])
        .args(flags)
        .arg("-I")
        .arg(legacy())
        .arg("-o")
        .arg(dir.join("numbers"))
        .arg(legacy().join("numbers.cbl"))
        .output()
        .expect("run cobc");
    assert!(
        out.status.success(),
        "cobc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(dir.join("numbers"))
        .current_dir(dir)
        .output()
        .expect("run the COBOL program");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    Some(std::fs::read(dir.join("numbers.out")).unwrap())
}

/// Compares hms-sync's encoding of every value and item with COBOL's record;
/// returns (exact matches, refusals) for the report.
fn compare(cobol: &[u8], encoding: Encoding, convert: &dyn Fn(&[u8]) -> Vec<u8>) -> (usize, usize) {
    let source = std::fs::read(legacy().join("NUMBERS.cpy")).unwrap();
    let layout = &copybook::parse(&source).unwrap()[0];
    let values: Vec<String> = std::fs::read_to_string(legacy().join("values.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let flags = layout.fields.len();
    let record = flags + 90;
    assert_eq!(cobol.len(), values.len() * record, "one record a value");
    let (mut same, mut refused) = (0, 0);
    for (value, rec) in values.iter().zip(cobol.chunks(record)) {
        for (j, field) in layout.fields.iter().enumerate() {
            let theirs = &rec[flags + field.offset..flags + field.offset + field.length];
            let mut ours = Vec::new();
            let result = encode_number(field, value, encoding, &mut ours);
            match rec[j] {
                b'K' => {
                    assert!(
                        result.is_ok(),
                        "{value} into {} {}: COBOL holds it exactly, hms-sync refused: {result:?}",
                        field.name,
                        field.describe()
                    );
                    let theirs = match field.usage {
                        copybook::Usage::Display(_) => convert(theirs),
                        _ => theirs.to_vec(),
                    };
                    assert_eq!(
                        ours,
                        theirs,
                        "{value} into {} {}: hms-sync {ours:02X?}, COBOL {theirs:02X?}",
                        field.name,
                        field.describe()
                    );
                    same += 1;
                }
                b'T' => {
                    assert!(
                        result.is_err(),
                        "{value} into {} {}: COBOL truncated it, hms-sync wrote {ours:02X?}",
                        field.name,
                        field.describe()
                    );
                    refused += 1;
                }
                other => panic!("flag {other:#04X}"),
            }
        }
    }
    (same, refused)
}

#[test]
fn the_encoder_writes_the_bytes_gnucobol_writes_and_refuses_what_it_truncates() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cobol) = run_cobol(dir.path(), &[]) else {
        return;
    };
    let (same, refused) = compare(&cobol, Encoding::Ascii, &|b| b.to_vec());
    println!(
        "ASCII: {same} item values byte-identical to GnuCOBOL, {refused} refused where COBOL truncated"
    );
    // 26 values x 14 items: every one either identical or refused.
    assert_eq!((same, refused), (185, 179));
}

/// EBCDIC zoned decimals: GnuCOBOL with `-fsign=EBCDIC` writes the sign the
/// mainframe way (`{`, `A`–`I`, `}`, `J`–`R`), which in cp037 are exactly the
/// C/D zones hms-sync writes; the display items go through `iconv -t IBM037`.
#[test]
fn ebcdic_zoned_signs_match_gnucobol_through_iconv() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cobol) = run_cobol(dir.path(), &["-fsign=EBCDIC"]) else {
        return;
    };
    let to_ebcdic = |b: &[u8]| {
        let mut child = Command::new("iconv")
            .args(["-f", "ISO-8859-1", "-t", "IBM037"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("iconv");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b).unwrap();
        child.wait_with_output().unwrap().stdout
    };
    let (same, refused) = compare(&cobol, Encoding::Cp037, &to_ebcdic);
    println!(
        "cp037: {same} item values byte-identical to GnuCOBOL (-fsign=EBCDIC, iconv IBM037), {refused} refused"
    );
    assert_eq!((same, refused), (185, 179));
}
