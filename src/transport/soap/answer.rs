//! What the SOAP service answered, classified (SPEC §3.4/§3.5): a 2xx without a
//! Fault is delivered (an empty body too); a Fault, also inside a 200, or an
//! HTTP error with a response is a rejection; 502/503/504 without a Fault is the
//! service saying it is not there (an outage).
//!
//! **Invariants:** no I/O; any bytes in, never a panic; ISO-8859-1 answers and
//! entity references (`&amp;`, `&#233;`) are read as the service meant them.

use quick_xml::Reader;
use quick_xml::events::Event;

/// The classification before the worker's policy applies.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Delivered,
    /// The service is not there (gateway errors without a Fault).
    Down(String),
    /// It answered and refused. `client` is a `Client`/`Sender` fault: the
    /// service says the message itself is wrong.
    Rejected {
        reason: String,
        client: bool,
    },
}

/// A SOAP Fault as read from an answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fault {
    /// `faultcode` (1.1) or `Code/Value` (1.2), as written (`soap:Client`).
    pub code: String,
    /// `faultstring` (1.1) or `Reason/Text` (1.2).
    pub reason: String,
}

impl Fault {
    /// `Client` (1.1) or `Sender` (1.2), with or without a prefix or a `.detail`.
    pub fn is_client(&self) -> bool {
        let local = self.code.rsplit(':').next().unwrap_or("");
        let head = local.split('.').next().unwrap_or("");
        head == "Client" || head == "Sender"
    }
}

/// Classifies one answer. `truncated` says the body was longer than the limit
/// (and only its start is in `body`).
pub fn classify(status: u16, content_type: Option<&str>, body: &[u8], truncated: bool) -> Answer {
    let text = to_utf8(content_type, body);
    let fault = if truncated {
        None
    } else {
        match find_fault(&text) {
            Ok(f) => f,
            Err(e) if (200..300).contains(&status) => {
                return Answer::Rejected {
                    reason: format!(
                        "HTTP {status} with an answer that is not well-formed XML: {e}"
                    ),
                    client: false,
                };
            }
            Err(_) => None,
        }
    };
    if let Some(f) = fault {
        return Answer::Rejected {
            reason: format!("SOAP Fault {}: {} (HTTP {status})", f.code, f.reason),
            client: f.is_client(),
        };
    }
    if truncated {
        return Answer::Rejected {
            reason: format!(
                "HTTP {status} with an answer larger than {} bytes; not read",
                super::MAX_ANSWER_BYTES
            ),
            client: false,
        };
    }
    match status {
        200..=299 => Answer::Delivered,
        502..=504 => Answer::Down(format!("HTTP {status} {}", snippet(&text))),
        _ => Answer::Rejected {
            reason: format!("HTTP {status} {}", snippet(&text))
                .trim_end()
                .to_string(),
            client: false,
        },
    }
}

/// The start of a non-SOAP answer, on one line, for the error message.
fn snippet(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let t = one_line.trim();
    if t.is_empty() {
        "(no body)".to_string()
    } else {
        t.to_string()
    }
}

/// The charset of the answer: the Content-Type's, else the XML declaration's.
fn is_latin1(content_type: Option<&str>, body: &[u8]) -> bool {
    let latin = |name: &str| {
        let n = name.trim().trim_matches(['"', '\'']).to_ascii_lowercase();
        matches!(
            n.as_str(),
            "iso-8859-1" | "latin1" | "latin-1" | "iso8859-1" | "l1" | "windows-1252" | "cp1252"
        )
    };
    if let Some(ct) = content_type
        && let Some(cs) = ct
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("charset="))
            .next()
    {
        return latin(cs);
    }
    let head = &body[..body.len().min(200)];
    let head = String::from_utf8_lossy(head);
    if let Some(decl) = head.strip_prefix("<?xml")
        && let Some(end) = decl.find("?>")
        && let Some(pos) = decl[..end].find("encoding=")
    {
        let rest = &decl[pos + 9..end];
        let value: String = rest
            .chars()
            .skip(1)
            .take_while(|c| *c != '"' && *c != '\'')
            .collect();
        return latin(&value);
    }
    false
}

fn to_utf8(content_type: Option<&str>, body: &[u8]) -> String {
    if is_latin1(content_type, body) {
        // Every ISO-8859-1 byte is the code point of the same number.
        body.iter().map(|&b| b as char).collect()
    } else {
        String::from_utf8_lossy(body).into_owned()
    }
}

/// The first SOAP Fault in `text` (1.1 or 1.2), if there is one.
pub fn find_fault(text: &str) -> Result<Option<Fault>, String> {
    let mut reader = Reader::from_str(text);
    // Path of local names from the Fault element down.
    let mut in_fault: Option<usize> = None;
    let mut depth = 0usize;
    let mut path: Vec<String> = Vec::new();
    let mut fault = Fault::default();
    let mut found = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.error_position()))?;
        match event {
            Event::Eof if depth > 0 => return Err("the answer ends inside an element".into()),
            Event::Eof => break,
            Event::Start(s) => {
                let local = s.local_name().as_ref().to_string();
                depth += 1;
                if in_fault.is_none() && local == "Fault" {
                    in_fault = Some(depth);
                    found = true;
                } else if in_fault.is_some() {
                    path.push(local);
                }
            }
            Event::Empty(s) if in_fault.is_none() && s.local_name().as_ref() == "Fault" => {
                found = true;
            }
            Event::End(_) => {
                if in_fault == Some(depth) {
                    in_fault = None;
                } else if in_fault.is_some() {
                    path.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) if in_fault.is_some() => {
                let s = t.xml10_content();
                push_text(&mut fault, &path, &s);
            }
            Event::CData(c) if in_fault.is_some() => {
                let s: &str = &c;
                push_text(&mut fault, &path, s);
            }
            Event::GeneralRef(r) if in_fault.is_some() => {
                let name = r.xml10_content();
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    _ => quick_xml::escape::resolve_predefined_entity(&name)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("&{name};")),
                };
                push_text(&mut fault, &path, &resolved);
            }
            _ => {}
        }
    }
    if !found {
        return Ok(None);
    }
    fault.code = fault.code.trim().to_string();
    fault.reason = fault.reason.trim().to_string();
    Ok(Some(fault))
}

fn push_text(fault: &mut Fault, path: &[String], s: &str) {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["faultcode"] | ["Code", "Value"] => fault.code.push_str(s),
        ["faultstring"] => fault.reason.push_str(s),
        ["Reason", "Text"] => fault.reason.push_str(s),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV11: &str =
        r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>"#;
    const END: &str = "</soap:Body></soap:Envelope>";

    fn fault11(code: &str, text: &str) -> String {
        format!(
            "{ENV11}<soap:Fault><faultcode>{code}</faultcode><faultstring>{text}</faultstring></soap:Fault>{END}"
        )
    }

    #[test]
    fn a_2xx_without_fault_is_delivered_also_when_empty() {
        assert_eq!(classify(200, None, b"", false), Answer::Delivered);
        assert_eq!(classify(204, None, b"  \n", false), Answer::Delivered);
        let ok = format!("{ENV11}<Ack>got it</Ack>{END}");
        assert_eq!(
            classify(200, Some("text/xml"), ok.as_bytes(), false),
            Answer::Delivered
        );
    }

    #[test]
    fn a_fault_inside_a_200_is_a_rejection_with_code_and_text() {
        let body = fault11("soap:Client", "Permit 123 &amp; 124 are locked");
        match classify(200, None, body.as_bytes(), false) {
            Answer::Rejected { reason, client } => {
                assert!(client);
                assert!(
                    reason.contains("soap:Client")
                        && reason.contains("Permit 123 & 124 are locked"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        let body = fault11("soap:Server", "database busy");
        assert!(matches!(
            classify(500, None, body.as_bytes(), false),
            Answer::Rejected { client: false, .. }
        ));
    }

    #[test]
    fn soap12_code_and_reason() {
        let body = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault><env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>m:BadPermit</env:Value></env:Subcode></env:Code><env:Reason><env:Text xml:lang="en">no such permit</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#;
        let f = find_fault(body).unwrap().unwrap();
        assert_eq!(f.code, "env:Sender");
        assert_eq!(f.reason, "no such permit");
        assert!(f.is_client());
    }

    #[test]
    fn latin1_answers_and_char_refs_are_read_as_meant() {
        let latin1 = |s: &str| -> Vec<u8> { s.chars().map(|c| c as u32 as u8).collect() };
        let body = latin1(&format!(
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>{}",
            fault11("Server", "Pe\u{f1}a &#233;t&lt;e")
        ));
        match classify(500, Some("text/xml"), &body, false) {
            Answer::Rejected { reason, .. } => {
                assert!(reason.contains("Pe\u{f1}a \u{e9}t<e"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // The charset in Content-Type wins.
        let body = latin1(&fault11("Server", "caf\u{e9}"));
        match classify(500, Some("text/xml; charset=ISO-8859-1"), &body, false) {
            Answer::Rejected { reason, .. } => assert!(reason.contains("caf\u{e9}"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn http_errors_malformed_and_oversized_answers() {
        assert!(matches!(
            classify(500, None, b"", false),
            Answer::Rejected { ref reason, client: false } if reason.contains("500")
        ));
        assert!(matches!(
            classify(503, None, b"maintenance", false),
            Answer::Down(_)
        ));
        assert!(matches!(
            classify(200, None, b"<a><b></a>", false),
            Answer::Rejected { ref reason, .. } if reason.contains("not well-formed")
        ));
        assert!(matches!(
            classify(200, None, b"<a>", true),
            Answer::Rejected { ref reason, .. } if reason.contains("larger than")
        ));
        assert!(
            !Fault {
                code: "soap:Server".into(),
                reason: String::new()
            }
            .is_client()
        );
        assert!(
            Fault {
                code: "Client.Auth".into(),
                reason: String::new()
            }
            .is_client()
        );
    }
}
