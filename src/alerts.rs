//! Alerts (SPEC §6 "Alerts"): conditions of the targets, the queue and the
//! watched folders, checked every [`TICK`]; `alert_command` runs once when a
//! condition starts (`HMS_ALERT_STATE=firing`) and once when it clears
//! (`resolved`), with `HMS_ALERT`, `HMS_TARGET` and the facts in `HMS_*`.
//!
//! | `HMS_ALERT` | fires while | subject |
//! |---|---|---|
//! | `dead_letter` | the target has dead letters (a burst is one alert, `HMS_COUNT`) | target |
//! | `target_down` | down (not paused) for `target_down_after` | target |
//! | `backlog_stale` | oldest pending change older than `oldest_pending_after` | target |
//! | `file_rejected` | a watch's `.rejected/` holds files (`file_rejected = true`) | watch folder |
//! | `alert_failed` | the last `alert_command` run failed or ran over 10 s | — |
//! | `reload_failed` | the last reload (SIGHUP, `hms-sync reload`) was refused (`HMS_ERROR`) | — |
//!
//! **Invariants:** commands run one at a time on their own task, in the order
//! the conditions changed, and a command running over [`COMMAND_TIMEOUT`] is
//! killed with its process group: nothing here ever waits in a delivery path
//! (workers only record a dead letter's facts in memory). The state is in
//! memory: after a restart, conditions still true fire once more.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::config::{AlertsConfig, Watch};
use crate::queue::handle::QueueHandle;
use crate::record::{format_ms, now_ms};
use crate::replay::Health;

/// How often conditions are checked.
pub const TICK: Duration = Duration::from_secs(1);
/// A command running longer is killed (and `alert_failed` fires).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    DeadLetter,
    TargetDown,
    BacklogStale,
    FileRejected,
    AlertFailed,
    ReloadFailed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DeadLetter => "dead_letter",
            Kind::TargetDown => "target_down",
            Kind::BacklogStale => "backlog_stale",
            Kind::FileRejected => "file_rejected",
            Kind::AlertFailed => "alert_failed",
            Kind::ReloadFailed => "reload_failed",
        }
    }
}

type Facts = Vec<(&'static str, String)>;

#[derive(Clone, Debug)]
struct Firing {
    since_ms: u64,
    facts: Facts,
}

#[derive(Clone, Debug)]
struct Failure {
    alert: &'static str,
    error: String,
    at_ms: u64,
}

#[derive(Default)]
struct State {
    /// (kind, subject: a target or a watch folder) -> since when, with its facts.
    firing: BTreeMap<(Kind, String), Firing>,
    /// Dead letters since the last tick, per target: how many, and the first's facts.
    new_dead: BTreeMap<String, (u64, Facts)>,
    /// The last failed run, while no later run succeeded.
    failing: Option<Failure>,
    /// False until the first tick: dead letters from before the start fire then.
    started: bool,
}

struct Run {
    kind: Kind,
    firing: bool,
    subject: String,
    facts: Facts,
}

pub struct Alerts {
    command: Option<String>,
    cfg: AlertsConfig,
    state: Mutex<State>,
    runs: mpsc::UnboundedSender<Run>,
    runs_rx: Mutex<Option<mpsc::UnboundedReceiver<Run>>>,
}

impl Alerts {
    pub fn new(command: Option<String>, cfg: AlertsConfig) -> Arc<Alerts> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Alerts {
            command,
            cfg,
            state: Mutex::default(),
            runs: tx,
            runs_rx: Mutex::new(Some(rx)),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker dead-lettered a delta: its facts for the next tick's alert.
    pub fn dead_letter(&self, target: &str, facts: Vec<(&'static str, String)>) {
        let mut s = self.state();
        let entry = s
            .new_dead
            .entry(target.to_string())
            .or_insert_with(|| (0, facts));
        entry.0 += 1;
    }

    /// A reload was refused (`Some(why)`) or applied (`None`): fires
    /// `reload_failed` at once, resolves it at the next good reload.
    pub fn reload(&self, error: Option<String>) {
        self.set(
            (Kind::ReloadFailed, String::new()),
            error.map(|e| vec![("HMS_ERROR", e)]),
        );
    }

    /// For `status`: what fires now and whether the command fails.
    pub fn report(&self) -> Value {
        let s = self.state();
        let firing: Vec<Value> = s
            .firing
            .iter()
            .map(|((kind, subject), f)| {
                json!({"alert": kind.as_str(), "subject": subject, "since": format_ms(f.since_ms)})
            })
            .collect();
        let failing = s
            .failing
            .as_ref()
            .map(|f| json!({"alert": f.alert, "error": f.error, "at": format_ms(f.at_ms)}));
        json!({
            "command": self.command.is_some(),
            "firing": firing,
            "command_failing": failing,
        })
    }

    /// Starts the command runner and checks conditions every [`TICK`] until shutdown.
    pub async fn run(
        self: Arc<Self>,
        queue: QueueHandle,
        health: Arc<Health>,
        watches: Vec<Watch>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if let Some(rx) = self
            .runs_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            tokio::spawn(self.clone().runner(rx));
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            let counts = match queue.call(|q| q.counts()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "alerts: cannot read the queue's counts");
                    continue;
                }
            };
            let now = now_ms();
            let mut want: Vec<((Kind, String), Option<Facts>)> = Vec::new();
            let (new_dead, first) = {
                let mut s = self.state();
                let first = !s.started;
                s.started = true;
                (std::mem::take(&mut s.new_dead), first)
            };
            for c in &counts {
                let h = health.get(&c.name);
                let down_for = h.down_since.map(|t| t.elapsed()).unwrap_or_default();
                let down =
                    !c.orphaned && !h.paused && h.down && down_for >= self.cfg.target_down_after;
                want.push((
                    (Kind::TargetDown, c.name.clone()),
                    down.then(|| {
                        vec![
                            ("HMS_DOWN_SECONDS", down_for.as_secs().to_string()),
                            ("HMS_ERROR", h.last_error.clone().unwrap_or_default()),
                            ("HMS_PENDING", c.pending.to_string()),
                        ]
                    }),
                ));
                let age = c
                    .oldest_queued_at_ms
                    .map(|t| Duration::from_millis(now.saturating_sub(t)))
                    .unwrap_or_default();
                let stale = !c.orphaned
                    && !h.paused
                    && c.pending > 0
                    && age >= self.cfg.oldest_pending_after;
                want.push((
                    (Kind::BacklogStale, c.name.clone()),
                    stale.then(|| {
                        vec![
                            ("HMS_OLDEST_PENDING_AGE_S", age.as_secs().to_string()),
                            ("HMS_PENDING", c.pending.to_string()),
                            ("HMS_ERROR", h.last_error.clone().unwrap_or_default()),
                        ]
                    }),
                ));
                let dead = match new_dead.get(&c.name) {
                    Some((n, facts)) => {
                        let mut f = facts.clone();
                        f.push(("HMS_COUNT", n.to_string()));
                        f.push(("HMS_DEAD", c.dead.max(*n).to_string()));
                        Some(f)
                    }
                    None if c.dead > 0 && first => Some(vec![
                        ("HMS_COUNT", c.dead.to_string()),
                        ("HMS_DEAD", c.dead.to_string()),
                    ]),
                    // Still firing (or not) as before, until none is left.
                    None if c.dead > 0 => None,
                    None => None,
                };
                let key = (Kind::DeadLetter, c.name.clone());
                let firing_now = self.state().firing.contains_key(&key);
                match dead {
                    Some(f) => want.push((key, Some(f))),
                    None if c.dead > 0 && firing_now => {}
                    None => want.push((key, None)),
                }
            }
            if self.cfg.file_rejected {
                for w in &watches {
                    let rejected = rejected_files(&w.dir);
                    want.push((
                        (Kind::FileRejected, w.dir.display().to_string()),
                        rejected.map(|(count, newest, error)| {
                            vec![
                                ("HMS_WATCH", w.dir.display().to_string()),
                                ("HMS_COLLECTION", w.collection.clone()),
                                ("HMS_COUNT", count.to_string()),
                                ("HMS_FILE", newest),
                                ("HMS_ERROR", error),
                            ]
                        }),
                    ));
                }
            }
            for (key, facts) in want {
                self.set(key, facts);
            }
        }
    }

    /// Moves one condition to firing (`Some(facts)`) or clear (`None`), running
    /// the command when that changes its state.
    fn set(&self, key: (Kind, String), facts: Option<Facts>) {
        let run = {
            let mut s = self.state();
            match (facts, s.firing.contains_key(&key)) {
                (Some(facts), false) => {
                    s.firing.insert(
                        key.clone(),
                        Firing {
                            since_ms: now_ms(),
                            facts: facts.clone(),
                        },
                    );
                    Some(Run {
                        kind: key.0,
                        firing: true,
                        subject: key.1.clone(),
                        facts,
                    })
                }
                (None, true) => {
                    let was = s.firing.remove(&key).expect("checked above");
                    Some(Run {
                        kind: key.0,
                        firing: false,
                        subject: key.1.clone(),
                        facts: was.facts,
                    })
                }
                _ => None,
            }
        };
        if let Some(run) = run {
            tracing::warn!(
                alert = run.kind.as_str(),
                state = if run.firing { "firing" } else { "resolved" },
                subject = %run.subject,
                "alert"
            );
            let _ = self.runs.send(run);
        }
    }

    async fn runner(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Run>) {
        while let Some(run) = rx.recv().await {
            let Some(cmd) = self.command.clone() else {
                continue;
            };
            let result = run_command(&cmd, &run).await;
            if run.kind == Kind::AlertFailed {
                if let Err(e) = result {
                    tracing::warn!(command = %cmd, error = %e, "alert_command failed for alert_failed too");
                }
                continue;
            }
            match result {
                Ok(()) => {
                    let was_failing = self.state().failing.take().is_some();
                    if was_failing {
                        self.set((Kind::AlertFailed, String::new()), None);
                    }
                }
                Err(error) => {
                    tracing::warn!(command = %cmd, alert = run.kind.as_str(), %error, "alert_command failed");
                    self.state().failing = Some(Failure {
                        alert: run.kind.as_str(),
                        error: error.clone(),
                        at_ms: now_ms(),
                    });
                    self.set(
                        (Kind::AlertFailed, String::new()),
                        Some(vec![
                            ("HMS_FAILED_ALERT", run.kind.as_str().to_string()),
                            ("HMS_ERROR", error),
                        ]),
                    );
                }
            }
        }
    }
}

/// Runs `sh -c cmd` with the alert's variables; kills its process group after
/// [`COMMAND_TIMEOUT`]. Err: why it failed, in words.
async fn run_command(cmd: &str, run: &Run) -> Result<(), String> {
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .env("HMS_ALERT", run.kind.as_str())
        .env(
            "HMS_ALERT_STATE",
            if run.firing { "firing" } else { "resolved" },
        )
        .env(
            "HMS_TARGET",
            match run.kind {
                Kind::FileRejected | Kind::AlertFailed => "",
                _ => run.subject.as_str(),
            },
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in &run.facts {
        command.env(k, v);
    }
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh for alert_command: {e}"))?;
    let pid = child.id();
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().next().unwrap_or("").trim();
            Err(format!(
                "alert_command {}{}",
                out.status,
                if first.is_empty() {
                    String::new()
                } else {
                    format!(": {}", crate::replay::bounded(first.to_string()))
                }
            ))
        }
        Ok(Err(e)) => Err(format!("alert_command could not be waited for: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: signalling the process group we created for the command.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            Err(format!(
                "alert_command ran over {} s and was killed",
                COMMAND_TIMEOUT.as_secs()
            ))
        }
    }
}

/// Files in `<dir>/.rejected/` (their `.error` notes not counted): how many, the
/// newest's name and the first line of its note. None: none.
pub fn rejected_files(dir: &Path) -> Option<(usize, String, String)> {
    let list = rejected_list(dir, 1);
    let (count, newest) = (list.0, list.1.into_iter().next()?);
    Some((count, newest.0, newest.1))
}

/// Files in `<dir>/.rejected/`: how many, and the newest `max` with the first
/// line of their `.error` note (newest first).
pub fn rejected_list(dir: &Path, max: usize) -> (usize, Vec<(String, String)>) {
    let folder = dir.join(".rejected");
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return (0, Vec::new());
    };
    let mut files: Vec<(std::time::SystemTime, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".error") {
                return None;
            }
            let modified = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((modified, name))
        })
        .collect();
    files.sort();
    let count = files.len();
    let newest = files
        .into_iter()
        .rev()
        .take(max)
        .map(|(_, name)| {
            let note = note_of(&folder.join(format!("{name}.error")));
            (name, note)
        })
        .collect();
    (count, newest)
}

fn note_of(path: &PathBuf) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(4096).read_to_string(&mut text);
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why `alert_command`'s program cannot run, if it cannot (for `check`): the
/// first word that is not a variable assignment must be a shell builtin, a
/// file that exists and is executable, or found on `PATH`.
pub fn missing_program(command: &str) -> Option<String> {
    const BUILTINS: &[&str] = &[
        "echo", "printf", "test", "[", "true", "false", ":", "exec", "if", "for", "while", "case",
        "set", "export", "cd", "read", "eval", ".", "{", "(", "!", "command", "env",
    ];
    let word = command
        .split_whitespace()
        .find(|w| !w.contains('=') || w.starts_with('='))?;
    let word = word.trim_matches(|c| c == '"' || c == '\'');
    if BUILTINS.contains(&word) || word.starts_with('$') {
        return None;
    }
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if word.contains('/') {
        return (!executable(Path::new(word)))
            .then(|| format!("`{word}` does not exist or is not executable"));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|d| executable(&d.join(word)));
    (!found).then(|| format!("`{word}` is not a shell builtin and is not found on PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_finds_missing_programs_and_accepts_builtins() {
        assert_eq!(missing_program("echo \"$HMS_ID\" >> alerts.txt"), None);
        assert_eq!(missing_program("/bin/sh -c true"), None);
        assert_eq!(missing_program("FOO=1 sh -c true"), None);
        assert!(
            missing_program("/usr/local/bin/page-oncall --x")
                .unwrap()
                .contains("/usr/local/bin/page-oncall")
        );
        assert!(
            missing_program("no-such-program-hms $HMS_ALERT")
                .unwrap()
                .contains("no-such-program-hms")
        );
    }
}
