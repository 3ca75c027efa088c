//! The `[transport]` keys of `kind = "serial"`, as written -> a checked
//! [`SerialSpec`]. Every problem is reported with the key it is about, so that
//! `connector.rs` can name the file and the line.
//!
//! **Invariants:** a `SerialSpec` holds only values the transport can use
//! without a panic or an endless wait (durations bounded above and below,
//! `retransmits` <= 100, framing answers that differ); every problem in the
//! keys is reported, not just the first, and each one only once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::problem::parse_duration;

/// A serial connector's transport, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialSpec {
    /// The device path (`/dev/ttyS0`, `/dev/serial/by-id/...`), opened anew
    /// after each error so that a re-plugged adapter or a re-pointed symlink works.
    pub port: PathBuf,
    pub baud: u32,
    /// 7 or 8.
    pub data_bits: u8,
    pub parity: ParityKind,
    /// 1 or 2.
    pub stop_bits: u8,
    pub flow_control: Flow,
    pub framing: Framing,
    /// How long to wait for the answer once the frame is on the wire.
    pub ack_timeout: Duration,
    /// Extra sends of the same frame after a NAK, noise or silence.
    pub retransmits: u32,
    /// Quiet time between the end of one exchange and the next frame (slow devices).
    pub inter_frame_delay: Duration,
    pub encoding: Encoding,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParityKind {
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Flow {
    None,
    Software,
    Hardware,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Framing {
    /// STX payload ETX LRC, answered by the ACK or NAK byte.
    StxEtxLrc,
    /// payload CRLF, answered by a line.
    Line { ack_line: String, nak_line: String },
}

impl Framing {
    pub fn name(&self) -> &'static str {
        match self {
            Framing::StxEtxLrc => "stx_etx_lrc",
            Framing::Line { .. } => "line",
        }
    }
}

/// The payload's text encoding on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encoding {
    /// The translator's UTF-8 as is.
    Utf8,
    /// 7-bit ASCII; any other character is refused.
    Ascii,
    /// ISO-8859-1, one byte a character; characters past U+00FF are refused.
    Latin1,
}

pub const DEFAULT_BAUD: u32 = 9600;
pub const DEFAULT_ACK_TIMEOUT: &str = "2s";
pub const DEFAULT_RETRANSMITS: u32 = 3;
/// No device takes ten minutes to answer one frame.
pub const MAX_ACK_TIMEOUT: Duration = Duration::from_secs(600);
pub const MAX_INTER_FRAME_DELAY: Duration = Duration::from_secs(60);

/// `[transport] kind = "serial"` as written.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Raw {
    /// The device, e.g. "/dev/ttyS0" or "/dev/serial/by-id/usb-...".
    pub port: Option<PathBuf>,
    /// Line speed. Default 9600.
    pub baud: Option<u32>,
    /// 8 (default) or 7.
    pub data_bits: Option<u8>,
    /// none (default) | odd | even.
    pub parity: Option<String>,
    /// 1 (default) or 2.
    pub stop_bits: Option<u8>,
    /// none (default) | software (XON/XOFF) | hardware (RTS/CTS).
    pub flow_control: Option<String>,
    /// stx_etx_lrc (default) | line.
    pub framing: Option<String>,
    /// framing "line": the device's "got it" line. Default "ACK".
    pub ack_line: Option<String>,
    /// framing "line": the device's "refused" line. Default "NAK".
    pub nak_line: Option<String>,
    /// How long to wait for ACK/NAK after a frame is on the wire. Default "2s".
    pub ack_timeout: Option<String>,
    /// Extra sends of a frame after NAK, noise or silence. Default 3.
    pub retransmits: Option<u32>,
    /// Quiet time before each frame, for slow devices. Default "0s".
    pub inter_frame_delay: Option<String>,
    /// utf8 (default) | ascii | latin1: how payload text goes on the wire.
    pub encoding: Option<String>,
}

/// The `[transport]` keys of kind "serial" (other kinds refuse them).
pub const KEYS: &[&str] = &[
    "port",
    "baud",
    "data_bits",
    "parity",
    "stop_bits",
    "flow_control",
    "framing",
    "ack_line",
    "nak_line",
    "ack_timeout",
    "retransmits",
    "inter_frame_delay",
    "encoding",
];

/// Checks the serial keys. `problem(key, message)` is called for each problem;
/// `base` resolves a relative `port`.
pub fn validate(t: &Raw, base: &Path, problem: &mut dyn FnMut(&str, String)) -> Option<SerialSpec> {
    let mut ok = true;
    let mut fail = |key: &str, message: String| {
        ok = false;
        problem(key, message);
    };
    let port = match &t.port {
        Some(p) if !p.as_os_str().is_empty() => {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        }
        _ => {
            fail(
                "kind",
                "kind \"serial\" needs `port = \"/dev/ttyS0\"` (the serial device; a USB adapter is usually /dev/ttyUSB0)".into(),
            );
            PathBuf::new()
        }
    };
    let baud = t.baud.unwrap_or(DEFAULT_BAUD);
    if !(50..=4_000_000).contains(&baud) {
        fail(
            "baud",
            format!(
                "baud {baud} is not a serial speed; common ones are 9600, 19200, 38400, 115200"
            ),
        );
    }
    let data_bits = t.data_bits.unwrap_or(8);
    if data_bits != 7 && data_bits != 8 {
        fail(
            "data_bits",
            format!("data_bits {data_bits} is not supported; use 8 (most devices) or 7"),
        );
    }
    let mut choose = |key: &str, value: &Option<String>, default: &str, known: &[&str]| {
        let v = value.as_deref().unwrap_or(default).to_string();
        if !known.contains(&v.as_str()) {
            fail(
                key,
                format!("{key} `{v}` is unknown; use one of: {}", known.join(", ")),
            );
        }
        v
    };
    let parity = match choose("parity", &t.parity, "none", &["none", "odd", "even"]).as_str() {
        "odd" => ParityKind::Odd,
        "even" => ParityKind::Even,
        _ => ParityKind::None,
    };
    let flow_control = match choose(
        "flow_control",
        &t.flow_control,
        "none",
        &["none", "software", "hardware"],
    )
    .as_str()
    {
        "software" => Flow::Software,
        "hardware" => Flow::Hardware,
        _ => Flow::None,
    };
    let framing_name = choose(
        "framing",
        &t.framing,
        "stx_etx_lrc",
        &["stx_etx_lrc", "line"],
    );
    let encoding = match choose(
        "encoding",
        &t.encoding,
        "utf8",
        &["utf8", "ascii", "latin1"],
    )
    .as_str()
    {
        "ascii" => Encoding::Ascii,
        "latin1" => Encoding::Latin1,
        _ => Encoding::Utf8,
    };
    let stop_bits = t.stop_bits.unwrap_or(1);
    if stop_bits != 1 && stop_bits != 2 {
        fail("stop_bits", format!("stop_bits {stop_bits} must be 1 or 2"));
    }
    let framing = if framing_name == "line" {
        let mut answer = |key: &str, value: &Option<String>, default: &str| {
            let v = value.clone().unwrap_or_else(|| default.to_string());
            if v.trim().is_empty() || v.trim() != v || v.contains(['\r', '\n']) {
                fail(
                    key,
                    format!(
                        "{key} {v:?} must be non-empty text without leading or trailing blanks or line breaks"
                    ),
                );
            }
            v
        };
        let ack_line = answer("ack_line", &t.ack_line, "ACK");
        let nak_line = answer("nak_line", &t.nak_line, "NAK");
        if ack_line == nak_line {
            fail(
                "nak_line",
                format!("ack_line and nak_line are both {ack_line:?}: the answers must differ"),
            );
        }
        Framing::Line { ack_line, nak_line }
    } else if framing_name != "stx_etx_lrc" {
        // Already reported as unknown: a second error about ack_line would
        // only confuse.
        Framing::StxEtxLrc
    } else {
        for (key, present) in [
            ("ack_line", t.ack_line.is_some()),
            ("nak_line", t.nak_line.is_some()),
        ] {
            if present {
                fail(
                    key,
                    format!(
                        "`{key}` applies only to framing = \"line\" (stx_etx_lrc is answered by the ACK and NAK bytes)"
                    ),
                );
            }
        }
        Framing::StxEtxLrc
    };
    // An upper bound too: a huge value would pass here and then overflow the
    // clock arithmetic (a panic) at the first delivery.
    let mut duration =
        |key: &str, value: &Option<String>, default: &str, (least, most): (Duration, Duration)| {
            match parse_duration(value.as_deref().unwrap_or(default)) {
                Ok(d) if d < least => {
                    fail(key, format!("{key} must be at least {least:?}"));
                    least
                }
                Ok(d) if d > most => {
                    fail(
                        key,
                        format!(
                            "{key} {} is too long: at most {}",
                            humantime::format_duration(d),
                            humantime::format_duration(most)
                        ),
                    );
                    least
                }
                Ok(d) => d,
                Err(e) => {
                    fail(key, format!("{key}: {e}"));
                    least
                }
            }
        };
    let ack_timeout = duration(
        "ack_timeout",
        &t.ack_timeout,
        DEFAULT_ACK_TIMEOUT,
        (Duration::from_millis(10), MAX_ACK_TIMEOUT),
    );
    let inter_frame_delay = duration(
        "inter_frame_delay",
        &t.inter_frame_delay,
        "0s",
        (Duration::ZERO, MAX_INTER_FRAME_DELAY),
    );
    let retransmits = t.retransmits.unwrap_or(DEFAULT_RETRANSMITS);
    if retransmits > 100 {
        fail(
            "retransmits",
            format!(
                "retransmits {retransmits} is more than 100; a frame the device refuses that often is better rejected and retried later"
            ),
        );
    }
    ok.then_some(SerialSpec {
        port,
        baud,
        data_bits,
        parity,
        stop_bits,
        flow_control,
        framing,
        ack_timeout,
        retransmits,
        inter_frame_delay,
        encoding,
    })
}

impl SerialSpec {
    #[cfg(test)]
    pub fn for_tests(port: &str) -> SerialSpec {
        SerialSpec {
            port: port.into(),
            baud: DEFAULT_BAUD,
            data_bits: 8,
            parity: ParityKind::None,
            stop_bits: 1,
            flow_control: Flow::None,
            framing: Framing::StxEtxLrc,
            ack_timeout: Duration::from_millis(200),
            retransmits: DEFAULT_RETRANSMITS,
            inter_frame_delay: Duration::ZERO,
            encoding: Encoding::Utf8,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::connector::{TransportSpec, load};

    fn connector(dir: &Path, transport: &str) -> Result<crate::connector::Connector, Vec<String>> {
        let folder = dir.join("line");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("connector.toml"),
            format!("collections = [\"p\"]\n[format]\nkind = \"json\"\n[transport]\nkind = \"serial\"\n{transport}"),
        )
        .unwrap();
        load(&folder, dir)
    }

    #[test]
    fn defaults_and_a_relative_port() {
        let tmp = tempfile::tempdir().unwrap();
        let c = connector(tmp.path(), "port = \"pty\"\n").unwrap();
        let TransportSpec::Serial(s) = c.transport else {
            panic!("serial")
        };
        assert_eq!(
            s,
            SerialSpec {
                port: tmp.path().join("pty"),
                ack_timeout: Duration::from_secs(2),
                ..SerialSpec::for_tests("")
            }
        );
    }

    #[test]
    fn line_framing_with_its_answers() {
        let tmp = tempfile::tempdir().unwrap();
        let c = connector(
            tmp.path(),
            "port = \"/dev/ttyS0\"\nframing = \"line\"\nack_line = \"OK\"\nbaud = 115200\nparity = \"even\"\nstop_bits = 2\ndata_bits = 7\nflow_control = \"hardware\"\nencoding = \"latin1\"\nretransmits = 0\nack_timeout = \"250ms\"\ninter_frame_delay = \"20ms\"\n",
        )
        .unwrap();
        let TransportSpec::Serial(s) = c.transport else {
            panic!("serial")
        };
        assert_eq!(
            s.framing,
            Framing::Line {
                ack_line: "OK".into(),
                nak_line: "NAK".into()
            }
        );
        assert_eq!(
            (
                s.baud,
                s.parity,
                s.stop_bits,
                s.data_bits,
                s.flow_control,
                s.encoding
            ),
            (
                115200,
                ParityKind::Even,
                2,
                7,
                Flow::Hardware,
                Encoding::Latin1
            )
        );
        assert_eq!(s.retransmits, 0);
        assert_eq!(s.ack_timeout, Duration::from_millis(250));
        assert_eq!(s.inter_frame_delay, Duration::from_millis(20));
    }

    #[test]
    fn every_problem_names_its_line_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let err = connector(
            tmp.path(),
            "dir = \"out\"\nbaud = 0\nparity = \"mark\"\nack_line = \"OK\"\nack_timeout = \"soon\"\nstop_bits = 3\n",
        )
        .unwrap_err();
        let has = |line: usize, text: &str| {
            err.iter()
                .any(|e| e.contains(&format!("connector.toml: line {line}: ")) && e.contains(text))
        };
        assert!(has(5, "needs `port"), "{err:#?}");
        assert!(
            has(6, "`dir` does not apply to transport kind \"serial\""),
            "{err:#?}"
        );
        assert!(has(7, "baud 0"), "{err:#?}");
        assert!(
            has(8, "parity `mark` is unknown; use one of: none, odd, even"),
            "{err:#?}"
        );
        assert!(has(9, "applies only to framing = \"line\""), "{err:#?}");
        assert!(has(10, "`soon` is not a duration"), "{err:#?}");
        assert!(has(11, "stop_bits 3"), "{err:#?}");
        assert_eq!(err.len(), 7, "{err:#?}");
    }

    #[test]
    fn durations_have_an_upper_bound_and_an_unknown_framing_one_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = connector(
            tmp.path(),
            "port = \"/dev/x\"\nack_timeout = \"100years\"\ninter_frame_delay = \"2m\"\nframing = \"lines\"\nack_line = \"OK\"\n",
        )
        .unwrap_err();
        let has = |line: usize, text: &str| {
            err.iter()
                .any(|e| e.contains(&format!("connector.toml: line {line}: ")) && e.contains(text))
        };
        assert!(
            has(7, "ack_timeout 100years is too long: at most 10m"),
            "{err:#?}"
        );
        assert!(
            has(8, "inter_frame_delay 2m is too long: at most 1m"),
            "{err:#?}"
        );
        assert!(has(9, "framing `lines` is unknown"), "{err:#?}");
        assert_eq!(err.len(), 3, "no second error about ack_line: {err:#?}");
        // The longest allowed values are taken.
        let c = connector(
            tmp.path(),
            "port = \"/dev/x\"\nack_timeout = \"10m\"\ninter_frame_delay = \"1m\"\n",
        )
        .unwrap();
        let TransportSpec::Serial(s) = c.transport else {
            panic!("serial")
        };
        assert_eq!(
            (s.ack_timeout, s.inter_frame_delay),
            (MAX_ACK_TIMEOUT, MAX_INTER_FRAME_DELAY)
        );
    }

    #[test]
    fn equal_answers_and_serial_keys_on_a_file_connector_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = connector(
            tmp.path(),
            "port = \"/dev/x\"\nframing = \"line\"\nack_line = \"OK\"\nnak_line = \"OK\"\n",
        )
        .unwrap_err();
        assert!(
            err[0].contains("line 9") && err[0].contains("must differ"),
            "{err:#?}"
        );

        let folder = tmp.path().join("f");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("connector.toml"),
            "collections = [\"p\"]\n[format]\nkind = \"json\"\n[transport]\nkind = \"file\"\ndir = \"o\"\nbaud = 9600\n",
        )
        .unwrap();
        let err = load(&folder, tmp.path()).unwrap_err();
        assert!(
            err[0].contains("line 7")
                && err[0].contains("`baud` does not apply to transport kind \"file\""),
            "{err:#?}"
        );
    }

    #[test]
    fn two_connectors_on_one_port_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["a", "b"] {
            let folder = tmp.path().join(name);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(
                folder.join("connector.toml"),
                "collections = [\"p\"]\n[format]\nkind = \"json\"\n[transport]\nkind = \"serial\"\nport = \"/dev/ttyS9\"\n",
            )
            .unwrap();
        }
        let err = crate::connector::load_all(tmp.path(), tmp.path()).unwrap_err();
        assert_eq!(err.len(), 1, "{err:#?}");
        assert!(
            err[0].contains("a/connector.toml, ")
                && err[0].contains("b/connector.toml: [transport] port")
                && err[0].contains("/dev/ttyS9"),
            "{err:#?}"
        );
    }

    #[test]
    fn the_example_connector_loads_once_copied() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("county-serial");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("connector.toml"),
            include_str!("../../../connectors/county-serial/connector.toml.example"),
        )
        .unwrap();
        let c = load(&folder, tmp.path()).unwrap();
        let TransportSpec::Serial(s) = c.transport else {
            panic!("serial")
        };
        assert_eq!(s.encoding, Encoding::Ascii);
        assert_eq!(s.inter_frame_delay, Duration::from_millis(50));
    }
}
