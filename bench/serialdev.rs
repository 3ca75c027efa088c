//! A serial device for `bench/serial.sh` (built as `cargo build --release --example serialdev`).
//!
//! ```text
//! serialdev LINK COUNT [--timeout 300]
//!     Opens a pseudo-terminal pair, points the symlink LINK at the slave (the
//!     daemon's `port`), and plays a device on the master: reads STX/ETX/LRC
//!     frames, answers ACK at once to each whose LRC is right (NAK otherwise),
//!     and after COUNT acknowledged frames prints key=value lines:
//!     frames, naks, bytes (on the wire, both ways), mean_frame_bytes, seconds
//!     (first frame to last), frames_per_s, then exits.
//! ```

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

const STX: u8 = 0x02;
const ETX: u8 = 0x03;
const ACK: u8 = 0x06;
const NAK: u8 = 0x15;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: serialdev LINK COUNT [--timeout SECONDS]");
        std::process::exit(2);
    }
    let link = PathBuf::from(&args[0]);
    let count: u64 = args[1].parse().expect("COUNT is a number");
    let timeout = args
        .iter()
        .position(|a| a == "--timeout")
        .and_then(|i| args.get(i + 1))
        .map(|s| Duration::from_secs(s.parse().expect("--timeout SECONDS")))
        .unwrap_or(Duration::from_secs(300));

    let pty = nix::pty::openpty(None, None).expect("openpty");
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("close-on-exec");
    }
    let mut t = tcgetattr(pty.slave.as_fd()).expect("tcgetattr");
    cfmakeraw(&mut t);
    tcsetattr(pty.slave.as_fd(), SetArg::TCSANOW, &t).expect("tcsetattr");
    let slave_path = nix::unistd::ttyname(pty.slave.as_fd()).expect("ttyname");
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&slave_path, &tmp).expect("symlink");
    std::fs::rename(&tmp, &link).expect("rename symlink");
    // Keep the slave open so the master never reads EIO between the daemon's opens.
    let _slave = pty.slave;
    let mut master = std::fs::File::from(pty.master);

    let started = Instant::now();
    let (mut frames, mut naks, mut bytes, mut payload_bytes) = (0u64, 0u64, 0u64, 0u64);
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    while frames < count {
        if started.elapsed() > timeout {
            eprintln!("serialdev: timed out after {frames} of {count} frames");
            std::process::exit(1);
        }
        let ready = {
            let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(100u8)).unwrap_or(0)
        };
        if ready == 0 {
            continue;
        }
        let n = match master.read(&mut chunk) {
            Ok(n) => n,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let Some(start) = buf.iter().position(|b| *b == STX) else {
                buf.clear();
                break;
            };
            let Some(etx) = buf[start..]
                .iter()
                .position(|b| *b == ETX)
                .map(|i| i + start)
            else {
                break;
            };
            let Some(&lrc) = buf.get(etx + 1) else { break };
            let payload = &buf[start + 1..etx];
            let ok = payload.iter().fold(ETX, |a, b| a ^ b) == lrc;
            let len = payload.len() as u64;
            buf.drain(..etx + 2);
            let now = Instant::now();
            first.get_or_insert(now);
            if ok {
                master.write_all(&[ACK]).expect("write ACK");
                frames += 1;
                payload_bytes += len;
                bytes += len + 3 + 1;
                last = Some(now);
            } else {
                master.write_all(&[NAK]).expect("write NAK");
                naks += 1;
            }
        }
    }
    let seconds = last
        .zip(first)
        .map(|(l, f)| (l - f).as_secs_f64())
        .unwrap_or(0.0);
    println!("frames={frames}");
    println!("naks={naks}");
    println!("bytes={bytes}");
    println!(
        "mean_frame_bytes={:.1}",
        (payload_bytes + 3 * frames) as f64 / frames.max(1) as f64
    );
    println!("seconds={seconds:.3}");
    println!(
        "frames_per_s={:.1}",
        frames.saturating_sub(1) as f64 / seconds.max(1e-9)
    );
}
