//! SOAP answer classification: status, content type and body as a legacy
//! service (or a proxy in front of it) may send them. Checks: no panic; a 2xx
//! counts as delivered only if the body is a SOAP envelope (or it is empty and
//! the connector accepts that); what a truncated body says is never
//! "delivered"; the reason never grows past what the body can account for (the
//! queue and the logs keep it to a few KiB: that is their job, not this one's).
#![no_main]

use hms_sync::transport::soap::answer::{Answer, classify};
use libfuzzer_sys::fuzz_target;

const TYPES: &[Option<&str>] = &[
    None,
    Some("text/xml; charset=utf-8"),
    Some("application/soap+xml; charset=ISO-8859-1"),
    Some("text/xml; charset=utf-16"),
    Some("text/html"),
    Some("text/xml; charset=windows-1252"),
    Some("text/xml; charset=\"x-unknown\""),
    Some("text/xml;charset="),
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = 100 + u16::from_le_bytes([data[0], data[1]]) % 500;
    let flags = data[2];
    let body = &data[3..];
    let content_type = TYPES[usize::from(flags >> 2) % TYPES.len()];
    let truncated = flags & 1 != 0;
    let accept_empty = flags & 2 != 0;
    let answer = classify(status, content_type, body, truncated, accept_empty);
    match &answer {
        Answer::Delivered => {
            assert!((200..300).contains(&status), "{status} delivered");
            assert!(!truncated, "a truncated answer delivered");
        }
        Answer::Down(reason) | Answer::Rejected { reason, .. } => {
            // Decoding may turn a byte into up to 3 (U+FFFD, Latin-1, UTF-16).
            assert!(
                reason.len() <= 3 * body.len() + 1024,
                "a {} byte reason from a {} byte body",
                reason.len(),
                body.len()
            );
        }
    }
});
