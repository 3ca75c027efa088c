//! SOAP transport: one rendered body in, one HTTP/1.1 POST of a SOAP 1.1 or 1.2
//! envelope out (keep-alive, timeouts, basic auth or a WS-Security
//! UsernameToken, TLS through rustls with ring), and the answer classified.
//! `envelope.rs` writes the envelope, `http.rs` is the client that sends it
//! (quick ACKs, see there), `answer.rs` reads what came back.
//!
//! **Invariants:** no answer (refused, reset, DNS, timeout, a connection that
//! breaks mid-answer) is `Down`; an answer is read up to [`MAX_ANSWER_BYTES`]
//! and never trusted past that; with `max_in_flight = 1` deliveries go strictly
//! one at a time; passwords are kept in [`Secret`] and never printed.

pub mod adaptive;
pub mod answer;
pub mod envelope;
pub mod http;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::TransportSpec;
use super::{Outcome, Payload};
use crate::problem::{Problems, parse_duration};

/// Answers longer than this are not read (a SOAP ack is a few hundred bytes).
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A password: compared and cloned, never shown by `Debug`.
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(hidden)")
    }
}

/// Which SOAP: it sets the envelope's namespace and how the action is sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SoapVersion {
    /// `text/xml` with a `SOAPAction` header (the default; most legacy services).
    V11,
    /// `application/soap+xml` with the action as a Content-Type parameter.
    V12,
}

/// How a UsernameToken carries the password.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WsSecurity {
    /// The password itself, in the envelope: https only.
    PasswordText,
    /// Base64(SHA-1(nonce + created + password)), a fresh nonce each request.
    PasswordDigest,
}

/// How to log in; the password itself is in `password_file`, read only by the
/// daemon and by `check` (see [`read_password`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    None,
    /// HTTP basic auth.
    Basic {
        username: String,
    },
    /// A WS-Security UsernameToken in the SOAP header.
    UsernameToken {
        username: String,
        mode: WsSecurity,
    },
}

/// A validated `[transport] kind = "soap"`.
#[derive(Clone, Debug, PartialEq)]
pub struct SoapSpec {
    /// Where to POST, `http://` or `https://`; never holds a user or password.
    pub url: String,
    /// SOAPAction (1.1) or the `action` parameter (1.2); empty: none.
    pub soap_action: String,
    pub version: SoapVersion,
    /// Longest wait for the whole answer; past it the target is down.
    pub timeout: Duration,
    /// Longest wait to connect; past it the target is down.
    pub connect_timeout: Duration,
    pub auth: Auth,
    /// The file holding the password (set whenever `auth` is not `None`). Not
    /// read while the config loads: operators who may run `status` or `tail`
    /// need not be able to read it. The daemon and `check` read it.
    pub password_file: Option<PathBuf>,
    /// Where `password_file` is written ("FILE: line N: "), for `check`.
    pub password_file_at: String,
    /// PEM of the CA(s) to trust instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Where `ca_pem` came from, for `check`.
    pub ca_file: Option<PathBuf>,
    /// `xmlns` put on the body's root element.
    pub namespace: Option<String>,
    /// Requests on the wire at once (1..=64), each for a different record; 1
    /// keeps strict queue order. With `adaptive`, the most at once.
    pub max_in_flight: usize,
    /// `max_in_flight = "auto"`: between 1 and `max_in_flight` at once, adapted
    /// to the service's answers ([`adaptive`]).
    pub adaptive: bool,
    /// A Client/Sender Fault dead-letters at once: the service says the message
    /// itself is wrong, so resending it cannot help.
    pub dead_letter_on_client_fault: bool,
    /// A 2xx with an empty body counts as delivered. Off by default: a proxy or
    /// load balancer in front of the service may answer so without passing the
    /// request on, and a change counted as delivered is never sent again.
    pub accept_empty_2xx: bool,
    /// `[transport.answer]`: where a 2xx envelope says whether the service
    /// took the change (legacy services that answer 200 with `<Result>ERROR`).
    pub answer: Option<answer::BusinessRule>,
}

/// The `[transport]` keys of kind "soap" (the loader refuses them for other kinds).
pub const KEYS: &[&str] = &[
    "url",
    "soap_action",
    "soap_version",
    "timeout",
    "connect_timeout",
    "username",
    "password_file",
    "auth",
    "ca_file",
    "namespace",
    "max_in_flight",
    "max_in_flight_limit",
    "dead_letter_on_client_fault",
    "accept_empty_2xx",
    "answer",
];

/// `[transport] kind = "soap"` as written.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Raw {
    /// The service's address, `http://` or `https://`.
    pub url: Option<String>,
    /// The SOAPAction (1.1) or `action` (1.2). Default: empty.
    pub soap_action: Option<String>,
    /// "1.1" (default) or "1.2".
    pub soap_version: Option<String>,
    /// Longest wait for the whole answer. Default "30s".
    pub timeout: Option<String>,
    /// Longest wait to connect. Default "10s".
    pub connect_timeout: Option<String>,
    /// User name for `auth`.
    pub username: Option<String>,
    /// A file holding only the password (read at start-up, never shown).
    pub password_file: Option<PathBuf>,
    /// "basic" (default with `username`), "ws-security-text", "ws-security-digest".
    pub auth: Option<String>,
    /// PEM file of the CA to trust for https (instead of the system's).
    pub ca_file: Option<PathBuf>,
    /// `xmlns` for the body's root element.
    pub namespace: Option<String>,
    /// Deliveries at once (each of a different record): a number (default 1) or
    /// "auto".
    pub max_in_flight: Option<toml::Value>,
    /// With `max_in_flight = "auto"`: the most at once. Default 8.
    pub max_in_flight_limit: Option<i64>,
    /// Dead-letter at once on a Client/Sender Fault. Default false.
    pub dead_letter_on_client_fault: Option<bool>,
    /// A 2xx with an empty body counts as delivered (for a service known to
    /// answer so). Default false: it is an outage, like any 2xx that is not a
    /// SOAP envelope.
    pub accept_empty_2xx: Option<bool>,
    /// `[transport.answer]`: `ok_path`, `ok_values`, `reason_path`.
    pub answer: Option<answer::RawRule>,
}

/// Validates `[transport] kind = "soap"`; every problem goes to `problems`
/// with file, line and key (`at`). Reads `ca_file` (public); never
/// `password_file` (see [`read_password`]).
pub fn validate(t: &Raw, base: &Path, problems: &mut Problems<'_>) -> Option<TransportSpec> {
    let before = problems.len();
    let password_file_at = problems.prefix(Some("transport"), "password_file");
    let mut problem = |key: &str, text: String| {
        problems.at(Some("transport"), key, format!("[transport] {key}: {text}"));
    };
    let url = t.url.clone().unwrap_or_default();
    // Credentials first: no message below may show a URL that holds a password.
    if t.url.is_none() {
        problem(
            "url",
            "kind \"soap\" needs `url = \"http://host:port/Service\"`".into(),
        );
    } else if holds_credentials(&url) {
        problem(
            "url",
            "holds a user name or password: put the user in `username` and the password in a file named by `password_file`".into(),
        );
    } else {
        match url::Url::parse(&url) {
            Ok(u) if !matches!(u.scheme(), "http" | "https") => problem(
                "url",
                format!("must start with http:// or https://, not `{}:`", u.scheme()),
            ),
            Ok(_) => {}
            Err(e) => problem("url", format!("`{url}` is not a URL: {e}")),
        }
    }
    let version = match t.soap_version.as_deref() {
        None | Some("1.1") => SoapVersion::V11,
        Some("1.2") => SoapVersion::V12,
        Some(other) => {
            problem(
                "soap_version",
                format!("`{other}` is not a SOAP version; use \"1.1\" (default) or \"1.2\""),
            );
            SoapVersion::V11
        }
    };
    let mut duration = |key: &str, value: &Option<String>, default: Duration| match value
        .as_deref()
        .map(parse_duration)
    {
        None => default,
        Some(Ok(d)) if d.is_zero() => {
            problem(key, "must be longer than 0s".into());
            default
        }
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            problem(key, e.to_string());
            default
        }
    };
    let timeout = duration("timeout", &t.timeout, Duration::from_secs(30));
    let connect_timeout = duration(
        "connect_timeout",
        &t.connect_timeout,
        Duration::from_secs(10),
    );
    let password_file = t.password_file.as_ref().map(|p| {
        if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        }
    });
    let auth_kind = t.auth.as_deref().unwrap_or(if t.username.is_some() {
        "basic"
    } else {
        "none"
    });
    let auth = match (auth_kind, &t.username, &password_file) {
        ("none", None, None) => Auth::None,
        ("none", _, _) => {
            problem(
                "auth",
                "is \"none\" but `username` or `password_file` is set".into(),
            );
            Auth::None
        }
        ("basic" | "ws-security-text" | "ws-security-digest", Some(user), Some(_)) => {
            let username = user.clone();
            match auth_kind {
                "basic" => Auth::Basic { username },
                "ws-security-text" => Auth::UsernameToken {
                    username,
                    mode: WsSecurity::PasswordText,
                },
                _ => Auth::UsernameToken {
                    username,
                    mode: WsSecurity::PasswordDigest,
                },
            }
        }
        ("basic" | "ws-security-text" | "ws-security-digest", user, _) => {
            if user.is_none() {
                problem("username", format!("auth \"{auth_kind}\" needs `username`"));
            }
            if t.password_file.is_none() {
                problem(
                    "password_file",
                    format!(
                        "auth \"{auth_kind}\" needs `password_file` (a file holding only the password)"
                    ),
                );
            }
            Auth::None
        }
        (other, _, _) => {
            problem(
                "auth",
                format!(
                    "`{other}` is unknown; use \"basic\", \"ws-security-text\" or \"ws-security-digest\""
                ),
            );
            Auth::None
        }
    };
    let ca_file = t.ca_file.as_ref().map(|p| {
        if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        }
    });
    let ca_pem = match &ca_file {
        None => None,
        Some(p) => match std::fs::read(p) {
            Ok(pem) => match http::pem_certificates(&pem) {
                Ok(_) => Some(pem),
                Err(e) if e.starts_with("holds") => {
                    problem("ca_file", format!("{} {e}", p.display()));
                    None
                }
                Err(e) => {
                    problem("ca_file", format!("{}: {e}", p.display()));
                    None
                }
            },
            Err(e) => {
                problem("ca_file", format!("cannot read {}: {e}", p.display()));
                None
            }
        },
    };
    if ca_file.is_some() && url.starts_with("http://") {
        problem(
            "ca_file",
            "is set but `url` is http://, not https://".into(),
        );
    }
    if let Some(ns) = &t.namespace
        && ns.trim().is_empty()
    {
        problem(
            "namespace",
            "is empty; leave it out for no namespace".into(),
        );
    }
    let soap_action = t.soap_action.clone().unwrap_or_default();
    if let Err(e) = action_headers(version, &soap_action) {
        problem("soap_action", e);
    }
    let mut mode_ok = true;
    let (max_in_flight, adaptive) = match &t.max_in_flight {
        None => (1, false),
        Some(toml::Value::Integer(n)) if (1..=64).contains(n) => (*n as usize, false),
        Some(toml::Value::String(s)) if s == "auto" => (8, true),
        Some(other) => {
            problem(
                "max_in_flight",
                format!("must be a number from 1 to 64 or \"auto\", not {other}"),
            );
            mode_ok = false;
            (1, false)
        }
    };
    let max_in_flight = match t.max_in_flight_limit {
        None => max_in_flight,
        // A misspelt "auto" is said once, above; not again as a limit without it.
        Some(_) if !adaptive && !mode_ok => max_in_flight,
        Some(_) if !adaptive => {
            problem(
                "max_in_flight_limit",
                "applies only with `max_in_flight = \"auto\"`".into(),
            );
            max_in_flight
        }
        Some(n) if (1..=64).contains(&n) => n as usize,
        Some(n) => {
            problem(
                "max_in_flight_limit",
                format!("must be between 1 and 64, not {n}"),
            );
            max_in_flight
        }
    };
    let rule = t.answer.as_ref().and_then(|raw| {
        answer::validate_rule(raw, &mut |key, text| {
            problems.at(
                Some("transport.answer"),
                key,
                format!("[transport.answer] {key} {text}"),
            )
        })
    });
    if problems.len() > before {
        return None;
    }
    Some(TransportSpec::Soap(Box::new(SoapSpec {
        url,
        soap_action,
        version,
        timeout,
        connect_timeout,
        auth,
        password_file,
        password_file_at,
        ca_pem,
        ca_file,
        namespace: t.namespace.clone(),
        max_in_flight,
        adaptive,
        dead_letter_on_client_fault: t.dead_letter_on_client_fault.unwrap_or(false),
        accept_empty_2xx: t.accept_empty_2xx.unwrap_or(false),
        answer: rule,
    })))
}

/// Whether `url` carries a user name or password (`scheme://user:pw@host`), also
/// when it is not a valid http URL: then anything with `@` before the path counts.
fn holds_credentials(url: &str) -> bool {
    if let Ok(u) = url::Url::parse(url)
        && (!u.username().is_empty() || u.password().is_some())
    {
        return true;
    }
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.contains('@')
}

/// One line for `check`: where it sends and how, never the password.
pub fn describe(s: &SoapSpec) -> String {
    let version = match s.version {
        SoapVersion::V11 => "1.1",
        SoapVersion::V12 => "1.2",
    };
    let auth = match &s.auth {
        Auth::None => String::new(),
        Auth::Basic { username, .. } => format!(", basic auth as {username}"),
        Auth::UsernameToken { username, mode, .. } => format!(
            ", WS-Security {} as {username}",
            match mode {
                WsSecurity::PasswordText => "PasswordText",
                WsSecurity::PasswordDigest => "PasswordDigest",
            }
        ),
    };
    let password = match &s.password_file {
        Some(p) => format!(" (password from {})", p.display()),
        None => String::new(),
    };
    let ca = match &s.ca_file {
        Some(p) => format!(", trusting the CA in {}", p.display()),
        None => String::new(),
    };
    let empty = if s.accept_empty_2xx {
        ", an empty 2xx counts as delivered"
    } else {
        ""
    };
    let in_flight = if s.adaptive {
        format!("1 to {} in flight (auto)", s.max_in_flight)
    } else {
        format!("{} in flight", s.max_in_flight)
    };
    let rule = match &s.answer {
        Some(rule) => format!(", delivered when {}", rule.explain()),
        None => String::new(),
    };
    format!(
        "soap {version} -> {}{auth}{password}{ca}, timeout {}, {in_flight}{empty}{rule}",
        s.url,
        humantime::format_duration(s.timeout),
    )
}

/// The request line and headers a delivery sends (`translate --full`): the
/// method and URL, Content-Type, SOAPAction, and how it logs in (never the
/// password); then what counts as delivered.
pub fn request_preview(s: &SoapSpec) -> String {
    let mut out = format!("POST {}\n", s.url);
    if let Ok(headers) = action_headers(s.version, &s.soap_action) {
        for (name, value) in &headers {
            out.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
    }
    match &s.auth {
        Auth::Basic { username } => {
            out.push_str(&format!(
                "authorization: Basic ({username}:password from file)\n"
            ));
        }
        Auth::UsernameToken { username, .. } => {
            out.push_str(&format!(
                "(WS-Security UsernameToken for {username} in the envelope's header)\n"
            ));
        }
        Auth::None => {}
    }
    out.push_str(&format!(
        "delivered when: {}\n",
        answer::explain_success(s.answer.as_ref(), s.accept_empty_2xx)
    ));
    out
}

/// Why the password could not be had. It names the file, never the password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
}

/// Reads the password from `password_file` (one line; a final newline is not
/// part of it). `Ok(None)` when the connector logs in without one.
pub fn read_password(spec: &SoapSpec) -> Result<Option<Secret>, PasswordError> {
    let Some(path) = &spec.password_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| PasswordError::Unreadable {
        path: path.clone(),
        source,
    })?;
    let pw = text.strip_suffix('\n').unwrap_or(&text);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() {
        return Err(PasswordError::Empty { path: path.clone() });
    }
    Ok(Some(Secret(pw.to_string())))
}

/// rustls needs one crypto provider for the process: ring (no C beyond ring's
/// own, static musl builds work). Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub struct SoapTransport {
    target: String,
    spec: Arc<SoapSpec>,
    /// `Err` if the client could not be built (every delivery then says why).
    client: Result<http::Client, String>,
    /// The password, read from `password_file` when the transport starts; while
    /// it cannot be read, every delivery is `Down` saying why and tries again
    /// (fixing the file's owner needs no restart).
    password: Result<Option<Secret>, PasswordError>,
    /// How many requests go at once now.
    in_flight: adaptive::InFlight,
}

impl SoapTransport {
    pub fn new(target: &str, spec: &SoapSpec) -> SoapTransport {
        install_crypto_provider();
        SoapTransport {
            target: target.to_string(),
            spec: Arc::new(spec.clone()),
            client: http::client(spec),
            password: read_password(spec),
            in_flight: if spec.adaptive {
                adaptive::InFlight::auto(spec.max_in_flight)
            } else {
                adaptive::InFlight::fixed(spec.max_in_flight)
            },
        }
    }

    /// Requests to send at once now (with "auto", what the service has shown
    /// it takes).
    pub fn max_in_flight(&self) -> usize {
        self.in_flight.current()
    }

    pub fn dead_letter_on_client_fault(&self) -> bool {
        self.spec.dead_letter_on_client_fault
    }

    /// The envelope as `translate` shows it: the password, if one is in it, masked.
    /// It never needs `password_file` (the user running it may not read it).
    pub fn preview(&self, id: &str, attempt: u32, body: &[u8]) -> Result<Vec<u8>, String> {
        let masked = Secret("********".into());
        envelope::build(
            &wrapping(&self.spec, Some(&masked)),
            id,
            attempt,
            body,
            &envelope::Token::fresh(),
        )
    }

    /// Sends each payload on its own request, up to `max_in_flight` at once
    /// (the batch is never larger). One outcome per payload, in order.
    pub async fn deliver(&mut self, batch: &[Payload]) -> Vec<Outcome> {
        if self.password.is_err() {
            self.password = read_password(&self.spec);
        }
        let (client, password) = match (&self.client, &self.password) {
            (Ok(c), Ok(p)) => (c.clone(), p.clone()),
            (Err(e), _) => {
                return batch
                    .iter()
                    .map(|_| Outcome::Down { reason: e.clone() })
                    .collect();
            }
            (_, Err(e)) => {
                let reason = format!("password_file: {e}");
                return batch
                    .iter()
                    .map(|_| Outcome::Down {
                        reason: reason.clone(),
                    })
                    .collect();
            }
        };
        let timed = |client: http::Client,
                     spec: Arc<SoapSpec>,
                     password: Option<Secret>,
                     p: Payload| async move {
            let started = std::time::Instant::now();
            let outcome = send(&client, &spec, password.as_ref(), &p).await;
            (outcome, started.elapsed())
        };
        let mut answers = vec![None; batch.len()];
        if batch.len() == 1 {
            answers[0] = Some(timed(client, self.spec.clone(), password, batch[0].clone()).await);
        } else {
            let mut set = tokio::task::JoinSet::new();
            for (i, p) in batch.iter().enumerate() {
                let work = timed(
                    client.clone(),
                    self.spec.clone(),
                    password.clone(),
                    p.clone(),
                );
                set.spawn(async move { (i, work.await) });
            }
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok((i, answer)) => answers[i] = Some(answer),
                    Err(e) => {
                        tracing::error!(target_name = %self.target, error = %e, "a SOAP send task failed")
                    }
                }
            }
        }
        let outcomes: Vec<Outcome> = answers
            .iter()
            .map(|a| match a {
                Some((o, _)) => o.clone(),
                None => Outcome::Down {
                    reason: "the send task failed".into(),
                },
            })
            .collect();
        let answered: Vec<adaptive::Answered> = answers
            .iter()
            .map(|a| match a {
                Some((Outcome::Delivered, took)) => adaptive::Answered::Delivered(*took),
                Some((Outcome::Down { .. }, _)) | None => adaptive::Answered::Nothing,
                Some((_, took)) => adaptive::Answered::Refused(*took),
            })
            .collect();
        let before = self.in_flight.current();
        self.in_flight.observe_batch(batch.len(), &answered);
        if self.in_flight.current() != before {
            tracing::debug!(target_name = %self.target, from = before, to = self.in_flight.current(), "requests at once adapted");
        }
        outcomes
    }
}

fn wrapping<'a>(spec: &'a SoapSpec, password: Option<&'a Secret>) -> envelope::Wrapping<'a> {
    envelope::Wrapping {
        version: spec.version,
        namespace: spec.namespace.as_deref(),
        ws_security: match (&spec.auth, password) {
            (Auth::UsernameToken { username, mode }, Some(password)) => {
                Some((username.as_str(), password.expose(), *mode))
            }
            _ => None,
        },
    }
}

/// `Content-Type` and, for 1.1, `SOAPAction` for a connector's action; `Err`
/// says why the action cannot go in a header (checked by `spec`, so that a
/// bad action is a config error and never an endless "down").
fn action_headers(version: SoapVersion, action: &str) -> Result<hyper::HeaderMap, String> {
    use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
    if action.contains('"') {
        return Err("must not hold a double quote (`\"`)".into());
    }
    let value = |text: String| {
        HeaderValue::from_str(&text).map_err(|_| {
            "holds a character an HTTP header cannot carry (a control character such as a line break?)"
                .to_string()
        })
    };
    let mut h = HeaderMap::new();
    match version {
        SoapVersion::V11 => {
            h.insert(CONTENT_TYPE, value("text/xml; charset=utf-8".into())?);
            h.insert("SOAPAction", value(format!("\"{action}\""))?);
        }
        SoapVersion::V12 if action.is_empty() => {
            h.insert(
                CONTENT_TYPE,
                value("application/soap+xml; charset=utf-8".into())?,
            );
        }
        SoapVersion::V12 => {
            h.insert(
                CONTENT_TYPE,
                value(format!(
                    "application/soap+xml; charset=utf-8; action=\"{action}\""
                ))?,
            );
        }
    }
    Ok(h)
}

/// An error and its causes on one line ("connection refused" is a cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

async fn send(
    client: &http::Client,
    spec: &SoapSpec,
    password: Option<&Secret>,
    p: &Payload,
) -> Outcome {
    use http_body_util::BodyExt;
    use hyper::header::{AUTHORIZATION, HeaderValue, USER_AGENT};
    let token = match spec.auth {
        Auth::UsernameToken { .. } => envelope::Token::fresh(),
        _ => envelope::Token::unused(),
    };
    let body = match envelope::build(
        &wrapping(spec, password),
        &p.id,
        p.attempt,
        &p.bytes,
        &token,
    ) {
        Ok(b) => b,
        Err(reason) => return Outcome::Rejected { reason },
    };
    let mut req = hyper::Request::post(spec.url.as_str())
        .header(USER_AGENT, concat!("hms-sync/", env!("CARGO_PKG_VERSION")));
    match action_headers(spec.version, &spec.soap_action) {
        Ok(headers) => {
            if let Some(h) = req.headers_mut() {
                h.extend(headers);
            }
        }
        Err(e) => {
            return Outcome::Rejected {
                reason: format!("soap_action: {e}"),
            };
        }
    }
    if let (Auth::Basic { username }, Some(password)) = (&spec.auth, password) {
        use base64::Engine as _;
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("{username}:{}", password.expose()));
        if let Ok(mut value) = HeaderValue::from_str(&format!("Basic {credentials}")) {
            value.set_sensitive(true);
            req = req.header(AUTHORIZATION, value);
        }
    }
    // A request that cannot be built never reaches the service: not an outage.
    let req = match req.body(http_body_util::Full::new(hyper::body::Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Rejected {
                reason: format!("cannot build the request: {}", chain(&e)),
            };
        }
    };
    // `timeout` covers the whole exchange: connecting, sending, the whole answer.
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let in_time = || {
        format!(
            "no whole answer within {} (timeout)",
            humantime::format_duration(spec.timeout)
        )
    };
    let resp = match tokio::time::timeout_at(deadline, client.request(req)).await {
        Ok(Ok(r)) => r,
        Err(_) => {
            return Outcome::Down {
                reason: format!("no answer in time: {}", in_time()),
            };
        }
        Ok(Err(e)) => {
            let what = if e.is_connect() {
                "cannot connect"
            } else {
                "no answer"
            };
            return Outcome::Down {
                reason: format!("{what}: {}", chain(&e)),
            };
        }
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut incoming = resp.into_body();
    let mut answer = Vec::new();
    let mut truncated = false;
    loop {
        match tokio::time::timeout_at(deadline, incoming.frame()).await {
            Ok(Some(Ok(frame))) => {
                let Ok(chunk) = frame.into_data() else {
                    continue; // trailers
                };
                if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                    truncated = true;
                    break;
                }
                answer.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Outcome::Down {
                    reason: format!(
                        "the connection broke during the answer (HTTP {status}): {}",
                        chain(&e)
                    ),
                };
            }
            Err(_) => {
                return Outcome::Down {
                    reason: format!(
                        "the answer did not end in time (HTTP {status}): {}",
                        in_time()
                    ),
                };
            }
        }
    }
    match answer::classify(
        status,
        content_type.as_deref(),
        &answer,
        truncated,
        spec.accept_empty_2xx,
        spec.answer.as_ref(),
    ) {
        answer::Answer::Delivered => Outcome::Delivered,
        answer::Answer::Down(reason) => Outcome::Down { reason },
        answer::Answer::Rejected {
            reason,
            client: true,
        } => Outcome::ClientFault { reason },
        answer::Answer::Rejected { reason, .. } => Outcome::Rejected { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show_in_debug() {
        let a = Some(Secret("hunter2".into()));
        assert!(!format!("{a:?}").contains("hunter2"));
    }

    #[test]
    fn envelope_carries_id_attempt_body_and_namespace() {
        let w = envelope::Wrapping {
            version: SoapVersion::V11,
            namespace: Some("urn:county:permits"),
            ws_security: None,
        };
        let body = b"<PermitUpdate op=\"update\"><PermitNumber>1</PermitNumber><Field name=\"n\">a &amp; b</Field></PermitUpdate>\n";
        let env = envelope::build(&w, "cobol:42", 3, body, &envelope::Token::fresh()).unwrap();
        let env = String::from_utf8(env).unwrap();
        assert!(
            env.contains(r#"<hms:Delivery xmlns:hms="urn:hms-sync" id="cobol:42" attempt="3"/>"#),
            "{env}"
        );
        assert!(env.contains(r#"<soap:Body><PermitUpdate op="update" xmlns="urn:county:permits"><PermitNumber>1</PermitNumber><Field name="n">a &amp; b</Field></PermitUpdate></soap:Body>"#), "{env}");
        assert!(env.contains(envelope::SOAP11_NS));
        let bad = envelope::build(&w, "c:1", 1, b"<a><b></a>", &envelope::Token::fresh());
        assert!(bad.unwrap_err().contains("not well-formed"));
        let two = envelope::build(&w, "c:1", 1, b"<a/><b/>", &envelope::Token::fresh());
        assert!(two.unwrap_err().contains("exactly one root"));
        let doctype = envelope::build(&w, "c:1", 1, b"<!DOCTYPE a><a/>", &envelope::Token::fresh());
        assert!(doctype.unwrap_err().contains("DOCTYPE"));
        let declared = envelope::build(
            &w,
            "c:1",
            1,
            b"<?xml version=\"1.0\"?>\n<a/>",
            &envelope::Token::fresh(),
        );
        assert!(
            String::from_utf8(declared.unwrap())
                .unwrap()
                .contains("<soap:Body><a xmlns=\"urn:county:permits\"/></soap:Body>")
        );
    }

    /// The problems `spec` finds in a `[transport]` table.
    fn problems(transport: &str) -> Vec<String> {
        let t: Raw = toml::from_str(transport).unwrap();
        let mut problems = Problems::new("c.toml", "");
        validate(&t, Path::new("/"), &mut problems);
        problems
            .into_vec()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_showing_it() {
        for url in [
            "ftp://user:Secret@host/",
            "http://user:Secret@host:99999/",
            "user:Secret@host/x",
            "http://user:Secret@ho st/",
        ] {
            let p = problems(&format!("kind = \"soap\"\nurl = \"{url}\""));
            assert_eq!(p.len(), 1, "{url}: {p:?}");
            assert!(p[0].contains("holds a user name or password"), "{p:?}");
            assert!(!p[0].contains("Secret"), "{p:?}");
        }
        let p = problems("kind = \"soap\"\nurl = \"ftp://host/\"");
        assert!(p[0].contains("must start with http://"), "{p:?}");
        let p = problems("kind = \"soap\"\nurl = \"http://host:99999/\"");
        assert!(p[0].contains("is not a URL"), "{p:?}");
    }

    #[test]
    fn an_action_no_header_can_carry_is_a_config_error() {
        for version in ["1.1", "1.2"] {
            for action in [r#"urn:a\nb"#, r#"urn:a\u0007"#, r#"urn:\"x\""#] {
                let p = problems(&format!(
                    "kind = \"soap\"\nurl = \"http://h/\"\nsoap_version = \"{version}\"\nsoap_action = \"{action}\""
                ));
                assert_eq!(p.len(), 1, "{version} {action}: {p:?}");
                assert!(p[0].contains("soap_action"), "{p:?}");
            }
        }
        assert!(
            problems("kind = \"soap\"\nurl = \"http://h/\"\nsoap_action = \"urn:ok\"").is_empty()
        );
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_rejected_not_down() {
        let t: Raw = toml::from_str("kind = \"soap\"\nurl = \"http://127.0.0.1:9/\"").unwrap();
        let Some(TransportSpec::Soap(mut spec)) =
            validate(&t, Path::new("/"), &mut Problems::new("c.toml", ""))
        else {
            panic!("a valid spec");
        };
        // What a spec from before the check above held.
        spec.soap_action = "urn:a\nb".into();
        let mut transport = SoapTransport::new("t", &spec);
        let payload = Payload {
            id: "t:1".into(),
            attempt: 1,
            bytes: b"<a/>".to_vec(),
        };
        let outcome = transport.deliver(&[payload]).await;
        assert!(
            matches!(&outcome[..], [Outcome::Rejected { reason }] if reason.contains("soap_action")),
            "{outcome:?}"
        );
    }

    #[test]
    fn nothing_but_white_space_may_stand_outside_the_body_root() {
        let w = envelope::Wrapping {
            version: SoapVersion::V11,
            namespace: None,
            ws_security: None,
        };
        for body in [
            &b"&amp;<a/>"[..],
            b"<a/>&#65;",
            b"<![CDATA[x]]><a/>",
            b"<a/>\n<![CDATA[]]>",
            b"x<a/>",
        ] {
            let got = envelope::build(&w, "c:1", 1, body, &envelope::Token::unused());
            assert!(
                got.as_ref().is_err_and(|e| e.contains("outside the root")),
                "{}: {got:?}",
                String::from_utf8_lossy(body)
            );
        }
        let ok = envelope::build(
            &w,
            "c:1",
            1,
            b"\n <a>&amp;<![CDATA[x]]></a>\n",
            &envelope::Token::unused(),
        );
        assert!(
            String::from_utf8(ok.unwrap())
                .unwrap()
                .contains("<soap:Body><a>&amp;<![CDATA[x]]></a></soap:Body>")
        );
    }

    #[test]
    fn the_password_file_is_read_only_when_asked_and_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let t: Raw = toml::from_str(
            "kind = \"soap\"\nurl = \"http://h/\"\nusername = \"u\"\npassword_file = \"pw\"",
        )
        .unwrap();
        // Loading the config does not need the file.
        let mut problems = Problems::new("c.toml", "");
        let Some(TransportSpec::Soap(spec)) = validate(&t, tmp.path(), &mut problems) else {
            panic!("{:?}", problems.into_vec());
        };
        let err = read_password(&spec).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read ") && err.contains("/pw"),
            "{err}"
        );
        std::fs::write(tmp.path().join("pw"), "\n").unwrap();
        assert!(matches!(
            read_password(&spec),
            Err(PasswordError::Empty { .. })
        ));
        std::fs::write(tmp.path().join("pw"), "s3cret\r\n").unwrap();
        assert_eq!(read_password(&spec).unwrap().unwrap().expose(), "s3cret");
    }

    #[test]
    fn password_digest_matches_the_profile_example() {
        // Computed outside: printf '0123456789abcdef2026-11-26T14:00:00Zsecret' | sha1sum | xxd -r -p | base64
        let d = envelope::password_digest(b"0123456789abcdef", "2026-11-26T14:00:00Z", "secret");
        assert_eq!(d, "shG8XMcz+EoIcve/jaQmvVMusnY=");
    }
}
