//! The queue's one writer: a thread that owns the [`Queue`], runs the jobs that
//! sources, workers and the control path send it, and answers them only after
//! one commit (flush + fsync) covers all of them — group commit.
//!
//! **Invariants:** no job's answer leaves this thread before the commit that
//! made its effects durable; a failed commit turns every answer of its round into
//! an error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};

use super::{Ingested, Queue, QueueError};
use crate::record::ChangeSet;

type Answer = Box<dyn FnOnce(Option<&QueueError>) + Send>;

enum Job {
    /// Any work on the queue.
    Call(Box<dyn FnOnce(&mut Queue) -> Answer + Send>),
    /// One change set from a source. Consecutive ones are ingested together as
    /// one atomic batch: the hot path of group commit.
    Ingest(ChangeSet, oneshot::Sender<Result<Ingested, QueueError>>),
}

type IngestReply = oneshot::Sender<Result<Ingested, QueueError>>;

/// Runs `jobs` in order, ingesting each run of consecutive change sets at once;
/// adds the time spent to `stats` by phase.
fn run_jobs(queue: &mut Queue, jobs: Vec<Job>, stats: &CommitStats) -> Vec<Answer> {
    let mut answers: Vec<Answer> = Vec::with_capacity(jobs.len());
    let mut sets: Vec<ChangeSet> = Vec::new();
    let mut replies: Vec<IngestReply> = Vec::new();
    for job in jobs {
        match job {
            Job::Ingest(set, reply) => {
                sets.push(set);
                replies.push(reply);
            }
            Job::Call(f) => {
                ingest_together(queue, &mut sets, &mut replies, &mut answers, stats);
                let started = Instant::now();
                answers.push(f(queue));
                CommitStats::add(&stats.call_micros_total, started);
            }
        }
    }
    ingest_together(queue, &mut sets, &mut replies, &mut answers, stats);
    answers
}

fn ingest_together(
    queue: &mut Queue,
    sets: &mut Vec<ChangeSet>,
    replies: &mut Vec<IngestReply>,
    answers: &mut Vec<Answer>,
    stats: &CommitStats,
) {
    if sets.is_empty() {
        return;
    }
    let started = Instant::now();
    let result = queue.ingest(sets);
    CommitStats::add(&stats.ingest_micros_total, started);
    sets.clear();
    for (i, reply) in replies.drain(..).enumerate() {
        let r = match &result {
            Ok(done) => Ok(done[i]),
            Err(e) => Err(e.duplicate()),
        };
        answers.push(Box::new(move |commit_error: Option<&QueueError>| {
            let r = match commit_error {
                Some(e) => Err(QueueError::CommitFailed(e.to_string())),
                None => r,
            };
            let _ = reply.send(r);
        }));
    }
}

/// Gives memory that the writer's batches freed back to the system. glibc keeps
/// freed heap in its arenas (an ingest burst left the daemon at twice its working
/// set); musl's allocator returns it by itself.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

type Wakers = Arc<std::sync::RwLock<HashMap<String, Arc<Notify>>>>;

/// Commit statistics for `/metrics`, and where the writer thread's time goes:
/// ingesting change sets (diff, encode, write into redb's memory), the other
/// jobs (the workers' lease / ack, the operator's reads), the durable commit
/// (pages and `fdatasync`), and waiting for work.
#[derive(Default, Debug)]
pub struct CommitStats {
    pub commits: std::sync::atomic::AtomicU64,
    pub commit_micros_total: std::sync::atomic::AtomicU64,
    pub ingest_micros_total: std::sync::atomic::AtomicU64,
    pub call_micros_total: std::sync::atomic::AtomicU64,
    pub idle_micros_total: std::sync::atomic::AtomicU64,
    /// Commits that took at most [`COMMIT_BUCKETS_S`]`[i]` seconds (not
    /// cumulative; `/metrics` sums them into Prometheus buckets).
    pub commit_buckets: [std::sync::atomic::AtomicU64; COMMIT_BUCKETS_S.len()],
}

/// Upper bounds of the commit latency histogram, in seconds.
pub const COMMIT_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl CommitStats {
    fn add(counter: &std::sync::atomic::AtomicU64, since: Instant) {
        counter.fetch_add(
            since.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn record(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.commits.fetch_add(1, Relaxed);
        self.commit_micros_total
            .fetch_add(took.as_micros() as u64, Relaxed);
        let s = took.as_secs_f64();
        if let Some(i) = COMMIT_BUCKETS_S.iter().position(|&b| s <= b) {
            self.commit_buckets[i].fetch_add(1, Relaxed);
        }
    }
}

/// Cheap to clone; every clone talks to the same writer thread.
#[derive(Clone)]
pub struct QueueHandle {
    jobs: mpsc::Sender<Job>,
    /// Per target, its worker's notifier; a reload adds targets.
    wake: Wakers,
    pub stats: Arc<CommitStats>,
    /// Becomes true if the writer thread panicked.
    panicked: tokio::sync::watch::Receiver<bool>,
}

impl QueueHandle {
    /// Starts the writer thread. It ends when every handle is dropped.
    pub fn spawn(mut queue: Queue) -> (QueueHandle, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Job>(4096);
        let wake: Wakers = Arc::new(std::sync::RwLock::new(
            queue
                .target_names()
                .into_iter()
                .map(|n| (n, Arc::new(Notify::new())))
                .collect(),
        ));
        let stats = Arc::new(CommitStats::default());
        let (panicked_tx, panicked) = tokio::sync::watch::channel(false);
        let handle = QueueHandle {
            jobs: tx,
            wake: wake.clone(),
            stats: stats.clone(),
            panicked,
        };
        let thread = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || {
                // The loop owns the receiver: a panic drops it and every waiting
                // job with it, so no caller waits for an answer that never comes.
                let run =
                    std::panic::AssertUnwindSafe(|| writer_loop(&mut queue, rx, &wake, &stats));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(
                        "the queue writer panicked; every waiting change was answered with an error"
                    );
                    let _ = panicked_tx.send(true);
                }
            })
            .expect("spawning the queue writer thread");
        (handle, thread)
    }

    /// Resolves once the writer thread has panicked; pending otherwise.
    pub async fn writer_panicked(&self) {
        let mut rx = self.panicked.clone();
        if rx.wait_for(|p| *p).await.is_err() {
            // The writer ended normally (every sender dropped): never resolves.
            std::future::pending::<()>().await;
        }
    }

    /// Runs `f` on the writer thread; the answer comes after the commit that
    /// covers it.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Queue) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Call(Box::new(move |q| {
            let result = f(q);
            Box::new(move |commit_error: Option<&QueueError>| {
                let result = match (commit_error, result) {
                    (Some(e), _) => Err(QueueError::CommitFailed(e.to_string())),
                    (None, r) => r,
                };
                let _ = tx.send(result);
            })
        }));
        self.jobs
            .send(job)
            .await
            .map_err(|_| QueueError::CommitFailed("the queue writer has stopped".into()))?;
        rx.await
            .map_err(|_| QueueError::CommitFailed("the queue writer has stopped".into()))?
    }

    /// Queues one change set now, behind every job queued before it, and returns
    /// the receiver of its answer (sent once it is durable). A source that submits
    /// its changes one after another has them applied in that order.
    pub async fn submit_ingest(
        &self,
        set: ChangeSet,
    ) -> Result<oneshot::Receiver<Result<Ingested, QueueError>>, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Ingest(set, tx))
            .await
            .map_err(|_| QueueError::CommitFailed("the queue writer has stopped".into()))?;
        Ok(rx)
    }

    /// Diffs and queues one change set; answers once it is durable.
    pub async fn ingest(&self, set: ChangeSet) -> Result<Ingested, QueueError> {
        self.submit_ingest(set)
            .await?
            .await
            .map_err(|_| QueueError::CommitFailed("the queue writer has stopped".into()))?
    }

    /// Diffs and queues several change sets in one atomic write, all or none
    /// (a busy queue refuses them all, so a later set never goes in before an
    /// earlier one); answers once they are durable.
    pub async fn ingest_all(&self, sets: Vec<ChangeSet>) -> Result<Vec<Ingested>, QueueError> {
        self.call(move |q| q.ingest(&sets)).await
    }

    /// The notifier that wakes `target`'s worker when it has new work.
    pub fn waker(&self, target: &str) -> Arc<Notify> {
        if let Some(n) = self
            .wake
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(target)
        {
            return n.clone();
        }
        let mut map = self.wake.write().unwrap_or_else(|p| p.into_inner());
        map.entry(target.to_string()).or_default().clone()
    }

    /// Round trip through the writer thread, for the watchdog.
    pub async fn ping(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.call(|_| Ok(())))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }
}

/// Gathers jobs, runs them, commits once, answers them all; ends when every
/// handle is dropped.
fn writer_loop(queue: &mut Queue, mut rx: mpsc::Receiver<Job>, wake: &Wakers, stats: &CommitStats) {
    let mut last_trim = Instant::now();
    loop {
        let waited = Instant::now();
        let Some(job) = rx.blocking_recv() else {
            break;
        };
        CommitStats::add(&stats.idle_micros_total, waited);
        let mut jobs = vec![job];
        while jobs.len() < 8192 {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let answers = run_jobs(queue, jobs, stats);
        let started = Instant::now();
        let was_dirty = queue.is_dirty();
        let result = queue.commit();
        if was_dirty {
            stats.record(started.elapsed());
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "queue commit failed; answering every waiting change with an error");
        }
        for answer in answers {
            answer(result.as_ref().err());
        }
        if result.is_err() {
            // Memory may now be ahead of the disk: start again from what
            // is on disk (systemd restarts us) rather than go on.
            tracing::error!("stopping: the queue cannot be made durable");
            std::thread::sleep(Duration::from_millis(200));
            std::process::exit(1);
        }
        if last_trim.elapsed() >= Duration::from_secs(1) {
            release_free_memory();
            last_trim = Instant::now();
        }
        if result.is_ok() {
            let wake = wake.read().unwrap_or_else(|p| p.into_inner());
            for name in queue.take_touched() {
                if let Some(n) = wake.get(&name) {
                    n.notify_one();
                }
            }
        }
    }
    if let Err(e) = queue.commit() {
        tracing::error!(error = %e, "final queue commit failed");
    }
}
