//! The Replay Worker's decisions, with tokio's clock paused and a scripted
//! transport: a real queue (sled in a temp folder) and a real delivery log.
//!
//! Rules checked: an outage never grows `attempts` and never dead-letters; its
//! backoff doubles from `backoff`, is capped by `max_backoff` and jittered down by
//! at most a half; a rejection grows `attempts` and dead-letters at
//! `max_attempts`; a partial batch waits `batch_window`, a full one does not;
//! shutdown ends a backoff at once, leaves an outage's delta released, and
//! records deliveries made.
//!
//! Rejection retries are scheduled on the wall clock (`not_before` is stored in
//! the queue), so these tests use a 1 ms `backoff` for them and check only counts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::Worker;
use crate::connector::{Format, RetryPolicy};
use crate::delivery_log::DeliveryLog;
use crate::queue::handle::QueueHandle;
use crate::queue::{Queue, TargetSpec};
use crate::record::{Change, ChangeSet, RecordId, now_ms};
use crate::translator::Translator;
use crate::transport::scripted::{Call, Script, Scripted};
use crate::transport::{Outcome, Transport};

struct Rig {
    _dir: tempfile::TempDir,
    queue: QueueHandle,
    log: PathBuf,
    stop: watch::Sender<bool>,
    calls: mpsc::UnboundedReceiver<Call>,
    worker: Option<Worker>,
}

fn rig(retry: RetryPolicy, batch_max: usize, batch_window: Duration, script: Script) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let spec = TargetSpec {
        name: "t".into(),
        collections: vec!["permits".into()],
        fields: None,
    };
    let queue = Queue::open(dir.path(), 1, vec![spec]).unwrap();
    let (queue, _writer) = QueueHandle::spawn(queue);
    let log = dir.path().join("delivery.log");
    let (stop, shutdown) = watch::channel(false);
    let (transport, calls) = Scripted::new(batch_max, batch_window, script);
    let worker = Worker {
        name: "t".into(),
        queue: queue.clone(),
        translator: Translator::new(&Format::Json {
            extension: "ndjson".into(),
        }),
        transport: Transport::Scripted(transport),
        retry,
        log: Arc::new(DeliveryLog::new(log.clone(), 1 << 20, 1)),
        health: Arc::default(),
        alerts: None,
        tap: None,
        shutdown,
        unacked: Vec::new(),
    };
    Rig {
        _dir: dir,
        queue,
        log,
        stop,
        calls,
        worker: Some(worker),
    }
}

impl Rig {
    async fn ingest(&self, key: &str) {
        let doc = [("permit_number".to_string(), serde_json::json!(key))].into();
        let set = ChangeSet {
            changes: vec![Change {
                record: RecordId::new("permits", key),
                doc: Some(doc),
            }],
            full_collections: Vec::new(),
        };
        self.queue.ingest(set).await.unwrap();
    }

    fn start(&mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.worker.take().unwrap().run())
    }

    async fn call(&mut self) -> Call {
        self.calls.recv().await.expect("the worker is running")
    }

    /// `(outcome, attempt)` of each delivery-log line, once there are `n`.
    async fn log_lines(&self, n: usize) -> Vec<(String, u64)> {
        loop {
            let lines: Vec<(String, u64)> = std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    let e: serde_json::Value = serde_json::from_str(l).unwrap();
                    (
                        e["outcome"].as_str().unwrap().to_string(),
                        e["attempt"].as_u64().unwrap(),
                    )
                })
                .collect();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn counts(&self) -> crate::queue::QueueCounts {
        let mut all = self.queue.call(|q| q.counts()).await.unwrap();
        all.remove(0)
    }
}

fn policy(max_attempts: u32, backoff: Duration, max_backoff: Duration) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff,
        max_backoff,
    }
}

fn down() -> Outcome {
    Outcome::Down {
        reason: "connection refused".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn an_outage_backs_off_exponentially_to_the_cap_and_never_counts() {
    // max_attempts = 2: had an outage counted, the delta would be dead after two.
    let retry = policy(2, Duration::from_secs(1), Duration::from_secs(8));
    let script: Script = Box::new(|_, n| if n <= 7 { down() } else { Outcome::Delivered });
    let mut rig = rig(retry, 1, Duration::ZERO, script);
    rig.ingest("1").await;
    let worker = rig.start();
    let mut calls = Vec::new();
    for _ in 0..8 {
        calls.push(rig.call().await);
    }
    for c in &calls {
        assert_eq!(c.attempts, [1], "an outage never grows attempts");
    }
    // The wait before try n+1 after n outages: backoff * 2^(n-1), capped at
    // max_backoff, jittered down by at most a half.
    for (n, pair) in calls.windows(2).enumerate() {
        let waited = pair[1].at - pair[0].at;
        let cap = Duration::from_secs(1 << n.min(3));
        assert!(
            waited >= cap / 2 && waited <= cap + Duration::from_millis(5),
            "after outage {}: waited {waited:?}, cap {cap:?}",
            n + 1
        );
    }
    let log = rig.log_lines(8).await;
    let mut expected = vec![("down".to_string(), 1); 7];
    expected.push(("delivered".to_string(), 1));
    assert_eq!(log, expected);
    let counts = rig.counts().await;
    assert_eq!((counts.dead, counts.pending), (0, 0));
    rig.stop.send(true).unwrap();
    worker.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn rejections_count_and_dead_letter_at_max_attempts() {
    let retry = policy(3, Duration::from_millis(1), Duration::from_millis(1));
    let script: Script = Box::new(|_, _| Outcome::Rejected {
        reason: "SOAP Fault soap:Server: locked".into(),
    });
    let mut rig = rig(retry, 1, Duration::ZERO, script);
    rig.ingest("1").await;
    let worker = rig.start();
    for attempt in 1..=3 {
        assert_eq!(rig.call().await.attempts, [attempt]);
    }
    let log = rig.log_lines(3).await;
    assert_eq!(
        log,
        [
            ("rejected".to_string(), 1),
            ("rejected".to_string(), 2),
            ("dead".to_string(), 3)
        ]
    );
    let dead = rig.queue.call(|q| q.dead_list(None)).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.queued.attempts, 3);
    assert!(
        dead[0]
            .1
            .queued
            .last_error
            .as_deref()
            .unwrap()
            .contains("locked"),
        "{:?}",
        dead[0].1.queued.last_error
    );
    // Nothing more is sent for it.
    rig.stop.send(true).unwrap();
    worker.await.unwrap();
    assert!(rig.calls.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_waits_the_window_and_a_full_one_goes_at_once() {
    let retry = policy(3, Duration::from_secs(1), Duration::from_secs(1));
    let window = Duration::from_millis(500);
    let mut rig = rig(retry, 3, window, Box::new(|_, _| Outcome::Delivered));
    for k in ["1", "2", "3"] {
        rig.ingest(k).await;
    }
    let started = Instant::now();
    let worker = rig.start();
    let full = rig.call().await;
    assert_eq!(full.ids.len(), 3);
    assert!(
        full.at - started < window,
        "a full batch waited {:?}",
        full.at - started
    );
    rig.ingest("4").await;
    let asked = Instant::now();
    let partial = rig.call().await;
    assert_eq!(partial.ids.len(), 1);
    assert!(
        partial.at - asked >= window,
        "a partial batch went after {:?}",
        partial.at - asked
    );
    rig.stop.send(true).unwrap();
    worker.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_a_backoff_at_once_and_leaves_the_delta_released() {
    let retry = policy(3, Duration::from_secs(3600), Duration::from_secs(3600));
    let mut rig = rig(retry, 1, Duration::ZERO, Box::new(|_, _| down()));
    rig.ingest("1").await;
    let worker = rig.start();
    let first = rig.call().await;
    rig.log_lines(1).await;
    rig.stop.send(true).unwrap();
    worker.await.unwrap();
    assert!(
        first.at.elapsed() < Duration::from_secs(60),
        "stopping waited out the backoff: {:?}",
        first.at.elapsed()
    );
    // Released, not held in flight, and not counted.
    let lease = rig
        .queue
        .call(|q| q.lease("t", 10, now_ms()))
        .await
        .unwrap();
    assert_eq!(lease.items.len(), 1);
    assert_eq!(lease.items[0].queued.attempts, 0);
}

#[tokio::test(start_paused = true)]
async fn deliveries_made_before_shutdown_are_recorded() {
    let retry = policy(3, Duration::from_secs(1), Duration::from_secs(1));
    let mut rig = rig(
        retry,
        1,
        Duration::ZERO,
        Box::new(|_, _| Outcome::Delivered),
    );
    rig.ingest("1").await;
    let worker = rig.start();
    rig.call().await;
    rig.log_lines(1).await;
    rig.stop.send(true).unwrap();
    worker.await.unwrap();
    let counts = rig.counts().await;
    assert_eq!(
        (counts.delivered, counts.pending, counts.in_flight),
        (1, 0, 0)
    );
}
