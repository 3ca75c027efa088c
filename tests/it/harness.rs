//! `TestDaemon`: writes a config into a temp folder, starts the real binary,
//! drops files, talks to the socket, and waits for outcomes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[cfg(test)]
pub const BIN: &str = env!("CARGO_BIN_EXE_hms-sync");
/// `bench/torture.rs` includes this file too; cargo names no binary for an
/// example, so it runs the release binary its script built.
#[cfg(not(test))]
pub const BIN: &str = match option_env!("HMS_SYNC_BIN") {
    Some(bin) => bin,
    None => concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/hms-sync"),
};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A CSV file connector named `name` delivering to `<root>/outbox/<name>`.
pub fn csv_connector(columns: &[&str], extra_transport: &str, retry: &str) -> String {
    let cols: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "collections = [\"permits\"]\n[format]\nkind = \"csv\"\ncolumns = [{}]\n[transport]\nkind = \"file\"\ndir = \"outbox/NAME\"\nbatch_window = \"0s\"\n{extra_transport}\n[retry]\n{retry}\n",
        cols.join(", ")
    )
}

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub extra_config: String,
    pub extra_tables: String,
}

impl TestDaemon {
    /// A folder with `hms-sync.toml` (inbox `inbox/permits` keyed by permit_number,
    /// socket `hms.sock`, status listener on a free port) and no connectors yet.
    pub fn new() -> TestDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("connectors")).unwrap();
        TestDaemon {
            dir,
            child: None,
            extra_config: String::new(),
            extra_tables: String::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("hms-sync.toml")
    }

    /// Adds top-level config text (before the tables).
    pub fn config(mut self, text: &str) -> Self {
        self.extra_config.push_str(text);
        self.extra_config.push('\n');
        self
    }

    /// Adds config tables (after the top-level keys and the default tables).
    pub fn tables(mut self, text: &str) -> Self {
        self.extra_tables.push_str(text);
        self.extra_tables.push('\n');
        self
    }

    /// Adds `connectors/<name>/connector.toml`; `NAME` in the text becomes `name`.
    /// The outbox folder `outbox/<name>` is created.
    pub fn connector(self, name: &str, text: &str) -> Self {
        let folder = self.path().join("connectors").join(name);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("connector.toml"), text.replace("NAME", name)).unwrap();
        std::fs::create_dir_all(self.path().join("outbox").join(name)).unwrap();
        self
    }

    pub fn write_config(&self) {
        let text = format!(
            "{}state_dir = \"state\"\nconnectors_dir = \"connectors\"\ndelivery_log = \"delivery.log\"\nmin_free_disk_mib = 0\n\
             [socket]\npath = \"hms.sock\"\n[status]\nlisten = \"127.0.0.1:0\"\n\
             [[watch]]\ndir = \"inbox/permits\"\ncollection = \"permits\"\nkey = \"permit_number\"\n\
             [[watch]]\ndir = \"inbox/envelopes\"\ncollection = \"permits\"\n{}",
            self.extra_config, self.extra_tables
        );
        if !self.config_path().exists() {
            std::fs::write(self.config_path(), text).unwrap();
        }
    }

    pub fn inbox(&self) -> PathBuf {
        self.path().join("inbox/permits")
    }

    pub fn outbox(&self, name: &str) -> PathBuf {
        self.path().join("outbox").join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("hms.sock")
    }

    /// Starts `hms-sync run` and waits for it to log `ready`.
    pub fn start(mut self) -> Self {
        self.spawn();
        self
    }

    pub fn spawn(&mut self) {
        self.write_config();
        self.launch();
        self.wait_for(Duration::from_secs(20), "the daemon to log ready", |d| {
            d.log().contains("ready")
        });
    }

    /// Starts the binary, appending its output to `daemon.log`.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("daemon.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(self.config_path())
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start hms-sync");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("daemon.log")).unwrap_or_default()
    }

    /// Counts `ready` lines, so restarts can wait for the next one.
    pub fn ready_count(&self) -> usize {
        self.log().matches(" ready ").count()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "hms-sync did not stop within 30 s of SIGTERM\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts after a kill or stop and waits for the new `ready`.
    pub fn restart(&mut self) {
        let before = self.ready_count();
        self.launch();
        self.wait_for(
            Duration::from_secs(20),
            "the daemon to log ready again",
            |d| d.ready_count() > before,
        );
    }

    /// Restarts after a kill like [`TestDaemon::restart`], but reports instead of
    /// panicking when the daemon exits or does not log `ready` in time (the
    /// power-loss test counts such failures).
    pub fn try_restart(&mut self, timeout: Duration) -> Result<(), String> {
        let before = self.ready_count();
        self.launch();
        let deadline = Instant::now() + timeout;
        loop {
            if self.ready_count() > before {
                return Ok(());
            }
            let gone = self.child.as_ref().is_some_and(exited);
            if gone || Instant::now() > deadline {
                self.kill9();
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "{} (last lines of the log:)\n{}",
                    if gone {
                        "the daemon exited before it was ready"
                    } else {
                        "the daemon was not ready in time"
                    },
                    tail.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes a file into the inbox the safe way (temp name, then rename).
    pub fn drop_file(&self, name: &str, contents: &[u8]) {
        drop_into(&self.inbox(), name, contents);
    }

    pub fn drop_fixture(&self, fixture: &str, as_name: &str) {
        let bytes = std::fs::read(fixtures().join(fixture)).unwrap();
        self.drop_file(as_name, &bytes);
    }

    /// Runs `hms-sync ARGS -c <config>` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("-c")
            .arg(self.config_path())
            .current_dir(self.path())
            .output()
            .expect("run hms-sync")
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .arg("-c")
            .arg(self.config_path())
            .current_dir(self.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    pub fn target_status(&self, name: &str) -> serde_json::Value {
        let s = self.status_json();
        s["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .expect("target in status")
    }

    /// Files in the outbox, sorted by name (the delivery order).
    pub fn outbox_files(&self, name: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.outbox(name))
            .map(|r| {
                r.flatten()
                    .map(|e| e.path())
                    .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// All CSV data rows delivered to `name`, in delivery order, as field vectors.
    pub fn outbox_rows(&self, name: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for f in self.outbox_files(name) {
            let mut r = csv::Reader::from_path(&f).unwrap();
            for rec in r.records() {
                rows.push(rec.unwrap().iter().map(String::from).collect());
            }
        }
        rows
    }

    pub fn wait_for(&self, timeout: Duration, what: &str, mut done: impl FnMut(&Self) -> bool) {
        // Generous: a loaded 2-core CI machine is slow, and a passing wait ends early.
        let deadline = Instant::now() + timeout * 3;
        while !done(self) {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            if self.child.as_ref().is_some_and(exited) {
                panic!(
                    "hms-sync exited while waiting for {what}\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the inbox is empty (every dropped file taken or rejected).
    pub fn wait_inbox_empty(&self) {
        self.wait_for(Duration::from_secs(20), "the inbox to empty", |d| {
            std::fs::read_dir(d.inbox())
                .unwrap()
                .flatten()
                .all(|e| e.file_name().to_string_lossy().starts_with('.'))
        });
    }

    /// A connected socket client.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket())
    }
}

/// True if the process has exited (a zombie waiting for the real wait).
fn exited(c: &Child) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", c.id())) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => true,
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn drop_into(dir: &Path, name: &str, contents: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A pipelining socket client.
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).expect("connect to the ingest socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    pub fn send_line(&mut self, line: &str) {
        self.stream.write_all(line.as_bytes()).unwrap();
        self.stream.write_all(b"\n").unwrap();
    }

    pub fn answer(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("an answer line");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("answer is JSON: {line:?}"))
    }

    /// Sends one line and returns its answer.
    pub fn call(&mut self, line: &str) -> serde_json::Value {
        self.send_line(line);
        self.answer()
    }
}

pub fn envelope(key: &str, doc: serde_json::Value) -> String {
    serde_json::json!({"collection": "permits", "key": key, "doc": doc}).to_string()
}

impl TestDaemon {
    /// The status listener's address (the latest start's), from the daemon's log.
    pub fn status_addr(&self) -> String {
        self.log()
            .lines()
            .filter(|l| l.contains("status listener up"))
            .filter_map(|l| l.split("address=").nth(1))
            .filter_map(|a| a.split_whitespace().next())
            .next_back()
            .expect("the status listener's address in the log")
            .to_string()
    }

    /// GET `path` from the status listener: (status line and headers, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(self.status_addr()).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    /// Lines of the delivery log as JSON.
    pub fn delivery_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path().join("delivery.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Serves `app` on a free loopback port, on a runtime of its own that stops when
/// the returned runtime is dropped; the URL of `/PermitService` there.
pub fn serve_soap_app(app: axum::Router) -> (String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/PermitService", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await });
    (url, rt)
}
