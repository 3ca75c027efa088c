//! `hms-sync run`: opens the queue, starts every piece, wires their channels,
//! tells systemd when it is ready, and owns shutdown.
//!
//! **Invariants:** `ready` is logged (and READY=1 sent) only once every watcher,
//! socket and worker is running; the watchdog is pinged only while the queue
//! writer answers and no worker has died; on SIGTERM/SIGINT input stops first,
//! workers finish their delivery, then the process exits 0. A reload (SIGHUP,
//! `hms-sync reload`) never cancels a delivery in hand: a changed or removed
//! connector's worker is stopped the way shutdown stops it (it settles what it
//! sent) before its replacement starts or its queue is set aside as orphaned;
//! an invalid config changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;

use crate::config::{Config, Source};
use crate::connector::Connector;
use crate::control::ReloadState;
use crate::delivery_log::DeliveryLog;
use crate::queue::handle::QueueHandle;
use crate::queue::{Queue, TargetSpec};
use crate::replay::{Health, Worker};
use crate::watcher::IngestStats;
use crate::watcher::dropdir::DropDir;
use crate::watcher::socket::{self, IngestSocket};

pub fn target_specs(cfg: &Config) -> Vec<TargetSpec> {
    cfg.connectors
        .iter()
        .map(|c| TargetSpec {
            name: c.name.clone(),
            collections: c.collections.clone(),
            fields: c.fields.clone(),
        })
        .collect()
}

/// Opens the queue for this config (creating the state folder).
pub fn open_queue(cfg: &Config) -> anyhow::Result<Queue> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create the state folder {}", cfg.state_dir.display()))?;
    let mut queue = Queue::open(&cfg.state_dir, cfg.cache_mib, target_specs(cfg))?;
    queue.set_limits(cfg.max_queue_bytes, cfg.min_free_disk_mib * 1024 * 1024);
    Ok(queue)
}

pub fn delivery_log(cfg: &Config) -> DeliveryLog {
    DeliveryLog::new(
        cfg.delivery_log.clone(),
        cfg.delivery_log_max_bytes,
        cfg.delivery_log_keep,
    )
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // First: SIGHUP's default action ends the process, and a reload may come as
    // soon as systemd has READY=1 (it waits in the stream until the main loop).
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // Before anything opens files: pooled socket clients, drop folders, the store.
    let open_files = socket::raise_open_file_limit();
    tracing::debug!(open_files, "open file limit");
    if cfg.connectors.is_empty() {
        tracing::warn!(folder = %cfg.connectors_dir.display(), "no connectors: every change is refused (unless [collections] keep_unrouted = true)");
    }
    let queue = open_queue(&cfg)?;
    let (queue, writer) = QueueHandle::spawn(queue);
    let log = Arc::new(delivery_log(&cfg));
    let health = Arc::new(Health::default());
    let ingest = Arc::new(IngestStats::default());
    let routing = Arc::new(crate::watcher::Routing::from_config(&cfg));
    let alerts = crate::alerts::Alerts::new(cfg.alert_command.clone(), cfg.alerts);
    // Pauses survive restarts (and kill -9): applied before any worker starts.
    for name in crate::paused::load(&cfg.state_dir)? {
        if cfg.connector(&name).is_some() {
            tracing::info!(target_name = %name, "paused by an operator; `hms-sync resume {name}` restarts delivery");
            health.set_paused(&name, true);
        } else {
            tracing::warn!(target_name = %name, "paused.json names a target with no connector; ignored");
        }
    }
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<crate::control::ReloadAsk>(4);
    let live = Arc::new(crate::control::Live {
        health: health.clone(),
        state_dir: cfg.state_dir.clone(),
        alerts: Some(alerts.clone()),
        routing: Some(routing.clone()),
        ingest: Some(ingest.clone()),
        taps: Arc::default(),
        reload: Default::default(),
        reload_requests: Some(reload_tx),
    });
    let (stop_tx, stop) = watch::channel(false);

    // The CLI's local control path.
    let control_path = cfg.control_socket();
    let _ = std::fs::remove_file(&control_path);
    let control = tokio::net::UnixListener::bind(&control_path).with_context(|| {
        format!(
            "cannot listen on the control socket {}",
            control_path.display()
        )
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&control_path, std::fs::Permissions::from_mode(0o660))?;
    }
    let control_task = tokio::spawn(crate::control::serve(
        control,
        queue.clone(),
        live.clone(),
        log.clone(),
        stop.clone(),
    ));

    let pieces = Pieces {
        queue: queue.clone(),
        log: log.clone(),
        health: health.clone(),
        alerts: alerts.clone(),
        taps: live.taps.clone(),
    };
    let mut workers: BTreeMap<String, Running> = BTreeMap::new();
    for c in &cfg.connectors {
        workers.insert(c.name.clone(), pieces.start(c));
    }

    let listener = socket::bind(&cfg.socket).await?;
    let socket_task = tokio::spawn(
        IngestSocket::new(
            listener,
            cfg.socket.clone(),
            cfg.limits,
            queue.clone(),
            ingest.clone(),
            stop.clone(),
        )
        .with_routing(routing.clone())
        .run(),
    );

    let mut watchers = Vec::new();
    for w in &cfg.watches {
        let dd = DropDir {
            watch: w.clone(),
            limits: cfg.limits,
            queue: queue.clone(),
            stats: ingest.clone(),
            routing: routing.clone(),
            shutdown: stop.clone(),
        };
        watchers.push(dd.start()?);
    }

    if let Some(addr) = cfg.status_listen {
        let token = match &cfg.status_token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("[status] token_file: cannot read {}", path.display())
                })?;
                let token = text.trim().to_string();
                if token.len() < 16 {
                    bail!(
                        "[status] token_file: {} holds {} characters; use at least 16 (e.g. `openssl rand -hex 24`)",
                        path.display(),
                        token.len()
                    );
                }
                Some(token)
            }
            None => None,
        };
        let (bound, _task) = crate::status::serve(
            addr,
            queue.clone(),
            live.clone(),
            ingest.clone(),
            crate::status::PageConfig {
                delivery_log: cfg.delivery_log.clone(),
                watches: cfg.watches.clone(),
                max_queue_bytes: cfg.max_queue_bytes,
                min_free_bytes: cfg.min_free_disk_mib * 1024 * 1024,
            },
            crate::status::Access {
                allow_from: cfg.status_allow_from.clone(),
                token,
            },
            stop.clone(),
        )
        .await?;
        tracing::info!(address = %bound, "status listener up");
    }

    let alerts_task = tokio::spawn(alerts.clone().run(
        queue.clone(),
        health.clone(),
        cfg.watches.clone(),
        stop.clone(),
    ));

    tracing::info!(
        config = %cfg.source,
        targets = cfg.connectors.len(),
        watches = cfg.watches.len(),
        socket = %cfg.socket.path.display(),
        "ready"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let watchdog = sd_notify::watchdog_enabled();
    let mut ping_every =
        tokio::time::interval(watchdog.map(|d| d / 2).unwrap_or(Duration::from_secs(3600)));
    let mut cfg = cfg;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the config and connectors");
                reload(&mut cfg, &mut workers, &pieces, &routing, &live).await;
            }
            Some(ask) = reload_rx.recv() => {
                tracing::info!("reload asked on the control socket");
                let done = reload(&mut cfg, &mut workers, &pieces, &routing, &live).await;
                let _ = ask.send(done);
            }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = queue.writer_panicked() => {
                bail!("the queue writer stopped after a panic; exiting so that systemd restarts the daemon from what is on disk");
            }
            _ = ping_every.tick(), if watchdog.is_some() => {
                let workers_alive = workers.values().all(|w| !w.handle.is_finished());
                if workers_alive && queue.ping(Duration::from_secs(5)).await {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                } else {
                    tracing::error!("a worker or the queue writer is not answering; withholding the watchdog ping");
                }
            }
        }
        if let Some((name, _)) = workers.iter().find(|(_, w)| w.handle.is_finished()) {
            bail!("the worker for {name} stopped unexpectedly");
        }
    }

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    for w in workers.values() {
        let _ = w.stop.send(true);
    }
    for w in watchers {
        let _ = w.await;
    }
    let _ = socket_task.await;
    socket::remove(&cfg.socket.path);
    let finish = async {
        for (_, w) in workers {
            let _ = w.handle.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), finish)
        .await
        .is_err()
    {
        tracing::warn!(
            "workers did not finish within 30 s; their deltas stay queued and go out after restart"
        );
    }
    let _ = control_task.await;
    let _ = alerts_task.await;
    let _ = std::fs::remove_file(&control_path);
    // Every answer already followed a commit; a last flush for good measure.
    let _ = queue.call(|q| q.commit()).await;
    drop(queue);
    let joined = tokio::task::spawn_blocking(move || writer.join());
    let _ = tokio::time::timeout(Duration::from_secs(5), joined).await;
    tracing::info!("stopped");
    Ok(())
}

/// What every worker is built with.
struct Pieces {
    queue: QueueHandle,
    log: Arc<DeliveryLog>,
    health: Arc<Health>,
    alerts: Arc<crate::alerts::Alerts>,
    taps: Arc<crate::tap::Taps>,
}

/// A worker running for one connector, with its own stop signal (a reload
/// stops one worker; shutdown stops them all).
struct Running {
    handle: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    /// The connector as loaded, to tell a changed one at reload.
    connector: Connector,
}

impl Pieces {
    fn start(&self, c: &Connector) -> Running {
        if let crate::connector::TransportSpec::File {
            dir,
            create_dir: true,
            ..
        } = &c.transport
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(target_name = %c.name, outbox = %dir.display(), error = %e, "cannot create the outbox folder");
        }
        let (stop, stopped) = watch::channel(false);
        let w = Worker::new(
            c,
            self.queue.clone(),
            self.log.clone(),
            self.health.clone(),
            self.alerts.clone(),
            stopped,
        )
        .with_tap(self.taps.clone());
        Running {
            handle: tokio::spawn(w.run()),
            stop,
            connector: c.clone(),
        }
    }
}

/// What makes a connector "changed" at reload: every setting, the template and
/// copybook texts (held in the connector), and the SOAP password file's content
/// (read when the worker starts; a new password applies at the next reload).
fn fingerprint(c: &Connector) -> String {
    let mut f = format!("{c:?}");
    if let crate::connector::TransportSpec::Soap(spec) = &c.transport
        && let Some(path) = &spec.password_file
    {
        let secret = std::fs::read(path).unwrap_or_default();
        // Compared only, never shown; a hash keeps it out of this string's text.
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        secret.hash(&mut h);
        f.push_str(&format!(" password {:x}", h.finish()));
    }
    f
}

/// Settings that a reload cannot apply to the running daemon (they name what
/// is open: the state, the sockets, the listener, the watched folders...).
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut differs = |key: &str, a: String, b: String| {
        if a != b {
            out.push(key.to_string());
        }
    };
    differs(
        "state_dir",
        format!("{:?}", old.state_dir),
        format!("{:?}", new.state_dir),
    );
    differs(
        "cache_mib",
        old.cache_mib.to_string(),
        new.cache_mib.to_string(),
    );
    differs(
        "delivery_log",
        format!(
            "{:?}",
            (
                &old.delivery_log,
                old.delivery_log_max_bytes,
                old.delivery_log_keep
            )
        ),
        format!(
            "{:?}",
            (
                &new.delivery_log,
                new.delivery_log_max_bytes,
                new.delivery_log_keep
            )
        ),
    );
    differs(
        "[socket]",
        format!("{:?}", old.socket),
        format!("{:?}", new.socket),
    );
    differs(
        "[status]",
        format!(
            "{:?}",
            (
                old.status_listen,
                &old.status_allow_from,
                &old.status_token_file
            )
        ),
        format!(
            "{:?}",
            (
                new.status_listen,
                &new.status_allow_from,
                &new.status_token_file
            )
        ),
    );
    differs(
        "[limits]",
        format!("{:?}", old.limits),
        format!("{:?}", new.limits),
    );
    differs(
        "[[watch]]",
        format!("{:?}", old.watches),
        format!("{:?}", new.watches),
    );
    differs(
        "alert_command / [alerts]",
        format!("{:?}", (&old.alert_command, old.alerts)),
        format!("{:?}", (&new.alert_command, new.alerts)),
    );
    differs(
        "[collections] keep_unrouted",
        old.keep_unrouted.to_string(),
        new.keep_unrouted.to_string(),
    );
    out
}

/// Re-reads the config and connectors and applies them (see the module's
/// invariants); records and returns what it did or why it refused.
async fn reload(
    cfg: &mut Config,
    workers: &mut BTreeMap<String, Running>,
    p: &Pieces,
    routing: &crate::watcher::Routing,
    live: &crate::control::Live,
) -> ReloadState {
    // systemd 253+ ends a service that says RELOADING=1 without MONOTONIC_USEC.
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading, now]);
    }
    let mut st = ReloadState {
        at: Some(crate::record::format_ms(crate::record::now_ms())),
        ..ReloadState::default()
    };
    let path = match &cfg.source {
        Source::File(path) => Some(path.clone()),
        Source::Embedded => None,
    };
    match crate::config::load(path.as_deref()) {
        Err(e) => {
            let why = e.to_string();
            tracing::error!(error = %why, "reload refused: the config or a connector is not valid; the running config stays");
            st.error = Some(why);
        }
        Ok(new) => apply(cfg, new, workers, p, routing, &mut st).await,
    }
    if let Some(alerts) = &live.alerts {
        alerts.reload(st.error.clone());
    }
    *live.reload.lock().unwrap_or_else(|e| e.into_inner()) = st.clone();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    st
}

async fn apply(
    cfg: &mut Config,
    new: Config,
    workers: &mut BTreeMap<String, Running>,
    p: &Pieces,
    routing: &crate::watcher::Routing,
    st: &mut ReloadState,
) {
    st.needs_restart = needs_restart(cfg, &new);
    for key in &st.needs_restart {
        tracing::warn!(setting = %key, "changed in the config; applies after a restart (`systemctl restart hms-sync`)");
    }
    // Stop the workers of removed and changed connectors; each settles the
    // delivery in hand first (never cancelled).
    let mut stopping = Vec::new();
    for (name, w) in workers.iter() {
        match new.connector(name) {
            None => stopping.push(name.clone()),
            Some(c) if fingerprint(c) != fingerprint(&w.connector) => {
                st.changed.push(name.clone());
                stopping.push(name.clone());
            }
            Some(_) => {}
        }
    }
    for name in &stopping {
        let _ = workers[name].stop.send(true);
    }
    for name in &stopping {
        if let Some(mut w) = workers.remove(name) {
            // The delivery in hand may take up to its transport's timeout: meanwhile
            // the daemon is alive and says so, or systemd's watchdog would kill it
            // in the middle of the reload.
            while tokio::time::timeout(Duration::from_secs(5), &mut w.handle)
                .await
                .is_err()
            {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                tracing::info!(target_name = %name, "reload: waiting for the delivery in hand to settle");
            }
        }
    }
    let specs = target_specs(&new);
    match p.queue.call(move |q| q.set_targets(specs)).await {
        Ok(changes) => {
            st.orphaned = changes.orphaned;
            st.removed = changes.removed;
            st.returned = changes.returned;
            st.added = changes
                .added
                .into_iter()
                .filter(|n| !st.returned.contains(n))
                .collect();
        }
        Err(e) => {
            // The store could not be read: go on with the old connectors.
            tracing::error!(error = %e, "reload refused: cannot update the queue's targets");
            st.error = Some(format!("cannot update the queue's targets: {e}"));
            st.changed.clear();
            for c in &cfg.connectors {
                if !workers.contains_key(&c.name) {
                    workers.insert(c.name.clone(), p.start(c));
                }
            }
            return;
        }
    }
    let (max_bytes, min_free) = (new.max_queue_bytes, new.min_free_disk_mib * 1024 * 1024);
    let _ = p
        .queue
        .call(move |q| {
            q.set_limits(max_bytes, min_free);
            Ok(())
        })
        .await;
    routing.set_known(new.routed_collections());
    let paused = crate::paused::load(&new.state_dir).unwrap_or_default();
    for c in &new.connectors {
        if !workers.contains_key(&c.name) {
            // paused.json is the truth (`forget` clears a forgotten target's pause).
            p.health.set_paused(&c.name, paused.contains(&c.name));
            workers.insert(c.name.clone(), p.start(c));
        }
    }
    tracing::info!(
        added = ?st.added,
        changed = ?st.changed,
        orphaned = ?st.orphaned,
        removed = ?st.removed,
        returned = ?st.returned,
        "reloaded"
    );
    cfg.connectors = new.connectors;
    cfg.max_queue_bytes = new.max_queue_bytes;
    cfg.min_free_disk_mib = new.min_free_disk_mib;
}
