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
        Request::Snapshot { collection, key } => q
            .snapshot(&RecordId::new(collection, key))?
            .map(|r| Value::Object(r.into_iter().collect()))
            .unwrap_or(Value::Null),
    })
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
    health: Arc<Health>,
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
        let (queue, health, log) = (queue.clone(), health.clone(), log.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            // Requests are one short line each; a client cannot make us hold more.
            let mut lines = BufReader::new(read.take(1 << 20)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match serde_json::from_str::<Request>(&line) {
                    Err(e) => json!({"ok": false, "error": format!("bad control request: {e}")}),
                    Ok(req) => answer(req, &queue, &health, &log).await,
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

async fn answer(
    req: Request,
    queue: &QueueHandle,
    health: &Health,
    log: &Arc<DeliveryLog>,
) -> Value {
    let is_status = matches!(req, Request::Status);
    let log = log.clone();
    match queue.call(move |q| execute(q, req, &log)).await {
        Ok(v) if is_status => {
            let counts: Vec<crate::queue::QueueCounts> =
                serde_json::from_value(v).unwrap_or_default();
            json!({"ok": true, "result": crate::status::report(&counts, Some(health))})
        }
        Ok(v) => json!({"ok": true, "result": v}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
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
