//! `hms-sync tap TARGET`: the payloads a worker puts on the wire, published to
//! whoever listens over the control socket (like `vector tap`).
//!
//! **Invariants:** with no subscriber a worker pays one atomic load per batch;
//! publishing never waits: a subscriber that falls more than [`TAP_BUFFER`]
//! payloads behind loses the oldest and is told how many (never slows delivery).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::transport::Payload;

/// Payloads a subscriber may fall behind before it loses the oldest.
pub const TAP_BUFFER: usize = 1024;

/// One payload as it went on the wire.
#[derive(Clone, Debug, Serialize)]
pub struct TapEvent {
    pub ts: String,
    pub target: String,
    pub id: String,
    pub attempt: u32,
    /// `text` (the payload is UTF-8) or `hex`.
    pub encoding: &'static str,
    pub payload: String,
}

impl TapEvent {
    pub fn of(target: &str, p: &Payload) -> TapEvent {
        let (encoding, payload) = match std::str::from_utf8(&p.bytes) {
            Ok(text) => ("text", text.to_string()),
            Err(_) => ("hex", p.bytes.iter().map(|b| format!("{b:02x}")).collect()),
        };
        TapEvent {
            ts: crate::record::format_ms(crate::record::now_ms()),
            target: target.to_string(),
            id: p.id.clone(),
            attempt: p.attempt,
            encoding,
            payload,
        }
    }
}

/// Per target, the channel its tap subscribers listen on.
#[derive(Default)]
pub struct Taps {
    channels: Mutex<HashMap<String, broadcast::Sender<TapEvent>>>,
    /// Subscribers over all targets: the workers' fast path.
    listening: AtomicUsize,
}

/// A subscription; dropping it unsubscribes.
pub struct Subscription {
    pub events: broadcast::Receiver<TapEvent>,
    taps: Arc<Taps>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.taps.listening.fetch_sub(1, Relaxed);
    }
}

impl Taps {
    pub fn subscribe(self: &Arc<Self>, target: &str) -> Subscription {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let events = map
            .entry(target.to_string())
            .or_insert_with(|| broadcast::channel(TAP_BUFFER).0)
            .subscribe();
        self.listening.fetch_add(1, Relaxed);
        Subscription {
            events,
            taps: self.clone(),
        }
    }

    /// Publishes `payloads` of `target` if anyone listens; never waits.
    pub fn publish(&self, target: &str, payloads: &[Payload]) {
        if self.listening.load(Relaxed) == 0 {
            return;
        }
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(target)
            && tx.receiver_count() > 0
        {
            for p in payloads {
                let _ = tx.send(TapEvent::of(target, p));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(id: &str, bytes: &[u8]) -> Payload {
        Payload {
            id: id.into(),
            attempt: 1,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn text_and_binary_payloads_reach_subscribers_and_a_slow_one_lags() {
        let taps = Arc::new(Taps::default());
        taps.publish("t", &[payload("t:1", b"nobody listens")]);
        let mut sub = taps.subscribe("t");
        let mut other = taps.subscribe("u");
        taps.publish(
            "t",
            &[payload("t:2", b"<a/>"), payload("t:3", &[0xC1, 0xFF])],
        );
        let e = sub.events.try_recv().unwrap();
        assert_eq!(
            (e.id.as_str(), e.encoding, e.payload.as_str()),
            ("t:2", "text", "<a/>")
        );
        let e = sub.events.try_recv().unwrap();
        assert_eq!((e.encoding, e.payload.as_str()), ("hex", "c1ff"));
        assert!(
            other.events.try_recv().is_err(),
            "another target's tap sees nothing"
        );
        let many: Vec<Payload> = (0..TAP_BUFFER + 10)
            .map(|i| payload(&format!("t:{i}"), b"x"))
            .collect();
        taps.publish("t", &many);
        assert!(matches!(
            sub.events.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(10))
        ));
        drop(sub);
        drop(other);
        assert_eq!(taps.listening.load(Relaxed), 0);
    }
}
