//! Character sets of fixed-width records: text in, one byte a character out
//! (and back, for the `translate` ruler).
//!
//! **Invariants:** a character the chosen set lacks is an error, never a `?`;
//! the EBCDIC tables are checked for all 256 bytes against `iconv` (IBM037,
//! IBM1047, IBM1140) and Python's `cp037`/`cp1140` codecs in the tests below.

/// `[format] encoding` of kind "fixed".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// 7-bit ASCII (the default).
    Ascii,
    /// ISO-8859-1.
    Latin1,
    /// IBM037, EBCDIC US/Canada.
    Cp037,
    /// IBM1047, EBCDIC Latin-1/Open Systems.
    Cp1047,
    /// IBM1140: IBM037 with the euro sign at 0x9F (in place of ¤).
    Cp1140,
}

impl Encoding {
    pub const NAMES: &'static [&'static str] = &["ascii", "latin1", "cp037", "cp1047", "cp1140"];

    pub fn from_name(name: &str) -> Option<Encoding> {
        Some(match name.to_ascii_lowercase().as_str() {
            "ascii" => Encoding::Ascii,
            "latin1" => Encoding::Latin1,
            "cp037" => Encoding::Cp037,
            "cp1047" => Encoding::Cp1047,
            "cp1140" => Encoding::Cp1140,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Ascii => "ascii",
            Encoding::Latin1 => "latin1",
            Encoding::Cp037 => "cp037",
            Encoding::Cp1047 => "cp1047",
            Encoding::Cp1140 => "cp1140",
        }
    }

    pub fn is_ebcdic(self) -> bool {
        matches!(self, Encoding::Cp037 | Encoding::Cp1047 | Encoding::Cp1140)
    }

    /// The byte for `c`, or `None` if this set has no such character.
    pub fn encode(self, c: char) -> Option<u8> {
        let code = c as u32;
        match self {
            Encoding::Ascii => (code < 0x80).then_some(code as u8),
            Encoding::Latin1 => (code < 0x100).then_some(code as u8),
            Encoding::Cp037 => (code < 0x100).then(|| FROM_CP037[code as usize]),
            Encoding::Cp1047 => (code < 0x100).then(|| FROM_CP1047[code as usize]),
            Encoding::Cp1140 => match code {
                0x20AC => Some(0x9F),
                0xA4 => None,
                _ => (code < 0x100).then(|| FROM_CP037[code as usize]),
            },
        }
    }

    /// The character of byte `b`.
    pub fn decode(self, b: u8) -> char {
        match self {
            Encoding::Ascii | Encoding::Latin1 => b as char,
            Encoding::Cp037 => CP037[b as usize] as char,
            Encoding::Cp1047 => CP1047[b as usize] as char,
            Encoding::Cp1140 if b == 0x9F => '€',
            Encoding::Cp1140 => CP037[b as usize] as char,
        }
    }
}

/// windows-1252's characters for the bytes 0x80–0x9F (where it differs from
/// ISO-8859-1); the five bytes it leaves undefined map to U+FFFD.
pub const CP1252_80_9F: [char; 32] = [
    '\u{20AC}', '\u{FFFD}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{02C6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{FFFD}', '\u{017D}', '\u{FFFD}',
    '\u{FFFD}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}', '\u{0153}', '\u{FFFD}', '\u{017E}', '\u{0178}',
];

/// The windows-1252 character of byte `b` (U+FFFD for its five undefined bytes).
pub fn cp1252_decode(b: u8) -> char {
    match b {
        0x80..=0x9F => CP1252_80_9F[usize::from(b - 0x80)],
        _ => b as char,
    }
}

/// The windows-1252 byte for `c`, or `None` if it has none.
pub fn cp1252_encode(c: char) -> Option<u8> {
    let code = c as u32;
    if code < 0x80 || (0xA0..0x100).contains(&code) {
        return Some(code as u8);
    }
    CP1252_80_9F
        .iter()
        .position(|&x| x == c && x != '\u{FFFD}')
        .map(|i| 0x80 + i as u8)
}

/// The inverse of a byte -> Latin-1 table (each is a permutation of 0..=255).
const fn invert(table: &[u8; 256]) -> [u8; 256] {
    let mut out = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        out[table[b] as usize] = b as u8;
        b += 1;
    }
    out
}

const FROM_CP037: [u8; 256] = invert(&CP037);
const FROM_CP1047: [u8; 256] = invert(&CP1047);

/// IBM037 (US/Canada EBCDIC): byte -> Latin-1 code point (the page is a
/// permutation of Latin-1). Row comments are the high nibble.
const CP037: [u8; 256] = [
    0x00, 0x01, 0x02, 0x03, 0x9C, 0x09, 0x86, 0x7F, 0x97, 0x8D, 0x8E, 0x0B, 0x0C, 0x0D, 0x0E,
    0x0F, // 00
    0x10, 0x11, 0x12, 0x13, 0x9D, 0x85, 0x08, 0x87, 0x18, 0x19, 0x92, 0x8F, 0x1C, 0x1D, 0x1E,
    0x1F, // 10
    0x80, 0x81, 0x82, 0x83, 0x84, 0x0A, 0x17, 0x1B, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x05, 0x06,
    0x07, // 20
    0x90, 0x91, 0x16, 0x93, 0x94, 0x95, 0x96, 0x04, 0x98, 0x99, 0x9A, 0x9B, 0x14, 0x15, 0x9E,
    0x1A, // 30
    0x20, 0xA0, 0xE2, 0xE4, 0xE0, 0xE1, 0xE3, 0xE5, 0xE7, 0xF1, 0xA2, 0x2E, 0x3C, 0x28, 0x2B,
    0x7C, // 40
    0x26, 0xE9, 0xEA, 0xEB, 0xE8, 0xED, 0xEE, 0xEF, 0xEC, 0xDF, 0x21, 0x24, 0x2A, 0x29, 0x3B,
    0xAC, // 50
    0x2D, 0x2F, 0xC2, 0xC4, 0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xD1, 0xA6, 0x2C, 0x25, 0x5F, 0x3E,
    0x3F, // 60
    0xF8, 0xC9, 0xCA, 0xCB, 0xC8, 0xCD, 0xCE, 0xCF, 0xCC, 0x60, 0x3A, 0x23, 0x40, 0x27, 0x3D,
    0x22, // 70
    0xD8, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0xAB, 0xBB, 0xF0, 0xFD, 0xFE,
    0xB1, // 80
    0xB0, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F, 0x70, 0x71, 0x72, 0xAA, 0xBA, 0xE6, 0xB8, 0xC6,
    0xA4, // 90
    0xB5, 0x7E, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0xA1, 0xBF, 0xD0, 0xDD, 0xDE,
    0xAE, // A0
    0x5E, 0xA3, 0xA5, 0xB7, 0xA9, 0xA7, 0xB6, 0xBC, 0xBD, 0xBE, 0x5B, 0x5D, 0xAF, 0xA8, 0xB4,
    0xD7, // B0
    0x7B, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0xAD, 0xF4, 0xF6, 0xF2, 0xF3,
    0xF5, // C0
    0x7D, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F, 0x50, 0x51, 0x52, 0xB9, 0xFB, 0xFC, 0xF9, 0xFA,
    0xFF, // D0
    0x5C, 0xF7, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0xB2, 0xD4, 0xD6, 0xD2, 0xD3,
    0xD5, // E0
    0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0xB3, 0xDB, 0xDC, 0xD9, 0xDA,
    0x9F, // F0
];

/// IBM1047 (Latin-1/Open Systems EBCDIC, z/OS Unix): byte -> Latin-1 code point.
const CP1047: [u8; 256] = [
    0x00, 0x01, 0x02, 0x03, 0x9C, 0x09, 0x86, 0x7F, 0x97, 0x8D, 0x8E, 0x0B, 0x0C, 0x0D, 0x0E,
    0x0F, // 00
    0x10, 0x11, 0x12, 0x13, 0x9D, 0x85, 0x08, 0x87, 0x18, 0x19, 0x92, 0x8F, 0x1C, 0x1D, 0x1E,
    0x1F, // 10
    0x80, 0x81, 0x82, 0x83, 0x84, 0x0A, 0x17, 0x1B, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x05, 0x06,
    0x07, // 20
    0x90, 0x91, 0x16, 0x93, 0x94, 0x95, 0x96, 0x04, 0x98, 0x99, 0x9A, 0x9B, 0x14, 0x15, 0x9E,
    0x1A, // 30
    0x20, 0xA0, 0xE2, 0xE4, 0xE0, 0xE1, 0xE3, 0xE5, 0xE7, 0xF1, 0xA2, 0x2E, 0x3C, 0x28, 0x2B,
    0x7C, // 40
    0x26, 0xE9, 0xEA, 0xEB, 0xE8, 0xED, 0xEE, 0xEF, 0xEC, 0xDF, 0x21, 0x24, 0x2A, 0x29, 0x3B,
    0x5E, // 50
    0x2D, 0x2F, 0xC2, 0xC4, 0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xD1, 0xA6, 0x2C, 0x25, 0x5F, 0x3E,
    0x3F, // 60
    0xF8, 0xC9, 0xCA, 0xCB, 0xC8, 0xCD, 0xCE, 0xCF, 0xCC, 0x60, 0x3A, 0x23, 0x40, 0x27, 0x3D,
    0x22, // 70
    0xD8, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0xAB, 0xBB, 0xF0, 0xFD, 0xFE,
    0xB1, // 80
    0xB0, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F, 0x70, 0x71, 0x72, 0xAA, 0xBA, 0xE6, 0xB8, 0xC6,
    0xA4, // 90
    0xB5, 0x7E, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0xA1, 0xBF, 0xD0, 0x5B, 0xDE,
    0xAE, // A0
    0xAC, 0xA3, 0xA5, 0xB7, 0xA9, 0xA7, 0xB6, 0xBC, 0xBD, 0xBE, 0xDD, 0xA8, 0xAF, 0x5D, 0xB4,
    0xD7, // B0
    0x7B, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0xAD, 0xF4, 0xF6, 0xF2, 0xF3,
    0xF5, // C0
    0x7D, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F, 0x50, 0x51, 0x52, 0xB9, 0xFB, 0xFC, 0xF9, 0xFA,
    0xFF, // D0
    0x5C, 0xF7, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0xB2, 0xD4, 0xD6, 0xD2, 0xD3,
    0xD5, // E0
    0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0xB3, 0xDB, 0xDC, 0xD9, 0xDA,
    0x9F, // F0
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const ALL: [Encoding; 5] = [
        Encoding::Ascii,
        Encoding::Latin1,
        Encoding::Cp037,
        Encoding::Cp1047,
        Encoding::Cp1140,
    ];

    /// What `decoder` (iconv or python3) makes of each of the 256 bytes; None
    /// when the tool is missing (CI has both).
    fn reference(tool: &str, args: &[&str]) -> Option<Vec<char>> {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut child = Command::new(tool)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{tool} {args:?} failed");
        let text = String::from_utf8(out.stdout).unwrap();
        Some(text.chars().collect())
    }

    fn check_against(encoding: Encoding, tool: &str, args: &[&str]) {
        let Some(expected) = reference(tool, args) else {
            println!("SKIPPED: {tool} is not installed");
            return;
        };
        assert_eq!(expected.len(), 256, "{tool} {args:?}");
        for b in 0..=255u8 {
            let c = expected[b as usize];
            assert_eq!(
                encoding.decode(b),
                c,
                "{} byte {b:#04X} ({tool})",
                encoding.name()
            );
            assert_eq!(
                encoding.encode(c),
                Some(b),
                "{} U+{:04X} ({tool})",
                encoding.name(),
                c as u32
            );
        }
    }

    #[test]
    fn ebcdic_tables_match_iconv_for_all_256_bytes() {
        for (encoding, name) in [
            (Encoding::Cp037, "IBM037"),
            (Encoding::Cp1047, "IBM1047"),
            (Encoding::Cp1140, "IBM1140"),
        ] {
            check_against(encoding, "iconv", &["-f", name, "-t", "UTF-8"]);
        }
    }

    #[test]
    fn ebcdic_tables_match_python_codecs_for_all_256_bytes() {
        for (encoding, codec) in [(Encoding::Cp037, "cp037"), (Encoding::Cp1140, "cp1140")] {
            let script = format!(
                "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read().decode('{codec}').encode('utf-8'))"
            );
            check_against(encoding, "python3", &["-c", &script]);
        }
    }

    #[test]
    fn characters_a_set_lacks_are_refused() {
        assert_eq!(Encoding::Ascii.encode('é'), None);
        assert_eq!(Encoding::Latin1.encode('é'), Some(0xE9));
        assert_eq!(Encoding::Latin1.encode('€'), None);
        assert_eq!(Encoding::Cp037.encode('€'), None);
        assert_eq!(Encoding::Cp1140.encode('€'), Some(0x9F));
        assert_eq!(Encoding::Cp1140.encode('¤'), None);
        assert_eq!(Encoding::Cp037.encode('A'), Some(0xC1));
        assert_eq!(Encoding::Cp037.encode('0'), Some(0xF0));
        assert_eq!(Encoding::Cp037.encode(' '), Some(0x40));
        assert_eq!(Encoding::Cp1047.encode('['), Some(0xAD));
        assert_eq!(Encoding::Cp037.encode('['), Some(0xBA));
        for e in ALL {
            assert_eq!(e.encode('😀'), None);
            assert_eq!(Encoding::from_name(e.name()), Some(e));
        }
    }
}
