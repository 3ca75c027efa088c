//! The configuration file as written (`ConfigFile`, serde, unknown keys refused)
//! turned into the validated [`Config`] the daemon runs on, with every connector
//! loaded from `connectors_dir`.
//!
//! **Invariants:** every path in a `Config` is absolute (relative paths resolve
//! against the config file's folder, or the working directory for the embedded
//! default); loading reports *every* problem it finds, each naming the file, the
//! line where known, and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::connector::{self, Connector};

/// The embedded default: works from a checkout of the repository.
pub const DEFAULT_CONFIG: &str = r#"# hms-sync embedded default: everything under ./var/, connectors from ./connectors/
state_dir = "var/state"
connectors_dir = "connectors"
delivery_log = "var/delivery.log"

[socket]
path = "var/hms-sync.sock"

[status]
listen = "127.0.0.1:7878"

[[watch]]
dir = "var/inbox/permits"
collection = "permits"
key = "permit_number"
"#;

/// Where the configuration came from, for messages and `check`.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Embedded => f.write_str("(embedded default config)"),
        }
    }
}

/// `hms-sync.toml` exactly as the user wrote it.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Folder of the crash-safe queue (`queue.redb`). Default `/var/lib/hms-sync`.
    pub state_dir: Option<PathBuf>,
    /// Folder holding one `<name>/connector.toml` per legacy system. Default `connectors`.
    pub connectors_dir: Option<PathBuf>,
    /// The delivery log (JSON lines). Default `<state_dir>/delivery.log`.
    pub delivery_log: Option<PathBuf>,
    /// Rotate the delivery log when it grows past this size. Default 64 MiB.
    pub delivery_log_max_bytes: Option<ByteSize>,
    /// How many rotated delivery logs to keep. Default 5.
    pub delivery_log_keep: Option<u32>,
    /// Pause ingestion while the queued deltas take more than this. Default 1 GiB.
    pub max_queue_bytes: Option<ByteSize>,
    /// The queue's page cache in MiB: bounds the daemon's memory. Default 32.
    pub cache_mib: Option<u64>,
    /// Pause ingestion while the state folder's disk has less free space. Default 256.
    pub min_free_disk_mib: Option<u64>,
    /// Shell command run when an alert starts and when it clears (see `[alerts]`),
    /// with `HMS_ALERT`, `HMS_ALERT_STATE`, `HMS_TARGET` and the facts in `HMS_*`
    /// environment variables.
    pub alert_command: Option<String>,
    /// When `alert_command` runs (SPEC §6 "Alerts").
    pub alerts: Option<AlertsFile>,
    /// What happens to changes of a collection no connector receives.
    pub collections: Option<CollectionsFile>,
    pub socket: Option<SocketFile>,
    pub status: Option<StatusFile>,
    pub limits: Option<LimitsFile>,
    #[serde(default)]
    pub watch: Vec<WatchFile>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SocketFile {
    /// Path of the ingest Unix socket.
    pub path: Option<PathBuf>,
    /// File mode of the socket, in octal. Default "0660".
    pub mode: Option<String>,
    /// If set (with or without `allow_gids`), only these peer uids may connect.
    #[serde(default)]
    pub allow_uids: Vec<u32>,
    /// If set, peers whose primary gid is listed may connect.
    #[serde(default)]
    pub allow_gids: Vec<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StatusFile {
    /// Address of the read-only status listener. Default "127.0.0.1:7878"; "off" disables it.
    pub listen: Option<String>,
    /// Networks (CIDR, e.g. "10.20.0.0/16", or one address) whose clients may
    /// read the status listener; loopback always may. A non-loopback `listen`
    /// needs this or `token_file`.
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// File holding a bearer token (`Authorization: Bearer …`) that lets any
    /// client read the status listener. Read at start; never shown.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    /// Alert `target_down` once a target has been down this long. Default "15m".
    pub target_down_after: Option<String>,
    /// Alert `backlog_stale` once a target's oldest pending change is this old. Default "1h".
    pub oldest_pending_after: Option<String>,
    /// Alert `file_rejected` while a watched folder's `.rejected/` holds files. Default true.
    pub file_rejected: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CollectionsFile {
    /// Keep changes of a collection that no connector receives (for a later
    /// connector or `resync`) instead of refusing them. Default false.
    #[serde(default)]
    pub keep_unrouted: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest input file accepted. Default 64 MiB.
    pub max_file_bytes: Option<ByteSize>,
    /// Longest socket or NDJSON line accepted. Default 1 MiB.
    pub max_line_bytes: Option<ByteSize>,
    /// Deepest nesting of objects and arrays accepted. Default 32.
    pub max_depth: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchFile {
    /// The drop directory.
    pub dir: PathBuf,
    /// Collection its records belong to.
    pub collection: String,
    /// Key field of bare documents; unset means files hold envelopes.
    pub key: Option<String>,
    /// True: each file is the whole collection; records absent from it are deleted.
    #[serde(default)]
    pub snapshot: bool,
    /// Move accepted files here instead of deleting them.
    pub archive_dir: Option<PathBuf>,
    /// Poll the folder instead of using inotify (for NFS/CIFS mounts).
    #[serde(default)]
    pub poll: bool,
}

/// A size in bytes: a number, or a string such as "512 MiB".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (try 1048576 or \"512 MiB\")"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use B, KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

pub use crate::problem::{line_of, parse_duration};

/// The validated configuration the daemon and the commands use.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub state_dir: PathBuf,
    pub connectors_dir: PathBuf,
    pub delivery_log: PathBuf,
    pub delivery_log_max_bytes: u64,
    pub delivery_log_keep: u32,
    pub max_queue_bytes: u64,
    pub cache_mib: u64,
    pub min_free_disk_mib: u64,
    pub alert_command: Option<String>,
    pub alerts: AlertsConfig,
    /// `[collections] keep_unrouted`: keep changes no connector receives.
    pub keep_unrouted: bool,
    pub socket: SocketConfig,
    pub status_listen: Option<SocketAddr>,
    /// `[status] allow_from`, parsed.
    pub status_allow_from: Vec<Cidr>,
    /// `[status] token_file`, resolved.
    pub status_token_file: Option<PathBuf>,
    pub limits: Limits,
    pub watches: Vec<Watch>,
    pub connectors: Vec<Connector>,
}

/// `[alerts]`, validated.
#[derive(Debug, Clone, Copy)]
pub struct AlertsConfig {
    pub target_down_after: Duration,
    pub oldest_pending_after: Duration,
    pub file_rejected: bool,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            target_down_after: Duration::from_secs(15 * 60),
            oldest_pending_after: Duration::from_secs(60 * 60),
            file_rejected: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SocketConfig {
    pub path: PathBuf,
    pub mode: u32,
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_line_bytes: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 64 << 20,
            max_line_bytes: 1 << 20,
            max_depth: 32,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Watch {
    pub dir: PathBuf,
    pub collection: String,
    pub key: Option<String>,
    pub snapshot: bool,
    pub archive_dir: Option<PathBuf>,
    pub poll: bool,
}

/// A network in CIDR notation (`10.0.0.0/8`, `fd00::/8`) or one address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("`{text}` is not a network like \"10.20.0.0/16\" or an address");
        let (ip, prefix) = match text.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let addr: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Every problem found while loading, each a full sentence for the operator.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Finds the config: `-c`, then `HMS_SYNC_CONFIG`, then `./hms-sync.toml`, then
/// `/etc/hms-sync/hms-sync.toml`; `None` means the embedded default.
pub fn discover(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("HMS_SYNC_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    ["hms-sync.toml", "/etc/hms-sync/hms-sync.toml"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Loads and validates the config (and every connector). `path == None`: embedded default.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    load_with(path, true)
}

/// The config file alone, its connectors left out (empty), for commands that
/// only talk to a running daemon (`status`, `reload`) while a connector on disk
/// is broken: the daemon still runs with the config it had.
pub fn load_without_connectors(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    load_with(path, false)
}

fn load_with(path: Option<&Path>, with_connectors: bool) -> Result<Config, ConfigErrors> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let (source, text, base) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                ConfigErrors(vec![format!(
                    "{}: cannot read the config file: {e}",
                    p.display()
                )])
            })?;
            let abs = if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            };
            let base = abs.parent().map(Path::to_path_buf).unwrap_or(cwd.clone());
            (Source::File(abs), text, base)
        }
        None => (Source::Embedded, DEFAULT_CONFIG.to_string(), cwd),
    };
    let file: ConfigFile = toml::from_str(&text)
        .map_err(|e| ConfigErrors(vec![toml_error(&source.to_string(), &text, &e)]))?;
    build(source, &text, &base, file, with_connectors)
}

/// A toml error as "file: line L, column C: message" (toml lists the known keys).
pub fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("{file}: line {line}, column {col}: {msg}")
        }
        None => format!("{file}: {msg}"),
    }
}

/// 1-based line and column of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, col)
}

fn build(
    source: Source,
    text: &str,
    base: &Path,
    file: ConfigFile,
    with_connectors: bool,
) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let name = source.to_string();
    let at = |table: Option<&str>, key: &str| match line_of(text, table, key) {
        Some(l) => format!("{name}: line {l}: "),
        None => format!("{name}: "),
    };
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    let state_dir = resolve(
        file.state_dir
            .as_deref()
            .unwrap_or(Path::new("/var/lib/hms-sync")),
    );
    let connectors_dir = resolve(
        file.connectors_dir
            .as_deref()
            .unwrap_or(Path::new("connectors")),
    );
    let delivery_log = file
        .delivery_log
        .as_deref()
        .map(resolve)
        .unwrap_or_else(|| state_dir.join("delivery.log"));

    let socket_file = file.socket.unwrap_or_default();
    let mode = match socket_file.mode.as_deref() {
        None => 0o660,
        Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(v) if v <= 0o777 => v,
            _ => {
                problems.push(format!(
                    "{}[socket] mode: `{m}` is not an octal file mode like \"0660\"",
                    at(Some("socket"), "mode")
                ));
                0o660
            }
        },
    };
    let socket = SocketConfig {
        path: resolve(
            socket_file
                .path
                .as_deref()
                .unwrap_or(Path::new("/run/hms-sync/ingest.sock")),
        ),
        mode,
        allow_uids: socket_file.allow_uids,
        allow_gids: socket_file.allow_gids,
    };

    let status_file = file.status.unwrap_or_default();
    let mut status_allow_from = Vec::new();
    for text in &status_file.allow_from {
        match Cidr::parse(text) {
            Ok(c) => status_allow_from.push(c),
            Err(e) => problems.push(format!(
                "{}[status] allow_from: {e}",
                at(Some("status"), "allow_from")
            )),
        }
    }
    let status_token_file = status_file.token_file.as_deref().map(resolve);
    let listen_text = status_file
        .listen
        .unwrap_or_else(|| "127.0.0.1:7878".to_string());
    let status_listen = if listen_text == "off" {
        None
    } else {
        match listen_text.parse::<SocketAddr>() {
            Ok(a) => {
                if !a.ip().is_loopback()
                    && status_allow_from.is_empty()
                    && status_token_file.is_none()
                {
                    problems.push(format!(
                        "{}[status] listen: `{listen_text}` is reachable from the network; say who may read it with `allow_from = [\"10.0.0.0/8\"]` or `token_file = \"/etc/hms-sync/status.token\"` (or listen on 127.0.0.1)",
                        at(Some("status"), "listen")
                    ));
                }
                Some(a)
            }
            Err(_) => {
                problems.push(format!(
                    "{}[status] listen: `{listen_text}` is not an address like \"127.0.0.1:7878\" (or \"off\")",
                    at(Some("status"), "listen")
                ));
                None
            }
        }
    };

    let limits_file = file.limits.unwrap_or_default();
    let defaults = Limits::default();
    let limits = Limits {
        max_file_bytes: limits_file
            .max_file_bytes
            .map(|b| b.0)
            .unwrap_or(defaults.max_file_bytes),
        max_line_bytes: limits_file
            .max_line_bytes
            .map(|b| b.0 as usize)
            .unwrap_or(defaults.max_line_bytes),
        max_depth: limits_file.max_depth.unwrap_or(defaults.max_depth),
    };
    if limits.max_depth == 0 || limits.max_depth > 128 {
        problems.push(format!(
            "{}[limits] max_depth: must be between 1 and 128",
            at(Some("limits"), "max_depth")
        ));
    }

    let mut watches = Vec::new();
    for (i, w) in file.watch.into_iter().enumerate() {
        if w.collection.trim().is_empty() {
            problems.push(format!(
                "{name}: [[watch]] #{}: `collection` is empty",
                i + 1
            ));
        }
        if w.key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            problems.push(format!(
                "{name}: [[watch]] #{}: `key` is empty (leave it out for envelope files)",
                i + 1
            ));
        }
        watches.push(Watch {
            dir: resolve(&w.dir),
            collection: w.collection,
            key: w.key,
            snapshot: w.snapshot,
            archive_dir: w.archive_dir.as_deref().map(resolve),
            poll: w.poll,
        });
    }
    for (i, a) in watches.iter().enumerate() {
        if watches[..i].iter().any(|b| b.dir == a.dir) {
            problems.push(format!(
                "{name}: [[watch]] folder {} is listed twice",
                a.dir.display()
            ));
        }
    }

    let alerts_file = file.alerts.unwrap_or_default();
    let mut alerts = AlertsConfig::default();
    for (key, text, slot) in [
        (
            "target_down_after",
            &alerts_file.target_down_after,
            &mut alerts.target_down_after,
        ),
        (
            "oldest_pending_after",
            &alerts_file.oldest_pending_after,
            &mut alerts.oldest_pending_after,
        ),
    ] {
        if let Some(text) = text {
            match parse_duration(text) {
                Ok(d) => *slot = d,
                Err(e) => problems.push(format!("{}[alerts] {key}: {e}", at(Some("alerts"), key))),
            }
        }
    }
    if let Some(on) = alerts_file.file_rejected {
        alerts.file_rejected = on;
    }

    let connectors = match connector::load_all(&connectors_dir, base) {
        Ok(c) => c,
        Err(_) if !with_connectors => Vec::new(),
        Err(mut errs) => {
            problems.append(&mut errs);
            Vec::new()
        }
    };

    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    Ok(Config {
        source,
        state_dir,
        connectors_dir,
        delivery_log,
        delivery_log_max_bytes: file.delivery_log_max_bytes.map(|b| b.0).unwrap_or(64 << 20),
        delivery_log_keep: file.delivery_log_keep.unwrap_or(5),
        max_queue_bytes: file.max_queue_bytes.map(|b| b.0).unwrap_or(1 << 30),
        cache_mib: file.cache_mib.unwrap_or(32),
        min_free_disk_mib: file.min_free_disk_mib.unwrap_or(256),
        alert_command: file.alert_command,
        alerts,
        keep_unrouted: file.collections.is_some_and(|c| c.keep_unrouted),
        socket,
        status_listen,
        status_allow_from,
        status_token_file,
        limits,
        watches,
        connectors,
    })
}

impl Config {
    /// The local control socket the CLI uses to talk to a running daemon.
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }

    pub fn connector(&self, name: &str) -> Option<&Connector> {
        self.connectors.iter().find(|c| c.name == name)
    }

    /// Every collection some connector receives, sorted, without repeats.
    pub fn routed_collections(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&String> = self
            .connectors
            .iter()
            .flat_map(|c| c.collections.iter())
            .collect();
        set.into_iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn networks_contain_their_addresses() {
        let c = Cidr::parse("10.20.0.0/16").unwrap();
        assert!(c.contains("10.20.3.4".parse().unwrap()));
        assert!(!c.contains("10.21.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.20.0.9".parse().unwrap()));
        let one = Cidr::parse("192.168.1.5").unwrap();
        assert!(one.contains("192.168.1.5".parse().unwrap()));
        assert!(!one.contains("192.168.1.6".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten").is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10"), Ok(10));
        assert!(parse_size("ten").is_err());
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn line_of_finds_keys_in_tables() {
        let text = "a = 1\n[transport]\nkind = \"file\"\ndir = \"x\"\n";
        assert_eq!(line_of(text, Some("transport"), "dir"), Some(4));
        assert_eq!(line_of(text, None, "a"), Some(1));
        assert_eq!(line_of(text, None, "dir"), None);
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn unknown_key_names_line_and_known_keys() {
        let e = toml::from_str::<ConfigFile>("state_dir = \"x\"\nstate_dri = \"y\"\n").unwrap_err();
        let msg = toml_error(
            "hms-sync.toml",
            "state_dir = \"x\"\nstate_dri = \"y\"\n",
            &e,
        );
        assert!(msg.contains("line 2"), "{msg}");
        assert!(
            msg.contains("state_dri") && msg.contains("connectors_dir"),
            "{msg}"
        );
    }
}
