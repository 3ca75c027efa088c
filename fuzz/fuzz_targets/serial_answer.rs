//! The serial answer reader, fed the device's bytes in chunks as the port
//! delivers them. Oracle: however the bytes are split, the answer is the one
//! read from them in one piece (and the noise counted is the same).
#![no_main]

use hms_sync::transport::serial::frame::{Answer, AnswerReader};
use hms_sync::transport::serial::spec::Framing;
use libfuzzer_sys::fuzz_target;

fn read(framing: &Framing, chunks: &[&[u8]]) -> (Option<Answer>, usize) {
    let mut r = AnswerReader::new(framing);
    for c in chunks {
        if let Some(a) = r.feed(c) {
            return (Some(a), r.noise);
        }
    }
    r.finish();
    (None, r.noise)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let framing = match pick % 3 {
        0 => Framing::StxEtxLrc,
        1 => Framing::Line {
            ack_line: "OK".into(),
            nak_line: "ERR".into(),
        },
        _ => Framing::Line {
            ack_line: "\u{6}".into(),
            nak_line: "NAK NAK".into(),
        },
    };
    // The byte after the framing sets the chunk size (1..=16).
    let Some((&size, bytes)) = rest.split_first() else {
        return;
    };
    let size = usize::from(size % 16) + 1;
    let whole = read(&framing, &[bytes]);
    let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
    let split = read(&framing, &chunks);
    assert_eq!(whole.0, split.0, "{framing:?}, chunks of {size}: {bytes:?}");
    if whole.0.is_none() {
        assert_eq!(whole.1, split.1, "noise differs, chunks of {size}");
    }
});
