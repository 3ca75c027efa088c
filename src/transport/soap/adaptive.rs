//! How many SOAP requests go at once: a fixed number, or with
//! `max_in_flight = "auto"` a number adapted to what the service shows, between
//! 1 and `max_in_flight_limit` (additive increase, multiplicative decrease).
//!
//! The worker sends a batch of up to [`InFlight::current`] requests, each for a
//! different record, and waits for all of their answers, so a batch takes as long
//! as its slowest answer. Each batch is one observation of that time:
//! - an outage (no answer, a timeout, a 5xx) halves the number: the service is
//!   overloaded or gone;
//! - a batch that took half again as long as the usual (the fastest batches seen
//!   lately) takes a quarter off: the service queued our requests instead of
//!   working on them in parallel, so sending more at once only adds waiting;
//! - a full batch answered in about the usual time adds one: the service kept up,
//!   try one more;
//! - a batch smaller than the number (not enough waiting) never raises it.
//!
//! "The usual" is the fastest batch time seen, drifting slowly up towards newer
//! ones, so that a service that became slower for good is learnt, not fought.
//! A refusal is an answer, never trouble; but its time is not the time of the
//! work either (a service often refuses a bad message at once, before doing
//! anything), so only delivered answers are timed: a run of quick refusals
//! must not make "the usual" so short that every real batch looks slow.
//!
//! **Invariant:** `1 <= current() <= limit`; a fixed setting never changes.

use std::time::Duration;

/// A batch this much slower than the usual is "slow": decrease.
const SLOW: f64 = 1.5;
/// A full batch at most this much slower than the usual may add one.
const KEPT_UP: f64 = 1.25;
/// How far the usual moves towards a slower batch time, per batch.
const DRIFT: f64 = 0.05;

/// What one request of a batch came to, as far as pacing goes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answered {
    /// Taken, after this long.
    Delivered(Duration),
    /// Answered and refused (a Fault, an HTTP error, `<Result>ERROR`).
    Refused(Duration),
    /// No answer: a timeout, a refused connection, a gateway error.
    Nothing,
}

#[derive(Clone, Debug)]
pub struct InFlight {
    current: usize,
    limit: usize,
    auto: bool,
    /// The usual time of a batch, in seconds (None before the first).
    usual: Option<f64>,
}

impl InFlight {
    /// Always `n` at once.
    pub fn fixed(n: usize) -> InFlight {
        InFlight {
            current: n.max(1),
            limit: n.max(1),
            auto: false,
            usual: None,
        }
    }

    /// Adapted between 1 and `limit`, starting at 1 (a legacy service may not
    /// take parallel calls; it shows whether it does).
    pub fn auto(limit: usize) -> InFlight {
        InFlight {
            current: 1,
            limit: limit.max(1),
            auto: true,
            usual: None,
        }
    }

    /// Requests to send at once now.
    pub fn current(&self) -> usize {
        self.current
    }

    pub fn is_auto(&self) -> bool {
        self.auto
    }

    /// Learns from one batch of `sent` requests and what each came to: trouble
    /// if any got no answer; timed by its delivered answers only (refusals are
    /// not timed, see the module's text); a batch of refusals alone teaches
    /// nothing.
    pub fn observe_batch(&mut self, sent: usize, answers: &[Answered]) {
        let trouble =
            answers.len() < sent || answers.iter().any(|a| matches!(a, Answered::Nothing));
        let latencies: Vec<Duration> = answers
            .iter()
            .filter_map(|a| match a {
                Answered::Delivered(took) => Some(*took),
                _ => None,
            })
            .collect();
        self.observe(sent, &latencies, trouble);
    }

    /// Learns from one batch: `sent` requests, the latency of each answered one,
    /// and whether any got no answer (`trouble`).
    pub fn observe(&mut self, sent: usize, latencies: &[Duration], trouble: bool) {
        if !self.auto || sent == 0 {
            return;
        }
        if trouble {
            self.current = (self.current / 2).max(1);
            return;
        }
        let Some(took) = latencies.iter().max().map(Duration::as_secs_f64) else {
            return;
        };
        let usual = *self.usual.get_or_insert(took);
        let full = sent >= self.current;
        if took > usual * SLOW {
            self.current = (self.current * 3 / 4).max(1);
        } else if full && took <= usual * KEPT_UP {
            self.current = (self.current + 1).min(self.limit);
        }
        self.usual = Some(if took < usual {
            took
        } else {
            usual + (took - usual) * DRIFT
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A service with `workers` parallel workers taking `service_ms` each:
    /// each request of a batch of `n` is answered after the round it is served
    /// in, so the batch takes `service_ms * ceil(n / workers)`.
    fn batch_latencies(n: usize, workers: usize, service_ms: u64) -> Vec<Duration> {
        (0..n)
            .map(|i| ms(service_ms * (i / workers + 1) as u64))
            .collect()
    }

    #[test]
    fn a_fixed_setting_never_moves() {
        let mut f = InFlight::fixed(3);
        f.observe(3, &[ms(10); 3], false);
        f.observe(3, &[], true);
        assert_eq!(f.current(), 3);
    }

    #[test]
    fn auto_climbs_while_the_service_keeps_up_and_stops_at_the_limit() {
        let mut f = InFlight::auto(8);
        assert_eq!(f.current(), 1);
        for _ in 0..50 {
            let n = f.current();
            f.observe(n, &vec![ms(40); n], false);
        }
        assert_eq!(f.current(), 8);
    }

    #[test]
    fn auto_settles_near_what_the_service_can_do_in_parallel() {
        let mut f = InFlight::auto(16);
        let mut seen = Vec::new();
        for _ in 0..300 {
            let n = f.current();
            f.observe(n, &batch_latencies(n, 4, 40), false);
            seen.push(f.current());
        }
        // After warming up it stays around the service's 4 workers, never at 16.
        let tail = &seen[200..];
        assert!(tail.iter().all(|&c| (2..=6).contains(&c)), "{tail:?}");
        let mean = tail.iter().sum::<usize>() as f64 / tail.len() as f64;
        assert!((3.0..=5.0).contains(&mean), "{mean} {tail:?}");
    }

    #[test]
    fn auto_halves_on_an_outage_and_never_goes_below_one() {
        let mut f = InFlight::auto(8);
        for _ in 0..20 {
            let n = f.current();
            f.observe(n, &vec![ms(5); n], false);
        }
        assert_eq!(f.current(), 8);
        f.observe(8, &[], true);
        assert_eq!(f.current(), 4);
        for _ in 0..10 {
            f.observe(1, &[], true);
        }
        assert_eq!(f.current(), 1);
    }

    #[test]
    fn a_batch_smaller_than_the_setting_does_not_raise_it() {
        let mut f = InFlight::auto(8);
        for _ in 0..20 {
            f.observe(1, &[ms(5)], false);
        }
        assert_eq!(f.current(), 2, "only the first full batch of 1 counted");
    }

    #[test]
    fn quick_refusals_do_not_hold_concurrency_down() {
        // A service that takes 40 ms to work on a change but refuses a bad one
        // in 1 ms; every fourth batch is refusals only (a run of bad records).
        let mut f = InFlight::auto(8);
        for i in 0..200 {
            let n = f.current();
            let answers = if i % 4 == 3 {
                vec![Answered::Refused(ms(1)); n]
            } else {
                vec![Answered::Delivered(ms(40)); n]
            };
            f.observe_batch(n, &answers);
        }
        // Timing the refusals made "the usual" 1 ms, every real batch then
        // looked 40 times too slow, and concurrency stayed at 1.
        assert_eq!(f.current(), 8);
        // A mixed batch is timed by its deliveries; a lost answer is trouble.
        f.observe_batch(
            8,
            &[
                vec![Answered::Delivered(ms(40)); 7],
                vec![Answered::Refused(ms(1))],
            ]
            .concat(),
        );
        assert_eq!(f.current(), 8);
        f.observe_batch(
            8,
            &[
                vec![Answered::Delivered(ms(40)); 7],
                vec![Answered::Nothing],
            ]
            .concat(),
        );
        assert_eq!(f.current(), 4);
        f.observe_batch(4, &[Answered::Delivered(ms(40)); 3]);
        assert_eq!(
            f.current(),
            2,
            "an answer missing from the batch is trouble too"
        );
    }

    #[test]
    fn auto_backs_off_when_the_service_slows_down() {
        let mut f = InFlight::auto(8);
        for _ in 0..20 {
            let n = f.current();
            f.observe(n, &vec![ms(40); n], false);
        }
        assert_eq!(f.current(), 8);
        // The service gets five times slower for every request.
        f.observe(8, &[ms(200); 8], false);
        assert!(f.current() < 8);
        let after_one = f.current();
        f.observe(after_one, &vec![ms(400); after_one], false);
        assert!(f.current() < after_one);
    }
}
