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
    /// Refusals since start (those that dead-lettered included).
    pub rejected: u64,
    /// Deltas dead-lettered since start.
    pub dead_lettered: u64,
    /// Probes that found the target down, since start (one per try, however
    /// many deltas went back).
    pub down_probes: u64,
    pub last_beat: Option<Instant>,
    /// Paused by an operator: nothing is sent, nothing counted.
    pub paused: bool,
    /// Deliveries per minute over the last hour, for the page's chart:
    /// `per_minute[m % 60]` counts minute `m` (minutes since the epoch).
    pub per_minute: Vec<u64>,
    /// The minute `per_minute` was last written in.
    pub last_minute: u64,
    /// Requests the transport sends at once now, where it sends several (SOAP);
    /// with `max_in_flight = "auto"` it moves.
    pub concurrency: Option<usize>,
}

impl TargetHealth {
    /// Deliveries per minute over the last 60 minutes, oldest first (now last).
    pub fn last_hour(&self, now_minute: u64) -> Vec<u64> {
        (0..60u64)
            .rev()
            .map(|ago| {
                let m = now_minute.saturating_sub(ago);
                if m + 60 <= self.last_minute || m > self.last_minute || now_minute < ago {
                    0
                } else {
                    self.per_minute.get((m % 60) as usize).copied().unwrap_or(0)
                }
            })
            .collect()
    }

    fn count_delivered(&mut self, n: u64, now_minute: u64) {
        self.per_minute.resize(60, 0);
        if now_minute > self.last_minute {
            // Clear the minutes skipped since the last delivery.
            let gap = (now_minute - self.last_minute).min(60);
            for i in 1..=gap {
                self.per_minute[((self.last_minute + i) % 60) as usize] = 0;
            }
            self.last_minute = now_minute;
        }
        self.per_minute[(now_minute % 60) as usize] += n;
    }
}

/// Minutes since the epoch.
pub fn minute_now() -> u64 {
    crate::record::now_ms() / 60_000
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
        let minute = minute_now();
        self.with(name, |h| {
            h.delivered += n;
            h.last_error = None;
            h.count_delivered(n, minute);
        });
    }

    pub fn rejected(&self, name: &str, error: &str) {
        self.with(name, |h| {
            h.rejected += 1;
            h.last_error = Some(error.to_string());
        });
    }

    pub fn dead_lettered(&self, name: &str) {
        self.with(name, |h| h.dead_lettered += 1);
    }

    /// One try found the target down (counted once per probe).
    pub fn probe_failed(&self, name: &str) {
        self.with(name, |h| h.down_probes += 1);
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

    pub fn set_concurrency(&self, name: &str, n: Option<usize>) {
        self.with(name, |h| h.concurrency = n);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_hour_counts_per_minute_and_forgets_older_minutes() {
        let mut h = TargetHealth::default();
        h.count_delivered(2, 1000);
        h.count_delivered(3, 1000);
        h.count_delivered(1, 1002);
        let hour = h.last_hour(1002);
        assert_eq!(hour.len(), 60);
        assert_eq!(&hour[57..], &[5, 0, 1]);
        assert_eq!(
            h.last_hour(1059)[0],
            5,
            "minute 1000 is the oldest of 1000..=1059"
        );
        assert_eq!(
            h.last_hour(1060).iter().sum::<u64>(),
            1,
            "minute 1000 is gone"
        );
        assert_eq!(h.last_hour(1061).iter().sum::<u64>(), 1);
        assert_eq!(h.last_hour(1062).iter().sum::<u64>(), 0);
        h.count_delivered(4, 1100);
        assert_eq!(h.last_hour(1100).iter().sum::<u64>(), 4);
    }
}
