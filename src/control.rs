//! The local control path: how `status`, `dead`, `resync` and `translate` reach a
//! running daemon (the queue file admits one process), over a Unix socket in the state
//! folder. When no daemon answers, the same requests run on the queue directly.
//!
//! **Invariants:** the control socket is a local file (mode 0660), never a TCP
//! port; every request runs through the same [`execute`] whether the daemon runs
//! or not.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::delivery_log::{DeliveryLog, Entry};
use crate::queue::handle::QueueHandle;
use crate::queue::{DeadLetter, Queue, QueueError, delivery_id};
use crate::record::{RecordId, format_ms};
use crate::replay::Health;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    DeadList {
        target: Option<String>,
    },
    DeadShow {
        id: String,
    },
    DeadRetry {
        ids: Vec<String>,
        all: bool,
        target: Option<String>,
    },
    DeadDrop {
        ids: Vec<String>,
    },
    Resync {
        target: String,
        collection: Option<String>,
        after: Option<RecordId>,
        limit: usize,
    },
    ResyncCount {
        target: String,
        collection: Option<String>,
    },
    Snapshot {
        collection: String,
        key: String,
    },
    /// `pause` / `resume`: kept in `<state_dir>/paused.json`, applied at once.
    Pause {
        target: String,
        paused: bool,
    },
    /// Wake a target's worker out of its backoff now.
    Probe {
        target: String,
    },
    /// `where COLLECTION KEY`: the record and, per target, where its change is.
    Where {
        collection: String,
        key: String,
    },
    /// `resync TARGET --key K`: one record in full.
    ResyncKey {
        target: String,
        collection: String,
        key: String,
    },
    /// `forget TARGET`: drop the queue of a target whose connector was removed.
    Forget {
        target: String,
    },
    /// `reload`: re-read the config and connectors (as SIGHUP does); answers
    /// what changed or why the reload was refused.
    Reload,
    /// `tap TARGET`: one answer line, then one line per payload sent, until the
    /// client goes away.
    Tap {
        target: String,
    },
}

/// What the last reload did, for `status`, the page and `reload`'s answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReloadState {
    /// When it ran (None: never since start).
    pub at: Option<String>,
    /// Why it was refused (the running config stays); None: it applied.
    pub error: Option<String>,
    /// Settings that changed in the file but apply only after a restart.
    pub needs_restart: Vec<String>,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    /// Removed connectors whose queue is kept (`forget` drops it).
    pub orphaned: Vec<String>,
    /// Removed connectors with nothing queued.
    pub removed: Vec<String>,
    /// Orphaned targets whose connector came back.
    pub returned: Vec<String>,
}

/// A `reload` request for the daemon's main loop, with where to send the result.
pub type ReloadAsk = tokio::sync::oneshot::Sender<ReloadState>;

/// What the daemon knows beside the queue, for the control path and the page.
pub struct Live {
    pub health: Arc<Health>,
    pub state_dir: std::path::PathBuf,
    pub alerts: Option<Arc<crate::alerts::Alerts>>,
    pub routing: Option<Arc<crate::watcher::Routing>>,
    pub ingest: Option<Arc<crate::watcher::IngestStats>>,
    /// Where `tap` subscribers listen.
    pub taps: Arc<crate::tap::Taps>,
    /// The last reload's result.
    pub reload: std::sync::Mutex<ReloadState>,
    /// The daemon's main loop takes `reload` requests here.
    pub reload_requests: Option<tokio::sync::mpsc::Sender<ReloadAsk>>,
}

impl Live {
    pub fn reload_state(&self) -> ReloadState {
        self.reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Most delivery-log lines `where` shows, and most bytes it reads backwards.
pub const WHERE_LOG_LINES: usize = 20;
pub const WHERE_LOG_BYTES: u64 = 64 << 20;

/// What `where --json` prints and `GET /records/<collection>/<key>` answers:
/// the record's last known state and, per target that receives its collection,
/// the last delivery, the pending delta, in flight, held, or dead with the reason.
pub fn where_json(q: &Queue, record: &RecordId, log_path: &Path) -> Result<Value, QueueError> {
    let lines = crate::delivery_log::read_record_backwards(
        log_path,
        &record.collection,
        &record.key,
        WHERE_LOG_LINES,
        WHERE_LOG_BYTES,
    )
    .unwrap_or_default();
    // Deltas the log names that the record entry may no longer point at (leased
    // once, then back for a retry): looked up by seq, never by a scan.
    let mut also: Vec<(String, u64)> = Vec::new();
    for e in &lines {
        if let Some((t, seq)) = crate::queue::parse_delivery_id(&e.id)
            && !also.iter().any(|(t2, s2)| t2 == t && *s2 == seq)
        {
            also.push((t.to_string(), seq));
        }
    }
    let view = q.record_view(record, &also)?;
    let targets: Vec<Value> = view
        .targets
        .iter()
        .map(|tv| {
            let delivered = lines
                .iter()
                .find(|e| e.target == tv.target && e.outcome == "delivered");
            let pending: Vec<Value> = tv
                .waiting
                .iter()
                .chain(tv.sealed.iter())
                .map(|qd| {
                    let mut v = delta_json(&qd.delta);
                    v["id"] = json!(delivery_id(&tv.target, qd.seq));
                    v["attempts"] = json!(qd.attempts);
                    v["queued_at"] = json!(format_ms(qd.queued_at_ms));
                    v["last_error"] = json!(qd.last_error);
                    v
                })
                .collect();
            let state = if tv.dead.is_some() {
                "dead"
            } else if !tv.in_flight.is_empty() {
                "in_flight"
            } else if !pending.is_empty() {
                "pending"
            } else if delivered.is_some() {
                "delivered"
            } else {
                "nothing_waiting"
            };
            json!({
                "target": tv.target,
                "state": state,
                "last_delivered": delivered.map(|e| json!({"id": e.id, "at": e.ts, "op": e.op})),
                "pending": pending,
                "in_flight": tv.in_flight.iter().map(|s| delivery_id(&tv.target, *s)).collect::<Vec<_>>(),
                "dead": tv.dead.as_ref().map(|d| {
                    let mut v = dead_json(&tv.target, d);
                    v["delta"] = delta_json(&d.queued.delta);
                    v
                }),
                "held": tv.dead.as_ref().and_then(|d| d.held.as_ref()).map(delta_json),
            })
        })
        .collect();
    Ok(json!({
        "collection": record.collection,
        "key": record.key,
        "known": view.known,
        "state": view.state.map(|r| Value::Object(r.into_iter().collect())),
        "targets": targets,
        "log": lines.iter().map(|e| serde_json::to_value(e).unwrap_or(Value::Null)).collect::<Vec<_>>(),
    }))
}

/// The `dead list --json` shape of SPEC §6.
pub fn dead_json(target: &str, d: &DeadLetter) -> Value {
    let q = &d.queued;
    json!({
        "id": delivery_id(target, q.seq),
        "target": target,
        "collection": q.record.collection,
        "key": q.record.key,
        "op": q.delta.op.as_str(),
        "attempts": q.attempts,
        "last_error": q.last_error,
        "dead_at": format_ms(d.dead_at_ms),
        "held": d.held.is_some(),
    })
}

fn delta_json(delta: &crate::record::Delta) -> Value {
    json!({
        "op": delta.op.as_str(),
        "set": delta.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<serde_json::Map<_, _>>(),
        "unset": delta.unset,
    })
}

fn log_operator(log: &DeliveryLog, target: &str, d: &DeadLetter, outcome: &str) {
    let q = &d.queued;
    let e = Entry::now(
        target,
        &delivery_id(target, q.seq),
        &q.record.collection,
        &q.record.key,
        q.delta.op.as_str(),
        outcome,
        q.attempts,
    );
    log.append(&e);
}

/// Runs a request on the queue. `Status` is answered with the queue's half; the
/// daemon adds its live health.
pub fn execute(q: &mut Queue, req: Request, log: &DeliveryLog) -> Result<Value, QueueError> {
    Ok(match req {
        Request::Status => serde_json::to_value(q.counts()?).unwrap_or(Value::Null),
        Request::DeadList { target } => {
            if let Some(t) = &target
                && !q.target_names().contains(t)
            {
                return Err(QueueError::UnknownTarget(t.clone()));
            }
            Value::Array(
                q.dead_list(target.as_deref())?
                    .iter()
                    .map(|(t, d)| dead_json(t, d))
                    .collect(),
            )
        }
        Request::DeadShow { id } => {
            let (t, d) = q.dead_get(&id)?;
            let mut v = dead_json(&t, &d);
            v["delta"] = delta_json(&d.queued.delta);
            v["held_delta"] = d.held.as_ref().map(delta_json).unwrap_or(Value::Null);
            v["record"] = q
                .snapshot(&d.queued.record)?
                .map(|r| Value::Object(r.into_iter().collect()))
                .unwrap_or(Value::Null);
            v
        }
        Request::DeadRetry { ids, all, target } => {
            for id in &ids {
                q.dead_get(id)?; // all or nothing: check every id first
            }
            let ids = if all {
                q.dead_list(target.as_deref())?
                    .iter()
                    .map(|(t, d)| delivery_id(t, d.queued.seq))
                    .collect()
            } else {
                ids
            };
            let mut done = Vec::new();
            for id in ids {
                let dead = q.dead_retry(&id)?;
                log_operator(log, &parse_target(&id), &dead, "retried");
                done.push(id);
            }
            json!({ "retried": done })
        }
        Request::DeadDrop { ids } => {
            for id in &ids {
                q.dead_get(id)?;
            }
            let mut done = Vec::new();
            for id in ids {
                let dead = q.dead_drop(&id)?;
                log_operator(log, &parse_target(&id), &dead, "dropped");
                done.push(id);
            }
            json!({ "dropped": done })
        }
        Request::Resync {
            target,
            collection,
            after,
            limit,
        } => {
            let (queued, next) = q.resync(
                &target,
                collection.as_deref(),
                after.as_ref(),
                limit.clamp(1, 10_000),
            )?;
            json!({ "queued": queued, "next": next })
        }
        Request::ResyncCount { target, collection } => {
            let collections: Vec<String> = q
                .collections_of(&target)?
                .into_iter()
                .filter(|c| collection.as_ref().is_none_or(|want| want == c))
                .collect();
            json!({ "records": q.count_records(&collections)? })
        }
        Request::Where { collection, key } => {
            where_json(q, &RecordId::new(collection, key), log.path())?
        }
        Request::ResyncKey {
            target,
            collection,
            key,
        } => {
            if !q.collections_of(&target)?.contains(&collection) {
                return Ok(json!({ "queued": 0, "received": false }));
            }
            let record = RecordId::new(collection, key);
            if q.snapshot(&record)?.is_none() {
                return Ok(json!({ "queued": 0, "known": false }));
            }
            let before = q.record_before(&record)?;
            let (queued, _) = q.resync(&target, Some(&record.collection), before.as_ref(), 1)?;
            json!({ "queued": queued, "known": true })
        }
        Request::Forget { target } => {
            let (deltas, dead) = q.forget(&target)?;
            // A pause of the forgotten target must not hold back a new connector
            // of that name.
            if let Err(e) = crate::paused::set(q.state_dir(), &target, false) {
                tracing::warn!(target_name = %target, error = %format!("{e:#}"), "cannot clear the forgotten target's pause");
            }
            // Not a delivery outcome (SPEC §7 lists those): the daemon's log says it.
            tracing::warn!(target_name = %target, deltas, dead, "operator forgot the queue of a removed connector");
            json!({ "forgotten": target, "deltas": deltas, "dead": dead })
        }
        // Only a running daemon can apply these (the CLI handles "not running").
        Request::Pause { .. } | Request::Probe { .. } | Request::Reload | Request::Tap { .. } => {
            json!({ "running": false })
        }
        Request::Snapshot { collection, key } => q
            .snapshot(&RecordId::new(collection, key))?
            .map(|r| Value::Object(r.into_iter().collect()))
            .unwrap_or(Value::Null),
    })
}

/// Per target, how many records hold changes behind a dead letter (one read of
/// the dead letters; there are few, or an alert has long fired).
pub fn held_counts(q: &Queue) -> Result<std::collections::BTreeMap<String, u64>, QueueError> {
    let mut held = std::collections::BTreeMap::new();
    for (t, d) in q.dead_list(None)? {
        if d.held.is_some() {
            *held.entry(t).or_insert(0) += 1;
        }
    }
    Ok(held)
}

fn parse_target(id: &str) -> String {
    crate::queue::parse_delivery_id(id)
        .map(|(t, _)| t.to_string())
        .unwrap_or_default()
}

/// The daemon's side: answers one JSON request line per connection line.
pub async fn serve(
    listener: UnixListener,
    queue: QueueHandle,
    live: Arc<Live>,
    log: Arc<DeliveryLog>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    // Out of file descriptors, say: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let (queue, live, log) = (queue.clone(), live.clone(), log.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            // Requests are one short line each; a client cannot make us hold more.
            let mut lines = BufReader::new(read.take(1 << 20)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match serde_json::from_str::<Request>(&line) {
                    Err(e) => json!({"ok": false, "error": format!("bad control request: {e}")}),
                    Ok(Request::Tap { target }) => {
                        tap(&target, &queue, &live, &mut lines, &mut write).await;
                        break;
                    }
                    Ok(req) => answer(req, &queue, &live, &log).await,
                };
                if write
                    .write_all(format!("{answer}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}

async fn answer(req: Request, queue: &QueueHandle, live: &Live, log: &Arc<DeliveryLog>) -> Value {
    match &req {
        Request::Pause { target, paused } => {
            return match pause(queue, live, target, *paused).await {
                Ok(v) => json!({"ok": true, "result": v}),
                Err(e) => json!({"ok": false, "error": e}),
            };
        }
        Request::Reload => {
            let Some(tx) = &live.reload_requests else {
                return json!({"ok": false, "error": "this process cannot reload"});
            };
            let (ask, answer) = tokio::sync::oneshot::channel();
            if tx.send(ask).await.is_err() {
                return json!({"ok": false, "error": "hms-sync is stopping"});
            }
            return match answer.await {
                Ok(state) => json!({"ok": true, "result": state}),
                Err(_) => json!({"ok": false, "error": "hms-sync is stopping"}),
            };
        }
        Request::Probe { target } => {
            let known = queue.call(|q| Ok(q.target_names())).await;
            if !known.is_ok_and(|k| k.contains(target)) {
                return json!({"ok": false, "error": QueueError::UnknownTarget(target.clone()).to_string()});
            }
            if queue
                .call({
                    let t = target.clone();
                    move |q| Ok(q.is_orphaned(&t))
                })
                .await
                .unwrap_or(false)
            {
                return json!({"ok": false, "error": format!("{target} has no connector any more (orphaned); nothing to probe")});
            }
            let h = live.health.get(target);
            if h.paused {
                return json!({"ok": false, "error": format!("{target} is paused; `hms-sync resume {target}` first")});
            }
            live.health.kick(target);
            return json!({"ok": true, "result": {"probed": target, "was_down": h.down, "last_error": h.last_error}});
        }
        _ => {}
    }
    let is_status = matches!(req, Request::Status);
    let log = log.clone();
    match queue.call(move |q| execute(q, req, &log)).await {
        Ok(v) if is_status => {
            let counts: Vec<crate::queue::QueueCounts> =
                serde_json::from_value(v).unwrap_or_default();
            let mut report = crate::status::live_report(&counts, live);
            if let Ok(held) = queue.call(|q| held_counts(q)).await {
                crate::status::add_held(&mut report, &held);
            }
            json!({"ok": true, "result": report})
        }
        Ok(v) => json!({"ok": true, "result": v}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

/// Streams `target`'s payloads to one `tap` client until it goes away or the
/// daemon stops: first `{"ok":true,...}`, then one JSON line per payload, and
/// `{"lagged":N}` when the client fell behind and lost N.
async fn tap<R: tokio::io::AsyncBufRead + Unpin>(
    target: &str,
    queue: &QueueHandle,
    live: &Live,
    client: &mut tokio::io::Lines<R>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) {
    let t = target.to_string();
    let known = queue
        .call(move |q| Ok(q.target_names().contains(&t) && !q.is_orphaned(&t)))
        .await
        .unwrap_or(false);
    if !known {
        let e = QueueError::UnknownTarget(target.to_string()).to_string();
        let _ = write
            .write_all(format!("{}\n", json!({"ok": false, "error": e})).as_bytes())
            .await;
        return;
    }
    let mut sub = live.taps.subscribe(target);
    let hello = json!({"ok": true, "result": {"tapping": target}});
    if write
        .write_all(format!("{hello}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            e = sub.events.recv() => e,
            // The client hung up (or sent something): stop listening.
            _ = client.next_line() => return,
        };
        let line = match event {
            Ok(e) => serde_json::to_string(&e).unwrap_or_default(),
            Err(RecvError::Lagged(n)) => json!({ "lagged": n }).to_string(),
            Err(RecvError::Closed) => return,
        };
        // A client that stops reading fills its socket: this task waits, the
        // channel drops its oldest payloads; delivery never waits.
        if write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn pause(
    queue: &QueueHandle,
    live: &Live,
    target: &str,
    paused: bool,
) -> Result<Value, String> {
    let known = queue
        .call(|q| Ok(q.target_names()))
        .await
        .map_err(|e| e.to_string())?;
    if !known.iter().any(|k| k == target) {
        return Err(QueueError::UnknownTarget(target.to_string()).to_string());
    }
    // Durable first: a pause the command reported survives kill -9.
    let changed =
        crate::paused::set(&live.state_dir, target, paused).map_err(|e| format!("{e:#}"))?;
    live.health.set_paused(target, paused);
    tracing::info!(target_name = %target, paused, "operator {}", if paused { "paused delivery" } else { "resumed delivery" });
    Ok(json!({"target": target, "paused": paused, "changed": changed, "running": true}))
}

/// The CLI's side: one request to a running daemon. `Ok(None)`: no daemon answers.
pub async fn ask(socket: &Path, req: &Request) -> anyhow::Result<Option<Result<Value, String>>> {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{}\n", serde_json::to_string(req)?).as_bytes())
        .await?;
    let mut lines = BufReader::new(read).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "hms-sync did not answer on {} within 30 s (is its disk hanging?)",
                socket.display()
            )
        })??
        .ok_or_else(|| anyhow::anyhow!("the daemon closed the control connection"))?;
    let v: Value = serde_json::from_str(&line)?;
    if v["ok"] == json!(true) {
        Ok(Some(Ok(v["result"].clone())))
    } else {
        Ok(Some(Err(v["error"]
            .as_str()
            .unwrap_or("unknown error")
            .to_string())))
    }
}
