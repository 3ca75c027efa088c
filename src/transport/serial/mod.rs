//! Serial transport: one rendered payload in, one framed exchange on an RS-232
//! port out (send the frame, wait for ACK or NAK, retransmit), an [`Outcome`] back.
//!
//! **Invariants:** one frame in flight at a time (`batch_limits` is one delta,
//! no window), so the device sees deltas in queue order; a payload that would
//! corrupt its frame is `Rejected` without touching the port; the port is held
//! open between deliveries and dropped after any error or when the other end
//! closes, to be opened again (by path, so a re-pointed symlink or a re-plugged
//! adapter is picked up) at the next delivery; "no usable answer" (no port,
//! cannot open, silence, noise only, other end closed) is `Down`; only a NAK
//! to the last retransmission is `Rejected`.

pub mod frame;
pub mod spec;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_serial::{ClearBuffer, SerialPort, SerialPortBuilderExt, SerialStream};

use super::{Outcome, Payload};
use frame::{Answer, AnswerReader};
pub use spec::SerialSpec;
use spec::{Flow, ParityKind};

pub struct SerialTransport {
    pub target: String,
    spec: SerialSpec,
    /// The open port, held between deliveries; `None` after an error.
    port: Option<SerialStream>,
    /// When the last exchange ended, for `inter_frame_delay`.
    last_exchange: Option<Instant>,
    /// Sends that got no answer within their window (silence or noise) and
    /// whose answers have not come since. ACK and NAK carry no frame number:
    /// such an answer may still arrive, late, and must not be taken for the
    /// answer to a *different* frame (a record marked delivered that the
    /// device refused). For a retransmission of the same frame it does no
    /// harm: it answers the same payload.
    unanswered: u32,
    /// The end of the last send's answer window: answers owed are awaited
    /// until `ack_timeout` past it (and past the last byte that came).
    answer_due: Option<Instant>,
}

/// What one send of a frame got back.
#[derive(Debug, PartialEq)]
enum Try {
    Answered(Answer),
    /// Only bytes that were neither ACK nor NAK, until `ack_timeout`.
    Noise(usize),
    Silence,
}

impl SerialTransport {
    pub fn new(target: &str, spec: SerialSpec) -> Self {
        SerialTransport {
            target: target.to_string(),
            spec,
            port: None,
            last_exchange: None,
            unanswered: 0,
            answer_due: None,
        }
    }

    pub fn spec(&self) -> &SerialSpec {
        &self.spec
    }

    /// Delivers each payload as its own frame, in order, stopping at the first
    /// that is not acknowledged (the worker hands one at a time anyway).
    pub async fn deliver(&mut self, batch: &[Payload]) -> Outcome {
        self.deliver_each(batch)
            .await
            .into_iter()
            .find(|o| *o != Outcome::Delivered)
            .unwrap_or(Outcome::Delivered)
    }

    /// One outcome per payload, in order (the shape a per-payload `Transport::deliver`
    /// wants): the frames after the first one not acknowledged are not sent and come
    /// back `Down`, so they return to the queue uncounted.
    pub async fn deliver_each(&mut self, batch: &[Payload]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for payload in batch {
            if outcomes.last().is_some_and(|o| *o != Outcome::Delivered) {
                outcomes.push(Outcome::Down {
                    reason: format!(
                        "not sent: the frame before {} was not acknowledged",
                        payload.id
                    ),
                });
                continue;
            }
            outcomes.push(self.deliver_one(payload).await);
        }
        outcomes
    }

    /// For `hms-sync translate`: the frame this rendering would put on the
    /// wire as one line of text, control and non-ASCII bytes written out
    /// (`<STX>`, `<0xFC>`, `<LRC 0x41>`, `<CR><LF>`), or why it would be
    /// refused before sending.
    pub fn preview(&self, rendered: &[u8]) -> Result<Vec<u8>, String> {
        let payload = frame::prepare(&self.spec, rendered)
            .map_err(|why| format!("the serial transport would refuse it: {why}"))?;
        let mut shown = frame::show(&self.spec.framing, &payload).into_bytes();
        shown.push(b'\n');
        Ok(shown)
    }

    async fn deliver_one(&mut self, payload: &Payload) -> Outcome {
        let prepared = match frame::prepare(&self.spec, &payload.bytes) {
            Ok(p) => p,
            Err(why) => {
                return Outcome::Rejected {
                    reason: format!("cannot frame delivery {}: {why}", payload.id),
                };
            }
        };
        let frame = frame::frame(&self.spec.framing, &prepared);
        let tries = self.spec.retransmits + 1;
        let mut last = Try::Silence;
        let mut naks = 0;
        for n in 1..=tries {
            last = match self.exchange(&frame, n == 1).await {
                Ok(t) => t,
                Err(reason) => {
                    self.close_port();
                    return Outcome::Down { reason };
                }
            };
            match last {
                Try::Silence | Try::Noise(_) => self.unanswered += 1,
                Try::Answered(Answer::Nak) => naks += 1,
                _ => {}
            }
            match last {
                Try::Answered(Answer::Ack) => return Outcome::Delivered,
                ref other => {
                    tracing::debug!(target_name = %self.target, id = %payload.id, try_number = n, answer = ?other, "frame not acknowledged")
                }
            }
        }
        let port = self.spec.port.display().to_string();
        match last {
            Try::Answered(Answer::Nak) => Outcome::Rejected {
                reason: if naks == tries {
                    format!("the device on {port} answered NAK to all {tries} sends of the frame")
                } else {
                    format!(
                        "the device on {port} answered NAK to the last of {tries} sends of the frame ({naks} NAKs; the other sends got no clean answer)"
                    )
                },
            },
            Try::Answered(Answer::Garbled) | Try::Noise(_) => {
                let bytes = match last {
                    Try::Noise(bytes) => format!("only {bytes} bytes of noise"),
                    _ => "only noise, or an ACK or NAK after noise".to_string(),
                };
                // Noise only: something is there, but it does not speak this
                // protocol (a wrong baud or parity looks like this). That is the
                // link's fault, not the record's: no attempt is counted.
                self.close_port();
                Outcome::Down {
                    reason: format!(
                        "no clean ACK or NAK from {port} after {tries} sends, {bytes} (garbage: check baud, parity and framing)"
                    ),
                }
            }
            _ => {
                self.close_port();
                Outcome::Down {
                    reason: format!(
                        "no answer from {port} within ack_timeout {:?} after {tries} sends",
                        self.spec.ack_timeout
                    ),
                }
            }
        }
    }

    /// Sends the frame once and reads the answer. `Err` is an outage: the port
    /// is missing, cannot be opened or written, or the other end closed.
    /// `new_frame`: the first send of this frame (answers still owed for
    /// earlier frames are waited for first).
    async fn exchange(&mut self, frame: &[u8], new_frame: bool) -> Result<Try, String> {
        if let Some(at) = self.last_exchange {
            let ready = at + self.spec.inter_frame_delay;
            if ready > Instant::now() {
                tokio::time::sleep_until(ready).await;
            }
        }
        let result = self.exchange_on_port(frame, new_frame).await;
        self.last_exchange = Some(Instant::now());
        result
    }

    async fn exchange_on_port(&mut self, frame: &[u8], new_frame: bool) -> Result<Try, String> {
        let held = self.port.is_some();
        match self.send(frame, new_frame).await {
            Ok(()) => {}
            // A port held since the last delivery may have gone stale (the other
            // end closed in between): open it again once before calling it an outage.
            Err(stale) if held => {
                tracing::debug!(target_name = %self.target, error = %stale, "the port held since the last delivery failed; opening it again");
                self.close_port();
                self.send(frame, new_frame).await?;
            }
            Err(e) => return Err(e),
        }
        let deadline =
            Instant::now() + frame::wire_time(&self.spec, frame.len()) + self.spec.ack_timeout;
        self.answer_due = Some(deadline);
        let path = self.spec.port.display().to_string();
        let port = self.port.as_mut().expect("send leaves the port open");
        let mut reader = AnswerReader::new(&self.spec.framing);
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout_at(deadline, port.read(&mut buf)).await {
                Err(_) => {
                    reader.finish();
                    return Ok(if reader.noise > 0 {
                        Try::Noise(reader.noise)
                    } else {
                        Try::Silence
                    });
                }
                Ok(Ok(0)) => return Err(format!("the other end of {path} closed")),
                Ok(Ok(n)) => {
                    if let Some(answer) = reader.feed(&buf[..n]) {
                        return Ok(Try::Answered(answer));
                    }
                }
                Ok(Err(e)) => return Err(closed_or(&path, "read from", &e)),
            }
        }
    }

    /// Opens the port if needed, throws away stale input (a late answer to an
    /// earlier frame must not count for this one): before a new frame, also the
    /// answers still owed (see `unanswered`); then writes the frame.
    async fn send(&mut self, frame: &[u8], new_frame: bool) -> Result<(), String> {
        if self.port.is_none() {
            self.port = Some(self.open()?);
        }
        let path = self.spec.port.display().to_string();
        let port = self.port.as_mut().expect("opened above");
        let mut buf = [0u8; 256];
        loop {
            match port.try_read(&mut buf) {
                Ok(0) => return Err(format!("the other end of {path} closed")),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(closed_or(&path, "read from", &e)),
            }
        }
        if new_frame && self.unanswered > 0 {
            let owed = self.unanswered;
            let since = self.answer_due.unwrap_or_else(Instant::now);
            await_late_answers(port, &self.spec, owed, since, &path).await?;
            self.unanswered = 0;
        }
        // Writing can only stall under flow control (the device holds us off);
        // past the frame's wire time and ack_timeout that is silence too.
        // No flush() after the write: on a serial port it is tcdrain(), a
        // synchronous call that holds a runtime thread until the UART has sent
        // every byte, forever while flow control holds us off, and no timeout
        // can interrupt it. The answer deadline already includes the wire time.
        let limit = frame::wire_time(&self.spec, frame.len()) + self.spec.ack_timeout;
        match tokio::time::timeout(limit, port.write_all(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(closed_or(&path, "write to", &e)),
            Err(_) => Err(format!(
                "writing to {path} stalled for {limit:?} (flow control holding it off?)"
            )),
        }
    }

    /// Lets go of the port (after an error), so the next delivery opens it again.
    fn close_port(&mut self) {
        if let Some(port) = self.port.take() {
            release(port);
        }
    }

    fn open(&self) -> Result<SerialStream, String> {
        let s = &self.spec;
        let path = s.port.display().to_string();
        if !s.port.exists() {
            return Err(format!(
                "serial port {path} does not exist (adapter unplugged or wrong `port`?)"
            ));
        }
        let builder = tokio_serial::new(path.as_str(), s.baud)
            .data_bits(if s.data_bits == 7 {
                tokio_serial::DataBits::Seven
            } else {
                tokio_serial::DataBits::Eight
            })
            .parity(match s.parity {
                ParityKind::None => tokio_serial::Parity::None,
                ParityKind::Odd => tokio_serial::Parity::Odd,
                ParityKind::Even => tokio_serial::Parity::Even,
            })
            .stop_bits(if s.stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            })
            .flow_control(match s.flow_control {
                Flow::None => tokio_serial::FlowControl::None,
                Flow::Software => tokio_serial::FlowControl::Software,
                Flow::Hardware => tokio_serial::FlowControl::Hardware,
            })
            .timeout(Duration::ZERO);
        builder.open_native_async().map_err(|e| {
            // The path exists (checked above), so the sandbox is a likely cause
            // whatever the error: a device-cgroup denial is EPERM, which
            // serialport reports as ErrorKind::Unknown, not PermissionDenied.
            let hint = match e.kind() {
                tokio_serial::ErrorKind::NoDevice => {
                    " (is another program using it? under systemd, see also systemd/serial.conf)"
                }
                _ => {
                    " (the service user needs the port's group, usually dialout; under systemd the unit needs BindPaths= and DeviceAllow= for it: see systemd/serial.conf)"
                }
            };
            format!("cannot open serial port {path}: {e}{hint}")
        })
    }
}

/// Reads and throws away the answers still owed to `owed` earlier sends, until
/// that many have come or the line has been quiet for `ack_timeout` (counted
/// from `since`, the end of the last send's answer window, at the earliest): an
/// answer up to twice `ack_timeout` after its send is recognised as late.
async fn await_late_answers(
    port: &mut SerialStream,
    spec: &SerialSpec,
    owed: u32,
    since: Instant,
    path: &str,
) -> Result<(), String> {
    let mut reader = AnswerReader::new(&spec.framing);
    let mut came = 0;
    let mut buf = [0u8; 256];
    let start = since.max(Instant::now());
    let mut quiet_until = start + spec.ack_timeout;
    // A line that never falls quiet (a device streaming noise) must not hold
    // the next frame back for ever.
    let give_up = start + 2 * spec.ack_timeout;
    while came < owed {
        match tokio::time::timeout_at(quiet_until, port.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => return Err(format!("the other end of {path} closed")),
            Ok(Ok(n)) => {
                quiet_until = quiet_until
                    .max(Instant::now() + spec.ack_timeout)
                    .min(give_up);
                for b in &buf[..n] {
                    if reader.feed(std::slice::from_ref(b)).is_some() {
                        came += 1;
                        reader = AnswerReader::new(&spec.framing);
                    }
                }
            }
            Ok(Err(e)) => return Err(closed_or(path, "read from", &e)),
        }
    }
    tracing::debug!(
        port = path,
        owed,
        came,
        "waited for late answers before a new frame"
    );
    Ok(())
}

impl Drop for SerialTransport {
    fn drop(&mut self) {
        self.close_port();
    }
}

/// Closes a port without blocking the runtime. close() on a serial port with
/// output still queued waits until it has drained or `closing_wait` (30 s by
/// default) has passed, and with flow control holding us off it does not
/// drain: so the queued output is thrown away first (tcflush, which does not
/// block; a frame cut short is answered by silence or a NAK and sent again),
/// and the close itself runs on the blocking pool, not on a runtime worker.
fn release(port: SerialStream) {
    let _ = port.clear(ClearBuffer::Output);
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(port));
        }
        Err(_) => drop(port),
    }
}

/// A pty whose master closed answers EIO; a serial adapter pulled out, ENXIO or ENODEV.
fn closed_or(path: &str, what: &str, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EIO) | Some(libc::ENXIO) | Some(libc::ENODEV) => {
            format!("the other end of {path} closed or the device went away ({e})")
        }
        _ => format!("cannot {what} {path}: {e}"),
    }
}

/// For `hms-sync check`: the port's settings in one line, and a warning if the
/// port cannot be opened for reading and writing right now.
pub fn describe(spec: &SerialSpec) -> (String, Option<String>) {
    let parity = match spec.parity {
        ParityKind::None => 'N',
        ParityKind::Odd => 'O',
        ParityKind::Even => 'E',
    };
    let description = format!(
        "serial -> {} {} {}{parity}{}, framing {}",
        spec.port.display(),
        spec.baud,
        spec.data_bits,
        spec.stop_bits,
        spec.framing.name()
    );
    // Not opened: opening and closing a port toggles DTR, which resets some
    // devices, and the running daemon holds it exclusively anyway.
    let warning = if !spec.port.exists() {
        Some(format!(
            "serial port {} does not exist now; deliveries wait (target down) until it does",
            spec.port.display()
        ))
    } else {
        let c_path = std::ffi::CString::new(spec.port.as_os_str().as_encoded_bytes()).ok();
        let allowed = c_path
            .map(|p| unsafe { libc::access(p.as_ptr(), libc::R_OK | libc::W_OK) } == 0)
            .unwrap_or(false);
        (!allowed).then(|| {
            format!(
                "serial port {} is not readable and writable by this user (add it to the port's group, usually dialout)",
                spec.port.display()
            )
        })
    };
    (description, warning)
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

    #[tokio::test]
    async fn a_refused_frame_stops_the_batch_and_the_rest_goes_back_uncounted() {
        // Nothing reaches the port: the first payload cannot be framed.
        let mut t = SerialTransport::new("t", SerialSpec::for_tests("/nonexistent/tty"));
        let out = t
            .deliver_each(&[payload("t:1", b"a\x02b"), payload("t:2", b"ok")])
            .await;
        assert!(
            matches!(&out[0], Outcome::Rejected { reason } if reason.contains("cannot frame delivery t:1")),
            "{out:?}"
        );
        assert!(matches!(&out[1], Outcome::Down { .. }), "{out:?}");
        // A missing port is an outage.
        let out = t.deliver_each(&[payload("t:3", b"ok")]).await;
        assert!(
            matches!(&out[0], Outcome::Down { reason } if reason.contains("does not exist")),
            "{out:?}"
        );
        assert_eq!(t.preview(b"AB\r\n").unwrap(), b"<STX>AB<ETX><LRC 0x00>\n");
        assert!(t.preview(b"a\x03").is_err());
    }

    #[tokio::test]
    async fn any_open_failure_on_an_existing_path_points_at_the_systemd_drop_in() {
        // Not a tty: the open fails with neither EACCES nor a missing path (as
        // a device-cgroup EPERM does not either).
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut t = SerialTransport::new("t", SerialSpec::for_tests(file.path().to_str().unwrap()));
        let out = t.deliver_each(&[payload("t:1", b"ok")]).await;
        assert!(
            matches!(&out[0], Outcome::Down { reason }
                if reason.contains("cannot open serial port") && reason.contains("systemd/serial.conf")),
            "{out:?}"
        );
    }
}
