//! A read-only view: the status report (`hms-sync status --json`, `GET /status`),
//! Prometheus metrics (`GET /metrics`), the page for people (`GET /`, [`page`]),
//! the record lookup (`GET /lookup`, `GET /records/<collection>/<key>`), the
//! widget (`GET /widget`) and the page's live updates (`GET /events`, SSE).
//!
//! **Invariants:** nothing here changes state; the listener serves GET only; no
//! secret is ever part of a report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

pub mod page;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::control::Live;
use crate::queue::QueueCounts;
use crate::queue::handle::QueueHandle;
use crate::record::now_ms;
use crate::replay::Health;
use crate::watcher::IngestStats;

/// The JSON of SPEC §6. `health == None` means the daemon is not running.
pub fn report(counts: &[QueueCounts], health: Option<&Health>) -> Value {
    let now = now_ms();
    let targets: Vec<Value> = counts
        .iter()
        .map(|c| {
            let (state, last_error, paused, down_for, concurrency) = match health {
                Some(h) => {
                    let th = h.get(&c.name);
                    let state = if c.orphaned {
                        "orphaned"
                    } else if th.paused {
                        "paused"
                    } else if th.down {
                        "down"
                    } else {
                        "up"
                    };
                    let down_for = th.down_since.map(|t| t.elapsed().as_secs_f64());
                    (state, th.last_error, th.paused, down_for, th.concurrency)
                }
                None => (
                    "down",
                    Some("hms-sync is not running".to_string()),
                    false,
                    None,
                    None,
                ),
            };
            let age = c
                .oldest_queued_at_ms
                .map(|t| now.saturating_sub(t) as f64 / 1000.0)
                .unwrap_or(0.0);
            let state = if c.orphaned { "orphaned" } else { state };
            json!({
                "name": c.name,
                "state": state,
                "orphaned": c.orphaned,
                "pending": c.pending,
                "in_flight": c.in_flight,
                "dead": c.dead,
                "delivered": c.delivered,
                "oldest_pending_age_s": (age * 10.0).round() / 10.0,
                "last_error": last_error,
                "paused": paused,
                "down_for_s": down_for.map(|s| s.round()),
                "concurrency": concurrency,
            })
        })
        .collect();
    json!({ "running": health.is_some(), "targets": targets })
}

/// Adds each target's `held` (records whose changes wait behind a dead letter).
pub fn add_held(report: &mut Value, held: &std::collections::BTreeMap<String, u64>) {
    for t in report["targets"].as_array_mut().into_iter().flatten() {
        let n = t["name"].as_str().and_then(|n| held.get(n)).copied();
        t["held"] = json!(n.unwrap_or(0));
    }
}

/// The report of a running daemon: [`report`] plus unrouted collections and alerts.
pub fn live_report(counts: &[QueueCounts], live: &Live) -> Value {
    let mut v = report(counts, Some(&live.health));
    v["unrouted"] = live
        .routing
        .as_ref()
        .map(|r| {
            r.unrouted()
                .into_iter()
                .map(|(collection, changes)| json!({"collection": collection, "changes": changes}))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into();
    v["keep_unrouted"] = json!(live.routing.as_ref().is_some_and(|r| r.keep_unrouted));
    v["files_in_progress"] = live
        .ingest
        .as_ref()
        .map(|i| {
            i.files_in_progress()
                .into_iter()
                .map(|(dir, p)| {
                    json!({
                        "dir": dir.display().to_string(),
                        "file": p.file,
                        "phase": p.phase,
                        "rows_done": p.rows_done,
                        "rows_total": p.rows_total,
                        "running_s": now_ms().saturating_sub(p.started_ms) / 1000,
                    })
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into();
    let reload = live.reload_state();
    v["reload"] = if reload.at.is_some() {
        serde_json::to_value(&reload).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    v["alerts"] = live
        .alerts
        .as_ref()
        .map(|a| a.report())
        .unwrap_or(Value::Null);
    v
}

#[derive(Clone)]
struct Shared {
    queue: QueueHandle,
    live: Arc<Live>,
    ingest: Arc<IngestStats>,
    /// The delivery log, read backwards for `/records/...`.
    log_path: std::path::PathBuf,
    view: Arc<PageConfig>,
    /// Ends `/events` requests waiting for a change at shutdown.
    stop: watch::Receiver<bool>,
}

/// Who may read the listener: loopback always; `allow_from` networks; anyone
/// with the bearer token.
#[derive(Default)]
pub struct Access {
    pub allow_from: Vec<crate::config::Cidr>,
    /// Read from `token_file` at start; never logged.
    pub token: Option<String>,
}

impl Access {
    pub fn allows(&self, peer: std::net::IpAddr, authorization: Option<&str>) -> bool {
        let peer_v4 = match peer {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(std::net::IpAddr::V4)
                .unwrap_or(peer),
            v4 => v4,
        };
        if peer_v4.is_loopback() || self.allow_from.iter().any(|c| c.contains(peer)) {
            return true;
        }
        match (
            &self.token,
            authorization.and_then(|a| a.strip_prefix("Bearer ")),
        ) {
            (Some(want), Some(got)) => {
                let got = got.trim();
                // Same time whatever the first differing byte.
                want.len() == got.len()
                    && want
                        .bytes()
                        .zip(got.bytes())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            }
            _ => false,
        }
    }
}

async fn guard(
    State(access): State<Arc<Access>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if access.allows(peer.ip(), auth) {
        next.run(req).await
    } else {
        tracing::debug!(peer = %peer, "status listener: refused a client outside allow_from without the token");
        (
            StatusCode::FORBIDDEN,
            "not allowed: this address is not in [status] allow_from and no valid bearer token was given\n",
        )
            .into_response()
    }
}

/// What the page shows of the config.
pub struct PageConfig {
    /// The delivery log, read backwards for `/records/...` and `/lookup`.
    pub delivery_log: std::path::PathBuf,
    pub watches: Vec<crate::config::Watch>,
    pub max_queue_bytes: u64,
    pub min_free_bytes: u64,
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

impl Shared {
    async fn page_data(&self) -> Result<(page::PageData, Vec<Vec<u64>>), String> {
        let (counts, dead, busy, queue_bytes) = self
            .queue
            .call(|q| {
                let counts = q.counts()?;
                let mut dead = q.dead_list(None)?;
                dead.reverse();
                Ok((counts, dead, q.busy_reason(), q.pending_bytes()))
            })
            .await
            .map_err(|e| e.to_string())?;
        let minute = crate::replay::health::minute_now();
        let hours = counts
            .iter()
            .map(|c| self.live.health.get(&c.name).last_hour(minute))
            .collect();
        let ingest = &self.ingest;
        Ok((
            page::PageData {
                report: live_report(&counts, &self.live),
                dead,
                busy,
                queue_bytes,
                max_queue_bytes: self.view.max_queue_bytes,
                disk_free_bytes: free_bytes(&self.live.state_dir),
                min_free_bytes: self.view.min_free_bytes,
                watches: self.view.watches.clone(),
                socket_lines: (
                    ingest.lines_accepted.load(Relaxed),
                    ingest.lines_refused.load(Relaxed),
                ),
                socket_clients: ingest.socket_clients.load(Relaxed),
                last_taken: self
                    .view
                    .watches
                    .iter()
                    .map(|w| ingest.last_taken(&w.dir))
                    .collect(),
            },
            hours,
        ))
    }
}

impl Shared {
    async fn counts(&self) -> Result<Vec<QueueCounts>, String> {
        self.queue
            .call(|q| q.counts())
            .await
            .map_err(|e| e.to_string())
    }
}

/// Serves until shutdown. Binding errors are returned before serving starts.
pub async fn serve(
    addr: SocketAddr,
    queue: QueueHandle,
    live: Arc<Live>,
    ingest: Arc<IngestStats>,
    view: PageConfig,
    access: Access,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ([status] listen)"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(page))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .route("/records/{collection}/{key}", get(record_json))
        .route("/lookup", get(lookup))
        .route("/widget", get(widget))
        .route("/events", get(events))
        .with_state(Shared {
            queue,
            live,
            ingest,
            log_path: view.delivery_log.clone(),
            view: Arc::new(view),
            stop: shutdown.clone(),
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(access),
            guard,
        ));
    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await
        {
            tracing::error!(error = %e, "status listener failed");
        }
    });
    Ok((bound, task))
}

async fn status_json(State(s): State<Shared>) -> Response {
    match s.counts().await {
        Ok(c) => ([(header::CONTENT_TYPE, "application/json")], {
            let mut r = live_report(&c, &s.live);
            if let Ok(held) = s.queue.call(|q| crate::control::held_counts(q)).await {
                add_held(&mut r, &held);
            }
            r.to_string()
        })
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

/// `GET /records/<collection>/<key>`: what `where --json` prints.
async fn record_json(
    State(s): State<Shared>,
    axum::extract::Path((collection, key)): axum::extract::Path<(String, String)>,
) -> Response {
    let record = crate::record::RecordId::new(collection, key);
    let log_path = s.log_path.clone();
    match s
        .queue
        .call(move |q| crate::control::where_json(q, &record, &log_path))
        .await
    {
        Ok(v) => ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// The value of `name` in a query string (`+` and `%XX` decoded).
fn query_param(raw: Option<&str>, name: &str) -> Option<String> {
    raw?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() && s.is_char_boundary(i + 3) => {
                match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn page(
    State(s): State<Shared>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    let dead_page = query_param(q.as_deref(), "dead_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    match s.page_data().await {
        Ok((data, hours)) => Html(page::render(&data, &hours, dead_page)).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

/// How long `/events` holds a request open waiting for a change.
const EVENTS_HOLD: std::time::Duration = std::time::Duration::from_secs(25);

/// `GET /events`: Server-Sent Events for the page. One event a request, sent as
/// soon as the page's live parts differ from the ones the client has (its
/// `Last-Event-ID`, or `?since=` from the page), else after [`EVENTS_HOLD`];
/// `retry: 1000` makes the browser ask again a second later. A request at a
/// time per open page; nothing is kept per client.
async fn events(
    State(mut s): State<Shared>,
    headers: axum::http::HeaderMap,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or_else(|| query_param(q.as_deref(), "since"));
    let deadline = tokio::time::Instant::now() + EVENTS_HOLD;
    loop {
        let (data, hours) = match s.page_data().await {
            Ok(d) => d,
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
        };
        let parts = page::live_parts(&data, &hours);
        let id = page::parts_id(&parts);
        if since.as_deref() != Some(id.as_str()) || tokio::time::Instant::now() >= deadline {
            let body = format!(
                "retry: 1000\nid: {id}\nevent: status\ndata: {}\n\n",
                Value::Object(parts)
            );
            return (
                [
                    (header::CONTENT_TYPE, "text/event-stream"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
                .into_response();
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            // 204 tells the browser not to reconnect: the daemon is stopping.
            _ = s.stop.changed() => return StatusCode::NO_CONTENT.into_response(),
        }
    }
}

async fn widget(State(s): State<Shared>) -> Response {
    match s.page_data().await {
        Ok((data, _)) => Html(page::render_widget(&data)).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

async fn lookup(
    State(s): State<Shared>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    let collection = query_param(q.as_deref(), "collection")
        .unwrap_or_default()
        .trim()
        .to_string();
    let key = query_param(q.as_deref(), "key")
        .unwrap_or_default()
        .trim()
        .to_string();
    if collection.is_empty() || key.is_empty() {
        return Html(page::render_lookup(
            &collection,
            &key,
            Err("give both a collection and a key"),
        ))
        .into_response();
    }
    let record = crate::record::RecordId::new(collection.clone(), key.clone());
    let log_path = s.log_path.clone();
    let doc = s
        .queue
        .call(move |q| crate::control::where_json(q, &record, &log_path))
        .await;
    let html = match &doc {
        Ok(v) => page::render_lookup(&collection, &key, Ok(v)),
        Err(e) => page::render_lookup(&collection, &key, Err(&e.to_string())),
    };
    Html(html).into_response()
}

/// Prometheus label values escape `\`, `"` and newlines.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn metrics(State(s): State<Shared>) -> Response {
    let counts = match s.counts().await {
        Ok(c) => c,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    };
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let per = |f: &dyn Fn(&QueueCounts) -> f64| -> Vec<(String, f64)> {
        counts
            .iter()
            .map(|c| (format!("{{target=\"{}\"}}", label(&c.name)), f(c)))
            .collect()
    };
    family(
        "hms_sync_pending",
        "gauge",
        "Deltas waiting for delivery.",
        per(&|c| c.pending as f64),
    );
    family(
        "hms_sync_in_flight",
        "gauge",
        "Deltas handed to the transport.",
        per(&|c| c.in_flight as f64),
    );
    family(
        "hms_sync_dead",
        "gauge",
        "Dead letters waiting for an operator.",
        per(&|c| c.dead as f64),
    );
    family(
        "hms_sync_delivered_total",
        "counter",
        "Deltas delivered (kept across restarts).",
        per(&|c| c.delivered as f64),
    );
    let health: Vec<_> = counts
        .iter()
        .map(|c| (c.name.clone(), s.live.health.get(&c.name)))
        .collect();
    let per_health = |f: &dyn Fn(&crate::replay::TargetHealth) -> f64| -> Vec<(String, f64)> {
        health
            .iter()
            .map(|(n, h)| (format!("{{target=\"{}\"}}", label(n)), f(h)))
            .collect()
    };
    family(
        "hms_sync_paused",
        "gauge",
        "1 if an operator paused delivery to the target.",
        per_health(&|h| if h.paused { 1.0 } else { 0.0 }),
    );
    let now = now_ms();
    family(
        "hms_sync_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest change waiting for the target (0: none).",
        per(&|c| {
            c.oldest_queued_at_ms
                .map(|t| now.saturating_sub(t) as f64 / 1000.0)
                .unwrap_or(0.0)
        }),
    );
    let unrouted: Vec<(String, f64)> = s
        .live
        .routing
        .as_ref()
        .map(|r| r.unrouted())
        .unwrap_or_default()
        .into_iter()
        .map(|(c, n)| (format!("{{collection=\"{}\"}}", label(&c)), n as f64))
        .collect();
    family(
        "hms_sync_unrouted_changes_total",
        "counter",
        "Changes kept for a collection no connector receives (keep_unrouted), since start.",
        unrouted,
    );
    let firing = s
        .live
        .alerts
        .as_ref()
        .map(|a| a.report()["firing"].as_array().map(Vec::len).unwrap_or(0))
        .unwrap_or(0);
    family(
        "hms_sync_alerts_firing",
        "gauge",
        "Alert conditions firing now.",
        vec![(String::new(), firing as f64)],
    );
    family(
        "hms_sync_concurrency",
        "gauge",
        "Requests sent at once now (SOAP; moves with max_in_flight = \"auto\").",
        health
            .iter()
            .filter_map(|(n, h)| {
                h.concurrency
                    .map(|c| (format!("{{target=\"{}\"}}", label(n)), c as f64))
            })
            .collect(),
    );
    family(
        "hms_sync_rejected_total",
        "counter",
        "Rejections since start.",
        per_health(&|h| h.rejected as f64),
    );
    family(
        "hms_sync_up",
        "gauge",
        "1 if the target answered last time, 0 if it is down.",
        per_health(&|h| if h.down { 0.0 } else { 1.0 }),
    );
    family(
        "hms_sync_outage_seconds_total",
        "counter",
        "Seconds the target was down since start.",
        per_health(&|h| h.outage_seconds()),
    );
    let i = &s.ingest;
    family(
        "hms_sync_ingest_files_total",
        "counter",
        "Dropped files by result.",
        vec![
            (
                "{result=\"accepted\"}".into(),
                i.files_accepted.load(Relaxed) as f64,
            ),
            (
                "{result=\"rejected\"}".into(),
                i.files_rejected.load(Relaxed) as f64,
            ),
        ],
    );
    family(
        "hms_sync_ingest_lines_total",
        "counter",
        "Socket lines by result.",
        vec![
            (
                "{result=\"accepted\"}".into(),
                i.lines_accepted.load(Relaxed) as f64,
            ),
            (
                "{result=\"refused\"}".into(),
                i.lines_refused.load(Relaxed) as f64,
            ),
        ],
    );
    family(
        "hms_sync_ingest_changes_total",
        "counter",
        "Changes accepted from all sources.",
        vec![(String::new(), i.changes.load(Relaxed) as f64)],
    );
    family(
        "hms_sync_ingest_busy_total",
        "counter",
        "Times ingestion was paused by backpressure.",
        vec![(String::new(), i.busy.load(Relaxed) as f64)],
    );
    let (queue_bytes, held) = s
        .queue
        .call(|q| Ok((q.pending_bytes(), crate::control::held_counts(q)?)))
        .await
        .unwrap_or_default();
    family(
        "hms_sync_held",
        "gauge",
        "Records whose changes wait behind a dead letter.",
        per(&|c| held.get(&c.name).copied().unwrap_or(0) as f64),
    );
    family(
        "hms_sync_queue_bytes",
        "gauge",
        "Bytes of waiting deltas (ingestion pauses past max_queue_bytes).",
        vec![(String::new(), queue_bytes as f64)],
    );
    family(
        "hms_sync_queue_max_bytes",
        "gauge",
        "max_queue_bytes.",
        vec![(String::new(), s.view.max_queue_bytes as f64)],
    );
    family(
        "hms_sync_disk_free_bytes",
        "gauge",
        "Free bytes on the state folder's disk (ingestion pauses under min_free_disk_mib).",
        vec![(
            String::new(),
            free_bytes(&s.live.state_dir).unwrap_or(0) as f64,
        )],
    );
    let per_watch = |f: &dyn Fn(&crate::config::Watch) -> f64| -> Vec<(String, f64)> {
        s.view
            .watches
            .iter()
            .map(|w| {
                (
                    format!("{{dir=\"{}\"}}", label(&w.dir.display().to_string())),
                    f(w),
                )
            })
            .collect()
    };
    family(
        "hms_sync_watch_files_waiting",
        "gauge",
        "Files waiting in a watched folder.",
        per_watch(&|w| page::files_waiting(&w.dir) as f64),
    );
    family(
        "hms_sync_watch_files_rejected",
        "gauge",
        "Files in a watched folder's .rejected/.",
        per_watch(&|w| crate::alerts::rejected_list(&w.dir, 0).0 as f64),
    );
    let writer = &s.queue.stats;
    family(
        "hms_sync_writer_seconds_total",
        "counter",
        "Where the queue's writer thread spends its time: ingest (diff and write changes), calls (the workers' lease and ack, operator reads), commit (pages and fsync), idle (waiting for work).",
        [
            ("ingest", &writer.ingest_micros_total),
            ("calls", &writer.call_micros_total),
            ("commit", &writer.commit_micros_total),
            ("idle", &writer.idle_micros_total),
        ]
        .into_iter()
        .map(|(phase, c)| {
            (
                format!("{{phase=\"{phase}\"}}"),
                c.load(Relaxed) as f64 / 1e6,
            )
        })
        .collect(),
    );
    family(
        "hms_sync_deliveries_total",
        "counter",
        "Delivery outcomes since start: delivered, rejected (will retry), dead (dead-lettered), down (one per probe of a down target).",
        health
            .iter()
            .flat_map(|(n, h)| {
                [
                    ("delivered", h.delivered),
                    ("rejected", h.rejected.saturating_sub(h.dead_lettered)),
                    ("dead", h.dead_lettered),
                    ("down", h.down_probes),
                ]
                .map(|(outcome, v)| {
                    (
                        format!("{{target=\"{}\",outcome=\"{outcome}\"}}", label(n)),
                        v as f64,
                    )
                })
            })
            .collect(),
    );
    family(
        "hms_sync_orphaned",
        "gauge",
        "1 for a target whose connector was removed while deltas or dead letters were left (`hms-sync forget TARGET` drops them).",
        counts
            .iter()
            .filter(|c| c.orphaned)
            .map(|c| (format!("{{target=\"{}\"}}", label(&c.name)), 1.0))
            .collect(),
    );
    let reload = s.live.reload_state();
    family(
        "hms_sync_reload_failed",
        "gauge",
        "1 if the last reload (SIGHUP, `hms-sync reload`) was refused; the running config stays.",
        vec![(
            String::new(),
            if reload.error.is_some() { 1.0 } else { 0.0 },
        )],
    );
    let st = &s.queue.stats;
    family(
        "hms_sync_commit_seconds",
        "histogram",
        "Durable queue commits (redb commit + fdatasync).",
        Vec::new(),
    );
    let mut cumulative = 0;
    for (bound, n) in crate::queue::handle::COMMIT_BUCKETS_S
        .iter()
        .zip(&st.commit_buckets)
    {
        cumulative += n.load(Relaxed);
        out.push_str(&format!(
            "hms_sync_commit_seconds_bucket{{le=\"{bound}\"}} {cumulative}\n"
        ));
    }
    let commits = st.commits.load(Relaxed);
    out.push_str(&format!(
        "hms_sync_commit_seconds_bucket{{le=\"+Inf\"}} {commits}\nhms_sync_commit_seconds_sum {}\nhms_sync_commit_seconds_count {commits}\n",
        st.commit_micros_total.load(Relaxed) as f64 / 1e6,
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_allowed_networks_and_the_token_may_read_others_may_not() {
        let access = Access {
            allow_from: vec![crate::config::Cidr::parse("10.20.0.0/16").unwrap()],
            token: Some("s3cret".into()),
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(access.allows(ip("127.0.0.1"), None));
        assert!(access.allows(ip("::1"), None));
        assert!(access.allows(ip("10.20.1.1"), None));
        assert!(!access.allows(ip("10.21.1.1"), None));
        assert!(access.allows(ip("10.21.1.1"), Some("Bearer s3cret")));
        assert!(!access.allows(ip("10.21.1.1"), Some("Bearer s3creX")));
        assert!(!access.allows(ip("10.21.1.1"), Some("s3cret")));
        assert!(!Access::default().allows(ip("192.0.2.1"), Some("Bearer ")));
    }

    #[test]
    fn query_parameters_are_decoded() {
        let q = Some("collection=per%6Dits&key=a+b%3C&x");
        assert_eq!(query_param(q, "collection").as_deref(), Some("permits"));
        assert_eq!(query_param(q, "key").as_deref(), Some("a b<"));
        assert_eq!(query_param(q, "x").as_deref(), Some(""));
        assert_eq!(query_param(q, "y"), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
