//! A transport for the Replay Worker's tests: answers from a script and reports
//! every call (delivery ids, attempts, and the tokio time, which tests pause).

use std::time::Duration;

use tokio::sync::mpsc;

use super::{Outcome, Payload};

/// One `deliver` call as the transport saw it.
#[derive(Debug)]
pub struct Call {
    pub at: tokio::time::Instant,
    pub ids: Vec<String>,
    pub attempts: Vec<u32>,
}

/// The script: the outcome for a payload on the `n`th call (1-based).
pub type Script = Box<dyn FnMut(&Payload, usize) -> Outcome + Send + Sync>;

pub struct Scripted {
    pub batch_max: usize,
    pub batch_window: Duration,
    script: Script,
    calls: mpsc::UnboundedSender<Call>,
    n: usize,
}

impl Scripted {
    pub fn new(
        batch_max: usize,
        batch_window: Duration,
        script: Script,
    ) -> (Scripted, mpsc::UnboundedReceiver<Call>) {
        let (calls, rx) = mpsc::unbounded_channel();
        let s = Scripted {
            batch_max,
            batch_window,
            script,
            calls,
            n: 0,
        };
        (s, rx)
    }

    pub async fn deliver(&mut self, batch: &[Payload]) -> Vec<Outcome> {
        self.n += 1;
        let _ = self.calls.send(Call {
            at: tokio::time::Instant::now(),
            ids: batch.iter().map(|p| p.id.clone()).collect(),
            attempts: batch.iter().map(|p| p.attempt).collect(),
        });
        let n = self.n;
        batch.iter().map(|p| (self.script)(p, n)).collect()
    }
}
