//! The SOAP envelope around one rendered body: the delivery id in the header
//! (SPEC §5), an optional WS-Security UsernameToken, and the body itself,
//! passed through quick-xml so that it is checked to be well-formed and can get
//! the connector's `namespace` on its root element.
//!
//! **Invariants:** written by quick-xml's `Writer` only; the body's text is
//! already escaped and is copied event by event, never re-escaped or altered.

use base64::Engine as _;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, Event};
use quick_xml::{Reader, Writer};

use super::{SoapVersion, WsSecurity};

pub const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
const WSSE_NS: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const WSU_NS: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
const PROFILE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0";
const BASE64_BINARY: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary";

/// What goes around every body of one connector.
pub struct Wrapping<'a> {
    pub version: SoapVersion,
    pub namespace: Option<&'a str>,
    /// Username, password and mode, when the service wants a UsernameToken.
    pub ws_security: Option<(&'a str, &'a str, WsSecurity)>,
}

/// A UsernameToken's changing parts: fixed in tests, fresh for every send.
pub struct Token {
    pub nonce: [u8; 16],
    /// `2026-11-26T14:00:00Z`
    pub created: String,
}

impl Token {
    /// For envelopes without a UsernameToken (nothing to compute).
    pub fn unused() -> Token {
        Token {
            nonce: [0; 16],
            created: String::new(),
        }
    }

    pub fn fresh() -> Token {
        let mut nonce = [0u8; 16];
        // ring's system RNG; a failure leaves fastrand's bytes (the nonce only
        // has to be unique, not secret).
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).is_err() {
            nonce.iter_mut().for_each(|b| *b = fastrand::u8(..));
        }
        let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        Token { nonce, created }
    }
}

/// `Base64(SHA-1(nonce + created + password))`, the PasswordDigest of the
/// UsernameToken profile 1.0.
pub fn password_digest(nonce: &[u8], created: &str, password: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(nonce);
    ctx.update(created.as_bytes());
    ctx.update(password.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

fn io(e: impl std::fmt::Display) -> String {
    format!("cannot write the envelope: {e}")
}

/// The whole envelope for one body. An error means the body is not well-formed XML.
pub fn build(
    wrapping: &Wrapping<'_>,
    id: &str,
    attempt: u32,
    body: &[u8],
    token: &Token,
) -> Result<Vec<u8>, String> {
    let ns = match wrapping.version {
        SoapVersion::V11 => SOAP11_NS,
        SoapVersion::V12 => SOAP12_NS,
    };
    let mut w = Writer::new(Vec::with_capacity(body.len() + 512));
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)))
        .map_err(io)?;
    w.write_event(Event::Start(
        BytesStart::new("soap:Envelope").with_attributes([("xmlns:soap", ns)]),
    ))
    .map_err(io)?;
    w.write_event(Event::Start(BytesStart::new("soap:Header")))
        .map_err(io)?;
    let attempt = attempt.to_string();
    w.write_event(Event::Empty(
        BytesStart::new("hms:Delivery").with_attributes([
            ("xmlns:hms", "urn:hms-sync"),
            ("id", id),
            ("attempt", attempt.as_str()),
        ]),
    ))
    .map_err(io)?;
    if let Some((username, password, mode)) = wrapping.ws_security {
        write_security(&mut w, username, password, mode, token)?;
    }
    w.write_event(Event::End(BytesEnd::new("soap:Header")))
        .map_err(io)?;
    w.write_event(Event::Start(BytesStart::new("soap:Body")))
        .map_err(io)?;
    copy_body(&mut w, body, wrapping.namespace)?;
    w.write_event(Event::End(BytesEnd::new("soap:Body")))
        .map_err(io)?;
    w.write_event(Event::End(BytesEnd::new("soap:Envelope")))
        .map_err(io)?;
    let mut out = w.into_inner();
    out.push(b'\n');
    Ok(out)
}

fn write_security(
    w: &mut Writer<Vec<u8>>,
    username: &str,
    password: &str,
    mode: WsSecurity,
    token: &Token,
) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    w.write_event(Event::Start(
        BytesStart::new("wsse:Security").with_attributes([("xmlns:wsse", WSSE_NS)]),
    ))
    .map_err(io)?;
    w.write_event(Event::Start(
        BytesStart::new("wsse:UsernameToken").with_attributes([("xmlns:wsu", WSU_NS)]),
    ))
    .map_err(io)?;
    w.create_element("wsse:Username")
        .write_text_content(quick_xml::events::BytesText::new(username))
        .map_err(io)?;
    let (kind, value) = match mode {
        WsSecurity::PasswordText => ("PasswordText", password.to_string()),
        WsSecurity::PasswordDigest => (
            "PasswordDigest",
            password_digest(&token.nonce, &token.created, password),
        ),
    };
    let type_uri = format!("{PROFILE}#{kind}");
    w.create_element("wsse:Password")
        .with_attribute(("Type", type_uri.as_str()))
        .write_text_content(quick_xml::events::BytesText::new(&value))
        .map_err(io)?;
    w.create_element("wsse:Nonce")
        .with_attribute(("EncodingType", BASE64_BINARY))
        .write_text_content(quick_xml::events::BytesText::new(&b64.encode(token.nonce)))
        .map_err(io)?;
    w.create_element("wsu:Created")
        .write_text_content(quick_xml::events::BytesText::new(&token.created))
        .map_err(io)?;
    w.write_event(Event::End(BytesEnd::new("wsse:UsernameToken")))
        .map_err(io)?;
    w.write_event(Event::End(BytesEnd::new("wsse:Security")))
        .map_err(io)?;
    Ok(())
}

/// Copies the body's events into `w`; the first element gets `xmlns` if asked.
fn copy_body(w: &mut Writer<Vec<u8>>, body: &[u8], namespace: Option<&str>) -> Result<(), String> {
    let mut reader = Reader::from_reader(body);
    let mut depth: usize = 0;
    let mut roots = 0;
    let not_xml = |e: &dyn std::fmt::Display| format!("the body is not well-formed XML: {e}");
    loop {
        let event = reader.read_event().map_err(|e| not_xml(&e))?;
        let event = match event {
            Event::Eof => break,
            // A declaration cannot stand inside the envelope.
            Event::Decl(_) => continue,
            Event::DocType(_) => return Err(not_xml(&"a DOCTYPE cannot stand inside a SOAP body")),
            Event::Start(s) if depth == 0 => {
                roots += 1;
                depth += 1;
                Event::Start(with_namespace(s, namespace))
            }
            Event::Empty(s) if depth == 0 => {
                roots += 1;
                Event::Empty(with_namespace(s, namespace))
            }
            Event::Start(s) => {
                depth += 1;
                Event::Start(s)
            }
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                Event::End(e)
            }
            Event::Text(t) if depth == 0 => {
                if t.trim().is_empty() {
                    continue;
                }
                return Err(not_xml(&"text outside the root element"));
            }
            // `&amp;` or CDATA before or after the root would land in soap:Body.
            Event::GeneralRef(_) | Event::CData(_) if depth == 0 => {
                return Err(not_xml(&"text outside the root element"));
            }
            other => other,
        };
        w.write_event(event).map_err(io)?;
    }
    if depth != 0 {
        return Err(not_xml(&"an element is not closed"));
    }
    if roots != 1 {
        return Err(not_xml(&format!(
            "it must hold exactly one root element, not {roots}"
        )));
    }
    Ok(())
}

fn with_namespace<'a>(s: BytesStart<'a>, namespace: Option<&str>) -> BytesStart<'a> {
    let mut s = s;
    if let Some(ns) = namespace
        && !s.attributes().flatten().any(|a| a.key.as_ref() == "xmlns")
    {
        s.push_attribute(("xmlns", ns));
    }
    s
}
