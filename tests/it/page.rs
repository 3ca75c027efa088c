//! The status page in a real browser (issue 10 "Proof required"): headless
//! Chromium (Debian's `chromium`; `.ci/run` installs it) loads the page in four
//! states — healthy, a target down, dead letters with held changes, ingestion
//! paused — and the test asserts on the rendered DOM. Each state's screenshot
//! is saved under `target/screenshots/`. An injected `<script>` (a record
//! value, a file name) must stay text.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::harness::{TestDaemon, csv_connector, envelope};

const FAST: &str = "max_attempts = 3\nbackoff = \"50ms\"\nmax_backoff = \"200ms\"";

fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "the browser tests need Debian's chromium (`apt-get install chromium`; .ci/run installs it)"
    );
}

/// Chromium, headless, with the flags this machine's closed network needs and a
/// fresh profile.
fn browser(extra: &[&str], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium")
}

/// The DOM after the page loaded, as Chromium serialises it.
fn dom(d: &TestDaemon, path: &str) -> String {
    let url = format!("http://{}{path}", d.status_addr());
    let out = browser(&["--dump-dom"], &url);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("</html>"),
        "chromium gave no DOM for {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn screenshot(d: &TestDaemon, path: &str, name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.png"));
    let url = format!("http://{}{path}", d.status_addr());
    let out = browser(
        &[
            &format!("--screenshot={}", file.display()),
            "--window-size=1280,1500",
        ],
        &url,
    );
    assert!(
        file.exists(),
        "no screenshot {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The element with `id` and what follows up to its end tag (enough to assert on
/// one card).
fn element<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM:\n{dom}"));
    let rest = &dom[at..];
    let end = rest.find("</article>").unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn healthy_the_page_says_all_current_with_numbers_and_a_chart() {
    let d = TestDaemon::new()
        .connector("housing", &csv_connector(&["permit_number"], "", FAST))
        .start();
    let mut c = d.client();
    c.call(&envelope("1", json!({"permit_number": "1"})));
    d.drop_file("p2.json", br#"{"permit_number":"2"}"#);
    d.wait_for(Duration::from_secs(10), "two deliveries", |d| {
        d.target_status("housing")["delivered"] == 2
    });
    let (_, body) = d.http_get("/");
    assert!(body.len() < 60 * 1024, "page weight {} bytes", body.len());
    let dom = dom(&d, "/");
    assert!(dom.contains("All current"), "{dom}");
    let card = element(&dom, "target-housing");
    assert!(card.contains("data-state=\"up\""), "{card}");
    assert!(card.contains("<span class=\"state\">up</span>"), "{card}");
    assert!(
        card.contains("<dd class=\"delivered\">2 (2 in the last hour)</dd>"),
        "{card}"
    );
    assert!(card.contains("<dd class=\"pending\">0</dd>"), "{card}");
    assert!(
        card.contains("2 deliveries in the last hour"),
        "the chart: {card}"
    );
    assert!(dom.contains("<form action=\"/lookup\""), "{dom}");
    assert!(
        dom.contains("<td class=\"last-taken\"><code>p2.json</code>"),
        "{dom}"
    );
    assert!(dom.contains("Socket: 1 client(s) connected"), "{dom}");
    screenshot(&d, "/", "1-healthy");
    // The widget is a compact fragment of the same.
    let widget = self::dom(&d, "/widget");
    assert!(widget.contains("All current"), "{widget}");
    assert!(widget.contains("housing: up"), "{widget}");
}

#[test]
fn a_target_down_shows_down_for_how_long_why_and_the_oldest_pending_age() {
    let d = TestDaemon::new()
        .connector(
            "housing",
            &csv_connector(
                &["permit_number"],
                "",
                "backoff = \"50ms\"\nmax_backoff = \"200ms\"",
            ),
        )
        .start();
    std::fs::remove_dir(d.outbox("housing")).unwrap();
    d.client()
        .call(&envelope("1", json!({"permit_number": "1"})));
    d.wait_for(Duration::from_secs(10), "the target to be down", |d| {
        d.target_status("housing")["state"] == "down"
    });
    let dom = dom(&d, "/");
    assert!(dom.contains("Needs attention"), "{dom}");
    let card = element(&dom, "target-housing");
    assert!(card.contains("data-state=\"down\""), "{card}");
    assert!(card.contains("<span class=\"state\">down for "), "{card}");
    assert!(card.contains("<dd class=\"pending\">1</dd>"), "{card}");
    assert!(
        !card.contains("<dd class=\"oldest\">—</dd>"),
        "an age shows: {card}"
    );
    assert!(card.contains("outbox"), "the reason in words: {card}");
    screenshot(&d, "/", "2-target-down");
}

#[test]
fn dead_letters_and_held_changes_show_with_reasons_and_injected_markup_stays_text() {
    let d = TestDaemon::new()
        .connector(
            "xmlbox",
            "collections = [\"permits\"]\n[format]\nkind = \"xml\"\nroot = \"PermitUpdate\"\nkey_element = \"PermitNumber\"\n\
             [transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\n[retry]\nmax_attempts = 1\n",
        )
        .connector("housing", &csv_connector(&["permit_number", "notes"], "", FAST))
        .start();
    let mut c = d.client();
    c.call(&envelope(
        "b",
        json!({"permit_number": "b", "notes": "<script>document.title='pwned'</script>\u{7}"}),
    ));
    d.wait_for(Duration::from_secs(10), "the dead letter", |d| {
        d.target_status("xmlbox")["dead"] == 1
    });
    c.call(&envelope(
        "b",
        json!({"permit_number": "b", "notes": "<script>document.title='pwned'</script>", "status": "held one"}),
    ));
    d.wait_for(Duration::from_secs(10), "housing's second delivery", |d| {
        d.target_status("housing")["delivered"] == 2
    });
    d.drop_file("x<img src=q onerror=alert(1)>.json", b"{not json");
    d.wait_for(Duration::from_secs(10), "the rejected file", |d| {
        d.inbox()
            .join(".rejected/x<img src=q onerror=alert(1)>.json.error")
            .exists()
    });
    let dom = dom(&d, "/");
    assert!(
        dom.contains("<title>hms-sync — Sync Status</title>"),
        "no script ran: {dom}"
    );
    let card = element(&dom, "target-xmlbox");
    assert!(card.contains("data-state=\"attention\""), "{card}");
    assert!(
        card.contains("needs attention: 1 dead letter(s), 1 held change(s)"),
        "{card}"
    );
    assert!(
        card.contains("(including 1 held behind dead letters)"),
        "{card}"
    );
    assert!(dom.contains("<code>xmlbox:1</code>"), "{dom}");
    assert!(dom.contains("hms-sync dead retry xmlbox:1"), "{dom}");
    assert!(dom.contains("U+0007"), "the reason: {dom}");
    assert!(
        dom.contains("&lt;script&gt;document.title"),
        "escaped: {dom}"
    );
    assert!(!dom.contains("<script>document.title"), "{dom}");
    assert!(
        dom.contains("x&lt;img src=q onerror=alert(1)&gt;.json"),
        "{dom}"
    );
    assert!(!dom.contains("<img src=\"q\""), "{dom}");
    screenshot(&d, "/", "3-dead-letters-and-held");

    // The lookup finds the record, its dead letter and what it holds.
    let dom = self::dom(&d, "/lookup?collection=permits&key=b");
    assert!(dom.contains("held one"), "{dom}");
    assert!(dom.contains("dead xmlbox:1 after 1 attempts"), "{dom}");
    assert!(dom.contains("&lt;script&gt;"), "{dom}");
    assert!(dom.contains("<title>hms-sync — permits b</title>"), "{dom}");
    screenshot(&d, "/lookup?collection=permits&key=b", "5-lookup");
}

#[test]
fn ingestion_paused_shows_why_and_the_lookup_finds_the_pending_delta() {
    let d = TestDaemon::new()
        .config("max_queue_bytes = 1")
        .connector("housing", &csv_connector(&["permit_number"], "", FAST))
        .start();
    assert!(d.cli(&["pause", "housing"]).status.success());
    let mut c = d.client();
    assert_eq!(
        c.call(&envelope(
            "42",
            json!({"permit_number": "42", "status": "NEW"})
        ))["ok"],
        true
    );
    // The queue now holds more than max_queue_bytes: the next change is busy.
    let busy = c.call(&envelope("43", json!({"permit_number": "43"})));
    assert_eq!(busy["retry"], true, "{busy}");
    let dom = dom(&d, "/");
    assert!(dom.contains("⏸ paused — busy: the queue holds"), "{dom}");
    let card = element(&dom, "target-housing");
    assert!(card.contains("data-state=\"paused\""), "{card}");
    screenshot(&d, "/", "4-ingestion-paused");
    let dom = self::dom(&d, "/lookup?collection=permits&key=42");
    assert!(dom.contains("housing:1 create set"), "{dom}");
    assert!(dom.contains("NEW"), "{dom}");
}

#[test]
fn events_pushes_the_parts_of_the_page_that_changed_and_the_page_works_without_javascript() {
    let d = TestDaemon::new()
        .connector("housing", &csv_connector(&["permit_number"], "", FAST))
        .start();
    let (_, page) = d.http_get("/");
    assert!(
        page.contains("<noscript><meta http-equiv=refresh content=10></noscript>"),
        "{page}"
    );
    let since = page
        .split("/events?since=")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("the page names its parts' id")
        .to_string();
    // A change: the next event carries the card with the new count.
    let mut c = d.client();
    c.call(&envelope("1", json!({"permit_number": "1"})));
    d.wait_for(Duration::from_secs(10), "the delivery", |d| {
        d.target_status("housing")["delivered"] == 1
    });
    let started = std::time::Instant::now();
    let (head, body) = d.http_get(&format!("/events?since={since}"));
    assert!(head.contains("text/event-stream"), "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered on the change, not at the hold's end"
    );
    let id = body
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id")
        .to_string();
    assert_ne!(id, since);
    let data: serde_json::Value = serde_json::from_str(
        body.lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("data"),
    )
    .unwrap();
    let card = data["target-housing"].as_str().unwrap();
    assert!(
        card.contains("<dd class=delivered>1 (1 in the last hour)</dd>"),
        "{card}"
    );
    assert!(
        data["summary"].as_str().unwrap().contains("All current"),
        "{data}"
    );
    assert!(body.starts_with("retry: 1000\n"), "{body}");
}
