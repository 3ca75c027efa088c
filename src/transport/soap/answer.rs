//! What the SOAP service answered, classified (SPEC §3.4/§3.5, §5 "SOAP
//! transport"): a 2xx carrying a SOAP envelope without a Fault is delivered; a
//! Fault, also inside a 200, or an HTTP error with a response is a rejection; a
//! 2xx that is not a SOAP envelope (a proxy's HTML page, `OK`, random bytes, an
//! empty body unless the connector says `accept_empty_2xx`) and 502/503/504
//! without a Fault are the service not being there (an outage).
//!
//! **Invariants:** no I/O; any bytes in, never a panic; only a `Fault` in the
//! envelope's SOAP namespace directly in its `Body` is a Fault (the service's
//! own elements may be called that); a 2xx counts as delivered only if its
//! root is a SOAP `Envelope` holding a `Body`; UTF-8, UTF-16 (a .NET service
//! may answer so), ISO-8859-1 and windows-1252 answers and entity references
//! (`&amp;`, `&#233;`) are read as the service meant them (any other charset
//! is read as UTF-8).

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};

use super::envelope::{SOAP11_NS, SOAP12_NS};

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
/// (and only its start is in `body`); `accept_empty_2xx` is the connector's
/// word that this service answers a delivery with an empty 2xx; `rule` its
/// `[transport.answer]`: where a 2xx envelope says yes or no.
pub fn classify(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    truncated: bool,
    accept_empty_2xx: bool,
    rule: Option<&BusinessRule>,
) -> Answer {
    let text = to_utf8(content_type, body);
    // A byte-order mark (some .NET services send one) is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let read = if truncated {
        Err(String::new())
    } else {
        read_answer(text)
    };
    if let Ok(Soap { fault: Some(f), .. }) = &read {
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
        200..=299 if text.trim().is_empty() => {
            if accept_empty_2xx {
                Answer::Delivered
            } else {
                Answer::Down(format!(
                    "HTTP {status} with an empty body, not a SOAP envelope \
                     (if the service answers so, set accept_empty_2xx = true)"
                ))
            }
        }
        200..=299 => match read {
            Ok(Soap { envelope: true, .. }) => match rule {
                None => Answer::Delivered,
                Some(rule) => rule.judge(status, text),
            },
            Ok(_) => Answer::Down(format!(
                "HTTP {status} with an answer that is not a SOAP envelope (a proxy's page?): {}",
                snippet(text)
            )),
            Err(e) => Answer::Down(format!(
                "HTTP {status} with an answer that is not a SOAP envelope (not well-formed XML: {e}): {}",
                snippet(text)
            )),
        },
        502..=504 => Answer::Down(format!("HTTP {status} {}", snippet(text))),
        _ => Answer::Rejected {
            reason: format!("HTTP {status} {}", snippet(text))
                .trim_end()
                .to_string(),
            client: false,
        },
    }
}

/// The longest business reason kept (an answer's message may be a stack trace).
const MAX_REASON_CHARS: usize = 500;

/// `[transport.answer]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// The element under the SOAP Body that holds the result, by local names:
    /// `"UpdateResponse/Result"`.
    pub ok_path: Option<String>,
    /// The results that mean "taken", e.g. `["OK", "0"]` (compared after
    /// trimming spaces, case as written).
    pub ok_values: Option<Vec<String>>,
    /// The element whose text says why not, e.g. `"UpdateResponse/Message"`.
    pub reason_path: Option<String>,
}

/// A checked `[transport.answer]`: a 2xx SOAP envelope is delivered only if
/// the text at `ok_path` is one of `ok_values`.
#[derive(Clone, Debug, PartialEq)]
pub struct BusinessRule {
    pub ok_path: Vec<String>,
    pub ok_values: Vec<String>,
    pub reason_path: Option<Vec<String>>,
}

/// Checks `[transport.answer]`; `problem(key, message)` reports with its line.
pub fn validate_rule(raw: &RawRule, problem: &mut dyn FnMut(&str, String)) -> Option<BusinessRule> {
    let mut ok = true;
    let path = |key: &str, text: &str, problem: &mut dyn FnMut(&str, String)| {
        let parts: Vec<String> = text
            .trim()
            .trim_matches('/')
            .split('/')
            .map(|p| p.trim().to_string())
            .collect();
        let bad = parts
            .iter()
            .find(|p| !crate::translator::xml::valid_element_name(p));
        match bad {
            None => Some(parts),
            Some(p) if p.contains(':') => {
                problem(
                    key,
                    format!(
                        "`{text}`: write local names without a prefix (`{}`); namespaces are ignored",
                        p.rsplit(':').next().unwrap_or(p)
                    ),
                );
                None
            }
            Some(p) => {
                problem(
                    key,
                    format!(
                        "`{text}`: `{p}` is not an element name; write element names under the SOAP Body separated by `/`, such as \"UpdateResponse/Result\""
                    ),
                );
                None
            }
        }
    };
    let ok_path = match &raw.ok_path {
        Some(text) => path("ok_path", text, problem),
        None => {
            problem("ok_path", "is missing: name the element that holds the result, such as ok_path = \"UpdateResponse/Result\"".into());
            None
        }
    };
    let reason_path = raw.reason_path.as_deref().map(|text| {
        let parts = path("reason_path", text, problem);
        ok &= parts.is_some();
        parts
    });
    let ok_values = raw.ok_values.clone().unwrap_or_default();
    if ok_values.is_empty() {
        problem("ok_values", "is missing or empty: list the results that mean the change was taken, such as ok_values = [\"OK\", \"0\"]".into());
        ok = false;
    }
    let ok_values: Vec<String> = ok_values.iter().map(|v| v.trim().to_string()).collect();
    match (ok_path, reason_path) {
        (Some(ok_path), reason_path) if ok => Some(BusinessRule {
            ok_path,
            ok_values,
            reason_path: reason_path.flatten(),
        }),
        _ => None,
    }
}

impl BusinessRule {
    /// What counts as success, in words (`check`, `translate`).
    pub fn explain(&self) -> String {
        let values: Vec<String> = self.ok_values.iter().map(|v| format!("{v:?}")).collect();
        let mut text = format!(
            "the text of Body/{} is {}",
            self.ok_path.join("/"),
            values.join(" or ")
        );
        if let Some(reason) = &self.reason_path {
            text.push_str(&format!(
                " (otherwise a rejection, its reason from Body/{})",
                reason.join("/")
            ));
        }
        text
    }

    /// A 2xx SOAP envelope (no Fault) read for its business result.
    fn judge(&self, status: u16, text: &str) -> Answer {
        let ok_path = self.ok_path.join("/");
        let mut paths = vec![self.ok_path.as_slice()];
        if let Some(r) = &self.reason_path {
            paths.push(r);
        }
        let found = match texts_under_body(text, &paths) {
            Ok(found) => found,
            // Read once already: cannot fail here, but never take it as a yes.
            Err(e) => {
                return Answer::Down(format!("HTTP {status}: the answer cannot be read: {e}"));
            }
        };
        let reason = match (&self.reason_path, found.get(1)) {
            (Some(path), Some(Some(r))) if !r.trim().is_empty() => bounded(r.trim()),
            (Some(path), _) => format!("(the answer has no text at {})", path.join("/")),
            (None, _) => "(no reason_path configured)".to_string(),
        };
        match &found[0] {
            None => Answer::Rejected {
                reason: format!(
                    "HTTP {status}: the answer has no {ok_path} element (ok_path), so it does not say the change was taken: {reason}"
                ),
                client: false,
            },
            Some(value) if self.ok_values.iter().any(|v| v == value.trim()) => Answer::Delivered,
            Some(value) => Answer::Rejected {
                reason: format!(
                    "the service answered {ok_path} = {:?} (HTTP {status}): {reason}",
                    bounded(value.trim())
                ),
                client: false,
            },
        }
    }
}

/// `text` cut to [`MAX_REASON_CHARS`] characters, on one line.
fn bounded(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() > MAX_REASON_CHARS {
        let mut cut: String = one_line.chars().take(MAX_REASON_CHARS).collect();
        cut.push('…');
        cut
    } else {
        one_line
    }
}

/// The text of the first element at each of `paths` (local names, from the
/// child of the envelope's `Body` down; namespaces ignored); `None` where there
/// is none. The text of an element's descendants counts too.
fn texts_under_body(text: &str, paths: &[&[String]]) -> Result<Vec<Option<String>>, String> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<String> = Vec::new();
    let mut found: Vec<Option<String>> = vec![None; paths.len()];
    // Per path, the depth of the element being read while inside it.
    let mut open: Vec<Option<usize>> = vec![None; paths.len()];
    let below_body = |stack: &[String]| -> Option<usize> {
        (stack.len() >= 2 && stack[0] == "Envelope" && stack[1] == "Body").then_some(2)
    };
    let push_text = |open: &[Option<usize>], found: &mut [Option<String>], s: &str| {
        for (i, o) in open.iter().enumerate() {
            if o.is_some()
                && let Some(f) = &mut found[i]
            {
                f.push_str(s);
            }
        }
    };
    loop {
        match reader.read_event() {
            Err(e) => return Err(format!("at byte {}: {e}", reader.error_position())),
            Ok(Event::Eof) => break,
            Ok(Event::Start(s)) => {
                stack.push(s.local_name().as_ref().to_string());
                if let Some(from) = below_body(&stack) {
                    for (i, path) in paths.iter().enumerate() {
                        if found[i].is_none() && stack[from..] == path[..] {
                            found[i] = Some(String::new());
                            open[i] = Some(stack.len());
                        }
                    }
                }
            }
            Ok(Event::Empty(s)) => {
                let mut here = stack.clone();
                here.push(s.local_name().as_ref().to_string());
                if let Some(from) = below_body(&here) {
                    for (i, path) in paths.iter().enumerate() {
                        if found[i].is_none() && here[from..] == path[..] {
                            found[i] = Some(String::new());
                        }
                    }
                }
            }
            Ok(Event::End(_)) => {
                for o in open.iter_mut() {
                    if *o == Some(stack.len()) {
                        *o = None;
                    }
                }
                stack.pop();
            }
            Ok(Event::Text(t)) => push_text(&open, &mut found, &t.xml10_content()),
            Ok(Event::CData(c)) => {
                let s: &str = &c;
                push_text(&open, &mut found, s);
            }
            Ok(Event::GeneralRef(r)) => {
                push_text(&open, &mut found, &resolve_ref(&r));
            }
            Ok(_) => {}
        }
    }
    Ok(found)
}

/// What counts as a delivery for a SOAP connector, in words.
pub fn explain_success(rule: Option<&BusinessRule>, accept_empty_2xx: bool) -> String {
    let mut text = "an HTTP 2xx answer carrying a SOAP envelope without a Fault".to_string();
    if let Some(rule) = rule {
        text.push_str(&format!(" in which {}", rule.explain()));
    }
    if accept_empty_2xx {
        text.push_str("; or a 2xx with an empty body (accept_empty_2xx)");
    }
    text
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

/// How the answer's bytes are to be read.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Charset {
    Utf8,
    Latin1,
    Windows1252,
    /// UTF-16, little- or big-endian (`true`: little).
    Utf16(bool),
}

/// The charset of the answer: the Content-Type's, else the XML declaration's;
/// UTF-8 when neither names one we know.
fn charset(content_type: Option<&str>, body: &[u8]) -> Charset {
    let named = |name: &str| {
        let n = name.trim().trim_matches(['"', '\'']).to_ascii_lowercase();
        match n.as_str() {
            "iso-8859-1" | "latin1" | "latin-1" | "iso8859-1" | "l1" | "iso_8859-1" => {
                Charset::Latin1
            }
            "windows-1252" | "cp1252" | "x-cp1252" => Charset::Windows1252,
            // "utf-16" named over bytes that are not (a .NET service that
            // writes its XML to a string, then sends it as UTF-8): the bytes
            // decide, below.
            _ => Charset::Utf8,
        }
    };
    // UTF-16 shows in its bytes: a byte-order mark, or a NUL beside the first
    // character (XML 1.0, appendix F), which 8-bit text never has.
    match body {
        [0xFF, 0xFE, ..] => return Charset::Utf16(true),
        [0xFE, 0xFF, ..] => return Charset::Utf16(false),
        [a, 0, ..] if *a != 0 => return Charset::Utf16(true),
        [0, b, ..] if *b != 0 => return Charset::Utf16(false),
        _ => {}
    }
    if let Some(ct) = content_type
        && let Some(cs) = ct
            .split(';')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
            .map(|(_, v)| v)
    {
        return named(cs);
    }
    let head = &body[..body.len().min(200)];
    let head = String::from_utf8_lossy(head);
    if let Some(decl) = head.strip_prefix("<?xml")
        && let Some(end) = decl.find("?>")
        && let Some(pos) = decl[..end].find("encoding")
    {
        // `encoding = "..."`: spaces may stand around the `=`.
        let rest = decl[pos + "encoding".len()..end].trim_start();
        if let Some(rest) = rest.strip_prefix('=') {
            let value: String = rest
                .trim_start()
                .chars()
                .skip(1)
                .take_while(|c| *c != '"' && *c != '\'')
                .collect();
            return named(&value);
        }
    }
    Charset::Utf8
}

fn to_utf8(content_type: Option<&str>, body: &[u8]) -> String {
    match charset(content_type, body) {
        // Every ISO-8859-1 byte is the code point of the same number.
        Charset::Latin1 => body.iter().map(|&b| b as char).collect(),
        Charset::Windows1252 => body
            .iter()
            .map(|&b| crate::translator::codepage::cp1252_decode(b))
            .collect(),
        Charset::Utf8 => String::from_utf8_lossy(body).into_owned(),
        Charset::Utf16(little) => {
            let units: Vec<u16> = body
                .chunks(2)
                .map(|p| {
                    let pair = [p[0], p.get(1).copied().unwrap_or(0)];
                    if little {
                        u16::from_le_bytes(pair)
                    } else {
                        u16::from_be_bytes(pair)
                    }
                })
                .collect();
            String::from_utf16_lossy(&units)
        }
    }
}

/// Where an element sits, as far as finding a Fault goes.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    /// The root `Envelope` in a SOAP namespace.
    Envelope,
    /// `Body` of that envelope, in the same namespace.
    Body,
    /// Anything else (a payload element named `Fault` among them).
    Other,
}

/// The SOAP Fault in `text` (1.1 or 1.2), if there is one: only a `Fault` in the
/// envelope's namespace that is a child of its `Body` counts; an element of the
/// service's own payload named `Fault` (`<Result><Fault>0</Fault></Result>`) does not.
pub fn find_fault(text: &str) -> Result<Option<Fault>, String> {
    read_answer(text).map(|soap| soap.fault)
}

/// What a well-formed answer holds, as far as SOAP goes.
#[derive(Debug, PartialEq)]
struct Soap {
    /// The root is a SOAP 1.1 or 1.2 `Envelope` with a `Body` in its namespace.
    envelope: bool,
    fault: Option<Fault>,
}

fn read_answer(text: &str) -> Result<Soap, String> {
    let mut reader = NsReader::from_str(text);
    // The SOAP namespace of the root Envelope, if it is one.
    let mut soap_ns: Option<&'static str> = None;
    let mut stack: Vec<Place> = Vec::new();
    // Depth of the Fault element while inside it; the local names from it down.
    let mut in_fault: Option<usize> = None;
    let mut path: Vec<String> = Vec::new();
    let mut fault = Fault::default();
    let mut found = false;
    let mut body_seen = false;
    loop {
        // The element's namespace, if it is one of SOAP's.
        let (ns, event): (Option<&'static str>, _) = match reader.read_resolved_event() {
            Ok((ResolveResult::Bound(Namespace(n)), e)) if n == SOAP11_NS => (Some(SOAP11_NS), e),
            Ok((ResolveResult::Bound(Namespace(n)), e)) if n == SOAP12_NS => (Some(SOAP12_NS), e),
            Ok((_, e)) => (None, e),
            Err(e) => return Err(format!("at byte {}: {e}", reader.error_position())),
        };
        // What a start (or empty) element with this name is, given its parent.
        let place_of =
            |local: &str, stack: &[Place], soap_ns: Option<&str>| match (stack.last(), local) {
                (None, "Envelope") if ns.is_some() => (Place::Envelope, false),
                (Some(Place::Envelope), "Body") if ns.is_some() && ns == soap_ns => {
                    (Place::Body, false)
                }
                (Some(Place::Body), "Fault") if ns.is_some() && ns == soap_ns => {
                    (Place::Other, true)
                }
                _ => (Place::Other, false),
            };
        match event {
            Event::Eof if !stack.is_empty() => {
                return Err("the answer ends inside an element".into());
            }
            Event::Eof => break,
            Event::Start(s) => {
                let local = s.local_name().as_ref().to_string();
                let (place, is_fault) = place_of(&local, &stack, soap_ns);
                match place {
                    Place::Envelope => soap_ns = ns,
                    Place::Body => body_seen = true,
                    Place::Other => {}
                }
                stack.push(place);
                if in_fault.is_some() {
                    path.push(local);
                } else if is_fault && !found {
                    in_fault = Some(stack.len());
                    found = true;
                }
            }
            Event::Empty(s) if in_fault.is_none() => {
                // A root `<soap:Envelope/>` sets no namespace: no Body, no envelope.
                let (place, is_fault) = place_of(s.local_name().as_ref(), &stack, soap_ns);
                body_seen |= place == Place::Body;
                found |= is_fault;
            }
            Event::End(_) => {
                if in_fault == Some(stack.len()) {
                    in_fault = None;
                } else if in_fault.is_some() {
                    path.pop();
                }
                stack.pop();
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
                push_text(&mut fault, &path, &resolve_ref(&r));
            }
            _ => {}
        }
    }
    let envelope = soap_ns.is_some() && body_seen;
    if !found {
        return Ok(Soap {
            envelope,
            fault: None,
        });
    }
    fault.code = fault.code.trim().to_string();
    fault.reason = fault.reason.trim().to_string();
    Ok(Soap {
        envelope,
        fault: Some(fault),
    })
}

/// An entity or character reference as the text it stands for (an unknown
/// entity as written).
fn resolve_ref(r: &quick_xml::events::BytesRef<'_>) -> String {
    let name = r.xml10_content();
    match r.resolve_char_ref() {
        Ok(Some(c)) => c.to_string(),
        _ => quick_xml::escape::resolve_predefined_entity(&name)
            .map(str::to_string)
            .unwrap_or_else(|| format!("&{name};")),
    }
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
    fn a_2xx_is_delivered_only_with_a_soap_envelope_or_empty_if_the_connector_says() {
        let ok = format!("{ENV11}<Ack>got it</Ack>{END}");
        assert_eq!(
            classify(200, Some("text/xml"), ok.as_bytes(), false, false, None),
            Answer::Delivered
        );
        let ok12 = r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Header/><e:Body/></e:Envelope>"#;
        assert_eq!(
            classify(202, None, ok12.as_bytes(), false, false, None),
            Answer::Delivered
        );
        // A byte-order mark in front is no reason to doubt it.
        let bom = format!("\u{feff}<?xml version=\"1.0\"?>\n{ok}");
        assert_eq!(
            classify(200, None, bom.as_bytes(), false, false, None),
            Answer::Delivered
        );
        // An empty 2xx: only where the connector says the service answers so.
        for (status, body) in [(200, &b""[..]), (204, b"  \n")] {
            assert!(
                matches!(classify(status, None, body, false, false, None), Answer::Down(ref r) if r.contains("accept_empty_2xx")),
                "{status}"
            );
            assert_eq!(
                classify(status, None, body, false, true, None),
                Answer::Delivered
            );
        }
    }

    #[test]
    fn a_2xx_that_is_not_a_soap_envelope_is_an_outage() {
        let html = b"<!DOCTYPE html>\n<html><head><title>502 Proxy Error</title></head><body><p>The proxy server could not handle the request<br>Reason: Error reading from remote server</p></body></html>";
        let random: Vec<u8> = (0..600u32).map(|i| (i * 7919 % 251) as u8).collect();
        let cases: [&[u8]; 9] = [
            html,
            b"<html><body>Service Unavailable</body></html>",
            b"OK",
            b"{\"status\":\"ok\"}",
            &random,
            b"<Ack>got it</Ack>",
            // The envelope's name without its namespace, or without a Body.
            b"<Envelope><Body/></Envelope>",
            br#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"/>"#,
            br#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><Body/></soap:Envelope>"#,
        ];
        for body in cases {
            for accept_empty in [false, true] {
                let got = classify(200, Some("text/html"), body, false, accept_empty, None);
                assert!(
                    matches!(&got, Answer::Down(r) if r.contains("not a SOAP envelope")),
                    "{}: {got:?}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        // The start of the page says what answered.
        let Answer::Down(reason) = classify(200, None, html, false, false, None) else {
            panic!()
        };
        assert!(reason.contains("502 Proxy Error"), "{reason}");
    }

    #[test]
    fn a_fault_inside_a_200_is_a_rejection_with_code_and_text() {
        let body = fault11("soap:Client", "Permit 123 &amp; 124 are locked");
        match classify(200, None, body.as_bytes(), false, false, None) {
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
            classify(500, None, body.as_bytes(), false, false, None),
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
    fn only_a_fault_in_the_soap_body_counts() {
        // The service's own element named Fault, at any depth or namespace: delivered.
        for payload in [
            "<Result><Fault>0</Fault></Result>",
            "<Fault>none</Fault>",
            r#"<m:Fault xmlns:m="urn:county">none</m:Fault>"#,
            "<Result><soap:Fault><faultcode>soap:Client</faultcode></soap:Fault></Result>",
        ] {
            let body = format!("{ENV11}{payload}{END}");
            assert_eq!(
                classify(200, None, body.as_bytes(), false, false, None),
                Answer::Delivered,
                "{payload}"
            );
        }
        // A Fault of the other SOAP version's namespace is not this envelope's.
        let body =
            format!(r#"{ENV11}<e:Fault xmlns:e="http://www.w3.org/2003/05/soap-envelope"/>{END}"#);
        assert_eq!(
            classify(200, None, body.as_bytes(), false, false, None),
            Answer::Delivered
        );
        // Not an envelope at all: no Fault, and not delivered either.
        assert!(matches!(
            classify(
                200,
                None,
                b"<Fault><faultcode>Client</faultcode></Fault>",
                false,
                false,
                None
            ),
            Answer::Down(_)
        ));
        // Real faults, 1.1 and 1.2, with any prefix or a default namespace.
        let s11 = r#"<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Header/><S:Body><S:Fault><faultcode>S:Client</faultcode><faultstring>bad</faultstring></S:Fault></S:Body></S:Envelope>"#;
        assert_eq!(find_fault(s11).unwrap().unwrap().code, "S:Client");
        let s11_default = r#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body><Fault><faultcode xmlns="">Server</faultcode><faultstring xmlns="">busy</faultstring></Fault></Body></Envelope>"#;
        let f = find_fault(s11_default).unwrap().unwrap();
        assert_eq!((f.code.as_str(), f.reason.as_str()), ("Server", "busy"));
        let s12 = r#"<soap12:Envelope xmlns:soap12="http://www.w3.org/2003/05/soap-envelope"><soap12:Body><soap12:Fault><soap12:Code><soap12:Value>soap12:Receiver</soap12:Value></soap12:Code><soap12:Reason><soap12:Text xml:lang="en">down</soap12:Text></soap12:Reason></soap12:Fault></soap12:Body></soap12:Envelope>"#;
        let f = find_fault(s12).unwrap().unwrap();
        assert_eq!(
            (f.code.as_str(), f.reason.as_str()),
            ("soap12:Receiver", "down")
        );
        let empty = r#"<x:Envelope xmlns:x="http://schemas.xmlsoap.org/soap/envelope/"><x:Body><x:Fault/></x:Body></x:Envelope>"#;
        assert!(find_fault(empty).unwrap().is_some());
    }

    #[test]
    fn latin1_answers_and_char_refs_are_read_as_meant() {
        let latin1 = |s: &str| -> Vec<u8> { s.chars().map(|c| c as u32 as u8).collect() };
        let body = latin1(&format!(
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>{}",
            fault11("Server", "Pe\u{f1}a &#233;t&lt;e")
        ));
        match classify(500, Some("text/xml"), &body, false, false, None) {
            Answer::Rejected { reason, .. } => {
                assert!(reason.contains("Pe\u{f1}a \u{e9}t<e"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // The charset in Content-Type wins.
        let body = latin1(&fault11("Server", "caf\u{e9}"));
        match classify(
            500,
            Some("text/xml; charset=ISO-8859-1"),
            &body,
            false,
            false,
            None,
        ) {
            Answer::Rejected { reason, .. } => assert!(reason.contains("caf\u{e9}"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    /// `text` with its `@@` replaced by raw `bytes`.
    fn with_bytes(text: &str, bytes: &[u8]) -> Vec<u8> {
        let (a, b) = text.split_once("@@").unwrap();
        [a.as_bytes(), bytes, b.as_bytes()].concat()
    }

    #[test]
    fn windows_1252_any_case_charset_and_spaced_declarations() {
        // 0x80 is the euro sign, 0x93/0x94 curly quotes in windows-1252.
        let body = with_bytes(
            &format!(
                "<?xml version='1.0' encoding = 'windows-1252' ?>{}",
                fault11("Server", "@@")
            ),
            &[0x93, b'5', 0x80, 0x94],
        );
        match classify(500, None, &body, false, false, None) {
            Answer::Rejected { reason, .. } => {
                assert!(reason.contains("\u{201C}5\u{20AC}\u{201D}"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let body = with_bytes(&fault11("Server", "caf@@"), &[0xE9]);
        for ct in [
            "text/xml; Charset=ISO-8859-1",
            "text/xml;CHARSET=\"latin1\"",
        ] {
            match classify(500, Some(ct), &body, false, false, None) {
                Answer::Rejected { reason, .. } => {
                    assert!(reason.contains("caf\u{e9}"), "{ct}: {reason}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            charset(
                None,
                b"<?xml version=\"1.0\" encoding =\"ISO-8859-1\"?><a/>"
            ),
            Charset::Latin1
        );
        assert_eq!(
            charset(Some("text/xml"), b"<?xml version=\"1.0\"?><a/>"),
            Charset::Utf8
        );
    }

    fn utf16(text: &str, little: bool, bom: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for unit in bom.then_some(0xFEFF).into_iter().chain(text.encode_utf16()) {
            out.extend(if little {
                unit.to_le_bytes()
            } else {
                unit.to_be_bytes()
            });
        }
        out
    }

    #[test]
    fn utf16_answers_are_read_not_taken_for_an_outage() {
        // A .NET service configured for UTF-16: read as garbage, every answer
        // was "not a SOAP envelope", an outage, and the change sent again forever.
        let ok = format!(
            "<?xml version=\"1.0\" encoding=\"utf-16\"?>{ENV11}<UpdateResponse><Result>OK</Result></UpdateResponse>{END}"
        );
        let r = rule(None);
        for (little, bom, ct) in [
            (true, true, Some("text/xml; charset=utf-16")),
            (false, true, Some("text/xml")),
            (true, false, None),
            (false, false, Some("text/xml; charset=utf-16")),
            (true, false, Some("text/xml; charset=UTF-16LE")),
        ] {
            let body = utf16(&ok, little, bom);
            assert_eq!(
                classify(200, ct, &body, false, false, None),
                Answer::Delivered,
                "{little} {bom} {ct:?}"
            );
            assert_eq!(
                classify(200, ct, &body, false, false, Some(&r)),
                Answer::Delivered
            );
        }
        let fault = utf16(&fault11("soap:Client", "caf\u{e9} \u{20ac}"), true, true);
        match classify(
            500,
            Some("text/xml; charset=utf-16"),
            &fault,
            false,
            false,
            None,
        ) {
            Answer::Rejected { reason, client } => {
                assert!(client && reason.contains("caf\u{e9} \u{20ac}"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // "utf-16" said of UTF-8 bytes (.NET writing XML to a string): the bytes win.
        assert_eq!(
            classify(
                200,
                Some("text/xml; charset=utf-16"),
                ok.as_bytes(),
                false,
                false,
                Some(&r)
            ),
            Answer::Delivered
        );
        // An odd byte count or a lone surrogate is no panic.
        let mut odd = utf16(&ok, true, true);
        odd.push(b'x');
        odd.extend([0x00, 0xD8]);
        let _ = classify(200, None, &odd, false, false, Some(&r));
    }

    #[test]
    fn http_errors_malformed_and_oversized_answers() {
        assert!(matches!(
            classify(500, None, b"", false, false, None),
            Answer::Rejected { ref reason, client: false } if reason.contains("500")
        ));
        assert!(matches!(
            classify(503, None, b"maintenance", false, false, None),
            Answer::Down(_)
        ));
        assert!(matches!(
            classify(200, None, b"<a><b></a>", false, false, None),
            Answer::Down(ref reason) if reason.contains("not well-formed")
        ));
        assert!(matches!(
            classify(200, None, b"<a>", true, false, None),
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

    fn rule(reason: Option<&str>) -> BusinessRule {
        BusinessRule {
            ok_path: vec!["UpdateResponse".into(), "Result".into()],
            ok_values: vec!["OK".into(), "0".into()],
            reason_path: reason.map(|r| r.split('/').map(str::to_string).collect()),
        }
    }

    fn judge(body: &str, rule: &BusinessRule) -> Answer {
        let body = format!(
            r#"<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header/><s:Body>{body}</s:Body></s:Envelope>"#
        );
        classify(
            200,
            Some("text/xml"),
            body.as_bytes(),
            false,
            false,
            Some(rule),
        )
    }

    #[test]
    fn a_business_answer_is_delivered_only_with_an_ok_value_at_ok_path() {
        let r = rule(Some("UpdateResponse/Message"));
        for ok in [
            r#"<UpdateResponse><Result>OK</Result></UpdateResponse>"#,
            r#"<p:UpdateResponse xmlns:p="urn:permits"><p:Result> 0 </p:Result><p:Message>fine</p:Message></p:UpdateResponse>"#,
        ] {
            assert_eq!(judge(ok, &r), Answer::Delivered, "{ok}");
        }
        assert_eq!(
            judge(
                r#"<UpdateResponse><Result>ERROR</Result><Message>Permit 123 is locked &amp; closed</Message></UpdateResponse>"#,
                &r
            ),
            Answer::Rejected {
                reason: "the service answered UpdateResponse/Result = \"ERROR\" (HTTP 200): Permit 123 is locked & closed".into(),
                client: false
            }
        );
        // Case as written: "ok" is not "OK".
        assert!(matches!(
            judge("<UpdateResponse><Result>ok</Result></UpdateResponse>", &r),
            Answer::Rejected { reason, .. } if reason.ends_with("(the answer has no text at UpdateResponse/Message)")
        ));
        // Only the path under Body counts: a Result elsewhere does not.
        let Answer::Rejected { reason, client } = judge(
            "<Other><Result>OK</Result></Other><UpdateResponse><Status>OK</Status></UpdateResponse>",
            &r,
        ) else {
            panic!()
        };
        assert!(!client);
        assert!(
            reason
                .starts_with("HTTP 200: the answer has no UpdateResponse/Result element (ok_path)"),
            "{reason}"
        );
        // An empty element is an empty result, not OK.
        assert!(matches!(
            judge("<UpdateResponse><Result/></UpdateResponse>", &r),
            Answer::Rejected { reason, .. } if reason.contains("= \"\"")
        ));
    }

    #[test]
    fn a_business_answer_cannot_be_fooled_by_its_neighbours() {
        let r = rule(Some("UpdateResponse/Message"));
        let rejected = |body: &str| matches!(judge(body, &r), Answer::Rejected { .. });
        // A Result deeper down, or in the Header, is not the one at ok_path.
        assert!(rejected(
            "<UpdateResponse><Detail><Result>OK</Result></Detail><Result>ERROR</Result></UpdateResponse>"
        ));
        let in_header = r#"<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header><UpdateResponse><Result>OK</Result></UpdateResponse></s:Header><s:Body><UpdateResponse><Result>ERROR</Result></UpdateResponse></s:Body></s:Envelope>"#;
        assert!(matches!(
            classify(200, None, in_header.as_bytes(), false, false, Some(&r)),
            Answer::Rejected { .. }
        ));
        // The first element at ok_path decides; a later OK does not undo an ERROR.
        assert!(rejected(
            "<UpdateResponse><Result>ERROR</Result><Result>OK</Result></UpdateResponse>"
        ));
        // OK in CDATA and spread over lines, with any prefix, is OK.
        for ok in [
            "<UpdateResponse><Result><![CDATA[ OK ]]></Result></UpdateResponse>",
            "<m:UpdateResponse xmlns:m=\"urn:x\"><m:Result>\n   OK\n</m:Result></m:UpdateResponse>",
            "<UpdateResponse><Result>&#79;&#75;</Result></UpdateResponse>",
        ] {
            assert_eq!(judge(ok, &r), Answer::Delivered, "{ok}");
        }
        // An entity the service declares itself is not read as OK.
        assert!(rejected(
            "<UpdateResponse><Result>&ok;</Result></UpdateResponse>"
        ));
        // OK with more text inside is not OK.
        assert!(rejected(
            "<UpdateResponse><Result>OK<Detail>but not saved</Detail></Result></UpdateResponse>"
        ));
        // A Fault in the Body wins over an OK result beside it.
        let both = format!(
            "{ENV11}<soap:Fault><faultcode>soap:Server</faultcode><faultstring>rolled back</faultstring></soap:Fault><UpdateResponse><Result>OK</Result></UpdateResponse>{END}"
        );
        assert!(matches!(
            classify(200, None, both.as_bytes(), false, false, Some(&r)),
            Answer::Rejected { reason, .. } if reason.contains("rolled back")
        ));
    }

    #[test]
    fn a_long_business_reason_is_cut_and_a_fault_still_wins() {
        let r = rule(Some("UpdateResponse/Message"));
        let long = "x".repeat(5000);
        let Answer::Rejected { reason, .. } = judge(
            &format!(
                "<UpdateResponse><Result>ERROR</Result><Message>{long}</Message></UpdateResponse>"
            ),
            &r,
        ) else {
            panic!()
        };
        assert!(
            reason.chars().count() < 600 && reason.ends_with('…'),
            "{}",
            reason.len()
        );
        let fault = fault11("soap:Server", "down for backup");
        assert!(matches!(
            classify(500, None, fault.as_bytes(), false, false, Some(&r)),
            Answer::Rejected { reason, client: false } if reason.contains("down for backup")
        ));
        // Not a SOAP envelope stays an outage whatever the rule says.
        assert!(matches!(
            classify(200, None, b"<html>proxy</html>", false, false, Some(&r)),
            Answer::Down(_)
        ));
    }

    #[test]
    fn the_rule_is_checked_and_explained() {
        let mut problems = Vec::new();
        let mut report = |key: &str, text: String| problems.push(format!("{key} {text}"));
        let raw = RawRule {
            ok_path: Some("s:UpdateResponse/Result".into()),
            ok_values: Some(vec![]),
            reason_path: Some("Update Response".into()),
        };
        assert!(validate_rule(&raw, &mut report).is_none());
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("ok_path `s:UpdateResponse/Result`: write local names without a prefix (`UpdateResponse`)"), "{problems:?}");
        assert!(
            problems[1].starts_with(
                "reason_path `Update Response`: `Update Response` is not an element name"
            ),
            "{problems:?}"
        );
        assert!(
            problems[2].starts_with("ok_values is missing or empty"),
            "{problems:?}"
        );
        let raw = RawRule {
            ok_path: Some("/UpdateResponse/Result".into()),
            ok_values: Some(vec!["OK".into(), "0".into()]),
            reason_path: Some("UpdateResponse/Message".into()),
        };
        let got = validate_rule(&raw, &mut |_, t| panic!("{t}")).unwrap();
        assert_eq!(got, rule(Some("UpdateResponse/Message")));
        assert_eq!(
            explain_success(Some(&got), false),
            "an HTTP 2xx answer carrying a SOAP envelope without a Fault in which the text of Body/UpdateResponse/Result is \"OK\" or \"0\" (otherwise a rejection, its reason from Body/UpdateResponse/Message)"
        );
    }
}
