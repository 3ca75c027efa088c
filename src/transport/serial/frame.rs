//! Serial framing, as pure functions: a rendered payload in, the bytes on the
//! wire out; the device's answer bytes in, ACK / NAK out.
//!
//! **Invariants:** no I/O, no clock; a payload that would corrupt its frame (a
//! framing byte inside it, a character the encoding or the data bits cannot
//! carry) is refused with a reason, never altered or sent.

use super::spec::{Encoding, Flow, Framing, SerialSpec};

pub const STX: u8 = 0x02;
pub const ETX: u8 = 0x03;
pub const ACK: u8 = 0x06;
pub const NAK: u8 = 0x15;
/// Software flow control bytes: the line discipline eats them in the data.
pub const XON: u8 = 0x11;
pub const XOFF: u8 = 0x13;

/// Longest answer line kept while waiting for a line ending (noise without a
/// line ending cannot make the transport hold more).
const MAX_ANSWER_LINE: usize = 1024;

/// The LRC of `stx_etx_lrc`: XOR of every payload byte and the ETX.
pub fn lrc(payload: &[u8]) -> u8 {
    payload.iter().fold(ETX, |acc, b| acc ^ b)
}

/// Why a payload cannot go on the line as it is. Each variant carries where
/// in the payload the trouble is, for the dead letter's `last_error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the payload holds {name} at byte {at}, which ends a frame in framing \"{framing}\": sending it would corrupt the frame{}",
        if *framing == "line" { " (a multi-line format such as xml needs framing = \"stx_etx_lrc\")" } else { "" }
    )]
    FramingByte {
        name: &'static str,
        at: usize,
        framing: &'static str,
    },
    #[error(
        "the payload holds {} at byte {at}, which flow_control = \"software\" takes as a pause/resume signal",
        flow_name(*byte)
    )]
    FlowControlByte { byte: u8, at: usize },
    #[error(
        "the frame's check byte (LRC, the XOR of the payload and ETX) would be {}, which flow_control = \"software\" takes as a pause/resume signal: the device would never see the frame whole; change the record (any field) or use flow_control = \"hardware\" or \"none\"",
        flow_name(*lrc)
    )]
    LrcIsFlowControl { lrc: u8 },
    #[error(
        "the payload holds byte 0x{byte:02X} at byte {at}, which data_bits = 7 cannot carry (use encoding = \"ascii\" to name the field's character)"
    )]
    SevenBits { byte: u8, at: usize },
    /// `character` describes it (`'ü' (U+00FC)`); `at` is a byte offset for
    /// ascii, a character offset for latin1 (`unit` says which).
    #[error(
        "the payload holds {character} at {unit} {at}, which encoding = \"{encoding}\" cannot carry"
    )]
    NotInEncoding {
        character: String,
        unit: &'static str,
        at: usize,
        encoding: &'static str,
    },
    #[error("the payload is not UTF-8 text ({0})")]
    NotUtf8(#[from] std::str::Utf8Error),
}

fn flow_name(byte: u8) -> &'static str {
    if byte == XON {
        "XON (0x11)"
    } else {
        "XOFF (0x13)"
    }
}

/// The payload as the device reads it: one trailing line ending of the
/// rendering removed (a CSV row ends in CRLF, XML in LF: the frame is the end),
/// then encoded. Refuses what the frame or the line could not carry.
pub fn prepare(spec: &SerialSpec, rendered: &[u8]) -> Result<Vec<u8>, Refusal> {
    let text = rendered
        .strip_suffix(b"\r\n")
        .or_else(|| rendered.strip_suffix(b"\n"))
        .unwrap_or(rendered);
    let bytes = encode(spec.encoding, text)?;
    let forbidden: &[(u8, &str)] = match &spec.framing {
        Framing::StxEtxLrc => &[(STX, "STX (0x02)"), (ETX, "ETX (0x03)")],
        Framing::Line { .. } => &[(b'\r', "a carriage return"), (b'\n', "a line feed")],
    };
    for (at, b) in bytes.iter().enumerate() {
        if let Some((_, name)) = forbidden.iter().find(|(f, _)| f == b) {
            return Err(Refusal::FramingByte {
                name,
                at,
                framing: spec.framing.name(),
            });
        }
        if spec.flow_control == Flow::Software && (*b == XON || *b == XOFF) {
            return Err(Refusal::FlowControlByte { byte: *b, at });
        }
        if spec.data_bits == 7 && *b >= 0x80 {
            return Err(Refusal::SevenBits { byte: *b, at });
        }
    }
    if spec.flow_control == Flow::Software && spec.framing == Framing::StxEtxLrc {
        // The LRC is computed, not written by anyone: it can still be XON or
        // XOFF, and the line discipline would swallow it, leaving the frame
        // unfinished at every send (an outage for ever on this one record).
        let lrc = lrc(&bytes);
        if lrc == XON || lrc == XOFF {
            return Err(Refusal::LrcIsFlowControl { lrc });
        }
    }
    Ok(bytes)
}

/// The payload's text (UTF-8, as the translator renders it) in the device's encoding.
pub fn encode(encoding: Encoding, text: &[u8]) -> Result<Vec<u8>, Refusal> {
    match encoding {
        Encoding::Utf8 => Ok(text.to_vec()),
        Encoding::Ascii => match text.iter().position(|b| *b >= 0x80) {
            None => Ok(text.to_vec()),
            Some(at) => Err(Refusal::NotInEncoding {
                character: describe_char_at(text, at),
                unit: "byte",
                at,
                encoding: "ascii",
            }),
        },
        Encoding::Latin1 => {
            let s = std::str::from_utf8(text)?;
            s.chars()
                .enumerate()
                .map(|(at, c)| {
                    u8::try_from(u32::from(c)).map_err(|_| Refusal::NotInEncoding {
                        character: format!("{c:?} (U+{:04X})", u32::from(c)),
                        unit: "character",
                        at,
                        encoding: "latin1",
                    })
                })
                .collect()
        }
    }
}

fn describe_char_at(text: &[u8], i: usize) -> String {
    // Back to the first byte of the UTF-8 sequence holding byte `i`.
    let mut start = i;
    while start > 0 && text[start] & 0xC0 == 0x80 {
        start -= 1;
    }
    match String::from_utf8_lossy(&text[start..]).chars().next() {
        Some(c) if c != char::REPLACEMENT_CHARACTER => format!("{c:?} (U+{:04X})", u32::from(c)),
        _ => format!("byte 0x{:02X}", text[i]),
    }
}

/// The bytes on the wire for one prepared payload.
pub fn frame(framing: &Framing, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    match framing {
        Framing::StxEtxLrc => {
            out.push(STX);
            out.extend_from_slice(payload);
            out.push(ETX);
            out.push(lrc(payload));
        }
        Framing::Line { .. } => {
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// The frame for a prepared payload as text for people: printable ASCII as
/// is, every other byte named (`<STX>`, `<ETX>`, `<CR>`, `<LF>`, `<0xFC>`),
/// the LRC as `<LRC 0x41>`.
pub fn show(framing: &Framing, payload: &[u8]) -> String {
    let mut out = String::new();
    let body = |out: &mut String| {
        for b in payload {
            match *b {
                0x20..=0x7E => out.push(char::from(*b)),
                b'\t' => out.push_str("<TAB>"),
                b => out.push_str(&format!("<0x{b:02X}>")),
            }
        }
    };
    match framing {
        Framing::StxEtxLrc => {
            out.push_str("<STX>");
            body(&mut out);
            out.push_str(&format!("<ETX><LRC 0x{:02X}>", lrc(payload)));
        }
        Framing::Line { .. } => {
            body(&mut out);
            out.push_str("<CR><LF>");
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    Ack,
    Nak,
    /// `stx_etx_lrc`: an ACK or NAK byte after noise in the same answer. A
    /// wrong baud rate or parity, or a line that echoes, makes noise in which
    /// an 0x06 turns up by chance: trusting it would mark delivered a record
    /// the device never took. Treated like noise (send again: a repeat is
    /// safe, the delivery id lets the device drop it).
    Garbled,
}

/// Reads the device's answer out of whatever bytes arrive in one answer window.
/// `stx_etx_lrc`: the first byte decides (ACK, NAK, or noise; an ACK or NAK
/// after noise is [`Answer::Garbled`]). `line`: the first line equal to
/// `ack_line` or `nak_line` counts; other lines are noise, counted and skipped
/// (a whole line cannot match by chance).
#[derive(Debug)]
pub struct AnswerReader<'a> {
    framing: &'a Framing,
    line: Vec<u8>,
    /// Bytes (or whole lines) seen that were neither ACK nor NAK.
    pub noise: usize,
}

impl<'a> AnswerReader<'a> {
    pub fn new(framing: &'a Framing) -> Self {
        AnswerReader {
            framing,
            line: Vec::new(),
            noise: 0,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Option<Answer> {
        match self.framing {
            Framing::StxEtxLrc => {
                for b in bytes {
                    match *b {
                        ACK | NAK if self.noise > 0 => return Some(Answer::Garbled),
                        ACK => return Some(Answer::Ack),
                        NAK => return Some(Answer::Nak),
                        _ => self.noise += 1,
                    }
                }
                None
            }
            Framing::Line { ack_line, nak_line } => {
                for b in bytes {
                    // CR or LF ends a line (devices answer `OK\r`, `OK\n` or
                    // `OK\r\n`); the empty line between CR and LF is skipped.
                    if *b != b'\n' && *b != b'\r' {
                        if self.line.len() >= MAX_ANSWER_LINE {
                            self.noise += self.line.len();
                            self.line.clear();
                        }
                        self.line.push(*b);
                        continue;
                    }
                    let line = String::from_utf8_lossy(&self.line).trim().to_string();
                    self.line.clear();
                    if line == *ack_line {
                        return Some(Answer::Ack);
                    } else if line == *nak_line {
                        return Some(Answer::Nak);
                    } else if !line.is_empty() {
                        self.noise += line.len();
                    }
                }
                None
            }
        }
    }

    /// The answer window is over: a line without its ending is noise (so the
    /// reason given says garbage, not silence).
    pub fn finish(&mut self) {
        self.noise += self.line.len();
        self.line.clear();
    }
}

/// Bits one byte takes on the wire: start bit, data bits, parity bit, stop bits.
pub fn bits_per_byte(spec: &SerialSpec) -> u32 {
    1 + u32::from(spec.data_bits)
        + u32::from(spec.parity != super::spec::ParityKind::None)
        + u32::from(spec.stop_bits)
}

/// How long `len` bytes take on the wire at the port's baud rate.
pub fn wire_time(spec: &SerialSpec, len: usize) -> std::time::Duration {
    let bits = len as u64 * u64::from(bits_per_byte(spec));
    std::time::Duration::from_micros(bits * 1_000_000 / u64::from(spec.baud.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::serial::spec::SerialSpec;

    fn spec(framing: Framing) -> SerialSpec {
        SerialSpec {
            framing,
            ..SerialSpec::for_tests("/dev/null")
        }
    }

    fn line() -> Framing {
        Framing::Line {
            ack_line: "OK".into(),
            nak_line: "ERR".into(),
        }
    }

    #[test]
    fn stx_frame_and_lrc() {
        // LRC: 'A' ^ 'B' ^ ETX = 0x41 ^ 0x42 ^ 0x03 = 0x00
        assert_eq!(lrc(b"AB"), 0x00);
        assert_eq!(lrc(b""), ETX);
        assert_eq!(lrc(b"123"), 0x31 ^ 0x32 ^ 0x33 ^ 0x03);
        assert_eq!(
            frame(&Framing::StxEtxLrc, b"AB"),
            vec![STX, b'A', b'B', ETX, 0x00]
        );
    }

    #[test]
    fn frames_shown_for_people() {
        assert_eq!(
            show(&Framing::StxEtxLrc, b"t:1,M\xFCller\tx"),
            format!(
                "<STX>t:1,M<0xFC>ller<TAB>x<ETX><LRC 0x{:02X}>",
                lrc(b"t:1,M\xFCller\tx")
            )
        );
        assert_eq!(show(&line(), b"a,b"), "a,b<CR><LF>");
    }

    #[test]
    fn line_frame_ends_in_crlf() {
        assert_eq!(frame(&line(), b"a,b"), b"a,b\r\n".to_vec());
    }

    #[test]
    fn one_trailing_line_ending_is_dropped() {
        let s = spec(line());
        assert_eq!(prepare(&s, b"t:1,create,7\r\n").unwrap(), b"t:1,create,7");
        assert_eq!(prepare(&s, b"{}\n").unwrap(), b"{}");
        let err = prepare(&s, b"a\n\n").unwrap_err().to_string();
        assert!(err.contains("line feed at byte 1"), "{err}");
    }

    #[test]
    fn framing_bytes_inside_the_payload_are_refused() {
        let err = prepare(&spec(Framing::StxEtxLrc), b"ab\x03cd")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ETX (0x03) at byte 2") && err.contains("stx_etx_lrc"),
            "{err}"
        );
        assert!(prepare(&spec(Framing::StxEtxLrc), b"x\x02").is_err());
        // Multi-line XML fits stx_etx_lrc, not line framing.
        let xml = b"<R op=\"create\">\n  <Key>1</Key>\n</R>\n";
        assert!(prepare(&spec(Framing::StxEtxLrc), xml).is_ok());
        let err = prepare(&spec(line()), xml).unwrap_err().to_string();
        assert!(err.contains("needs framing = \"stx_etx_lrc\""), "{err}");
        let err = prepare(&spec(line()), b"a\rb").unwrap_err().to_string();
        assert!(err.contains("carriage return"), "{err}");
    }

    #[test]
    fn software_flow_control_and_seven_bits_refuse_what_they_would_eat() {
        let mut s = spec(Framing::StxEtxLrc);
        s.flow_control = Flow::Software;
        assert!(
            prepare(&s, b"a\x13b")
                .unwrap_err()
                .to_string()
                .contains("XOFF")
        );
        assert!(
            prepare(&s, b"a\x11b")
                .unwrap_err()
                .to_string()
                .contains("XON")
        );
        // Clean payloads whose LRC would be XON or XOFF: 'A' ^ 'S' ^ ETX = 0x11,
        // 'A' ^ 'Q' ^ ETX = 0x13.
        assert_eq!(lrc(b"AS"), XON);
        assert_eq!(lrc(b"AQ"), XOFF);
        assert_eq!(
            prepare(&s, b"AS").unwrap_err(),
            Refusal::LrcIsFlowControl { lrc: XON }
        );
        let err = prepare(&s, b"AS").unwrap_err().to_string();
        assert!(
            err.contains("check byte (LRC") && err.contains("XON"),
            "{err}"
        );
        let err = prepare(&s, b"AQ").unwrap_err().to_string();
        assert!(
            err.contains("check byte (LRC") && err.contains("XOFF"),
            "{err}"
        );
        assert!(prepare(&s, b"AR").is_ok());
        // Only software flow control eats them.
        let mut none = spec(Framing::StxEtxLrc);
        none.flow_control = Flow::None;
        assert!(prepare(&none, b"AS").is_ok());
        let mut s = spec(Framing::StxEtxLrc);
        s.data_bits = 7;
        assert!(
            prepare(&s, "Müller".as_bytes())
                .unwrap_err()
                .to_string()
                .contains("data_bits = 7")
        );
        s.encoding = Encoding::Ascii;
        let err = prepare(&s, "Müller".as_bytes()).unwrap_err().to_string();
        assert!(
            err.contains("'ü' (U+00FC) at byte 1") && err.contains("ascii"),
            "{err}"
        );
    }

    #[test]
    fn encodings() {
        assert_eq!(
            encode(Encoding::Utf8, "é".as_bytes()).unwrap(),
            "é".as_bytes()
        );
        assert_eq!(
            encode(Encoding::Latin1, "Müller".as_bytes()).unwrap(),
            b"M\xFCller"
        );
        let err = encode(Encoding::Latin1, "a€".as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("U+20AC") && err.contains("latin1"), "{err}");
        assert_eq!(encode(Encoding::Ascii, b"plain").unwrap(), b"plain");
        // Latin-1 output is checked for framing bytes after encoding.
        let mut s = spec(Framing::StxEtxLrc);
        s.encoding = Encoding::Latin1;
        assert_eq!(prepare(&s, "é\n".as_bytes()).unwrap(), vec![0xE9]);
    }

    #[test]
    fn answers_skip_noise() {
        let f = Framing::StxEtxLrc;
        let mut r = AnswerReader::new(&f);
        assert_eq!(r.feed(&[ACK]), Some(Answer::Ack));
        let mut r = AnswerReader::new(&f);
        assert_eq!(r.feed(&[NAK, ACK]), Some(Answer::Nak));
        // An ACK or NAK after noise in the same answer is not trusted.
        let mut r = AnswerReader::new(&f);
        assert_eq!(r.feed(b"\x00\xffzz"), None);
        assert_eq!(r.feed(b"q\x06"), Some(Answer::Garbled));
        assert_eq!(r.noise, 5);
        let mut r = AnswerReader::new(&f);
        assert_eq!(r.feed(b"\x13\x15"), Some(Answer::Garbled));

        let f = line();
        let mut r = AnswerReader::new(&f);
        assert_eq!(r.feed(b"garbage\r\n\r\nO"), None);
        assert_eq!(r.feed(b"K"), None);
        assert_eq!(r.feed(b"\r"), Some(Answer::Ack));
        assert_eq!(r.noise, 7);
        // CR alone, LF alone, CR LF: each ends a line.
        for answer in [&b"OK\r"[..], b"OK\n", b"\r\nOK\r\n", b"\n\rOK\r"] {
            let mut r = AnswerReader::new(&f);
            assert_eq!(r.feed(answer), Some(Answer::Ack), "{answer:?}");
            assert_eq!(r.noise, 0);
        }
        let mut r = AnswerReader::new(&f);
        assert_eq!(r.feed(b"BUSY\rERR\r"), Some(Answer::Nak));
        assert_eq!(r.noise, 4);
        // A line still unfinished when the window ends is noise, not silence.
        let mut r = AnswerReader::new(&f);
        assert_eq!(r.feed(b"OK"), None);
        assert_eq!(r.noise, 0);
        r.finish();
        assert_eq!(r.noise, 2);
        let mut r = AnswerReader::new(&f);
        assert_eq!(r.feed(b" ERR \n"), Some(Answer::Nak));
        // Endless noise without a line ending stays bounded.
        let mut r = AnswerReader::new(&f);
        for _ in 0..100 {
            assert_eq!(r.feed(&[b'x'; 100]), None);
        }
        assert!(r.line.len() <= MAX_ANSWER_LINE);
    }

    #[test]
    fn wire_time_counts_start_parity_and_stop_bits() {
        let mut s = spec(Framing::StxEtxLrc);
        s.baud = 9600;
        assert_eq!(bits_per_byte(&s), 10);
        assert_eq!(wire_time(&s, 960), std::time::Duration::from_secs(1));
        s.parity = crate::transport::serial::spec::ParityKind::Even;
        s.stop_bits = 2;
        assert_eq!(bits_per_byte(&s), 12);
    }
}
