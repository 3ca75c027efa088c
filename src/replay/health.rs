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

    pub fn get(&self, name: &str) -> TargetHealth {
        self.with(name, |h| h.clone())
    }
}
