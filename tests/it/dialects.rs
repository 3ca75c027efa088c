//! Flat-file dialects, text templates, SOAP business answers and
//! `translate --full`, end to end: the real binary writes real outbox files
//! (read back byte for byte) and talks to a real HTTP server that answers 200
//! with `<Result>ERROR</Result>` the way many legacy services do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::json;

use crate::harness::*;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Dead letters of the daemon: (key, last_error).
fn dead_letters(d: &TestDaemon) -> Vec<(String, String)> {
    let out = d.cli(&["dead", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    let mut all: Vec<(String, String)> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["key"].as_str().unwrap_or("").to_string(),
                        e["last_error"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    all
}

/// Sends `(key, status)` records through the socket; each must be accepted.
fn send_statuses(d: &TestDaemon, records: &[(&str, &str)]) {
    let mut c = d.client();
    for (key, status) in records {
        let a = c.call(&envelope(
            key,
            json!({"permit_number": key, "status": status}),
        ));
        assert_eq!(a["ok"], true, "{a}");
    }
}

/// All bytes delivered to `name`, file by file in delivery order.
fn outbox_bytes(d: &TestDaemon, name: &str) -> Vec<(String, Vec<u8>)> {
    d.outbox_files(name)
        .iter()
        .map(|f| {
            (
                f.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(f).unwrap(),
            )
        })
        .collect()
}

const PIPE_TEMPLATE: &str = "{% if op == \"create\" %}A{% elif op == \"update\" %}C{% else %}D{% endif %}|{{ key }}|{{ record.status }}";

/// The README's example: `A|123|APPROVED` a change, many a file, named `.txt`.
fn pipe_connector() -> String {
    "collections = [\"permits\"]\n[format]\nkind = \"template\"\ntemplate = \"permit.txt.j2\"\ndelimiter = \"|\"\n\
     [transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\nbatch_max = 500\nbatch_window = \"2s\"\n\
     [retry]\nmax_attempts = 1\n"
        .to_string()
}

#[test]
fn dialects_a_text_template_writes_pipe_delimited_txt_files_many_changes_each() {
    let d = TestDaemon::new().connector("pipes", &pipe_connector());
    std::fs::write(
        d.path().join("connectors/pipes/permit.txt.j2"),
        PIPE_TEMPLATE,
    )
    .unwrap();
    d.write_config();
    let out = d.cli(&["check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("format: pipes: text template permit.txt.j2 in utf-8 (values as they are; one holding a line break or `|` is refused) -> .txt files"),
        "{}",
        text(&out)
    );
    // What would be sent, and where, before anything ran.
    let change = d.path().join("change.json");
    std::fs::write(
        &change,
        envelope(
            "123",
            json!({"permit_number": "123", "status": "APPROVED", "fee": 95}),
        ),
    )
    .unwrap();
    let out = d.cli(&["translate", "pipes", change.to_str().unwrap(), "--full"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let file = d.outbox("pipes").join("pipes-000000000001.txt");
    assert_eq!(
        shown,
        format!("file: {}\n\nA|123|APPROVED\n", file.display()),
        "{}",
        text(&out)
    );

    let d = d.start();
    send_statuses(
        &d,
        &[
            ("123", "APPROVED"),
            ("124", "PENDING"),
            ("125", "OPEN|CLOSED"),
            ("126", "NEW"),
        ],
    );
    d.wait_for(
        Duration::from_secs(20),
        "three deliveries and one dead letter",
        |d| d.target_status("pipes")["delivered"] == 3 && dead_letters(d).len() == 1,
    );
    let files = outbox_bytes(&d, "pipes");
    assert!(
        files
            .iter()
            .all(|(n, _)| n.starts_with("pipes-") && n.ends_with(".txt")),
        "{files:?}"
    );
    // Batched: the three changes did not need three files.
    assert!(files.len() < 3, "{files:?}");
    let mut lines: Vec<String> = files
        .iter()
        .flat_map(|(_, b)| {
            String::from_utf8(b.clone())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    assert_eq!(lines, ["A|123|APPROVED", "A|124|PENDING", "A|126|NEW"]);
    // The value holding the delimiter was refused by name, not written broken.
    let dead = dead_letters(&d);
    assert_eq!(dead[0].0, "125");
    assert!(
        dead[0].1.contains(
            "the value \"OPEN|CLOSED\" holds the delimiter `|`, which would break the line"
        ),
        "{dead:?}"
    );
}

#[test]
fn dialects_csv_semicolons_latin1_lf_no_header_and_what_the_dialect_cannot_carry_is_a_dead_letter()
{
    let d = TestDaemon::new()
        .connector(
            "csvd",
            "collections = [\"permits\"]\n[format]\nkind = \"csv\"\ncolumns = [\"permit_number\", \"status\"]\n\
             delimiter = \";\"\nquote = \"never\"\nheader = false\nline_end = \"lf\"\nencoding = \"latin1\"\nextension = \"txt\"\n\
             [transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\nbatch_window = \"0s\"\n[retry]\nmax_attempts = 1\n",
        )
        .start();
    let out = d.cli(&["check"]);
    assert!(
        text(&out).contains("format: csvd: csv of 2 columns, delimiter ;, quote never, no header line, line end LF, latin1 -> .txt files"),
        "{}",
        text(&out)
    );
    send_statuses(
        &d,
        &[("1", "Café"), ("2", "5 €"), ("3", "a;b"), ("4", "OK")],
    );
    d.wait_for(
        Duration::from_secs(20),
        "two deliveries and two dead letters",
        |d| d.target_status("csvd")["delivered"] == 2 && dead_letters(d).len() == 2,
    );
    let files = outbox_bytes(&d, "csvd");
    assert!(files.iter().all(|(n, _)| n.ends_with(".txt")), "{files:?}");
    let all: Vec<u8> = files.iter().flat_map(|(_, b)| b.clone()).collect();
    assert!(!all.contains(&b'\r'), "{all:?}");
    let lines: Vec<&[u8]> = all
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 2, "{all:?}");
    assert!(
        lines[0].starts_with(b"csvd:") && lines[0].ends_with(b";create;1;Caf\xE9"),
        "{all:?}"
    );
    assert!(lines[1].ends_with(b";create;4;OK"), "{all:?}");
    let dead = dead_letters(&d);
    assert_eq!(dead[0].0, "2");
    assert!(
        dead[0]
            .1
            .contains("field `status` holds a character latin1 cannot carry ('€', U+20AC"),
        "{dead:?}"
    );
    assert_eq!(dead[1].0, "3");
    assert!(
        dead[1]
            .1
            .contains("column `status` holds \"a;b\", which contains the delimiter ;"),
        "{dead:?}"
    );
}

#[test]
fn dialects_check_names_file_line_and_key_of_bad_dialect_template_and_extension_keys() {
    for (format, want) in [
        (
            "kind = \"csv\"\ncolumns = [\"a\"]\ndelimiter = \"\\\"\"",
            "line 6: [format] delimiter \"\\\"\": the quote character cannot be the delimiter",
        ),
        (
            "kind = \"csv\"\ncolumns = [\"a\"]\nencoding = \"utf-16\"",
            "line 6: [format] encoding `utf-16` is unknown",
        ),
        (
            "kind = \"json\"\nextension = \"../x\"",
            "line 5: [format] extension `../x`: letters and digits only",
        ),
        (
            "kind = \"template\"\ntemplate = \"permit.xml.j2\"\n",
            "line 10: [transport] batch_max = 10 with an XML template",
        ),
    ] {
        let d = TestDaemon::new().connector(
            "x",
            &format!(
                "collections = [\"permits\"]\n\n[format]\n{format}\n[transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\nbatch_max = 10\n"
            ),
        );
        std::fs::write(
            d.path().join("connectors/x/permit.xml.j2"),
            "<P>{{ key }}</P>",
        )
        .unwrap();
        d.write_config();
        let out = d.cli(&["check"]);
        assert_eq!(out.status.code(), Some(2), "{format}: {}", text(&out));
        let t = text(&out).replace(&d.path().display().to_string(), "");
        assert!(t.contains("connectors/x/connector.toml: "), "{t}");
        assert!(t.contains(want), "{format}\nwant {want}\n{t}");
    }
}

/// The legacy service: answers 200 with `<Result>`: `0` for most keys,
/// `ERROR` and a message for keys starting `bad` (until fixed), and no
/// `Result` at all for keys starting `odd`.
struct BusinessBox {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
    fixed: Arc<AtomicBool>,
    _rt: tokio::runtime::Runtime,
}

#[derive(Clone)]
struct BoxState {
    seen: Arc<Mutex<Vec<String>>>,
    fixed: Arc<AtomicBool>,
}

async fn business_answer(State(s): State<BoxState>, body: Bytes) -> impl IntoResponse {
    let text = String::from_utf8_lossy(&body);
    let key = text
        .split("<PermitNumber>")
        .nth(1)
        .and_then(|r| r.split("</PermitNumber>").next())
        .unwrap_or("")
        .to_string();
    s.seen.lock().unwrap().push(key.clone());
    let inner = if key.starts_with("bad") && !s.fixed.load(Ordering::SeqCst) {
        format!(
            "<r:UpdateResponse xmlns:r=\"urn:permits\"><r:Result>ERROR</r:Result><r:Message>Permit {key} is locked by the clerk &amp; cannot change</r:Message></r:UpdateResponse>"
        )
    } else if key.starts_with("odd") {
        "<UpdateResponse><Status>OK</Status></UpdateResponse>".to_string()
    } else {
        "<UpdateResponse><Result>0</Result><Message/></UpdateResponse>".to_string()
    };
    (
        [("content-type", "text/xml; charset=utf-8")],
        format!(
            "<?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>{inner}</soap:Body></soap:Envelope>"
        ),
    )
}

impl BusinessBox {
    fn start() -> BusinessBox {
        let state = BoxState {
            seen: Arc::default(),
            fixed: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(business_answer)
            .with_state(state.clone());
        let (url, rt) = serve_soap_app(app);
        BusinessBox {
            url,
            seen: state.seen,
            fixed: state.fixed,
            _rt: rt,
        }
    }
}

const ANSWER: &str = "[transport.answer]\nok_path = \"UpdateResponse/Result\"\nok_values = [\"OK\", \"0\"]\nreason_path = \"UpdateResponse/Message\"\n";

fn business_connector(url: &str, answer: &str) -> String {
    format!(
        "collections = [\"permits\"]\n[format]\nkind = \"xml\"\nroot = \"PermitUpdate\"\nkey_element = \"PermitNumber\"\n\
         [transport]\nkind = \"soap\"\nurl = \"{url}\"\nsoap_action = \"urn:UpdatePermit\"\n{answer}\
         [retry]\nmax_attempts = 2\nbackoff = \"10ms\"\nmax_backoff = \"50ms\"\n"
    )
}

#[test]
fn dialects_soap_a_200_saying_error_is_a_rejection_with_the_services_message() {
    let server = BusinessBox::start();
    let d = TestDaemon::new()
        .connector("permits-svc", &business_connector(&server.url, ANSWER))
        .start();
    let out = d.cli(&["check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out)
            .contains("delivered when the text of Body/UpdateResponse/Result is \"OK\" or \"0\""),
        "{}",
        text(&out)
    );
    let mut c = d.client();
    for key in ["ok1", "bad1", "odd1", "ok2"] {
        let a = c.call(&envelope(
            key,
            json!({"permit_number": key, "status": "APPROVED"}),
        ));
        assert_eq!(a["ok"], true, "{a}");
    }
    d.wait_for(
        Duration::from_secs(20),
        "two deliveries and two dead letters",
        |d| d.target_status("permits-svc")["delivered"] == 2 && dead_letters(d).len() == 2,
    );
    let dead = dead_letters(&d);
    assert_eq!(dead[0].0, "bad1");
    assert!(
        dead[0].1.contains(
            "the service answered UpdateResponse/Result = \"ERROR\" (HTTP 200): Permit bad1 is locked by the clerk & cannot change"
        ),
        "{dead:?}"
    );
    assert_eq!(dead[1].0, "odd1");
    assert!(
        dead[1]
            .1
            .contains("the answer has no UpdateResponse/Result element (ok_path)"),
        "{dead:?}"
    );
    // Each refused change was tried max_attempts = 2 times: a rejection, not an outage.
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.iter().filter(|k| *k == "bad1").count(), 2, "{seen:?}");
    assert_eq!(seen.iter().filter(|k| *k == "ok1").count(), 1, "{seen:?}");
    // The clerk unlocks the permit; a retry goes through.
    server.fixed.store(true, Ordering::SeqCst);
    let out = d.cli(&["dead", "retry", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    d.wait_for(Duration::from_secs(20), "the retried delivery", |d| {
        d.target_status("permits-svc")["delivered"] == 3
    });
}

#[test]
fn dialects_soap_answer_keys_are_checked_with_line_and_key_and_explained_by_translate() {
    let server = BusinessBox::start();
    for (answer, want) in [
        (
            "[transport.answer]\nok_path = \"r:UpdateResponse/Result\"\nok_values = [\"OK\"]\n",
            "line 11: [transport.answer] ok_path `r:UpdateResponse/Result`: write local names without a prefix (`UpdateResponse`)",
        ),
        (
            "[transport.answer]\nok_path = \"UpdateResponse/Result\"\nok_values = []\n",
            "line 12: [transport.answer] ok_values is missing or empty",
        ),
        (
            "[transport.answer]\nok_path = \"UpdateResponse/Result\"\nok_value = [\"OK\"]\n",
            "line 12: [transport] unknown field `ok_value`",
        ),
    ] {
        let d = TestDaemon::new().connector("svc", &business_connector(&server.url, answer));
        d.write_config();
        let out = d.cli(&["check"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains(want), "want {want}\n{}", text(&out));
    }
    // A file connector has no answer to read.
    let d = TestDaemon::new().connector(
        "files",
        &format!("{}{ANSWER}", csv_connector(&["permit_number"], "", "")),
    );
    d.write_config();
    let out = d.cli(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("`answer` does not apply"),
        "{}",
        text(&out)
    );

    // translate: the exact envelope on stdout, the rule on stderr; --full
    // adds the request line and headers and sends every field.
    let d = TestDaemon::new().connector("svc", &business_connector(&server.url, ANSWER));
    d.write_config();
    let (old, new) = (d.path().join("old.json"), d.path().join("new.json"));
    std::fs::write(
        &old,
        envelope(
            "9",
            json!({"permit_number": "9", "status": "NEW", "fee": 5}),
        ),
    )
    .unwrap();
    std::fs::write(
        &new,
        envelope(
            "9",
            json!({"permit_number": "9", "status": "APPROVED", "fee": 5}),
        ),
    )
    .unwrap();
    let out = d.cli(&[
        "translate",
        "svc",
        new.to_str().unwrap(),
        "--from",
        old.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("<soap:Envelope") || stdout.starts_with("<?xml"),
        "{stdout}"
    );
    assert!(!stdout.contains("name=\"fee\""), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("delivered when: an HTTP 2xx answer carrying a SOAP envelope without a Fault in which the text of Body/UpdateResponse/Result is \"OK\" or \"0\""),
        "{}",
        text(&out)
    );
    let out = d.cli(&["translate", "svc", new.to_str().unwrap(), "--full"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        &format!("POST {}\n", server.url),
        "content-type: text/xml; charset=utf-8\n",
        "soapaction: \"urn:UpdatePermit\"\n",
        "delivered when: ",
        "<PermitUpdate op=\"create\">",
        "<Field name=\"fee\">5</Field>",
        "<Field name=\"status\">APPROVED</Field>",
    ] {
        assert!(stdout.contains(want), "want {want}\n{stdout}");
    }
    // --full previews a create: a delete has no record to show.
    std::fs::write(
        &new,
        json!({"collection": "permits", "key": "9", "deleted": true}).to_string(),
    )
    .unwrap();
    let out = d.cli(&["translate", "svc", new.to_str().unwrap(), "--full"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--full previews a create"),
        "{}",
        text(&out)
    );
}

#[test]
fn dialects_translate_full_shows_the_file_name_and_the_header_and_trailer_rulers() {
    let connector = "collections = [\"permits\"]\n[format]\nkind = \"fixed\"\ncopybook = \"PERMIT-UPD.cpy\"\nrecord = \"PERMIT-UPD\"\nrecord_end = \"lf\"\n\
        [format.map]\nPU-ACTION = \"@op\"\nPU-PERMIT-NO = \"permit_number\"\nPU-STATUS = \"status\"\nPU-FEE = \"fee\"\n\
        [format.header]\nrecord = \"PERMIT-HDR\"\n[format.header.map]\nPH-BATCH = \"@batch_seq\"\nPH-DATE = \"@run_date\"\n\
        [format.trailer]\nrecord = \"PERMIT-TRL\"\n[format.trailer.map]\nPT-COUNT = \"@record_count\"\nPT-FEE-TOTAL = \"@sum:fee\"\n\
        [transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\n";
    let d = TestDaemon::new().connector("county", connector);
    std::fs::copy(
        fixtures().join("cobol/PERMIT-UPD.cpy"),
        d.path().join("connectors/county/PERMIT-UPD.cpy"),
    )
    .unwrap();
    d.write_config();
    // Two files were delivered before: the next one is number 3.
    std::fs::write(d.outbox("county").join(".county.last"), "2").unwrap();
    let change = d.path().join("change.json");
    std::fs::write(
        &change,
        envelope(
            "125",
            json!({"permit_number": "125", "status": "APPROVED", "fee": 95.5}),
        ),
    )
    .unwrap();
    let out = d.cli(&["translate", "county", change.to_str().unwrap(), "--full"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    let file = d.outbox("county").join("county-000000000003.dat");
    for want in [
        format!("file: {}\n", file.display()),
        "header PERMIT-HDR of PERMIT-UPD.cpy: 37 bytes, encoding ascii, record_end lf".into(),
        "     1    8  PH-BATCH  PIC 9(8)                      \"00000003\"  <- @batch_seq".into(),
        "<- @run_date".into(),
        "record PERMIT-UPD of PERMIT-UPD.cpy: 37 bytes".into(),
        "text: |A00000125APPROVED  ".into(),
        "trailer PERMIT-TRL of PERMIT-UPD.cpy: 37 bytes".into(),
        "\"00000001\"  <- @record_count".into(),
        "\"000000000009550\"  <- @sum of PU-FEE".into(),
    ] {
        assert!(shown.contains(&want), "want {want}\n{shown}");
    }
    // Without --full the rulers show too (header, record, trailer in file order).
    let out = d.cli(&["translate", "county", change.to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&out.stdout);
    let (h, r, t) = (
        shown.find("header PERMIT-HDR").unwrap(),
        shown.find("record PERMIT-UPD").unwrap(),
        shown.find("trailer PERMIT-TRL").unwrap(),
    );
    assert!(h < r && r < t, "{shown}");
    assert!(!shown.contains("file: "), "{shown}");
}
