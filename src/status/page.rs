//! The status page for people (`GET /`), the record lookup (`GET /lookup`) and
//! the widget for another dashboard's iframe (`GET /widget`): server-rendered
//! HTML with inline CSS and inline SVG, no JavaScript, no external assets.
//!
//! **Invariants:** every text that comes from input, a legacy system or the file
//! system goes through [`esc`]; colour is never the only signal (every state is
//! also a word); nothing here changes state.

use std::fmt::Write as _;

use serde_json::Value;

use crate::alerts::rejected_list;
use crate::config::Watch;
use crate::queue::{DeadLetter, delivery_id};
use crate::record::{format_ms, now_ms};

/// Dead letters shown per page.
pub const DEAD_PER_PAGE: usize = 20;
/// Rejected files listed per watch.
const REJECTED_SHOWN: usize = 10;

/// What the page shows besides the status report.
pub struct PageData {
    pub report: Value,
    /// Dead letters, newest first: (target, dead letter).
    pub dead: Vec<(String, DeadLetter)>,
    /// Why ingestion is paused now, if it is.
    pub busy: Option<String>,
    pub queue_bytes: u64,
    pub max_queue_bytes: u64,
    pub disk_free_bytes: Option<u64>,
    pub min_free_bytes: u64,
    pub watches: Vec<Watch>,
    /// Socket lines accepted and refused since start.
    pub socket_lines: (u64, u64),
    /// Socket connections open now.
    pub socket_clients: u64,
    /// Per watch (same order as `watches`): the last file taken and when.
    pub last_taken: Vec<Option<(String, u64)>>,
}

pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:1rem 2rem;color:#1a1a1a;background:#f6f7f9}\
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:.2rem 0}\
.summary{padding:.6rem 1rem;border-radius:6px;font-weight:600}\
.summary.ok{background:#dff3e4;border-left:6px solid #1e7b34}.summary.attention{background:#fde8e8;border-left:6px solid #b3261e}\
.cards{display:flex;flex-wrap:wrap;gap:1rem;margin:1rem 0}\
.card{background:#fff;border-radius:6px;padding:.8rem 1rem;min-width:18rem;box-shadow:0 1px 3px #0002;border-top:6px solid #999}\
.card.up{border-top-color:#1e7b34}.card.down{border-top-color:#b3261e}.card.paused{border-top-color:#b58105}.card.attention{border-top-color:#d46b08}\
.badge{font-weight:700}.badge.up{color:#1e7b34}.badge.down{color:#b3261e}.badge.paused{color:#8a6100}.badge.attention{color:#b34d00}\
dl{display:grid;grid-template-columns:auto 1fr;gap:.1rem .8rem;margin:.4rem 0}dt{color:#555}dd{margin:0}\
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}\
code,pre{background:#eef;padding:.1rem .3rem;border-radius:3px;white-space:pre-wrap;word-break:break-all}\
section{margin:1.2rem 0}.muted{color:#666}";

fn head(title: &str, refresh: bool) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">{}\
         <title>{}</title><style>{STYLE}</style></head><body>",
        if refresh {
            // Without JavaScript the whole page reloads; with it, /events
            // replaces the parts that changed (LIVE_SCRIPT).
            "<noscript><meta http-equiv=refresh content=10></noscript>"
        } else {
            ""
        },
        esc(title)
    )
}

/// Replaces the parts `/events` sends (element id -> HTML rendered and escaped
/// here, on the server). If the stream fails twice, the page reloads itself
/// every 10 s as it does without JavaScript.
const LIVE_SCRIPT: &str = "<script>(function(){if(!window.EventSource)return;var f=0,\
es=new EventSource('/events?since=ID');es.addEventListener('status',function(e){f=0;\
var d=JSON.parse(e.data);for(var k in d){var el=document.getElementById(k);if(el)el.outerHTML=d[k];}});\
es.onerror=function(){if(++f>1){es.close();setTimeout(function(){location.reload()},10000);}};})();</script>";

/// The parts of the page `/events` keeps current without a reload: the summary
/// and every target's card, by element id.
pub fn live_parts(data: &PageData, hours: &[Vec<u64>]) -> serde_json::Map<String, Value> {
    let mut parts = serde_json::Map::new();
    parts.insert("summary".into(), Value::String(summary(data)));
    for (i, t) in data.report["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = t["name"].as_str().unwrap_or("");
        let html = card(t, data, hours.get(i).map(Vec::as_slice).unwrap_or(&[]));
        parts.insert(format!("target-{name}"), Value::String(html));
    }
    parts
}

/// A short id of the parts' content: `/events` answers when it changes.
pub fn parts_id(parts: &serde_json::Map<String, Value>) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (k, v) in parts {
        k.hash(&mut h);
        v.as_str().unwrap_or("").hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// Per target: its state word and card class, and the attention items.
fn target_state(t: &Value, held: u64) -> (String, &'static str) {
    let state = t["state"].as_str().unwrap_or("");
    let dead = t["dead"].as_u64().unwrap_or(0);
    match state {
        "paused" => ("paused".into(), "paused"),
        "orphaned" => (
            format!(
                "orphaned: its connector was removed; {} change(s) and {dead} dead letter(s) kept until it comes back or `hms-sync forget {}`",
                t["pending"],
                t["name"].as_str().unwrap_or("")
            ),
            "attention",
        ),
        "down" => {
            let since = t["down_for_s"]
                .as_f64()
                .map(|s| {
                    let at = now_ms().saturating_sub((s * 1000.0) as u64);
                    format!(" for {} (since {})", age(s), format_ms(at))
                })
                .unwrap_or_default();
            (format!("down{since}"), "down")
        }
        _ if dead > 0 || held > 0 => (
            format!("needs attention: {dead} dead letter(s), {held} held change(s)"),
            "attention",
        ),
        _ => ("up".into(), "up"),
    }
}

/// What needs attention, one sentence each (empty: all current).
pub fn attention(data: &PageData) -> Vec<String> {
    let mut out = Vec::new();
    if data.report["running"] != true {
        out.push("hms-sync is not running".into());
    }
    for t in data.report["targets"].as_array().into_iter().flatten() {
        let name = t["name"].as_str().unwrap_or("");
        let held = held_of(data, name);
        let (word, class) = target_state(t, held);
        if class != "up" {
            out.push(format!("{name}: {word}"));
        }
    }
    if let Some(b) = &data.busy {
        out.push(format!("ingestion paused: {b}"));
    }
    for w in &data.watches {
        let (n, _) = rejected_list(&w.dir, 0);
        if n > 0 {
            out.push(format!("{}: {n} rejected file(s)", w.dir.display()));
        }
    }
    for u in data.report["unrouted"].as_array().into_iter().flatten() {
        out.push(format!(
            "{} unrouted change(s) of `{}`",
            u["changes"],
            u["collection"].as_str().unwrap_or("")
        ));
    }
    if let Some(f) = data.report["alerts"]["command_failing"].as_object() {
        out.push(format!(
            "alert_command failing: {}",
            f["error"].as_str().unwrap_or("")
        ));
    }
    let reload = &data.report["reload"];
    if let Some(e) = reload["error"].as_str() {
        out.push(format!(
            "the last reload was refused (the running config stays): {e}"
        ));
    }
    for k in reload["needs_restart"].as_array().into_iter().flatten() {
        out.push(format!(
            "changed in the config, applies after a restart: {}",
            k.as_str().unwrap_or("")
        ));
    }
    out
}

fn held_of(data: &PageData, target: &str) -> u64 {
    data.dead
        .iter()
        .filter(|(t, d)| t == target && d.held.is_some())
        .count() as u64
}

fn summary(data: &PageData) -> String {
    let items = attention(data);
    if items.is_empty() {
        return "<p id=summary class=\"summary ok\">✔ All current: every target up, nothing stuck.</p>".into();
    }
    let mut s =
        String::from("<div id=summary class=\"summary attention\"><p>⚠ Needs attention:</p><ul>");
    for i in items {
        let _ = write!(s, "<li>{}</li>", esc(&i));
    }
    s.push_str("</ul></div>");
    s
}

/// Deliveries per minute over the last hour as inline SVG bars.
fn chart(per_minute: &[u64]) -> String {
    let max = per_minute.iter().copied().max().unwrap_or(0).max(1);
    let total: u64 = per_minute.iter().sum();
    let mut s = format!(
        "<svg class=chart width=240 height=40 viewBox=\"0 0 240 40\" role=img aria-label=\"{total} deliveries in the last hour\">\
         <title>{total} deliveries in the last hour (per minute, oldest left)</title>\
         <rect width=240 height=40 fill=\"#f0f0f0\"/>"
    );
    for (i, n) in per_minute.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let h = (*n as f64 / max as f64 * 38.0).max(1.0);
        let _ = write!(
            s,
            "<rect x={} y={:.1} width=3 height={:.1} fill=\"#2b6cb0\"/>",
            i * 4,
            40.0 - h,
            h
        );
    }
    s.push_str("</svg>");
    s
}

fn card(t: &Value, data: &PageData, per_minute: &[u64]) -> String {
    let name = t["name"].as_str().unwrap_or("");
    let held = held_of(data, name);
    let (word, class) = target_state(t, held);
    let pending = t["pending"].as_u64().unwrap_or(0);
    format!(
        "<article class=\"card {class}\" id=\"target-{id}\" data-state=\"{class}\"><h2>{name} \
         <span class=\"badge {class}\">● <span class=state>{word}</span></span></h2><dl>\
         <dt>Pending</dt><dd class=pending>{total}{held_text}</dd>\
         <dt>In flight</dt><dd class=in-flight>{in_flight}</dd>\
         <dt>Dead letters</dt><dd class=dead>{dead}</dd>\
         <dt>Delivered</dt><dd class=delivered>{delivered} ({hour} in the last hour)</dd>\
         <dt>Oldest pending</dt><dd class=oldest>{oldest}</dd>\
         <dt>Last error</dt><dd class=last-error>{error}</dd></dl>{chart}</article>",
        id = esc(name),
        name = esc(name),
        word = esc(&word),
        total = pending + held,
        held_text = if held > 0 {
            format!(" (including {held} held behind dead letters)")
        } else {
            String::new()
        },
        in_flight = t["in_flight"],
        dead = t["dead"],
        delivered = t["delivered"],
        hour = per_minute.iter().sum::<u64>(),
        oldest = if pending > 0 {
            age(t["oldest_pending_age_s"].as_f64().unwrap_or(0.0))
        } else {
            "—".into()
        },
        error = esc(t["last_error"].as_str().unwrap_or("none")),
        chart = chart(per_minute),
    )
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// `GET /`. `hours[i]` is the per-minute chart of `report.targets[i]`.
pub fn render(data: &PageData, hours: &[Vec<u64>], dead_page: usize) -> String {
    let mut s = head("hms-sync — Sync Status", true);
    let _ = write!(
        s,
        "<h1>Sync Status</h1><p class=muted>hms-sync · {} · updates live (reloads every 10 s without JavaScript)</p>{}",
        esc(&format_ms(now_ms())),
        summary(data)
    );
    s.push_str("<section id=targets><div class=cards>");
    let targets = data.report["targets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if targets.is_empty() {
        s.push_str("<p>No targets: add a connector.</p>");
    }
    for (i, t) in targets.iter().enumerate() {
        s.push_str(&card(
            t,
            data,
            hours.get(i).map(Vec::as_slice).unwrap_or(&[]),
        ));
    }
    s.push_str("</div></section>");

    let _ = write!(
        s,
        "<section id=ingestion><h2>Ingestion: <span class=ingestion-state>{}</span></h2>\
         <p>Queue {} of max_queue_bytes {}; disk free {} (min_free_disk_mib {}). Socket: {} client(s) connected; lines {} accepted, {} refused since start.</p></section>",
        match &data.busy {
            Some(reason) => format!("⏸ paused — {}", esc(reason)),
            None => "▶ running".into(),
        },
        mib(data.queue_bytes),
        mib(data.max_queue_bytes),
        data.disk_free_bytes
            .map(mib)
            .unwrap_or_else(|| "unknown".into()),
        mib(data.min_free_bytes),
        data.socket_clients,
        data.socket_lines.0,
        data.socket_lines.1,
    );

    s.push_str("<section id=watches><h2>Watched folders</h2><table><tr><th>folder</th><th>collection</th><th>files waiting</th><th>last file taken</th><th>files rejected</th></tr>");
    for (i, w) in data.watches.iter().enumerate() {
        let last = match data.last_taken.get(i).cloned().flatten() {
            Some((name, at)) => format!(
                "<code>{}</code> {} ago",
                esc(&name),
                age(now_ms().saturating_sub(at) as f64 / 1000.0)
            ),
            None => "none since start".into(),
        };
        let dir = w.dir.display().to_string();
        let taking = data.report["files_in_progress"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["dir"].as_str() == Some(dir.as_str()));
        let last = match taking {
            Some(f) => {
                let of = f["rows_total"]
                    .as_u64()
                    .map(|t| format!(" of {t}"))
                    .unwrap_or_default();
                format!(
                    "<p class=in-progress>taking <code>{}</code> now: {} rows{of} queued, {}</p>{last}",
                    esc(f["file"].as_str().unwrap_or("")),
                    f["rows_done"],
                    esc(f["phase"].as_str().unwrap_or(""))
                )
            }
            None => last,
        };
        let waiting = files_waiting(&w.dir);
        let (count, newest) = rejected_list(&w.dir, REJECTED_SHOWN);
        let mut rejected = format!("<span class=rejected-count>{count}</span>");
        if !newest.is_empty() {
            rejected.push_str("<ul class=rejected>");
            for (name, note) in newest {
                let _ = write!(
                    rejected,
                    "<li><code>{}</code>: {}</li>",
                    esc(&name),
                    esc(&note)
                );
            }
            rejected.push_str("</ul>");
        }
        let _ = write!(
            s,
            "<tr><td><code>{}</code></td><td>{}</td><td class=waiting>{waiting}</td><td class=last-taken>{last}</td><td>{rejected}</td></tr>",
            esc(&w.dir.display().to_string()),
            esc(&w.collection)
        );
    }
    s.push_str("</table></section>");

    let unrouted = data.report["unrouted"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !unrouted.is_empty() {
        s.push_str("<section id=unrouted><h2>Unrouted collections</h2><p>Kept (keep_unrouted = true) for a later connector or resync; no connector receives them.</p><ul>");
        for u in unrouted {
            let _ = write!(
                s,
                "<li><code>{}</code>: {} change(s)</li>",
                esc(u["collection"].as_str().unwrap_or("")),
                u["changes"]
            );
        }
        s.push_str("</ul></section>");
    }

    let firing = data.report["alerts"]["firing"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let failing = data.report["alerts"]["command_failing"].as_object();
    if !firing.is_empty() || failing.is_some() {
        s.push_str("<section id=alerts><h2>Alerts</h2><ul>");
        for a in firing {
            let _ = write!(
                s,
                "<li>firing: {} {} since {}</li>",
                esc(a["alert"].as_str().unwrap_or("")),
                esc(a["subject"].as_str().unwrap_or("")),
                esc(a["since"].as_str().unwrap_or(""))
            );
        }
        if let Some(f) = failing {
            let _ = write!(
                s,
                "<li class=alert-failing>alert_command is failing: {}</li>",
                esc(f["error"].as_str().unwrap_or(""))
            );
        }
        s.push_str("</ul></section>");
    }

    s.push_str(&dead_section(data, dead_page));

    s.push_str(
        "<section id=lookup><h2>Where is a record?</h2><form action=/lookup method=get>\
         <label>Collection <input name=collection required></label> \
         <label>Key <input name=key required></label> <button type=submit>Find</button></form></section>\
         <p class=muted><a href=/status>/status</a> · <a href=/metrics>/metrics</a> · <a href=/widget>/widget</a></p>",
    );
    s.push_str(&LIVE_SCRIPT.replace("ID", &parts_id(&live_parts(data, hours))));
    s.push_str("</body></html>");
    s
}

/// Files in a watched folder that will be taken (not ignored names).
pub fn files_waiting(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    !crate::watcher::dropdir::ignored(&n) && e.path().is_file()
                })
                .count()
        })
        .unwrap_or(0)
}

fn dead_section(data: &PageData, page: usize) -> String {
    let mut s = format!(
        "<section id=dead><h2>Dead letters ({})</h2>",
        data.dead.len()
    );
    if data.dead.is_empty() {
        s.push_str("<p>None.</p></section>");
        return s;
    }
    s.push_str("<p class=muted>Newest first. The page is read-only: copy the command to retry or drop one.</p>\
                <table><tr><th>id</th><th>record</th><th>attempts</th><th>reason</th><th>age</th></tr>");
    let now = now_ms();
    for (target, d) in data
        .dead
        .iter()
        .skip(page * DEAD_PER_PAGE)
        .take(DEAD_PER_PAGE)
    {
        let id = delivery_id(target, d.queued.seq);
        let delta = serde_json::json!({
            "op": d.queued.delta.op.as_str(),
            "set": d.queued.delta.set,
            "unset": d.queued.delta.unset,
        });
        let held = d
            .held
            .as_ref()
            .map(|h| {
                format!(
                    "<p>Held behind it: <code>{}</code></p>",
                    esc(
                        &serde_json::json!({"op": h.op.as_str(), "set": h.set, "unset": h.unset})
                            .to_string()
                    )
                )
            })
            .unwrap_or_default();
        let _ = write!(
            s,
            "<tr class=dead-letter><td><details><summary><code>{id}</code></summary>\
             <p>Delta: <code>{delta}</code></p>{held}\
             <p><code>hms-sync dead retry {id}</code> · <code>hms-sync dead drop {id}</code> · <code>hms-sync dead show {id}</code></p>\
             </details></td><td>{coll} {key}</td><td>{attempts}</td><td class=reason>{reason}</td><td>{age}</td></tr>",
            id = esc(&id),
            delta = esc(&delta.to_string()),
            coll = esc(&d.queued.record.collection),
            key = esc(&d.queued.record.key),
            attempts = d.queued.attempts,
            reason = esc(d.queued.last_error.as_deref().unwrap_or("")),
            age = age(now.saturating_sub(d.dead_at_ms) as f64 / 1000.0),
        );
    }
    s.push_str("</table>");
    let pages = data.dead.len().div_ceil(DEAD_PER_PAGE);
    if pages > 1 {
        s.push_str("<p>Page: ");
        for p in 0..pages {
            if p == page {
                let _ = write!(s, "<strong>{}</strong> ", p + 1);
            } else {
                let _ = write!(s, "<a href=\"/?dead_page={p}#dead\">{}</a> ", p + 1);
            }
        }
        s.push_str("</p>");
    }
    s.push_str("</section>");
    s
}

/// `GET /lookup?collection=…&key=…`: the `where` document for people.
pub fn render_lookup(collection: &str, key: &str, doc: Result<&Value, &str>) -> String {
    let mut s = head(&format!("hms-sync — {collection} {key}"), false);
    let _ = write!(
        s,
        "<p><a href=/>← Sync Status</a></p><h1>Where is {} <code>{}</code>?</h1>",
        esc(collection),
        esc(key)
    );
    let v = match doc {
        Ok(v) => v,
        Err(e) => {
            let _ = write!(s, "<p class=error>{}</p></body></html>", esc(e));
            return s;
        }
    };
    if v["known"] != true {
        s.push_str("<p id=record-state>Not known: no change for it was ever accepted (or it was deleted and delivered everywhere).</p>");
    } else if v["state"].is_null() {
        s.push_str("<p id=record-state>Deleted.</p>");
    } else {
        s.push_str("<h2>Last known state</h2><table id=record-state>");
        for (k, val) in v["state"].as_object().into_iter().flatten() {
            let text = match val {
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            let _ = write!(s, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&text));
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Per target</h2><table id=record-targets><tr><th>target</th><th>state</th><th>last delivered</th><th>pending</th><th>dead / held</th></tr>");
    for t in v["targets"].as_array().into_iter().flatten() {
        let delivered = match &t["last_delivered"] {
            Value::Null => "—".to_string(),
            d => format!(
                "{} at {}",
                d["id"].as_str().unwrap_or(""),
                d["at"].as_str().unwrap_or("")
            ),
        };
        let pending: Vec<String> = t["pending"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} {} set {} unset {}",
                    p["id"].as_str().unwrap_or(""),
                    p["op"].as_str().unwrap_or(""),
                    p["set"],
                    p["unset"]
                )
            })
            .collect();
        let dead = match t["dead"].as_object() {
            Some(d) => format!(
                "dead {} after {} attempts: {}{}",
                d["id"].as_str().unwrap_or(""),
                d["attempts"],
                d["last_error"].as_str().unwrap_or(""),
                if t["held"].is_null() {
                    String::new()
                } else {
                    format!("; held: {}", t["held"]["set"])
                }
            ),
            None => "—".into(),
        };
        let _ = write!(
            s,
            "<tr class=record-target data-target=\"{name}\"><td>{name}</td><td class=state>{state}</td><td>{delivered}</td><td class=pending>{pending}</td><td class=dead>{dead}</td></tr>",
            name = esc(t["target"].as_str().unwrap_or("")),
            state = esc(t["state"].as_str().unwrap_or("")),
            delivered = esc(&delivered),
            pending = esc(&pending.join("; ")),
            dead = esc(&dead),
        );
    }
    s.push_str("</table><h2>Recent delivery log</h2><pre id=record-log>");
    for e in v["log"].as_array().into_iter().flatten() {
        if let Ok(e) = serde_json::from_value::<crate::delivery_log::Entry>(e.clone()) {
            let _ = writeln!(s, "{}", esc(&e.human()));
        }
    }
    let _ = write!(
        s,
        "</pre><p class=muted>JSON: <a href=\"/records/{c}/{k}\">/records/{c}/{k}</a></p></body></html>",
        c = esc(&urlencode(collection)),
        k = esc(&urlencode(key))
    );
    s
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `GET /widget`: a compact, self-contained fragment for an iframe.
pub fn render_widget(data: &PageData) -> String {
    let items = attention(data);
    let (class, line) = if items.is_empty() {
        ("ok", "✔ All current".to_string())
    } else {
        ("attention", format!("⚠ {}", items.join(" · ")))
    };
    let mut s = format!(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=30><title>Sync Status</title>\
         <style>body{{margin:0;font:13px system-ui,sans-serif}}.w{{padding:.4rem .6rem}}.ok{{background:#dff3e4}}.attention{{background:#fde8e8}}\
         ul{{margin:.2rem 0;padding-left:1rem}}</style><div class=\"w {class}\"><strong>Sync Status</strong>: <span id=widget-summary>{}</span><ul>",
        esc(&line)
    );
    for t in data.report["targets"].as_array().into_iter().flatten() {
        let name = t["name"].as_str().unwrap_or("");
        let (word, _) = target_state(t, held_of(data, name));
        let _ = write!(
            s,
            "<li>{}: {} — {} pending, oldest {}</li>",
            esc(name),
            esc(&word),
            t["pending"],
            age(t["oldest_pending_age_s"].as_f64().unwrap_or(0.0))
        );
    }
    s.push_str("</ul></div>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(urlencode("a b/<"), "a%20b%2F%3C");
    }

    #[test]
    fn the_chart_has_one_bar_per_busy_minute() {
        let mut m = vec![0; 60];
        m[10] = 3;
        m[59] = 6;
        let svg = chart(&m);
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains("9 deliveries in the last hour"));
    }
}
