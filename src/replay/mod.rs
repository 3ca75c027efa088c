//! Replay Worker: one per target. Leases ready deltas in queue order, has them
//! translated and handed to the transport, then acks, retries with backoff, or
//! dead-letters them. The only place that decides what a failure means.
//!
//! **Invariants:** an outage never grows a delta's `attempts` and never
//! dead-letters; a rejection always does grow it; the worker sleeps on a
//! notifier (no polling loop delays delivery) and wakes for new work, for the
//! earliest retry, or for shutdown.

pub mod health;
#[cfg(test)]
mod worker_tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::connector::{Connector, RetryPolicy};
use crate::delivery_log::{DeliveryLog, Entry};
use crate::queue::handle::QueueHandle;
use crate::queue::{DeadLetter, Leased, delivery_id};
use crate::record::now_ms;
use crate::translator::{Item, Translator};
use crate::transport::{Outcome, Payload, Rendering, Transport};
pub use health::{Health, TargetHealth};

/// Wait before try `n` (1-based) after a failure: `backoff * 2^(n-1)`, capped,
/// then jittered down by up to a half so that many workers do not beat together.
pub fn backoff_delay(policy: &RetryPolicy, n: u32) -> Duration {
    let exp = policy
        .backoff
        .saturating_mul(1u32 << n.saturating_sub(1).min(20));
    let capped = exp.min(policy.max_backoff);
    let jitter = fastrand::f64() * 0.5;
    capped.mul_f64(1.0 - jitter)
}

/// Longest error text kept of one failure, in bytes. A legacy system may answer
/// with a megabyte of fault text; it is copied into the queue's `last_error`, the
/// dead letter, `status` and a delivery-log line on every attempt, so only its
/// start is kept, with its length.
pub const MAX_ERROR_BYTES: usize = 2048;

/// `reason` if it is at most [`MAX_ERROR_BYTES`] long, else its start (cut on a
/// character boundary) and how long it was: `… (1048576 bytes in all)`.
pub fn bounded(reason: String) -> String {
    if reason.len() <= MAX_ERROR_BYTES {
        return reason;
    }
    let mut cut = MAX_ERROR_BYTES;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &reason[..cut], reason.len())
}

/// The outcome with its reason bounded (see [`bounded`]).
fn with_bounded_reason(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Delivered => Outcome::Delivered,
        Outcome::Down { reason } => Outcome::Down {
            reason: bounded(reason),
        },
        Outcome::Rejected { reason } => Outcome::Rejected {
            reason: bounded(reason),
        },
        Outcome::ClientFault { reason } => Outcome::ClientFault {
            reason: bounded(reason),
        },
    }
}

/// Exactly `n` outcomes, one per payload sent. A transport that gave fewer
/// (a bug) must not leave the rest leased until a restart, which would block
/// their records: they count as an outage and go back to the queue.
fn one_per_payload(target: &str, mut outcomes: Vec<Outcome>, n: usize) -> Vec<Outcome> {
    if outcomes.len() != n {
        tracing::error!(target_name = %target, payloads = n, outcomes = outcomes.len(), "the transport did not answer for every delta; the rest go back to the queue");
        outcomes.resize(
            n,
            Outcome::Down {
                reason: "the transport gave no outcome for this delta".into(),
            },
        );
    }
    outcomes
}

pub struct Worker {
    pub name: String,
    pub queue: QueueHandle,
    pub translator: Translator,
    pub transport: Transport,
    pub retry: RetryPolicy,
    pub log: Arc<DeliveryLog>,
    pub health: Arc<Health>,
    /// Where dead letters are reported for `alert_command` (None in unit tests).
    pub alerts: Option<Arc<crate::alerts::Alerts>>,
    /// Where `hms-sync tap` listens (None: nobody can).
    pub tap: Option<Arc<crate::tap::Taps>>,
    pub shutdown: watch::Receiver<bool>,
    /// Delivered, with the ack still to be recorded: it rides with the next lease,
    /// so that one commit (one fsync) covers a delivery's ack and the next lease.
    /// A crash before that commit repeats only these deliveries (same ids).
    unacked: Vec<u64>,
}

/// Sleeps for `d` unless shutdown comes first; true if it slept the whole time.
async fn sleep_or_stop(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.changed() => false,
    }
}

impl Worker {
    pub fn new(
        connector: &Connector,
        queue: QueueHandle,
        log: Arc<DeliveryLog>,
        health: Arc<Health>,
        alerts: Arc<crate::alerts::Alerts>,
        shutdown: watch::Receiver<bool>,
    ) -> Worker {
        let translator = Translator::new(&connector.format);
        let mut transport = Transport::new(&connector.name, &connector.transport, &translator);
        transport.watch_shutdown(shutdown.clone());
        Worker {
            name: connector.name.clone(),
            queue,
            translator,
            transport,
            retry: connector.retry,
            log,
            health,
            alerts: Some(alerts),
            tap: None,
            shutdown,
            unacked: Vec::new(),
        }
    }

    /// Publishes every payload to `hms-sync tap` subscribers of this target.
    pub fn with_tap(mut self, taps: Arc<crate::tap::Taps>) -> Worker {
        self.tap = Some(taps);
        self
    }

    pub async fn run(mut self) {
        let wake = self.queue.waker(&self.name);
        let kick = self.health.kicker(&self.name);
        let mut down_streak: u32 = 0;
        tracing::info!(target_name = %self.name, "worker started");
        self.health
            .set_concurrency(&self.name, self.transport.concurrency());
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            self.health.beat(&self.name);
            if self.health.is_paused(&self.name) {
                // Planned maintenance: nothing leased, nothing sent, nothing
                // counted, until `resume` kicks the worker.
                tracing::info!(target_name = %self.name, "paused");
                self.record_acks().await;
                tokio::select! {
                    _ = kick.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = self.shutdown.changed() => {}
                }
                if !self.health.is_paused(&self.name) {
                    tracing::info!(target_name = %self.name, "resumed");
                    down_streak = 0;
                }
                continue;
            }
            let (max, window) = self.transport.batch_limits();
            let mut lease = match self.lease(max).await {
                Some(l) => l,
                None => {
                    // The queue failed; it has logged why. Try again shortly.
                    if !sleep_or_stop(&mut self.shutdown, Duration::from_secs(1)).await {
                        break;
                    }
                    continue;
                }
            };
            if lease.items.is_empty() {
                let wait = lease
                    .next_due_ms
                    .map(|due| Duration::from_millis(due.saturating_sub(now_ms())))
                    .unwrap_or(Duration::from_secs(30));
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = kick.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.shutdown.changed() => {}
                }
                continue;
            }
            if !window.is_zero() && lease.items.len() < max && down_streak == 0 {
                sleep_or_stop(&mut self.shutdown, window).await;
                if let Some(more) = self.lease(max - lease.items.len()).await {
                    lease.items.extend(more.items);
                }
            }
            let outcome = self.deliver(lease.items).await;
            self.health
                .set_concurrency(&self.name, self.transport.concurrency());
            match outcome {
                Some(Outcome::Down { reason }) => {
                    down_streak += 1;
                    let delay = backoff_delay(&self.retry, down_streak);
                    tracing::warn!(target_name = %self.name, %reason, retry_in = ?delay, "target is down");
                    // `probe` (or `pause`) cuts the backoff short.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = kick.notified() => {
                            tracing::info!(target_name = %self.name, "probing now (operator)");
                        }
                        _ = self.shutdown.changed() => break,
                    }
                }
                Some(_) => down_streak = 0,
                None => {}
            }
        }
        self.record_acks().await;
        tracing::info!(target_name = %self.name, "worker stopped");
    }

    /// Records the deliveries still unacked (before the worker waits or stops).
    async fn record_acks(&mut self) {
        if !self.unacked.is_empty() {
            let (name, seqs) = (self.name.clone(), std::mem::take(&mut self.unacked));
            if let Err(e) = self.queue.call(move |q| q.ack(&name, &seqs)).await {
                tracing::error!(target_name = %self.name, error = %e, "cannot record deliveries");
            }
        }
    }

    /// Records the deliveries still unacked, then leases up to `max` deltas, in one
    /// commit.
    async fn lease(&mut self, max: usize) -> Option<crate::queue::Lease> {
        let name = self.name.clone();
        let acks = std::mem::take(&mut self.unacked);
        match self
            .queue
            .call(move |q| {
                q.ack(&name, &acks)?;
                q.lease(&name, max, now_ms())
            })
            .await
        {
            Ok(l) => Some(l),
            Err(e) => {
                // Deliveries not recorded are sent again after a restart (same ids).
                tracing::error!(target_name = %self.name, error = %e, "cannot lease from the queue");
                self.health
                    .down(&self.name, &format!("hms-sync cannot read its queue: {e}"));
                None
            }
        }
    }

    /// Renders and delivers one batch and settles every delta in it. Returns the
    /// transport's outcome (None if nothing was sent).
    async fn deliver(&mut self, items: Vec<Leased>) -> Option<Outcome> {
        let mut sendable = Vec::with_capacity(items.len());
        let mut payloads = Vec::with_capacity(items.len());
        for leased in items {
            let q = &leased.queued;
            let id = delivery_id(&self.name, q.seq);
            let item = Item {
                id: &id,
                attempt: q.attempts + 1,
                record_id: &q.record,
                delta: &q.delta,
                record: leased.record.as_ref(),
            };
            let rendered = match self.transport.rendering() {
                Rendering::Standalone => self.translator.render(&item),
                Rendering::FileEntry => self.translator.render_file_entry(&item),
            };
            match rendered {
                Ok(bytes) => {
                    payloads.push(Payload {
                        id,
                        attempt: q.attempts + 1,
                        bytes,
                    });
                    sendable.push(leased);
                }
                Err(e) => {
                    let reason = bounded(format!("cannot translate: {e}"));
                    self.reject(&leased, &reason, None, false).await
                }
            }
        }
        if payloads.is_empty() {
            return None;
        }
        if let Some(tap) = &self.tap {
            tap.publish(&self.name, &payloads);
        }
        let started = Instant::now();
        let outcomes = one_per_payload(
            &self.name,
            self.transport.deliver(&payloads).await,
            sendable.len(),
        );
        let latency_ms = started.elapsed().as_millis() as u64;
        // One outcome per payload (a file batch repeats its one outcome): each
        // delta is settled by its own, delivered ones in one ack. Deliveries are
        // settled first so that a rejection or outage of the same batch is the
        // `last_error` that `status` shows.
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        for (l, outcome) in sendable.iter().zip(outcomes) {
            match with_bounded_reason(outcome) {
                Outcome::Delivered => delivered.push(l),
                other => failed.push((l, other)),
            }
        }
        if !delivered.is_empty() {
            let seqs: Vec<u64> = delivered.iter().map(|l| l.queued.seq).collect();
            if failed.is_empty() {
                // All went through: the worker leases again at once, with these acks.
                self.unacked.extend(seqs);
            } else {
                let name = self.name.clone();
                if let Err(e) = self.queue.call(move |q| q.ack(&name, &seqs)).await {
                    // Delivered but not recorded: it will be sent again (same id).
                    tracing::error!(target_name = %self.name, error = %e, "cannot record deliveries");
                }
            }
            self.health.delivered(&self.name, delivered.len() as u64);
            for l in &delivered {
                let mut e = self.entry(l, "delivered");
                e.latency_ms = Some(latency_ms);
                self.log.append(&e);
            }
        }
        let mut down = None;
        let mut answered = None;
        for (l, outcome) in failed {
            match outcome {
                Outcome::Delivered => {}
                Outcome::Down { reason } => {
                    let (name, seq) = (self.name.clone(), l.queued.seq);
                    if let Err(e) = self.queue.call(move |q| q.release(&name, seq)).await {
                        tracing::error!(target_name = %self.name, error = %e, "cannot return a delta to the queue");
                    }
                    // One `down` line per probe (the first delta that found the
                    // target down), not one per delta that went back.
                    if down.is_none() {
                        let mut e = self.entry(l, "down");
                        e.error = Some(reason.clone());
                        self.log.append(&e);
                    }
                    down = Some(Outcome::Down { reason });
                }
                Outcome::Rejected { reason } => {
                    self.health.answered(&self.name);
                    self.reject(l, &reason, Some(latency_ms), false).await;
                    answered = Some(Outcome::Rejected { reason });
                }
                Outcome::ClientFault { reason } => {
                    self.health.answered(&self.name);
                    let at_once = self.transport.dead_letter_on_client_fault();
                    self.reject(l, &reason, Some(latency_ms), at_once).await;
                    answered = Some(Outcome::Rejected { reason });
                }
            }
        }
        // Any outage backs the whole target off.
        if let Some(Outcome::Down { reason }) = &down {
            self.health.down(&self.name, reason);
            self.health.probe_failed(&self.name);
        }
        Some(down.or(answered).unwrap_or(Outcome::Delivered))
    }

    fn entry(&self, l: &Leased, outcome: &str) -> Entry {
        let q = &l.queued;
        Entry::now(
            &self.name,
            &delivery_id(&self.name, q.seq),
            &q.record.collection,
            &q.record.key,
            q.delta.op.as_str(),
            outcome,
            q.attempts + 1,
        )
    }

    /// A refusal: retry later with backoff, or dead-letter after `max_attempts`
    /// (or at once, if `dead_now`).
    async fn reject(&self, l: &Leased, reason: &str, latency_ms: Option<u64>, dead_now: bool) {
        let attempts = l.queued.attempts + 1;
        self.health.rejected(&self.name, reason);
        let (name, seq, error) = (self.name.clone(), l.queued.seq, reason.to_string());
        if dead_now || attempts >= self.retry.max_attempts {
            match self
                .queue
                .call(move |q| q.dead_letter(&name, seq, &error))
                .await
            {
                Ok(Some(dead)) => {
                    self.health.dead_lettered(&self.name);
                    let mut e = self.entry(l, "dead");
                    e.error = Some(reason.to_string());
                    e.latency_ms = latency_ms;
                    self.log.append(&e);
                    tracing::warn!(target_name = %self.name, id = %e.id, key = %l.queued.record.key, attempts, error = %reason, "delta dead-lettered");
                    self.alert(&dead, reason);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(target_name = %self.name, error = %e, "cannot dead-letter a delta")
                }
            }
        } else {
            let not_before = now_ms() + backoff_delay(&self.retry, attempts).as_millis() as u64;
            if let Err(e) = self
                .queue
                .call(move |q| q.retry_later(&name, seq, &error, not_before))
                .await
            {
                tracing::error!(target_name = %self.name, error = %e, "cannot schedule a retry");
            }
            let mut e = self.entry(l, "rejected");
            e.error = Some(reason.to_string());
            e.latency_ms = latency_ms;
            self.log.append(&e);
            tracing::warn!(target_name = %self.name, id = %e.id, key = %l.queued.record.key, attempt = attempts, error = %reason, "delivery rejected, will retry");
        }
    }

    /// Records the dead letter's facts for the `dead_letter` alert (alerts.rs runs
    /// the command, summarising a burst; nothing here waits for it).
    fn alert(&self, dead: &DeadLetter, error: &str) {
        let Some(alerts) = &self.alerts else {
            return;
        };
        let q = &dead.queued;
        alerts.dead_letter(
            &self.name,
            vec![
                ("HMS_ID", delivery_id(&self.name, q.seq)),
                ("HMS_COLLECTION", q.record.collection.clone()),
                ("HMS_KEY", q.record.key.clone()),
                ("HMS_OP", q.delta.op.as_str().to_string()),
                ("HMS_ATTEMPTS", q.attempts.to_string()),
                ("HMS_ERROR", error.to_string()),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_outcome_is_an_outage_so_the_delta_is_released() {
        let got = one_per_payload("t", vec![Outcome::Delivered], 3);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Outcome::Delivered);
        assert!(matches!(got[1], Outcome::Down { .. }));
        assert!(matches!(got[2], Outcome::Down { .. }));
        assert_eq!(
            one_per_payload("t", vec![Outcome::Delivered; 2], 1).len(),
            1
        );
    }

    #[test]
    fn error_texts_are_bounded_on_a_character_boundary_with_their_length() {
        assert_eq!(bounded("short".into()), "short");
        let exact = "x".repeat(MAX_ERROR_BYTES);
        assert_eq!(bounded(exact.clone()), exact);
        let huge = format!("SOAP Fault soap:Server: {}", "\u{e9}".repeat(600_000));
        let b = bounded(huge.clone());
        assert!(b.len() <= MAX_ERROR_BYTES + 40, "{}", b.len());
        assert!(
            b.ends_with(&format!("… ({} bytes in all)", huge.len())),
            "{b}"
        );
        assert!(huge.starts_with(b.split('…').next().unwrap()));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered_down_only() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        };
        for _ in 0..100 {
            let d1 = backoff_delay(&p, 1);
            assert!(d1 <= Duration::from_secs(1) && d1 >= Duration::from_millis(500));
            let d4 = backoff_delay(&p, 4);
            assert!(d4 <= Duration::from_secs(8) && d4 >= Duration::from_secs(4));
            let d30 = backoff_delay(&p, 30);
            assert!(d30 <= Duration::from_secs(60) && d30 >= Duration::from_secs(30));
        }
    }
}
