//! What the workers know about their targets right now (up or down, last error,
//! counts since start) — the live half of `status` and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Clone, Debug, Default)]
pub struct TargetHealth {
    pub down: bool,
    pub down_since: Option<Instant>,
    pub last_error: Option<String>,
    /// Outage seconds before the current outage.
    pub outage_seconds_closed: f64,
    pub delivered: u64,
    pub rejected: u64,
    pub last_beat: Option<Instant>,
    /// Paused by an operator: nothing is sent, nothing counted.
    pub paused: bool,
}

impl TargetHealth {
    pub fn outage_seconds(&self) -> f64 {
        self.outage_seconds_closed
            + self
                .down_since
                .map(|s| s.elapsed().as_secs_f64())
                .unwrap_or(0.0)
    }
}

#[derive(Default)]
pub struct Health {
    targets: Mutex<BTreeMap<String, TargetHealth>>,
    /// Per target: wakes its worker out of a backoff or a pause (`probe`,
    /// `resume`). Apart from the queue's waker, so that new work arriving during
    /// an outage does not cut the backoff short.
    kicks: Mutex<BTreeMap<String, std::sync::Arc<tokio::sync::Notify>>>,
}

impl Health {
    fn with<T>(&self, name: &str, f: impl FnOnce(&mut TargetHealth) -> T) -> T {
        let mut map = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(name.to_string()).or_default())
    }

    pub fn beat(&self, name: &str) {
        self.with(name, |h| h.last_beat = Some(Instant::now()));
    }

    /// The legacy system answered (delivered or refused): it is up.
    pub fn answered(&self, name: &str) {
        self.with(name, |h| {
            if let Some(since) = h.down_since.take() {
                h.outage_seconds_closed += since.elapsed().as_secs_f64();
            }
            h.down = false;
        });
    }

    pub fn delivered(&self, name: &str, n: u64) {
        self.answered(name);
        self.with(name, |h| {
            h.delivered += n;
            h.last_error = None;
        });
    }

    pub fn rejected(&self, name: &str, error: &str) {
        self.with(name, |h| {
            h.rejected += 1;
            h.last_error = Some(error.to_string());
        });
    }

    pub fn down(&self, name: &str, error: &str) {
        self.with(name, |h| {
            if !h.down {
                h.down = true;
                h.down_since = Some(Instant::now());
            }
            h.last_error = Some(error.to_string());
        });
    }

    pub fn set_paused(&self, name: &str, paused: bool) {
        self.with(name, |h| h.paused = paused);
        self.kick(name);
    }

    pub fn is_paused(&self, name: &str) -> bool {
        self.with(name, |h| h.paused)
    }

    /// The notifier [`Health::kick`] wakes for `name`.
    pub fn kicker(&self, name: &str) -> std::sync::Arc<tokio::sync::Notify> {
        let mut map = self.kicks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// Wakes `name`'s worker now (a probe, or a resume). If it is busy, it
    /// looks again as soon as it is done.
    pub fn kick(&self, name: &str) {
        self.kicker(name).notify_one();
    }

    pub fn get(&self, name: &str) -> TargetHealth {
        self.with(name, |h| h.clone())
    }
}
