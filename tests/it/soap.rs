//! SOAP transport against a real HTTP server in the test process playing the
//! county's COBOL box: it checks the headers and parses every envelope it gets.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use quick_xml::Reader;
use quick_xml::events::Event;
use serde_json::json;

use crate::harness::*;

const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// One envelope as the legacy box understood it.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub path: String,
    pub id: String,
    pub attempt: u32,
    pub content_type: String,
    pub soap_action: Option<String>,
    pub authorization: Option<String>,
    /// The raw XML inside `<soap:Body>`.
    pub body_xml: String,
    pub root: String,
    pub op: String,
    pub key: String,
    /// `<Field name=…>` text, unescaped; removed fields as "(removed)".
    pub fields: BTreeMap<String, String>,
    /// wsse UsernameToken: (username, password type, password, nonce, created).
    pub token: Option<(String, String, String, String, String)>,
}

#[derive(Default)]
struct BoxState {
    got: Vec<Received>,
    /// Envelopes it could not parse or whose headers were wrong.
    errors: Vec<String>,
    /// Keys answered with a Client Fault.
    reject_keys: HashSet<String>,
    /// Answer only after this long.
    delay: Duration,
    /// Basic auth the box insists on: (user, password).
    basic: Option<(String, String)>,
    /// UsernameToken PasswordDigest the box insists on: (user, password).
    digest: Option<(String, String)>,
    /// TCP connections accepted (keep-alive means few).
    connections: usize,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: usize,
    max_in_flight: usize,
}

/// The legacy box: an axum server on its own runtime, so that `stop` ends
/// every connection at once (keep-alive ones too) and `resume` binds the same port.
pub struct LegacyBox {
    pub addr: SocketAddr,
    state: Arc<Mutex<BoxState>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl LegacyBox {
    pub fn start() -> LegacyBox {
        let mut b = LegacyBox {
            addr: "127.0.0.1:0".parse().unwrap(),
            state: Arc::default(),
            rt: None,
        };
        b.resume();
        b
    }

    pub fn url(&self) -> String {
        format!("http://{}/PermitService", self.addr)
    }

    pub fn resume(&mut self) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = self.addr;
        let listener = rt.block_on(async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket.bind(addr).unwrap();
            socket.listen(128).unwrap()
        });
        self.addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(self.state.clone());
        let state = self.state.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
            state.lock().unwrap().connections += 1;
        });
        rt.spawn(async move { axum::serve(listener, app).await });
        self.rt = Some(rt);
    }

    /// Stops answering: the port is closed and every connection dropped.
    pub fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().got.clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    pub fn errors(&self) -> Vec<String> {
        self.state.lock().unwrap().errors.clone()
    }

    pub fn reject(&self, key: &str, on: bool) {
        let mut s = self.state.lock().unwrap();
        if on {
            s.reject_keys.insert(key.to_string());
        } else {
            s.reject_keys.remove(key);
        }
    }

    pub fn set_delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }

    pub fn require_basic(&self, user: &str, password: &str) {
        self.state.lock().unwrap().basic = Some((user.into(), password.into()));
    }

    pub fn require_digest(&self, user: &str, password: &str) {
        self.state.lock().unwrap().digest = Some((user.into(), password.into()));
    }

    /// The same box over TLS with `cert`/`key` (DER); a new port.
    pub fn start_tls(cert: Vec<u8>, key: Vec<u8>) -> LegacyBox {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let state: Arc<Mutex<BoxState>> = Arc::default();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        LegacyBox {
            addr,
            state,
            rt: Some(rt),
        }
    }
}

impl Drop for LegacyBox {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn ack() -> String {
    format!(
        "<?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><UpdatePermitResponse>got it</UpdatePermitResponse></soap:Body></soap:Envelope>"
    )
}

pub fn client_fault(text: &str) -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><soap:Fault><faultcode>soap:Client</faultcode><faultstring>{text}</faultstring></soap:Fault></soap:Body></soap:Envelope>"
    )
}

async fn handle(
    State(state): State<Arc<Mutex<BoxState>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let parsed = parse_envelope(&body);
    let delay = {
        let mut s = state.lock().unwrap();
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        s.delay
    };
    // Even when 0: a yield lets concurrent requests overlap here.
    tokio::time::sleep(delay.max(Duration::from_millis(1))).await;
    let mut s = state.lock().unwrap();
    s.in_flight -= 1;
    let mut r = match parsed {
        Ok(r) => r,
        Err(e) => {
            s.errors
                .push(format!("{e}: {}", String::from_utf8_lossy(&body)));
            return (StatusCode::BAD_REQUEST, "bad envelope").into_response();
        }
    };
    r.path = uri.path().to_string();
    r.content_type = header("content-type").unwrap_or_default();
    r.soap_action = header("soapaction");
    r.authorization = header("authorization");
    if header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")) {
        s.errors
            .push("the client asked to close the connection".into());
    }
    let reject = s.reject_keys.contains(&r.key);
    if let Some((user, password)) = s.basic.clone() {
        use base64::Engine as _;
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        if r.authorization.as_deref() != Some(want.as_str()) {
            s.errors
                .push(format!("bad basic auth: {:?}", r.authorization));
            return (StatusCode::UNAUTHORIZED, "").into_response();
        }
    }
    if let Some((user, password)) = s.digest.clone()
        && let Err(e) = check_digest(&r, &user, &password)
    {
        s.errors.push(e.clone());
        return (StatusCode::INTERNAL_SERVER_ERROR, client_fault(&e)).into_response();
    }
    s.got.push(r);
    if reject {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/xml; charset=utf-8")],
            client_fault("Permit is locked &amp; cannot change"),
        )
            .into_response()
    } else {
        ([("content-type", "text/xml; charset=utf-8")], ack()).into_response()
    }
}

/// Parses an envelope the way a strict legacy box would.
pub fn parse_envelope(bytes: &[u8]) -> Result<Received, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let start = text.find("<soap:Body>").ok_or("no <soap:Body>")? + "<soap:Body>".len();
    let end = text.find("</soap:Body>").ok_or("no </soap:Body>")?;
    let mut r = Received {
        body_xml: text[start..end].to_string(),
        ..Received::default()
    };
    let mut reader = Reader::from_str(text);
    let mut path: Vec<String> = Vec::new();
    let mut field: Option<String> = None;
    let mut token = (
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    );
    let mut has_token = false;
    let mut text_buf = String::new();
    loop {
        let ev = reader.read_event().map_err(|e| e.to_string())?;
        match ev {
            Event::Eof => break,
            Event::Start(_) | Event::Empty(_) => {
                let (s, empty) = match ev {
                    Event::Start(s) => (s, false),
                    Event::Empty(s) => (s, true),
                    _ => unreachable!(),
                };
                let local = s.local_name().as_ref().to_string();
                let attr = |n: &str| {
                    s.attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == n)
                        .map(|a| {
                            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .unwrap()
                                .into_owned()
                        })
                };
                let parent = path.last().map(String::as_str);
                match (parent, local.as_str()) {
                    (Some("Header"), "Delivery") => {
                        if s.name().as_ref() != "hms:Delivery" {
                            return Err("Delivery not in the hms prefix".into());
                        }
                        r.id = attr("id").ok_or("Delivery without id")?;
                        r.attempt = attr("attempt")
                            .ok_or("Delivery without attempt")?
                            .parse()
                            .map_err(|_| "attempt is not a number")?;
                    }
                    (Some("Body"), root) => {
                        r.root = root.to_string();
                        r.op = attr("op").unwrap_or_default();
                    }
                    (_, "Field") => {
                        let name = attr("name").ok_or("Field without name")?;
                        if attr("removed").is_some() {
                            r.fields.insert(name.clone(), "(removed)".into());
                        } else if attr("null").is_some() {
                            r.fields.insert(name.clone(), "(null)".into());
                        }
                        field = Some(name);
                    }
                    (_, "Password") => token.1 = attr("Type").unwrap_or_default(),
                    (_, "UsernameToken") => has_token = true,
                    _ => {}
                }
                text_buf.clear();
                if !empty {
                    path.push(local);
                }
            }
            Event::Text(t) => text_buf.push_str(&t.xml10_content()),
            Event::GeneralRef(g) => {
                let name = g.xml10_content();
                match g.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => text_buf.push(c),
                    None => text_buf.push_str(
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or(format!("unknown entity &{name};"))?,
                    ),
                }
            }
            Event::End(_) => {
                let local = path.pop().unwrap_or_default();
                let t = std::mem::take(&mut text_buf);
                match local.as_str() {
                    "Field" => {
                        if let Some(name) = field.take() {
                            r.fields.entry(name).or_insert(t);
                        }
                    }
                    "Username" => token.0 = t,
                    "Password" => token.2 = t,
                    "Nonce" => token.3 = t,
                    "Created" => token.4 = t,
                    k if path.last().map(String::as_str) == Some(r.root.as_str())
                        && r.key.is_empty()
                        && k != "Field" =>
                    {
                        r.key = t
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if r.id.is_empty() {
        return Err("no hms:Delivery in the header".into());
    }
    if has_token {
        r.token = Some(token);
    }
    Ok(r)
}

/// What a WS-Security service checks: PasswordDigest = Base64(SHA-1(nonce + created + password)).
fn check_digest(r: &Received, user: &str, password: &str) -> Result<(), String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (u, kind, digest, nonce, created) = r.token.clone().ok_or("no UsernameToken")?;
    if u != user || !kind.ends_with("#PasswordDigest") {
        return Err(format!("wrong user or type: {u} {kind}"));
    }
    let nonce = b64.decode(nonce).map_err(|e| e.to_string())?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&nonce);
    ctx.update(created.as_bytes());
    ctx.update(password.as_bytes());
    if b64.encode(ctx.finish()) != digest {
        return Err("digest does not match".into());
    }
    humantime::parse_rfc3339(&created).map_err(|e| format!("Created: {e}"))?;
    Ok(())
}

pub fn squash(s: &str) -> String {
    s.lines().map(str::trim).collect::<Vec<_>>().join("")
}

pub fn soap_connector(url: &str, extra_transport: &str, retry: &str) -> String {
    format!(
        "collections = [\"permits\"]\n[format]\nkind = \"xml\"\nroot = \"PermitUpdate\"\nkey_element = \"PermitNumber\"\n\
         [transport]\nkind = \"soap\"\nurl = \"{url}\"\nsoap_action = \"urn:UpdatePermit\"\n{extra_transport}\n[retry]\n{retry}\n"
    )
}

const FAST_RETRY: &str = "max_attempts = 3\nbackoff = \"10ms\"\nmax_backoff = \"50ms\"";

/// Delivery-log lines of `target`, parsed.
pub fn delivery_log(d: &TestDaemon) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.path().join("delivery.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn soap_the_fixture_pair_arrives_as_the_expected_xml_with_soap_headers() {
    let server = LegacyBox::start();
    let d = TestDaemon::new()
        .connector("cobol", &soap_connector(&server.url(), "", FAST_RETRY))
        .start();
    drop_fixture_pair(&d, &server);
    assert!(server.errors().is_empty(), "{:?}", server.errors());
    let got = server.received();
    let expected =
        std::fs::read_to_string(fixtures().join("expected/permit-123-approved.xml")).unwrap();
    assert_eq!(squash(&got[1].body_xml), squash(&expected));
    assert_eq!(
        got[1].fields["inspector.name"],
        "M. O'Brien & Sons <contract>"
    );
    assert_eq!(
        (got[0].id.as_str(), got[0].attempt, got[0].op.as_str()),
        ("cobol:1", 1, "create")
    );
    assert_eq!(
        (got[1].id.as_str(), got[1].key.as_str()),
        ("cobol:2", "123")
    );
    assert_eq!(got[1].content_type, "text/xml; charset=utf-8");
    assert_eq!(got[1].soap_action.as_deref(), Some("\"urn:UpdatePermit\""));
    assert_eq!(got[1].path, "/PermitService");
    assert_eq!(
        server.connections(),
        1,
        "both requests on one kept-alive connection"
    );
    d.wait_for(Duration::from_secs(5), "status to count both", |d| {
        d.target_status("cobol")["delivered"] == 2
    });
    // `translate` shows the whole envelope that would go out.
    let out = d.cli(&[
        "translate",
        "cobol",
        fixtures()
            .join("permits/permit-123-approved.json")
            .to_str()
            .unwrap(),
        "--from",
        fixtures().join("permits/permit-123.json").to_str().unwrap(),
    ]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let preview = parse_envelope(shown.as_bytes()).unwrap();
    assert_eq!(squash(&preview.body_xml), squash(&expected));
    assert_eq!(preview.id, "cobol:preview");
}

#[test]
fn soap_12_sends_the_action_in_the_content_type_and_a_namespace() {
    let server = LegacyBox::start();
    let d = TestDaemon::new()
        .connector(
            "cobol",
            &soap_connector(
                &server.url(),
                "soap_version = \"1.2\"\nnamespace = \"urn:county:permits\"",
                FAST_RETRY,
            ),
        )
        .start();
    d.client().call(&envelope(
        "7",
        json!({"permit_number": "7", "status": "NEW"}),
    ));
    d.wait_for(Duration::from_secs(10), "a delivery", |_| {
        server.received().len() == 1
    });
    let got = &server.received()[0];
    assert_eq!(
        got.content_type,
        "application/soap+xml; charset=utf-8; action=\"urn:UpdatePermit\""
    );
    assert_eq!(got.soap_action, None);
    assert!(
        got.body_xml
            .starts_with("<PermitUpdate op=\"create\" xmlns=\"urn:county:permits\">"),
        "{}",
        got.body_xml
    );
}

#[test]
fn soap_outage_longer_than_every_backoff_dead_letters_nothing_and_coalesces() {
    let mut server = LegacyBox::start();
    let d = TestDaemon::new()
        .connector(
            "cobol",
            &soap_connector(&server.url(), "connect_timeout = \"200ms\"", FAST_RETRY),
        )
        .start();
    let mut c = d.client();
    let keys = ["1", "2", "3", "4", "5"];
    for k in keys {
        assert_eq!(
            c.call(&envelope(k, json!({"permit_number": k, "n": 0})))["ok"],
            true
        );
    }
    d.wait_for(Duration::from_secs(10), "the first round", |_| {
        server.received().len() == 5
    });
    server.stop();
    // 3 × 50 ms would dead-letter a rejection; the outage lasts about 1.5 s
    // while changes keep arriving.
    for n in 1..=10 {
        for k in keys {
            assert_eq!(
                c.call(&envelope(k, json!({"permit_number": k, "n": n})))["ok"],
                true
            );
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(d.target_status("cobol")["state"], "down");
    server.resume();
    d.wait_for(Duration::from_secs(15), "every record's last value", |_| {
        let got = server.received();
        keys.iter().all(|k| {
            got.iter()
                .rev()
                .find(|r| r.key == *k)
                .is_some_and(|r| r.fields.get("n").map(String::as_str) == Some("10"))
        })
    });
    assert!(server.errors().is_empty(), "{:?}", server.errors());
    let got = server.received();
    // 50 updates arrived as far fewer deliveries.
    assert!(
        got.len() - 5 <= 15,
        "{} deliveries for 50 updates",
        got.len() - 5
    );
    // Per-record order: n never goes back for any key.
    for k in keys {
        let ns: Vec<u32> = got
            .iter()
            .filter(|r| r.key == k)
            .map(|r| r.fields["n"].parse().unwrap())
            .collect();
        assert!(ns.windows(2).all(|w| w[0] <= w[1]), "key {k}: {ns:?}");
    }
    let st = d.target_status("cobol");
    assert_eq!(
        (st["dead"].as_u64(), st["state"].as_str()),
        (Some(0), Some("up")),
        "{st}"
    );
    let log = delivery_log(&d);
    assert!(log.iter().any(|e| e["outcome"] == "down"));
    assert_eq!(
        server.max_in_flight(),
        1,
        "max_in_flight = 1 sends one at a time"
    );
    assert!(
        log.iter()
            .all(|e| e["outcome"] != "dead" && e["outcome"] != "rejected")
    );
}

#[test]
fn soap_client_faults_dead_letter_hold_the_record_and_retry_delivers_the_latest_state() {
    let server = LegacyBox::start();
    server.reject("13", true);
    let d = TestDaemon::new()
        .config("alert_command = \"echo \\\"$HMS_ID $HMS_KEY $HMS_ERROR\\\" >> alerts.txt\"")
        .connector("cobol", &soap_connector(&server.url(), "", FAST_RETRY))
        .start();
    let mut c = d.client();
    c.call(&envelope(
        "13",
        json!({"permit_number": "13", "status": "A"}),
    ));
    c.call(&envelope(
        "14",
        json!({"permit_number": "14", "status": "A"}),
    ));
    d.wait_for(Duration::from_secs(10), "a dead letter", |d| {
        d.target_status("cobol")["dead"] == 1
    });
    assert_eq!(
        server.received().iter().filter(|r| r.key == "13").count(),
        3
    );
    let attempts: Vec<u32> = server
        .received()
        .iter()
        .filter(|r| r.key == "13")
        .map(|r| r.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    d.wait_for(Duration::from_secs(5), "the alert", |d| {
        std::fs::read_to_string(d.path().join("alerts.txt"))
            .unwrap_or_default()
            .contains("cobol:1 13 SOAP Fault soap:Client: Permit is locked & cannot change")
    });
    let list: serde_json::Value =
        serde_json::from_slice(&d.cli(&["dead", "list", "--json"]).stdout).unwrap();
    assert!(
        list[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("soap:Client"),
        "{list}"
    );
    let log = delivery_log(&d);
    assert!(log.iter().any(|e| {
        e["outcome"] == "rejected"
            && e["error"]
                .as_str()
                .unwrap_or("")
                .contains("Permit is locked & cannot change")
    }));
    // Other records flowed.
    assert!(server.received().iter().any(|r| r.key == "14"));
    // Later updates of 13 are held.
    c.call(&envelope(
        "13",
        json!({"permit_number": "13", "status": "B", "fee": 5}),
    ));
    c.call(&envelope(
        "14",
        json!({"permit_number": "14", "status": "B"}),
    ));
    d.wait_for(Duration::from_secs(10), "14's update", |_| {
        server
            .received()
            .iter()
            .any(|r| r.key == "14" && r.fields.get("status").map(String::as_str) == Some("B"))
    });
    // 14's update was queued after 13's: had 13's gone out, it would be in already.
    assert_eq!(
        server.received().iter().filter(|r| r.key == "13").count(),
        3
    );
    server.reject("13", false);
    let out = d.cli(&["dead", "retry", "cobol:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_for(Duration::from_secs(10), "the merged delta", |_| {
        server.received().iter().filter(|r| r.key == "13").count() == 4
    });
    let last = server
        .received()
        .into_iter()
        .rfind(|r| r.key == "13")
        .unwrap();
    assert_eq!(last.id, "cobol:1");
    assert_eq!(
        (last.fields["status"].as_str(), last.fields["fee"].as_str()),
        ("B", "5")
    );
    assert_eq!(d.target_status("cobol")["dead"], 0);
}

#[test]
fn soap_dead_letter_on_client_fault_does_not_wait_for_max_attempts() {
    let server = LegacyBox::start();
    server.reject("13", true);
    let d = TestDaemon::new()
        .connector(
            "cobol",
            &soap_connector(
                &server.url(),
                "dead_letter_on_client_fault = true",
                FAST_RETRY,
            ),
        )
        .start();
    d.client()
        .call(&envelope("13", json!({"permit_number": "13"})));
    d.wait_for(Duration::from_secs(10), "a dead letter", |d| {
        d.target_status("cobol")["dead"] == 1
    });
    assert_eq!(server.received().len(), 1);
}

#[test]
fn soap_status_shows_a_rejection_delivered_in_the_same_batch_as_a_delivery() {
    let server = LegacyBox::start();
    server.reject("21", true);
    // Each answer takes a while, so the two requests of the batch overlap at
    // the box however slow this machine is.
    server.set_delay(Duration::from_millis(300));
    let d = TestDaemon::new()
        .connector(
            "cobol",
            &soap_connector(
                &server.url(),
                "max_in_flight = 2\ndead_letter_on_client_fault = true",
                FAST_RETRY,
            ),
        )
        .start();
    // One file: both changes are queued by one commit, so the worker's next
    // lease takes them together, as one batch of two.
    d.drop_file(
        "two.ndjson",
        b"{\"permit_number\":\"21\"}\n{\"permit_number\":\"22\"}\n",
    );
    d.wait_for(
        Duration::from_secs(10),
        "one delivery and one dead letter",
        |d| {
            let t = d.target_status("cobol");
            t["dead"] == 1 && t["pending"] == 0 && t["in_flight"] == 0
        },
    );
    assert_eq!(server.received().len(), 2, "one batch, nothing resent");
    assert_eq!(server.max_in_flight(), 2, "both were on the wire at once");
    let t = d.target_status("cobol");
    assert!(
        t["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("Permit is locked"),
        "{t}"
    );
}

/// A raw HTTP/1.1 server for answers axum will not give: each request's
/// `<PermitNumber>` picks the answer. `reset`, `hang` and the 2xx answers that
/// are not SOAP misbehave only on their first request, so that the retry after
/// the outage gets through.
fn raw_box() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let key = loop {
                    let n = match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if let (Some(a), Some(b)) =
                        (text.find("<PermitNumber>"), text.find("</PermitNumber>"))
                        && text.contains("</soap:Envelope>")
                    {
                        break text[a + 14..b].to_string();
                    }
                };
                let first = {
                    let mut s = seen.lock().unwrap();
                    s.push(key.clone());
                    s.iter().filter(|k| **k == key).count() == 1
                };
                let head = |status: &str, len: usize| {
                    format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    )
                };
                let whole =
                    |status: &str, body: &str| format!("{}{body}", head(status, body.len()));
                let _ = match key.as_str() {
                    "fault200" => stream
                        .write_all(whole("200 OK", &client_fault("no such permit")).as_bytes()),
                    "e500" => stream.write_all(head("500 Internal Server Error", 0).as_bytes()),
                    "bigfault" => {
                        let body = client_fault(&"x".repeat(1_000_000));
                        stream.write_all(whole("500 Internal Server Error", &body).as_bytes())
                    }
                    "bad" if first => stream.write_all(whole("200 OK", "<a><b></a>").as_bytes()),
                    "html200" if first => stream.write_all(
                        whole(
                            "200 OK",
                            "<!DOCTYPE html>\n<html><head><title>Proxy Error</title></head><body>The proxy could not reach the service<br></body></html>",
                        )
                        .as_bytes(),
                    ),
                    "text200" if first => stream.write_all(whole("200 OK", "OK").as_bytes()),
                    "empty200" if first => stream.write_all(head("200 OK", 0).as_bytes()),
                    "empty200always" => stream.write_all(head("200 OK", 0).as_bytes()),
                    "latin1" => {
                        let body = format!(
                            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>{}",
                            client_fault("Se\u{f1}ora Pe\u{f1}a &amp; hijos")
                        );
                        // Each character as its one ISO-8859-1 byte.
                        let bytes: Vec<u8> = body.chars().map(|c| c as u32 as u8).collect();
                        let _ = stream
                            .write_all(head("500 Internal Server Error", bytes.len()).as_bytes());
                        stream.write_all(&bytes)
                    }
                    "huge" => {
                        let len = 50 * 1024 * 1024;
                        let _ = stream.write_all(head("200 OK", len).as_bytes());
                        let block = vec![b'x'; 64 * 1024];
                        let mut sent = 0;
                        while sent < len {
                            if stream.write_all(&block).is_err() {
                                break;
                            }
                            sent += block.len();
                        }
                        Ok(())
                    }
                    "reset" if first => {
                        let _ = stream.write_all(head("200 OK", 1000).as_bytes());
                        let _ = stream.write_all(b"<soap:Envelope");
                        let linger = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        use std::os::fd::AsRawFd;
                        // SAFETY: a valid socket and a properly sized option.
                        unsafe {
                            libc::setsockopt(
                                stream.as_raw_fd(),
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                &linger as *const _ as *const libc::c_void,
                                std::mem::size_of::<libc::linger>() as libc::socklen_t,
                            );
                        }
                        Ok(()) // dropped with linger 0: RST
                    }
                    "hang" if first => {
                        let _ = stream.write_all(head("200 OK", 1000).as_bytes());
                        let _ = stream.write_all(b"<soap:Envelope");
                        stream
                            .set_read_timeout(Some(Duration::from_secs(10)))
                            .unwrap();
                        let _ = stream.read(&mut chunk); // until the client gives up
                        Ok(())
                    }
                    _ => stream.write_all(whole("200 OK", &ack()).as_bytes()),
                };
            });
        }
    });
    (addr, seen)
}

#[test]
fn soap_odd_answers_are_classified_and_never_stall_the_worker() {
    let (addr, seen) = raw_box();
    let d = TestDaemon::new()
        .connector(
            "cobol",
            &soap_connector(
                &format!("http://{addr}/PermitService"),
                "timeout = \"500ms\"",
                "max_attempts = 2\nbackoff = \"10ms\"\nmax_backoff = \"50ms\"",
            ),
        )
        .start();
    let keys = [
        "fault200", "e500", "huge", "bad", "latin1", "reset", "hang", "html200", "text200",
        "empty200", "ok",
    ];
    let mut c = d.client();
    for k in keys {
        assert_eq!(
            c.call(&envelope(k, json!({"permit_number": k})))["ok"],
            true
        );
    }
    d.wait_for(Duration::from_secs(20), "every record settled", |d| {
        let st = d.target_status("cobol");
        st["dead"] == 4 && st["delivered"] == 7
    });
    let log = delivery_log(&d);
    let first = |k: &str| {
        log.iter()
            .find(|e| e["key"] == k)
            .map(|e| {
                (
                    e["outcome"].as_str().unwrap().to_string(),
                    e["error"].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap()
    };
    let (o, e) = first("fault200");
    assert!(
        o == "rejected" && e.contains("soap:Client") && e.contains("no such permit"),
        "{o} {e}"
    );
    let (o, e) = first("e500");
    assert!(o == "rejected" && e.contains("HTTP 500"), "{o} {e}");
    let (o, e) = first("huge");
    assert!(o == "rejected" && e.contains("larger than"), "{o} {e}");
    // A 2xx that is not a SOAP envelope is not the service's "got it" (SPEC §5):
    // an outage, counted against nothing, and the change is sent again.
    let (o, e) = first("bad");
    assert!(o == "down" && e.contains("not well-formed"), "{o} {e}");
    let (o, e) = first("html200");
    assert!(
        o == "down" && e.contains("not a SOAP envelope") && e.contains("Proxy Error"),
        "{o} {e}"
    );
    let (o, e) = first("text200");
    assert!(o == "down" && e.contains("not a SOAP envelope"), "{o} {e}");
    let (o, e) = first("empty200");
    assert!(o == "down" && e.contains("accept_empty_2xx"), "{o} {e}");
    for k in ["bad", "html200", "text200", "empty200"] {
        let outcomes: Vec<&str> = log
            .iter()
            .filter(|e| e["key"] == k)
            .map(|e| e["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["down", "delivered"], "{k}");
        let attempts: Vec<u64> = log
            .iter()
            .filter(|e| e["key"] == k)
            .map(|e| e["attempt"].as_u64().unwrap())
            .collect();
        assert_eq!(attempts, [1, 1], "{k}: an outage counts nothing");
    }
    let (o, e) = first("latin1");
    assert!(
        o == "rejected" && e.contains("Se\u{f1}ora Pe\u{f1}a & hijos"),
        "{o} {e}"
    );
    let (o, e) = first("reset");
    assert!(o == "down", "{o} {e}");
    let (o, e) = first("hang");
    assert!(o == "down" && e.contains("in time"), "{o} {e}");
    let dead: serde_json::Value =
        serde_json::from_slice(&d.cli(&["dead", "list", "--json"]).stdout).unwrap();
    let mut dead_keys: Vec<&str> = dead
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    dead_keys.sort();
    assert_eq!(dead_keys, ["e500", "fault200", "huge", "latin1"]);
    // Each rejected record was tried max_attempts times, no more.
    let seen = seen.lock().unwrap().clone();
    for k in ["fault200", "e500", "huge", "bad"] {
        assert_eq!(seen.iter().filter(|s| *s == k).count(), 2, "{k}: {seen:?}");
    }
}

/// A keep-alive SOAP server the way Python's `http.server` and many older Java
/// and embedded stacks answer: the headers in one write, the body in a second,
/// Nagle on. The body then waits until the client has acknowledged the headers.
/// Returns the address and the number of answers given.
pub fn two_write_box() -> (SocketAddr, Arc<Mutex<usize>>) {
    use std::io::{BufRead, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answered: Arc<Mutex<usize>> = Arc::default();
    let answered2 = answered.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let answered = answered2.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = std::io::BufReader::new(stream);
                loop {
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = ack();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
                        answer.len()
                    );
                    // Two writes, as the legacy stacks do; Nagle stays on.
                    if writer.write_all(head.as_bytes()).is_err()
                        || writer.write_all(answer.as_bytes()).is_err()
                    {
                        return;
                    }
                    *answered.lock().unwrap() += 1;
                }
            });
        }
    });
    (addr, answered)
}

/// With the client's delayed ACK such a server's answer waits ~40 ms each: 23
/// deliveries a second with one in flight. hms-sync acknowledges at once.
#[test]
fn soap_a_server_that_writes_headers_and_body_apart_answers_without_a_40ms_stall() {
    let (addr, answered) = two_write_box();
    let d = TestDaemon::new()
        .connector(
            "cobol",
            &soap_connector(&format!("http://{addr}/PermitService"), "", FAST_RETRY),
        )
        .start();
    const N: usize = 100;
    let started = std::time::Instant::now();
    let mut c = d.client();
    for i in 0..N {
        c.send_line(&envelope(
            &format!("n{i}"),
            json!({"permit_number": format!("n{i}")}),
        ));
    }
    for _ in 0..N {
        assert_eq!(c.answer()["ok"], true);
    }
    d.wait_for(Duration::from_secs(30), "every delivery", |_| {
        *answered.lock().unwrap() >= N
    });
    d.wait_for(Duration::from_secs(10), "every delivery counted", |d| {
        d.target_status("cobol")["delivered"] == N
    });
    let elapsed = started.elapsed();
    let mut latencies: Vec<u64> = delivery_log(&d)
        .iter()
        .filter(|e| e["outcome"] == "delivered")
        .map(|e| e["latency_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(latencies.len(), N);
    latencies.sort();
    let median = latencies[N / 2];
    eprintln!(
        "{N} deliveries one at a time in {elapsed:?} ({:.0}/s), median answer {median} ms",
        N as f64 / elapsed.as_secs_f64()
    );
    // The stall alone would take at least 40 ms an answer: 4 s for N.
    assert!(median < 20, "median answer took {median} ms: {latencies:?}");
    assert!(
        elapsed < Duration::from_millis(N as u64 * 40 * 3 / 4),
        "{N} deliveries took {elapsed:?}"
    );
}

#[test]
fn soap_an_empty_2xx_is_delivered_only_where_the_connector_says_so() {
    let (addr, seen) = raw_box();
    let url = format!("http://{addr}/PermitService");
    let d = TestDaemon::new()
        .connector(
            "cobol",
            &soap_connector(&url, "accept_empty_2xx = true", FAST_RETRY),
        )
        .start();
    let out = d.cli(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("an empty 2xx counts as delivered"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut c = d.client();
    let a = c.call(&envelope(
        "empty200always",
        json!({"permit_number": "empty200always"}),
    ));
    assert_eq!(a["ok"], true);
    d.wait_for(Duration::from_secs(20), "the delivery", |d| {
        d.target_status("cobol")["delivered"] == 1
    });
    assert_eq!(seen.lock().unwrap().len(), 1);
    let outcomes: Vec<String> = delivery_log(&d)
        .iter()
        .map(|e| e["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(outcomes, ["delivered"]);
    // The key is the SOAP transport's: a file connector refuses it by name.
    let d2 = TestDaemon::new().connector(
        "files",
        &csv_connector(&["permit_number"], "accept_empty_2xx = true", ""),
    );
    d2.write_config();
    let out = d2.cli(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("accept_empty_2xx"), "{err}");
}

#[test]
fn soap_a_megabyte_fault_text_is_kept_to_a_few_kib_everywhere() {
    let (addr, seen) = raw_box();
    let d = TestDaemon::new()
        .connector(
            "cobol",
            &soap_connector(
                &format!("http://{addr}/PermitService"),
                "",
                "max_attempts = 3\nbackoff = \"10ms\"\nmax_backoff = \"50ms\"",
            ),
        )
        .start();
    let mut c = d.client();
    let a = c.call(&envelope("bigfault", json!({"permit_number": "bigfault"})));
    assert_eq!(a["ok"], true);
    d.wait_for(Duration::from_secs(20), "the dead letter", |d| {
        d.target_status("cobol")["dead"] == 1
    });
    assert_eq!(seen.lock().unwrap().len(), 3, "tried max_attempts times");
    let bounded = |what: &str, text: &str| {
        assert!(
            text.len() < 4096 && text.contains("xxxx") && text.ends_with("bytes in all)"),
            "{what}: {} bytes: {}",
            text.len(),
            &text[text.len().saturating_sub(200)..]
        );
    };
    let status = d.target_status("cobol");
    bounded("status", status["last_error"].as_str().unwrap());
    let dead: serde_json::Value =
        serde_json::from_slice(&d.cli(&["dead", "list", "--json"]).stdout).unwrap();
    bounded("dead list", dead[0]["last_error"].as_str().unwrap());
    let id = dead[0]["id"].as_str().unwrap().to_string();
    let show = d.cli(&["dead", "show", &id]);
    assert!(show.status.success());
    assert!(
        show.stdout.len() < 16 * 1024,
        "dead show: {} bytes",
        show.stdout.len()
    );
    let log = std::fs::read_to_string(d.path().join("delivery.log")).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("bigfault")).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in lines {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        bounded("delivery log", e["error"].as_str().unwrap());
        assert!(
            line.len() < 4096,
            "a delivery-log line of {} bytes",
            line.len()
        );
    }
}

/// A CA and a server certificate for `localhost` signed by it: (CA PEM, cert DER, key DER).
fn test_ca() -> (String, Vec<u8>, Vec<u8>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Test County CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.der().to_vec(), key.serialize_der())
}

#[test]
fn soap_tls_with_the_county_ca_and_a_wrong_ca_refused() {
    let (ca_pem, cert, key) = test_ca();
    let (other_ca, _, _) = test_ca();
    let server = LegacyBox::start_tls(cert, key);
    let url = format!("https://localhost:{}/PermitService", server.addr.port());
    let d = TestDaemon::new()
        .connector(
            "good",
            &soap_connector(&url, "ca_file = \"ca.pem\"", FAST_RETRY),
        )
        .connector(
            "wrongca",
            &soap_connector(&url, "ca_file = \"other-ca.pem\"", FAST_RETRY),
        );
    std::fs::write(d.path().join("ca.pem"), ca_pem).unwrap();
    std::fs::write(d.path().join("other-ca.pem"), other_ca).unwrap();
    let d = d.start();
    d.client().call(&envelope(
        "9",
        json!({"permit_number": "9", "status": "OK"}),
    ));
    d.wait_for(Duration::from_secs(10), "the TLS delivery", |_| {
        server.received().len() == 1
    });
    d.wait_for(Duration::from_secs(10), "the wrong CA to be refused", |d| {
        delivery_log(d)
            .iter()
            .any(|e| e["target"] == "wrongca" && e["outcome"] == "down")
    });
    // Not a quiet period: more probes of the wrong CA, each of them refused.
    d.wait_for(
        Duration::from_secs(10),
        "three probes with the wrong CA",
        |d| {
            delivery_log(d)
                .iter()
                .filter(|e| e["target"] == "wrongca" && e["outcome"] == "down")
                .count()
                >= 3
        },
    );
    assert_eq!(server.received().len(), 1, "only the right CA got through");
    let st = d.target_status("wrongca");
    assert_eq!(st["state"], "down");
    assert_eq!(st["dead"], 0);
    assert!(
        st["last_error"].as_str().unwrap().contains("certificate"),
        "{st}"
    );
}

#[test]
fn soap_basic_auth_and_username_token_digest_are_checked_and_passwords_never_shown() {
    let basic_box = LegacyBox::start();
    basic_box.require_basic("cobol-user", "b4sic-S3cret");
    let digest_box = LegacyBox::start();
    digest_box.require_digest("wsuser", "d1gest-S3cret");
    let d = TestDaemon::new()
        .connector(
            "basic",
            &soap_connector(
                &basic_box.url(),
                "username = \"cobol-user\"\npassword_file = \"basic.pw\"",
                FAST_RETRY,
            ),
        )
        .connector(
            "digest",
            &soap_connector(
                &digest_box.url(),
                "auth = \"ws-security-digest\"\nusername = \"wsuser\"\npassword_file = \"digest.pw\"",
                FAST_RETRY,
            ),
        );
    std::fs::write(d.path().join("basic.pw"), "b4sic-S3cret\n").unwrap();
    std::fs::write(d.path().join("digest.pw"), "d1gest-S3cret").unwrap();
    let d = d.start();
    d.client().call(&envelope(
        "5",
        json!({"permit_number": "5", "status": "OK"}),
    ));
    d.wait_for(Duration::from_secs(10), "both deliveries", |_| {
        basic_box.received().len() == 1 && digest_box.received().len() == 1
    });
    assert!(basic_box.errors().is_empty(), "{:?}", basic_box.errors());
    assert!(digest_box.errors().is_empty(), "{:?}", digest_box.errors());
    assert!(digest_box.received()[0].token.is_some());
    let check = d.cli(&["check"]);
    let translate_in = d.path().join("change.json");
    std::fs::write(&translate_in, r#"{"permit_number": "5", "status": "NEW"}"#).unwrap();
    let translate = d.cli(&["translate", "digest", translate_in.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let check_out = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        check_out.contains("basic auth as cobol-user"),
        "{check_out}"
    );
    let shown = [
        check_out,
        String::from_utf8_lossy(&check.stderr).to_string(),
        String::from_utf8_lossy(&translate.stdout).to_string(),
        String::from_utf8_lossy(&d.cli(&["status", "--json"]).stdout).to_string(),
        d.log(),
        std::fs::read_to_string(d.path().join("delivery.log")).unwrap(),
    ];
    for text in shown {
        assert!(!text.contains("S3cret"), "a password shows: {text}");
    }
    // A wrong password is refused by the box: a rejection, not a delivery.
    std::fs::write(d.path().join("basic.pw"), "wrong").unwrap();
    let mut d = d;
    d.stop();
    d.restart();
    d.client()
        .call(&envelope("6", json!({"permit_number": "6"})));
    d.wait_for(Duration::from_secs(10), "the 401", |d| {
        delivery_log(d).iter().any(|e| {
            e["target"] == "basic"
                && e["outcome"] == "rejected"
                && e["error"].as_str().unwrap_or("").contains("401")
        })
    });
}

#[test]
fn soap_translate_masks_the_password_of_a_ws_security_text_token() {
    let d = TestDaemon::new().connector(
        "cobol",
        &soap_connector(
            "http://127.0.0.1:9/x",
            "auth = \"ws-security-text\"\nusername = \"wsuser\"\npassword_file = \"text.pw\"",
            FAST_RETRY,
        ),
    );
    d.write_config();
    std::fs::write(d.path().join("text.pw"), "T3xt-S3cret\n").unwrap();
    let change = d.path().join("change.json");
    std::fs::write(&change, r#"{"permit_number": "5", "status": "NEW"}"#).unwrap();
    let out = d.cli(&["translate", "cobol", change.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("<wsse:Username>wsuser</wsse:Username>") && shown.contains("********"),
        "{shown}"
    );
    assert!(!shown.contains("S3cret"), "{shown}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("S3cret"));
}

#[test]
fn soap_check_names_file_line_and_key_of_a_missing_password_file() {
    let d = TestDaemon::new().connector(
        "cobol",
        &soap_connector(
            "http://127.0.0.1:9/x",
            "username = \"u\"\npassword_file = \"missing.pw\"",
            FAST_RETRY,
        ),
    );
    d.write_config();
    let out = d.cli(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cobol/connector.toml: line 11: [transport] password_file: cannot read")
            && err.contains("missing.pw"),
        "{err}"
    );
    let bad_version = TestDaemon::new().connector(
        "cobol",
        &soap_connector("http://127.0.0.1:9/x", "soap_version = \"1.3\"", FAST_RETRY),
    );
    bad_version.write_config();
    let err = bad_version.cli(&["check"]).stderr;
    let err = String::from_utf8_lossy(&err);
    assert!(err.contains("line 10: [transport] soap_version"), "{err}");
}

#[test]
fn soap_status_tail_and_translate_work_for_users_who_cannot_read_the_password_file() {
    // What an operator outside the service user sees with the file at 0600. Tests
    // run as root, where chmod 000 stops nothing: a folder cannot be read by anyone.
    let server = LegacyBox::start();
    server.require_basic("cobol-user", "S3cret-pw");
    let d = TestDaemon::new().connector(
        "cobol",
        &soap_connector(
            &server.url(),
            "username = \"cobol-user\"\npassword_file = \"cobol.pw\"",
            FAST_RETRY,
        ),
    );
    d.write_config();
    let pw = d.path().join("cobol.pw");
    std::fs::create_dir(&pw).unwrap();
    let change = d.path().join("change.json");
    std::fs::write(&change, r#"{"permit_number": "5", "status": "NEW"}"#).unwrap();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["tail"],
        &["translate", "cobol", change.to_str().unwrap()],
    ] {
        let out = d.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `check` runs as the service user and says what is wrong.
    let check = d.cli(&["check"]);
    assert_eq!(check.status.code(), Some(2));
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains("line 11: [transport] password_file: cannot read") && err.contains("cobol.pw"),
        "{err}"
    );
    // The daemon starts, holds the change as an outage, and delivers once the
    // file is readable, without a restart.
    let d = d.start();
    d.client().call(&envelope(
        "5",
        json!({"permit_number": "5", "status": "OK"}),
    ));
    d.wait_for(Duration::from_secs(10), "the outage", |d| {
        d.target_status("cobol")["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("password_file")
    });
    std::fs::remove_dir(&pw).unwrap();
    std::fs::write(&pw, "S3cret-pw\n").unwrap();
    d.wait_for(Duration::from_secs(10), "the delivery", |_| {
        server.received().len() == 1
    });
    assert!(server.errors().is_empty(), "{:?}", server.errors());
    assert!(!d.log().contains("S3cret"));
}

#[test]
fn soap_sigkill_during_deliveries_loses_no_accepted_change() {
    let server = LegacyBox::start();
    // 20 records, 4 at a time, 30 ms each: every round leaves at least 150 ms of work.
    server.set_delay(Duration::from_millis(30));
    let mut d = TestDaemon::new()
        .connector(
            "cobol",
            &soap_connector(&server.url(), "max_in_flight = 4", FAST_RETRY),
        )
        .start();
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let mut accepted = BTreeMap::new();
    let mut killed_mid_delivery = false;
    let mut most_before_kill = 0;
    for round in 1..=4 {
        let mut c = d.client();
        for k in &keys {
            for n in 1..=3 {
                let v = round * 10 + n;
                let answer = c.call(&envelope(k, json!({"permit_number": k, "n": v})));
                assert_eq!(answer["ok"], true, "{answer}");
                accepted.insert(k.clone(), v);
            }
        }
        // Kill while the box is still taking deliveries.
        std::thread::sleep(Duration::from_millis(10 * round as u64));
        if round == 1 {
            most_before_kill = server.max_in_flight();
        }
        d.kill9();
        let settled = accepted.iter().all(|(k, v)| {
            server
                .received()
                .iter()
                .rev()
                .find(|r| &r.key == k)
                .is_some_and(|r| r.fields["n"] == v.to_string())
        });
        killed_mid_delivery |= !settled;
        d.restart();
    }
    d.wait_for(Duration::from_secs(20), "every accepted change", |_| {
        let got = server.received();
        accepted.iter().all(|(k, v)| {
            got.iter()
                .rev()
                .find(|r| &r.key == k)
                .is_some_and(|r| r.fields["n"] == v.to_string())
        })
    });
    // (Measured before the first kill: a killed daemon's requests still run at the box.)
    assert!(
        (2..=4).contains(&most_before_kill),
        "at most max_in_flight = 4 at once, got {most_before_kill}"
    );
    assert!(
        killed_mid_delivery,
        "no kill landed while deliveries were pending"
    );
    let got = server.received();
    assert!(server.errors().is_empty(), "{:?}", server.errors());
    for k in &keys {
        let ns: Vec<u32> = got
            .iter()
            .filter(|r| &r.key == k)
            .map(|r| r.fields["n"].parse().unwrap())
            .collect();
        assert!(ns.windows(2).all(|w| w[0] <= w[1]), "key {k}: {ns:?}");
    }
    // A repeat carries its delivery id again, never someone else's record.
    let mut by_id: BTreeMap<&str, &str> = BTreeMap::new();
    for r in &got {
        let key = by_id.entry(r.id.as_str()).or_insert(r.key.as_str());
        assert_eq!(*key, r.key, "id {} reused for another record", r.id);
    }
}

/// `connectors/county-cobol/` from the repository, with `url` pointed at `server`
/// and optionally the template switched on.
fn county_cobol_example(d: &TestDaemon, url: &str, template: bool) {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/county-cobol");
    let folder = d.path().join("connectors/county-cobol");
    std::fs::create_dir_all(&folder).unwrap();
    let mut text = std::fs::read_to_string(repo.join("connector.toml.example"))
        .unwrap()
        .replace("http://127.0.0.1:8080/PermitService", url)
        .replace("backoff = \"1s\"", "backoff = \"10ms\"");
    if template {
        text = text
            .replace(
                "kind = \"xml\"\nroot = \"PermitUpdate\"\nkey_element = \"PermitNumber\"\n",
                "",
            )
            .replace(
                "# kind = \"template\"\n# template",
                "kind = \"template\"\ntemplate",
            );
    }
    std::fs::write(folder.join("connector.toml"), text).unwrap();
    std::fs::copy(
        repo.join("permit-update.xml.j2"),
        folder.join("permit-update.xml.j2"),
    )
    .unwrap();
}

/// Drops the fixture pair: the create, then the update, each seen by the box.
fn drop_fixture_pair(d: &TestDaemon, server: &LegacyBox) {
    d.drop_fixture("permits/permit-123.json", "a.json");
    d.wait_for(Duration::from_secs(10), "the create", |_| {
        server.received().len() == 1
    });
    d.drop_fixture("permits/permit-123-approved.json", "b.json");
    d.wait_for(Duration::from_secs(10), "the update", |_| {
        server.received().len() == 2
    });
}

/// Runs the county-cobol example (its default XML shape, or its template)
/// through the fixture pair.
fn example_delivers_the_fixture_pair(template: bool) -> (LegacyBox, TestDaemon) {
    let server = LegacyBox::start();
    let d = TestDaemon::new();
    county_cobol_example(&d, &server.url(), template);
    let d = d.start();
    drop_fixture_pair(&d, &server);
    (server, d)
}

#[test]
fn soap_the_county_cobol_example_and_its_template_deliver_escaped_values() {
    let (server, d) = example_delivers_the_fixture_pair(false);
    let expected =
        std::fs::read_to_string(fixtures().join("expected/permit-123-approved.xml")).unwrap();
    assert_eq!(squash(&server.received()[1].body_xml), squash(&expected));
    assert_eq!(server.received()[1].id, "county-cobol:2");
    drop(d);

    let (server, _daemon) = example_delivers_the_fixture_pair(true);
    assert!(server.errors().is_empty(), "{:?}", server.errors());
    let got = &server.received()[1];
    assert_eq!(
        squash(&got.body_xml),
        squash(
            r#"<PermitUpdate op="update">
  <PermitNumber>123</PermitNumber>
  <Status>APPROVED</Status>
  <Inspector>M. O&apos;Brien &amp; Sons &lt;contract&gt;</Inspector>
  <Field name="inspector.name">M. O&apos;Brien &amp; Sons &lt;contract&gt;</Field>
  <Field name="status">APPROVED</Field>
</PermitUpdate>"#
        ),
        "{}",
        got.body_xml
    );
    assert_eq!(got.fields["inspector.name"], "M. O'Brien & Sons <contract>");
}

#[test]
fn soap_check_finds_template_syntax_errors_and_new_scaffolds_a_soap_connector() {
    let d = TestDaemon::new();
    county_cobol_example(&d, "http://127.0.0.1:9/x", true);
    std::fs::write(
        d.path()
            .join("connectors/county-cobol/permit-update.xml.j2"),
        "<PermitUpdate>\n  {{ key }\n</PermitUpdate>\n",
    )
    .unwrap();
    d.write_config();
    let out = d.cli(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("county-cobol/permit-update.xml.j2: line 2: template error"),
        "{err}"
    );
    let out = d.cli(&["new", "county-y", "--transport", "soap"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text =
        std::fs::read_to_string(d.path().join("connectors/county-y/connector.toml")).unwrap();
    assert!(text.contains("kind = \"soap\""), "{text}");
}
