//! The command line (SPEC §6): one file per command. Exit codes: 0 success,
//! 1 runtime failure, 2 bad usage or invalid config.

pub mod check;
pub mod dead;
pub mod new;
pub mod operate;
pub mod recover;
pub mod resync;
pub mod run;
pub mod send;
pub mod status;
pub mod tail;
pub mod translate;
pub mod where_;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::{self, Config};
use crate::control::{self, Request};

pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HMS_GIT_COMMIT"),
    ", ",
    env!("HMS_TARGET"),
    ")"
);

/// Keeps legacy systems in sync: watches drop folders and a socket for changed
/// records, queues every change durably, and delivers it to each legacy system.
#[derive(Parser, Debug)]
#[command(
    name = "hms-sync",
    version = VERSION,
    about,
    long_about = None,
    after_help = "Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid config (an unknown\n\
                  target or collection is bad usage). `status --check`: 0 OK, 1 warning, 2 critical,\n\
                  3 unknown (hms-sync not running); see `hms-sync status --help`."
)]
pub struct Cli {
    /// Config file. Otherwise $HMS_SYNC_CONFIG, ./hms-sync.toml, /etc/hms-sync/hms-sync.toml,
    /// or the embedded default (everything under ./var/).
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (logs `ready` once watching; tells systemd READY=1).
    Run,
    /// Validate the config and every connector; lists every problem.
    Check,
    /// Per target: up/down/paused, pending, in flight, dead, delivered, oldest pending age, last error.
    #[command(after_help = "Exit codes with --check (for monitoring scripts):\n  \
        0 OK        every target up or idle, nothing stuck\n  \
        1 WARNING   a target down for less than [alerts] target_down_after; a target paused;\n              \
        alert_command failing; unrouted changes kept\n  \
        2 CRITICAL  a target down for target_down_after or longer; dead letters; an oldest\n              \
        pending change older than [alerts] oldest_pending_after\n  \
        3 UNKNOWN   hms-sync is not running (no answer on its control socket)")]
    Status {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Refresh every 2 seconds, in place on a terminal (Ctrl-C to stop).
        #[arg(long)]
        watch: bool,
        /// One line for monitoring scripts; the exit code says OK (0), WARNING (1),
        /// CRITICAL (2) or UNKNOWN (3: not running).
        #[arg(long, conflicts_with_all = ["json", "watch"])]
        check: bool,
    },
    /// Stop delivering to TARGET (planned maintenance): nothing is sent, nothing
    /// counted; changes keep queueing. Survives restarts.
    Pause {
        /// The target (connector name).
        target: String,
    },
    /// Restart delivery to a paused TARGET.
    Resume {
        /// The target (connector name).
        target: String,
    },
    /// Try a down TARGET now instead of waiting out its backoff.
    Probe {
        /// The target (connector name).
        target: String,
    },
    /// Print TARGET's payloads as they go on the wire, live (Ctrl-C to stop).
    /// Costs nothing while nobody taps; a reader that falls behind skips
    /// payloads (it is told how many), delivery never waits for it.
    Tap {
        /// The target (connector name).
        target: String,
        /// One JSON object a line: ts, target, id, attempt, encoding (text or
        /// hex), payload.
        #[arg(long)]
        json: bool,
        /// Stop after this many payloads.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Re-read the config and connectors in the running daemon (what
    /// `systemctl reload hms-sync`, i.e. SIGHUP, does) and say what changed.
    /// Exit 2 if the new config is refused (the running one stays).
    Reload,
    /// Drop the kept queue of TARGET, a connector removed while changes or dead
    /// letters were left for it (shown as orphaned). Asks first on a terminal.
    Forget {
        /// The orphaned target (`hms-sync status` lists them).
        target: String,
        /// Do not ask (scripts; without a terminal nothing is asked anyway).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Where is this record? Its last known state and, per target, the last
    /// delivery, the pending change, in flight, held or dead (with the reason).
    Where {
        /// The collection, e.g. permits.
        collection: String,
        /// The record's key, e.g. 123.
        key: String,
        /// JSON for scripts (the same as GET /records/<collection>/<key>).
        #[arg(long)]
        json: bool,
    },
    /// Dead letters: deltas the legacy system refused max_attempts times.
    #[command(subcommand)]
    Dead(dead::DeadCommand),
    /// The delivery log: one line per outcome.
    Tail(tail::TailArgs),
    /// Send envelopes (NDJSON) through the ingest socket; `-` or no FILE reads stdin.
    Send {
        /// NDJSON files of envelopes; `-` for standard input.
        files: Vec<PathBuf>,
    },
    /// Scaffold connectors/NAME/ with a commented connector.toml.
    New(new::NewArgs),
    /// Show what connector NAME would send for a change, without sending it.
    Translate(translate::TranslateArgs),
    /// Print the embedded default config (what `run` uses when no config file is found).
    Config {
        /// The embedded default (the only form for now).
        #[arg(long)]
        default: bool,
    },
    /// Copy what can still be read out of a damaged queue into a fresh one (the
    /// daemon must be stopped); the damaged file is kept aside. Exit 0: all was
    /// read; 1: something could not be read (listed).
    Recover {
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue every known record for TARGET in full (or one, with --key).
    Resync {
        /// The target (connector name).
        target: String,
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
        /// Only this record (its collection: --collection, or the target's only one).
        #[arg(long)]
        key: Option<String>,
    },
}

pub fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match (cli.verbose, &cli.command) {
        (0, Command::Run) => "info",
        (0, _) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

/// A failure the user caused (bad usage, invalid config): exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let result = dispatch(cli);
    match result {
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("hms-sync: {e:#}");
            Ok(ExitCode::from(2))
        }
        other => other,
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = config::discover(cli.config.as_deref());
    match cli.command {
        Command::Check => check::run(path.as_deref()),
        Command::New(args) => new::run(path.as_deref(), args),
        Command::Config { default } => {
            if !default {
                return Err(UsageError(
                    "say `hms-sync config --default` to print the embedded default config".into(),
                )
                .into());
            }
            print!("{}", config::DEFAULT_CONFIG);
            Ok(ExitCode::SUCCESS)
        }
        command => {
            let cfg = match load_config(path.as_deref()) {
                Ok(cfg) => cfg,
                Err(e) if matches!(command, Command::Status { .. } | Command::Reload) => {
                    running_daemon_config(path.as_deref()).ok_or(e)?
                }
                Err(e) => return Err(e),
            };
            match command {
                Command::Run => run::run(cfg),
                Command::Status { json, watch, check } => status::run(&cfg, json, watch, check),
                Command::Pause { target } => operate::pause(&cfg, &target, true),
                Command::Resume { target } => operate::pause(&cfg, &target, false),
                Command::Probe { target } => operate::probe(&cfg, &target),
                Command::Tap {
                    target,
                    json,
                    count,
                } => operate::tap(&cfg, &target, json, count),
                Command::Reload => operate::reload(&cfg),
                Command::Forget { target, yes } => operate::forget(&cfg, &target, yes),
                Command::Where {
                    collection,
                    key,
                    json,
                } => where_::run(&cfg, &collection, &key, json),
                Command::Dead(cmd) => dead::run(&cfg, cmd),
                Command::Tail(args) => tail::run(&cfg, args),
                Command::Send { files } => send::run(&cfg, files),
                Command::Translate(args) => translate::run(&cfg, args),
                Command::Resync {
                    target,
                    collection,
                    key,
                } => resync::run(&cfg, &target, collection, key),
                Command::Recover { json } => recover::run(&cfg, json),
                Command::Check | Command::New(_) | Command::Config { .. } => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    config::load(path).map_err(|e| {
        anyhow::Error::new(UsageError(format!(
            "the configuration is not valid:\n{e}\n(run `hms-sync check` for the full list)"
        )))
    })
}

/// While the config on disk is broken, `status` and `reload` still reach a
/// running daemon (which keeps the config it had): the config file without its
/// connectors, if the daemon answers on its control socket.
fn running_daemon_config(path: Option<&Path>) -> Option<Config> {
    let cfg = config::load_without_connectors(path).ok()?;
    std::os::unix::net::UnixStream::connect(cfg.control_socket()).ok()?;
    eprintln!(
        "hms-sync: warning: the config or a connector on disk is not valid (`hms-sync check` lists why); asking the running daemon, which keeps the config it had"
    );
    Some(cfg)
}

/// A small runtime for the commands that talk over sockets.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

/// Runs a control request on the running daemon, or directly on the queue when
/// no daemon answers. Errors from the request itself are `Ok(Err(message))`.
pub fn request(cfg: &Config, req: Request) -> anyhow::Result<Result<Value, String>> {
    let socket = cfg.control_socket();
    if let Some(answer) = block_on(control::ask(&socket, &req))? {
        return Ok(answer);
    }
    if !crate::queue::exists(&cfg.state_dir) {
        // Never ran: an empty queue, without creating one as a side effect.
        let empty_dir = tempfile_dir()?;
        let mut q =
            crate::queue::Queue::open(empty_dir.path(), 1, crate::daemon::target_specs(cfg))?;
        let log = crate::daemon::delivery_log(cfg);
        return Ok(control::execute(&mut q, req, &log).map_err(|e| e.to_string()));
    }
    let mut q = crate::daemon::open_queue(cfg)?;
    let log = crate::daemon::delivery_log(cfg);
    let result = control::execute(&mut q, req, &log).map_err(|e| e.to_string());
    q.commit()?;
    Ok(result)
}

/// A throw-away folder (removed on drop).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> anyhow::Result<TempDir> {
    let dir = std::env::temp_dir().join(format!(
        "hms-sync-empty-{}-{}",
        std::process::id(),
        crate::record::now_ms()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(TempDir(dir))
}
