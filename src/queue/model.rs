//! Model test of the Sync Queue: random operation sequences run against the real
//! [`Queue`] (its real store in a temp dir) and against an in-memory model of its observable
//! contract (SPEC §2 coalescing, §3 guarantees), compared after every step and
//! once more after draining the queue.
//!
//! # World
//! One collection `c`, keys `k0..k2`, documents of 1–3 fields drawn from the paths
//! `a`, `b`, `n.x` with values 0 or 1 (so no-op changes, reverts and
//! create-then-delete happen often). Two targets: `full` (every field) and `proj`
//! (`fields = ["a", "n"]`, so `b` is invisible to it and `n` selects `n.x`).
//!
//! # What the model keeps (per target, per record)
//! - the *projected state* `P(s)` of every ingested state `s` (None = absent);
//! - a chain of *entries*: the deltas the queue must hold, oldest first, each
//!   described by the projected state it starts `from` and the one it leads `to`,
//!   its place (`pos`, allocated when a new delta must be queued), its delivery id
//!   once observed, attempts, `not_before`, whether it is in flight, and — once it
//!   has been handed to the transport — its *sealed* content. The shape is always
//!   `[sealed?, unsealed?]`: at most one sealed delta (handed out at some point:
//!   in flight, or waiting again after a release, a retry_later or a restart),
//!   and behind it at most one unsealed delta that still absorbs changes;
//! - at most one dead letter: `from`, `to` (the state it leads to), its content,
//!   and `held_to` (the latest state: what it holds);
//! - the legacy system's *view*, built only by applying delivered deltas
//!   (create = the record becomes `set`; update = `unset` removed, `set` written,
//!   on an absent record it starts from empty; delete = absent). The legacy system
//!   drops a delivery whose id it has already processed (SPEC §3.2 invites it to).
//!
//! # Rules checked
//! 1. **Ingest.** A change reaches a target iff its projected state changes
//!    (`Ingested.deltas` counts those targets). Then: a record held by a dead
//!    letter queues nothing (the dead letter's `held` absorbs it); else, if the
//!    record's newest delta is unsealed (never handed to the transport since it
//!    was queued or dead-retried) it absorbs the change — and disappears when it
//!    now leads from absent to absent (create ∘ delete); else (no delta, or the
//!    newest one is sealed) a new delta is queued at the end. Exact, also after
//!    restarts: a delta handed out before a restart stays sealed. Checked by
//!    `pending + in_flight` moving by exactly 0 / -1 / +1 for that target.
//! 2. **Lease is exact.** `lease(max, now)` returns, in queue order (the order the
//!    deltas were first queued; a retried dead letter keeps its place), the first
//!    `max` records whose oldest delta is waiting, due (`not_before <= now`), and
//!    not held by a dead letter; never a record that has a delta in flight, never
//!    a record's second delta. When fewer than `max` come back, `next_due_ms` is
//!    the earliest `not_before` among the records skipped for it. Each leased
//!    delta must turn its `from` state into its `to` state (op consistent: create
//!    from absent, delete to absent, update between two present states), carry the
//!    model's attempts / not_before / last_error, and `record` must be the latest
//!    ingested full state. **Sealing:** the first lease seals the delta; every
//!    later lease of it (after release, retry_later, restart) must hand out
//!    exactly the same content.
//! 3. **Delivery ids.** A delta keeps its seq across release, retry_later, restart
//!    and dead_letter → dead_retry; a seq once seen is never given to another delta
//!    (also after restarts); seq order agrees with queue order. Once the legacy
//!    system has processed an id, every later delivery of that id carries the very
//!    same delta (so dropping it as a repeat loses nothing).
//! 4. **Per-record order.** A record's acked seqs strictly increase; on every
//!    first delivery of an id the legacy view equals the delta's `from` before and
//!    its `to` after (so the view only moves forward through the record's states);
//!    after any ack the view equals the acked delta's `to`. A repeated id (only
//!    possible when the legacy system processed it and the answer never reached
//!    the queue: a restart, or a timeout → release) is dropped by the legacy
//!    system, and must then already match.
//! 5. **Failures.** release: back to waiting, same seq, same content, attempts
//!    kept. retry_later: the same, attempts + 1, `not_before`, `last_error`.
//!    Neither folds the newer waiting delta in. dead_letter: attempts + 1 and
//!    `last_error`, the delta (content as sealed) becomes a dead letter; the
//!    record's newer waiting delta, if any, leaves the queue and becomes the dead
//!    letter's `held` (else `held` is None). A dead letter holds its record until
//!    dead_retry (same seq and place, attempts 0, `not_before` 0, no last_error,
//!    content merge(dead, held), *unsealed*: later changes merge into it until it
//!    is leased; nothing is queued if that merge is create ∘ delete) or dead_drop
//!    (`held`, if any, queued as a new delta at the end). `held` must turn the
//!    dead letter's `to` state into the record's latest state (absent `held` ⇒
//!    they are equal; no change since ⇒ no `held`). Rejections (retry_later,
//!    dead_letter) only hit deliveries the legacy system did not process; an
//!    outage (release) may hit any, including one it did process.
//! 6. **Counts** after every step: `pending + in_flight` = entries, `in_flight`,
//!    `dead`, `delivered` (= acks) as in the model, also across restarts;
//!    `dead_list` shows exactly the model's dead letters; the `pending_bytes`
//!    counter (backpressure) equals the size of the stored deltas.
//! 7. **Nothing accepted is lost** (after draining: lease + ack until empty, dead
//!    letters retried — or dropped, per case — until none are left, then one more
//!    restart): for every record and target the legacy view equals `P(latest)`,
//!    except for records an operator dropped a dead letter of. Exact rule for
//!    those: at each drop let `V` be the legacy view and `B` the dead letter's `to`
//!    state; the *lag* is every path where `V` and `B` differ (absent = no value),
//!    plus "existence" if one of them is absent and the other not. The final view
//!    must agree with `P(latest)` on every path outside the accumulated lag, and on
//!    presence unless existence is in it. (Reason: what the dropped delta would
//!    have changed is never sent, but everything that changed after it — `held` and
//!    later deltas, each checked to be exact on the record's true states — is.)
//!
//! # Restart
//! `commit()`, drop the queue, reopen from the same directory: in-flight state is
//! lost and everything waiting comes back; sealed deltas stay sealed; counters
//! must survive. A crash with uncommitted work is not simulated here: the
//! power-loss test (tests/it/power_loss.rs) cuts a real daemon at random moments.
//!
//! # Strict runs
//! The legacy system may process a delivery whose answer never reaches the queue
//! (`Deliver`): then an `Ack`, a `Release` (the answer timed out: `Timeout` is
//! the two together) or a `Restart` (`CrashAfterGotIt`) follows. The delivery is
//! later re-sent under its id, dropped there as a repeat, and everything changed
//! meanwhile must still arrive, in a delta of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

use super::keys::*;
use super::*;
use crate::record::{Change, Op};
use crate::record::{ChangeSet, Delta};

const COLLECTION: &str = "c";
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const PATHS: [&str; 3] = ["a", "b", "n.x"];
const START_MS: u64 = 10_000;

fn specs() -> Vec<TargetSpec> {
    vec![
        TargetSpec {
            name: "full".into(),
            collections: vec![COLLECTION.into()],
            fields: None,
        },
        TargetSpec {
            name: "proj".into(),
            collections: vec![COLLECTION.into()],
            fields: Some(vec!["a".into(), "n".into()]),
        },
    ]
}

// ---- the operations ----------------------------------------------------------

/// A document: a value (0 or 1) or nothing for each of `PATHS`.
#[derive(Clone, Copy, PartialEq)]
pub struct Doc(pub [Option<u8>; 3]);

impl Doc {
    fn flat(self) -> Flat {
        PATHS
            .iter()
            .zip(self.0)
            .filter_map(|(p, v)| v.map(|v| (p.to_string(), Value::from(v))))
            .collect()
    }
}

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", show(&Some(self.flat())))
    }
}

#[derive(Clone, Debug)]
pub enum Step {
    /// A change: the new full state of `KEYS[key]`, or its deletion.
    Ingest {
        key: usize,
        doc: Option<Doc>,
    },
    Lease {
        target: usize,
        max: usize,
    },
    /// The legacy system said "got it" (it processes the delta unless it already
    /// did under this delivery id).
    Ack {
        target: usize,
        pick: usize,
    },
    /// Every in-flight delta of the target acknowledged in one call.
    AckAll {
        target: usize,
    },
    /// Outage: no answer. In plain runs the legacy system did not process it; in
    /// strict runs it may have (an earlier `Deliver`).
    Release {
        target: usize,
        pick: usize,
    },
    /// Rejection; `not_before = now + wait` (wait may be negative: already due).
    RetryLater {
        target: usize,
        pick: usize,
        wait: i64,
    },
    DeadLetter {
        target: usize,
        pick: usize,
    },
    /// Operator: `dead retry` of one of the target's dead letters.
    DeadRetry {
        target: usize,
        pick: usize,
    },
    /// Operator: `dead drop`.
    DeadDrop {
        target: usize,
        pick: usize,
    },
    /// Strict runs only: the legacy system processes the in-flight delta (or drops
    /// it as a repeat of an id it processed before), but its answer has not
    /// reached the queue yet (an Ack, a Release or a Restart follows).
    Deliver {
        target: usize,
        pick: usize,
    },
    /// Strict runs only: `Deliver`, then the answer times out: `release`.
    Timeout {
        target: usize,
        pick: usize,
    },
    /// Strict runs only: `Deliver`, then the daemon stops before the ack: `Restart`.
    CrashAfterGotIt {
        target: usize,
        pick: usize,
    },
    Tick {
        ms: u64,
    },
    /// commit(), drop the queue, reopen it from the same directory.
    Restart,
}

// ---- states and deltas ----------------------------------------------------------

/// A record's (projected) state as a legacy system would hold it; None = absent.
type View = Option<Flat>;

fn show(v: &View) -> String {
    match v {
        None => "absent".into(),
        Some(m) => {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", parts.join(","))
        }
    }
}

fn show_delta(d: &Delta) -> String {
    let unset: Vec<&str> = d.unset.iter().map(|s| s.as_str()).collect();
    format!(
        "{} set {} unset {:?}",
        d.op,
        show(&Some(d.set.clone())),
        unset
    )
}

/// `fields` names a path or a whole subtree (SPEC §2).
fn selected(fields: &[String], path: &str) -> bool {
    fields.iter().any(|f| {
        path == f
            || path
                .strip_prefix(f.as_str())
                .is_some_and(|r| r.starts_with('.'))
    })
}

fn project(state: &View, fields: Option<&[String]>) -> View {
    let state = state.as_ref()?;
    Some(match fields {
        None => state.clone(),
        Some(fields) => state
            .iter()
            .filter(|(p, _)| selected(fields, p))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect(),
    })
}

/// How the legacy system applies a delta to what it holds.
fn apply(view: &View, d: &Delta) -> View {
    match d.op {
        Op::Create => Some(d.set.clone()),
        Op::Delete => None,
        Op::Update => {
            let mut m = view.clone().unwrap_or_default();
            for p in &d.unset {
                m.remove(p);
            }
            for (p, v) in &d.set {
                m.insert(p.clone(), v.clone());
            }
            Some(m)
        }
    }
}

/// The delta must lead exactly from `from` to `to`, with an op that fits.
fn check_delta(what: &str, from: &View, to: &View, d: &Delta) -> Result<(), String> {
    let op_ok = match d.op {
        Op::Create => from.is_none() && to.is_some() && d.unset.is_empty(),
        Op::Update => from.is_some() && to.is_some() && d.set.keys().all(|k| !d.unset.contains(k)),
        Op::Delete => from.is_some() && to.is_none() && d.set.is_empty(),
    };
    let got = apply(from, d);
    if !op_ok || &got != to {
        return Err(format!(
            "{what}: delta [{}] should lead from {} to {}, but applied to {} it gives {}",
            show_delta(d),
            show(from),
            show(to),
            show(from),
            show(&got)
        ));
    }
    Ok(())
}

// ---- the model --------------------------------------------------------------------

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

#[derive(Clone, Debug)]
struct Entry {
    pos: u64,
    seq: Option<u64>,
    from: View,
    to: View,
    attempts: u32,
    not_before: u64,
    last_error: Option<String>,
    /// The delta as handed out, while in flight.
    leased: Option<Delta>,
    /// The content handed to the transport at its first lease. Set ⇒ sealed: the
    /// delta never changes again and absorbs nothing.
    sealed: Option<Delta>,
    /// The legacy system processed it during the current lease (Deliver).
    sent: bool,
    /// The legacy system has processed this delivery id at some point.
    legacy_has: bool,
}

impl Entry {
    fn new(pos: u64, from: View, to: View) -> Entry {
        Entry {
            pos,
            seq: None,
            from,
            to,
            attempts: 0,
            not_before: 0,
            last_error: None,
            leased: None,
            sealed: None,
            sent: false,
            legacy_has: false,
        }
    }
}

#[derive(Clone, Debug)]
struct Dead {
    seq: u64,
    pos: u64,
    from: View,
    to: View,
    /// The dead letter's delta: the content it was sealed with.
    delta: Delta,
    attempts: u32,
    held_to: View,
    changes: usize,
}

#[derive(Clone, Debug, Default)]
struct Rec {
    entries: Vec<Entry>,
    dead: Option<Dead>,
    view: View,
    tainted: bool,
    lag_paths: BTreeSet<String>,
    lag_existence: bool,
    last_acked: u64,
}

/// An in-flight delta as the model sees it.
#[derive(Clone, Copy, Debug)]
struct Flying {
    key: &'static str,
    seq: u64,
    /// Processed by the legacy system during this lease.
    sent: bool,
    /// Processed by the legacy system at some point (this lease or an earlier one).
    legacy_has: bool,
}

/// Which in-flight deltas a step may pick.
#[derive(Clone, Copy, PartialEq)]
enum Pick {
    /// Ack, release: any.
    Any,
    /// Deliver: not yet processed during this lease.
    NotSent,
    /// Rejections: the legacy system never processed this id (a system that drops
    /// repeats answers "got it" to one, it does not refuse it).
    Unprocessed,
}

struct TModel {
    name: String,
    fields: Option<Vec<String>>,
    recs: BTreeMap<&'static str, Rec>,
    next_pos: u64,
    seq_by_pos: BTreeMap<u64, u64>,
    pos_by_seq: BTreeMap<u64, u64>,
    delivered: u64,
    /// Delivery ids the legacy system has processed, with the delta it processed.
    seen: HashMap<u64, Delta>,
}

impl TModel {
    fn live(&self) -> u64 {
        self.recs.values().map(|r| r.entries.len() as u64).sum()
    }

    fn in_flight(&self) -> Vec<Flying> {
        let mut v: Vec<_> = self
            .recs
            .iter()
            .flat_map(|(k, r)| {
                r.entries
                    .iter()
                    .filter(|e| e.leased.is_some())
                    .map(move |e| Flying {
                        key: k,
                        seq: e.seq.expect("leased ⇒ seq"),
                        sent: e.sent,
                        legacy_has: e.legacy_has || e.sent,
                    })
            })
            .collect();
        v.sort_by_key(|x| x.seq);
        v
    }

    fn dead(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .recs
            .iter()
            .filter_map(|(k, r)| r.dead.as_ref().map(|d| (*k, d.seq)))
            .collect();
        v.sort_by_key(|x| x.1);
        v
    }

    /// The model's own invariants (a failure here is a bug in the model).
    fn check_shape(&self) -> Result<(), String> {
        for (key, rec) in &self.recs {
            let name = &self.name;
            let n = rec.entries.len();
            ensure!(
                n <= 2,
                "{name}/{key}: model holds {n} deltas for one record"
            );
            ensure!(
                rec.dead.is_none() || n == 0,
                "{name}/{key}: model holds a delta beside a dead letter"
            );
            for (i, e) in rec.entries.iter().enumerate() {
                ensure!(
                    e.sealed.is_some() || e.leased.is_none(),
                    "{name}/{key}: model has an unsealed delta in flight"
                );
                ensure!(
                    i == 0 || (e.sealed.is_none() && e.leased.is_none()),
                    "{name}/{key}: model has a sealed or in-flight delta behind another one"
                );
                ensure!(
                    i == 0 || rec.entries[0].sealed.is_some(),
                    "{name}/{key}: model has a delta behind an unsealed one"
                );
                ensure!(
                    i == 0 || e.from == rec.entries[0].to,
                    "{name}/{key}: model's second delta does not start where the first ends"
                );
            }
        }
        Ok(())
    }
}

/// Binds a delivery id to an entry the first time it is seen; checks it afterwards.
fn bind_seq(
    seq_by_pos: &mut BTreeMap<u64, u64>,
    pos_by_seq: &mut BTreeMap<u64, u64>,
    target: &str,
    key: &str,
    e: &mut Entry,
    seq: u64,
) -> Result<(), String> {
    if let Some(s) = e.seq {
        if s != seq {
            return Err(format!(
                "{target}/{key}: the delta known as {target}:{s} came back as {target}:{seq} (delivery ids must be stable)"
            ));
        }
        return Ok(());
    }
    if let Some(p) = pos_by_seq.get(&seq) {
        return Err(format!(
            "{target}/{key}: delivery id {target}:{seq} reused for a different delta (first used at queue place {p}, now at {})",
            e.pos
        ));
    }
    if let Some((_, &prev)) = seq_by_pos.range(..e.pos).next_back()
        && prev >= seq
    {
        return Err(format!(
            "{target}/{key}: seq {seq} is not after seq {prev} of a delta queued earlier"
        ));
    }
    if let Some((_, &next)) = seq_by_pos.range(e.pos + 1..).next()
        && next <= seq
    {
        return Err(format!(
            "{target}/{key}: seq {seq} is not before seq {next} of a delta queued later"
        ));
    }
    seq_by_pos.insert(e.pos, seq);
    pos_by_seq.insert(seq, e.pos);
    e.seq = Some(seq);
    Ok(())
}

/// The legacy system receives a delivery: drops it if it knows the id already.
fn receive(
    tm_name: &str,
    seen: &mut HashMap<u64, Delta>,
    key: &str,
    rec: &mut Rec,
    e: &Entry,
    seq: u64,
    strict: bool,
) -> Result<(), String> {
    let d = e.leased.as_ref().expect("in flight");
    if let Some(first) = seen.get(&seq) {
        if !strict {
            return Err(format!(
                "{tm_name}/{key}: delivery {tm_name}:{seq} reached the legacy system twice without a crash or a timeout"
            ));
        }
        // A repeat: dropped. That is only safe if it is the very same delta.
        ensure!(
            first == d,
            "{tm_name}/{key}: delivery {tm_name}:{seq} was processed as [{}] and is now re-sent as [{}]: the legacy system drops it as a repeat and the difference is lost",
            show_delta(first),
            show_delta(d)
        );
        return Ok(());
    }
    seen.insert(seq, d.clone());
    if !rec.tainted && rec.view != e.from {
        return Err(format!(
            "{tm_name}/{key}: delivery {tm_name}:{seq} [{}] starts from {} but the legacy system holds {} (per-record order)",
            show_delta(d),
            show(&e.from),
            show(&rec.view)
        ));
    }
    rec.view = apply(&rec.view, d);
    Ok(())
}

fn qe(e: QueueError) -> String {
    format!("queue error: {e}")
}

struct Run {
    strict: bool,
    dir: tempfile::TempDir,
    q: Option<Queue>,
    now: u64,
    truth: BTreeMap<&'static str, Flat>,
    targets: Vec<TModel>,
}

impl Run {
    fn new(strict: bool) -> Result<Run, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let q = Queue::open(dir.path(), 1, specs()).map_err(qe)?;
        let targets = specs()
            .into_iter()
            .map(|s| TModel {
                name: s.name,
                fields: s.fields,
                recs: BTreeMap::new(),
                next_pos: 0,
                seq_by_pos: BTreeMap::new(),
                pos_by_seq: BTreeMap::new(),
                delivered: 0,
                seen: HashMap::new(),
            })
            .collect();
        Ok(Run {
            strict,
            dir,
            q: Some(q),
            now: START_MS,
            truth: BTreeMap::new(),
            targets,
        })
    }

    fn q(&mut self) -> &mut Queue {
        self.q.as_mut().expect("queue open")
    }

    /// `pending + in_flight` per target, as the queue reports it.
    fn live_counts(&mut self) -> Result<HashMap<String, i64>, String> {
        Ok(self
            .q()
            .counts()
            .map_err(qe)?
            .into_iter()
            .map(|c| (c.name, (c.pending + c.in_flight) as i64))
            .collect())
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        match *step {
            Step::Ingest { key, doc } => self.ingest(key, doc),
            Step::Lease { target, max } => self.lease(target, max).map(|_| ()),
            Step::Ack { target, pick } => {
                let Some(f) = self.pick_in_flight(target, pick, Pick::Any) else {
                    return Ok(());
                };
                let name = self.targets[target].name.clone();
                self.q().ack(&name, &[f.seq]).map_err(qe)?;
                self.settle_ack(target, f.key, f.seq)
            }
            Step::AckAll { target } => self.ack_all(target),
            Step::Release { target, pick } => self.fail(target, pick, Failure::Release),
            Step::RetryLater { target, pick, wait } => {
                let nb = (self.now as i64 + wait).max(0) as u64;
                self.fail(target, pick, Failure::Retry(nb))
            }
            Step::DeadLetter { target, pick } => self.fail(target, pick, Failure::Dead),
            Step::DeadRetry { target, pick } => self.dead_op(target, pick, false),
            Step::DeadDrop { target, pick } => self.dead_op(target, pick, true),
            Step::Deliver { target, pick } => self.deliver(target, pick).map(|_| ()),
            Step::Timeout { target, pick } => {
                let Some(seq) = self.deliver(target, pick)? else {
                    return Ok(());
                };
                self.fail_seq(target, seq, Failure::Release)
            }
            Step::CrashAfterGotIt { target, pick } => {
                if self.deliver(target, pick)?.is_none() {
                    return Ok(());
                }
                self.restart()
            }
            Step::Tick { ms } => {
                self.now += ms;
                Ok(())
            }
            Step::Restart => self.restart(),
        }
    }

    // ---- ingest ----

    fn ingest(&mut self, key_i: usize, doc: Option<Doc>) -> Result<(), String> {
        let key = KEYS[key_i];
        let new: View = doc.map(Doc::flat);
        let old: View = self.truth.get(key).cloned();
        let before = self.live_counts()?;
        let set = ChangeSet {
            changes: vec![Change {
                record: RecordId::new(COLLECTION, key),
                doc: new.clone(),
            }],
            full_collections: vec![],
        };
        let res = self.q().ingest(&[set]).map_err(qe)?;
        let after = self.live_counts()?;
        let mut deltas = 0;
        for tm in &mut self.targets {
            let name = tm.name.clone();
            let got = after[&name] - before[&name];
            let old_p = project(&old, tm.fields.as_deref());
            let new_p = project(&new, tm.fields.as_deref());
            if old_p == new_p {
                ensure!(
                    got == 0,
                    "{name}/{key}: a change invisible to the target moved pending+in_flight by {got}"
                );
                continue;
            }
            deltas += 1;
            let pos = tm.next_pos + 1;
            let rec = tm.recs.entry(key).or_default();
            if let Some(d) = &mut rec.dead {
                d.held_to = new_p;
                d.changes += 1;
                ensure!(
                    got == 0,
                    "{name}/{key}: a change to a record held by dead letter {name}:{} moved pending+in_flight by {got}",
                    d.seq
                );
                continue;
            }
            match rec.entries.last_mut() {
                // The record's unsealed waiting delta absorbs the change.
                Some(last) if last.sealed.is_none() => {
                    let collapse = last.from.is_none() && new_p.is_none();
                    let want = if collapse { -1 } else { 0 };
                    ensure!(
                        got == want,
                        "{name}/{key}: the change {} -> {} should merge into the waiting, never handed out delta{} ({} -> {}) and move pending+in_flight by {want}, it moved it by {got}",
                        show(&old_p),
                        show(&new_p),
                        last.seq.map(|s| format!(" {name}:{s}")).unwrap_or_default(),
                        show(&last.from),
                        show(&last.to)
                    );
                    if collapse {
                        rec.entries.pop();
                    } else {
                        last.to = new_p;
                    }
                }
                // No delta, or only a sealed one: a new delta at the end.
                newest => {
                    if got != 1 {
                        let why = match newest {
                            Some(e) => format!(
                                " (the newest delta {name}:{} was handed to the transport{}, so it is sealed: the legacy system may have processed it under its id)",
                                e.seq.unwrap_or(0),
                                if e.leased.is_some() {
                                    " and is in flight"
                                } else {
                                    " before (then released, retried or restarted)"
                                }
                            ),
                            None => String::new(),
                        };
                        return Err(format!(
                            "{name}/{key}: the change {} -> {} should be queued as a new delta (+1), pending+in_flight moved by {got}{why}",
                            show(&old_p),
                            show(&new_p)
                        ));
                    }
                    rec.entries.push(Entry::new(pos, old_p, new_p));
                    tm.next_pos = pos;
                }
            }
        }
        match new {
            Some(f) => self.truth.insert(key, f),
            None => self.truth.remove(key),
        };
        ensure!(
            res == vec![Ingested { changes: 1, deltas }],
            "{key}: ingest answered {res:?}, expected 1 change and {deltas} deltas"
        );
        Ok(())
    }

    // ---- lease ----

    fn lease(&mut self, ti: usize, max: usize) -> Result<usize, String> {
        let now = self.now;
        let name = self.targets[ti].name.clone();
        let lease = self.q().lease(&name, max, now).map_err(qe)?;
        let tm = &mut self.targets[ti];
        let mut heads: Vec<(u64, &'static str)> = Vec::new();
        let mut next_due: Option<u64> = None;
        for (key, rec) in &tm.recs {
            if rec.dead.is_some() {
                continue;
            }
            let Some(h) = rec.entries.first() else {
                continue;
            };
            if h.leased.is_some() {
                continue;
            }
            if h.not_before > now {
                next_due = Some(next_due.map_or(h.not_before, |d| d.min(h.not_before)));
                continue;
            }
            heads.push((h.pos, *key));
        }
        heads.sort();
        heads.truncate(max);
        let want: Vec<&str> = heads.iter().map(|h| h.1).collect();
        let got: Vec<String> = lease
            .items
            .iter()
            .map(|l| format!("{}:{}", l.queued.record.key, l.queued.seq))
            .collect();
        let got_keys: Vec<&str> = lease
            .items
            .iter()
            .map(|l| l.queued.record.key.as_str())
            .collect();
        ensure!(
            got_keys == want,
            "{name}: lease(max {max}, now {now}) should hand out records {want:?} in queue order, it handed out {got:?} (record:seq)"
        );
        if lease.items.len() < max {
            ensure!(
                lease.next_due_ms == next_due,
                "{name}: lease next_due_ms {:?}, expected {next_due:?}",
                lease.next_due_ms
            );
        }
        for item in &lease.items {
            let key = KEYS
                .iter()
                .copied()
                .find(|k| *k == item.queued.record.key)
                .expect("a known key");
            ensure!(
                item.queued.record.collection == COLLECTION,
                "{name}: leased a delta of collection {}",
                item.queued.record.collection
            );
            let TModel {
                recs,
                seq_by_pos,
                pos_by_seq,
                ..
            } = &mut *tm;
            let rec = recs.get_mut(key).expect("leased record is known");
            let e = &mut rec.entries[0];
            bind_seq(seq_by_pos, pos_by_seq, &name, key, e, item.queued.seq)?;
            let what = format!("{name}/{key}: leased {name}:{}", item.queued.seq);
            check_delta(&what, &e.from, &e.to, &item.queued.delta)?;
            if let Some(sealed) = &e.sealed {
                ensure!(
                    &item.queued.delta == sealed,
                    "{what} as [{}], but it was handed out before as [{}]: a sealed delta changed",
                    show_delta(&item.queued.delta),
                    show_delta(sealed)
                );
            }
            ensure!(
                (
                    item.queued.attempts,
                    item.queued.not_before_ms,
                    &item.queued.last_error
                ) == (e.attempts, e.not_before, &e.last_error),
                "{name}/{key}: leased {name}:{} with attempts/not_before/last_error {:?}, expected {:?}",
                item.queued.seq,
                (
                    item.queued.attempts,
                    item.queued.not_before_ms,
                    &item.queued.last_error
                ),
                (e.attempts, e.not_before, &e.last_error)
            );
            ensure!(
                item.record.as_ref() == self.truth.get(key),
                "{name}/{key}: leased with record {} but the latest state is {}",
                show(&item.record),
                show(&self.truth.get(key).cloned())
            );
            e.sealed = Some(item.queued.delta.clone());
            e.leased = Some(item.queued.delta.clone());
            e.sent = false;
        }
        Ok(lease.items.len())
    }

    /// The `pick`-th in-flight delta of the target (by seq) among those `which`
    /// allows.
    fn pick_in_flight(&self, ti: usize, pick: usize, which: Pick) -> Option<Flying> {
        let all: Vec<Flying> = self.targets[ti]
            .in_flight()
            .into_iter()
            .filter(|f| match which {
                Pick::Any => true,
                Pick::NotSent => !f.sent,
                Pick::Unprocessed => !f.legacy_has,
            })
            .collect();
        if all.is_empty() {
            return None;
        }
        Some(all[pick % all.len()])
    }

    // ---- acks ----

    fn settle_ack(&mut self, ti: usize, key: &'static str, seq: u64) -> Result<(), String> {
        let strict = self.strict;
        let TModel {
            name,
            recs,
            seen,
            delivered,
            ..
        } = &mut self.targets[ti];
        let rec = recs.get_mut(key).expect("known record");
        ensure!(
            rec.entries
                .first()
                .is_some_and(|e| e.seq == Some(seq) && e.leased.is_some()),
            "{name}/{key}: acked {name}:{seq} is not the record's in-flight delta"
        );
        let e = rec.entries.remove(0);
        if !e.sent {
            receive(name, seen, key, rec, &e, seq, strict)?;
        }
        if !rec.tainted {
            ensure!(
                rec.view == e.to,
                "{name}/{key}: after {name}:{seq} was acknowledged the legacy system holds {} but the record's state for that delivery is {} (change lost)",
                show(&rec.view),
                show(&e.to)
            );
        }
        ensure!(
            seq > rec.last_acked,
            "{name}/{key}: acked {name}:{seq} after {name}:{} (per-record order)",
            rec.last_acked
        );
        rec.last_acked = seq;
        *delivered += 1;
        Ok(())
    }

    fn ack_all(&mut self, ti: usize) -> Result<(), String> {
        let flying = self.targets[ti].in_flight();
        if flying.is_empty() {
            return Ok(());
        }
        let name = self.targets[ti].name.clone();
        let seqs: Vec<u64> = flying.iter().map(|f| f.seq).collect();
        self.q().ack(&name, &seqs).map_err(qe)?;
        for f in flying {
            self.settle_ack(ti, f.key, f.seq)?;
        }
        Ok(())
    }

    /// The legacy system processes an in-flight delta (a repeat of an id it knows
    /// is dropped there); the answer has not reached the queue. Returns its seq.
    fn deliver(&mut self, ti: usize, pick: usize) -> Result<Option<u64>, String> {
        let Some(Flying { key, seq, .. }) = self.pick_in_flight(ti, pick, Pick::NotSent) else {
            return Ok(None);
        };
        let strict = self.strict;
        let TModel {
            name, recs, seen, ..
        } = &mut self.targets[ti];
        let rec = recs.get_mut(key).expect("known record");
        let e = rec.entries[0].clone();
        receive(name, seen, key, rec, &e, seq, strict)?;
        let e = &mut rec.entries[0];
        e.sent = true;
        e.legacy_has = true;
        Ok(Some(seq))
    }

    // ---- failures ----

    fn fail(&mut self, ti: usize, pick: usize, how: Failure) -> Result<(), String> {
        // An outage may follow a delivery the legacy system processed (its answer
        // was lost); a refusal comes only for one it did not process.
        let which = match how {
            Failure::Release => Pick::Any,
            Failure::Retry(_) | Failure::Dead => Pick::Unprocessed,
        };
        let Some(f) = self.pick_in_flight(ti, pick, which) else {
            return Ok(());
        };
        self.fail_seq(ti, f.seq, how)
    }

    fn fail_seq(&mut self, ti: usize, seq: u64, how: Failure) -> Result<(), String> {
        let name = self.targets[ti].name.clone();
        let dead = match how {
            Failure::Release => {
                self.q().release(&name, seq).map_err(qe)?;
                None
            }
            Failure::Retry(nb) => {
                self.q()
                    .retry_later(&name, seq, "refused", nb)
                    .map_err(qe)?;
                None
            }
            Failure::Dead => Some(
                self.q()
                    .dead_letter(&name, seq, "refused for good")
                    .map_err(qe)?,
            ),
        };
        let tm = &mut self.targets[ti];
        let Some((key, rec)) = tm.recs.iter_mut().find(|(_, r)| {
            r.entries
                .first()
                .is_some_and(|e| e.seq == Some(seq) && e.leased.is_some())
        }) else {
            return Err(format!("{name}: model: {name}:{seq} is not in flight"));
        };
        let key = *key;
        {
            // Back to waiting, same seq, same (sealed) content.
            let e = &mut rec.entries[0];
            e.leased = None;
            e.sent = false;
            match how {
                Failure::Release => {}
                Failure::Retry(nb) => {
                    e.attempts += 1;
                    e.not_before = nb;
                    e.last_error = Some("refused".into());
                }
                Failure::Dead => {
                    e.attempts += 1;
                    e.last_error = Some("refused for good".into());
                }
            }
        }
        let Some(dead) = dead else {
            return Ok(());
        };
        let Some(dead) = dead else {
            return Err(format!(
                "{name}/{key}: dead_letter({name}:{seq}) returned None, expected a dead letter"
            ));
        };
        let e = rec.entries.remove(0);
        // The newer delta that waited behind it leaves the queue: it is `held`.
        let newer = (!rec.entries.is_empty()).then(|| rec.entries.remove(0));
        let sealed = e.sealed.clone().expect("in flight ⇒ sealed");
        ensure!(
            dead.queued.seq == seq
                && dead.queued.record.key == key
                && dead.queued.record.collection == COLLECTION
                && dead.queued.attempts == e.attempts
                && dead.queued.not_before_ms == e.not_before
                && dead.queued.last_error == e.last_error,
            "{name}/{key}: dead letter {dead:?} does not match seq {seq}, attempts {}, not_before {}, last_error {:?}",
            e.attempts,
            e.not_before,
            e.last_error
        );
        ensure!(
            dead.queued.delta == sealed,
            "{name}/{key}: dead letter {name}:{seq} is [{}] but the delta handed out was [{}]",
            show_delta(&dead.queued.delta),
            show_delta(&sealed)
        );
        let held_to = match (&newer, &dead.held) {
            (None, None) => e.to.clone(),
            (None, Some(h)) => {
                return Err(format!(
                    "{name}/{key}: dead letter {name}:{seq} holds [{}] though no delta waited behind it",
                    show_delta(h)
                ));
            }
            (Some(n), None) => {
                return Err(format!(
                    "{name}/{key}: dead letter {name}:{seq} holds nothing, but the delta waiting behind it ({} -> {}) is gone from the queue (lost)",
                    show(&n.from),
                    show(&n.to)
                ));
            }
            (Some(n), Some(h)) => {
                check_delta(
                    &format!("{name}/{key}: held by dead letter {name}:{seq}"),
                    &e.to,
                    &n.to,
                    h,
                )?;
                n.to.clone()
            }
        };
        rec.dead = Some(Dead {
            seq,
            pos: e.pos,
            from: e.from,
            to: e.to,
            delta: sealed,
            attempts: e.attempts,
            held_to,
            changes: usize::from(newer.is_some()),
        });
        Ok(())
    }

    // ---- the operator ----

    fn dead_op(&mut self, ti: usize, pick: usize, drop: bool) -> Result<(), String> {
        let dead = self.targets[ti].dead();
        if dead.is_empty() {
            return Ok(());
        }
        let (key, seq) = dead[pick % dead.len()];
        let name = self.targets[ti].name.clone();
        let id = delivery_id(&name, seq);
        let got = if drop {
            self.q().dead_drop(&id).map_err(qe)?
        } else {
            self.q().dead_retry(&id).map_err(qe)?
        };
        let tm = &mut self.targets[ti];
        let pos = tm.next_pos + 1;
        let rec = tm.recs.get_mut(key).expect("known record");
        let d = rec.dead.take().expect("model dead letter");
        ensure!(
            got.queued.seq == seq && got.queued.attempts == d.attempts,
            "{name}/{key}: dead {id} came back as {got:?}"
        );
        ensure!(
            got.queued.delta == d.delta,
            "{name}/{key}: dead letter {id} was [{}] when it died, it is now [{}]",
            show_delta(&d.delta),
            show_delta(&got.queued.delta)
        );
        check_delta(
            &format!("{name}/{key}: dead letter {id}"),
            &d.from,
            &d.to,
            &got.queued.delta,
        )?;
        match &got.held {
            None => ensure!(
                d.to == d.held_to,
                "{name}/{key}: dead letter {id} holds nothing but the record moved from {} to {} since it died",
                show(&d.to),
                show(&d.held_to)
            ),
            Some(h) => {
                ensure!(
                    d.changes > 0,
                    "{name}/{key}: dead letter {id} holds [{}] though no change arrived",
                    show_delta(h)
                );
                check_delta(&format!("{name}/{key}: held by {id}"), &d.to, &d.held_to, h)?;
            }
        }
        if drop {
            // The dropped delta (view -> d.to) is never sent: that is the lag.
            let v = rec.view.clone().unwrap_or_default();
            let b = d.to.clone().unwrap_or_default();
            for p in v.keys().chain(b.keys()) {
                if v.get(p) != b.get(p) {
                    rec.lag_paths.insert(p.clone());
                    rec.tainted = true;
                }
            }
            if rec.view.is_some() != d.to.is_some() {
                rec.lag_existence = true;
                rec.tainted = true;
            }
            // `held` goes the normal way: a new delta at the end (the record has no
            // other delta to merge into).
            if got.held.is_some() {
                rec.entries.push(Entry::new(pos, d.to, d.held_to));
                tm.next_pos = pos;
            }
        } else if !(d.from.is_none() && d.held_to.is_none()) {
            // Back at its place, merged with what it held, unsealed: the legacy
            // system refused it, so it never processed this id.
            let mut e = Entry::new(d.pos, d.from, d.held_to);
            e.seq = Some(d.seq);
            rec.entries.push(e);
        }
        Ok(())
    }

    // ---- restart ----

    fn restart(&mut self) -> Result<(), String> {
        self.q().commit().map_err(qe)?;
        drop(self.q.take());
        let q = Queue::open(self.dir.path(), 1, specs()).map_err(qe)?;
        self.q = Some(q);
        // In-flight state is lost; sealed deltas stay sealed.
        for tm in &mut self.targets {
            for rec in tm.recs.values_mut() {
                for e in &mut rec.entries {
                    e.leased = None;
                    e.sent = false;
                }
            }
        }
        Ok(())
    }

    // ---- checks ----

    fn check_counts(&mut self) -> Result<(), String> {
        for tm in &self.targets {
            tm.check_shape()?;
        }
        // Backpressure (SPEC §3.8) reads `pending_bytes`: it must be exactly what
        // the queued deltas take, whatever path they took.
        {
            let q = self.q.as_ref().expect("queue open");
            for (name, t) in &q.targets {
                let sum = q.stored_bytes(name).map_err(qe)?;
                ensure!(
                    t.counters.pending_bytes == sum,
                    "{name}: pending_bytes {} but the queued deltas take {sum} bytes",
                    t.counters.pending_bytes
                );
            }
        }
        let counts = self.q().counts().map_err(qe)?;
        let dead_list = self.q().dead_list(None).map_err(qe)?;
        for tm in &self.targets {
            let c = counts
                .iter()
                .find(|c| c.name == tm.name)
                .ok_or_else(|| format!("no counts for {}", tm.name))?;
            let live = tm.live();
            let flying = tm.in_flight().len() as u64;
            let dead = tm.dead();
            let want = (live, flying, dead.len() as u64, tm.delivered);
            let got = (c.pending + c.in_flight, c.in_flight, c.dead, c.delivered);
            ensure!(
                got == want,
                "{}: counts (pending+in_flight, in_flight, dead, delivered) = {got:?}, expected {want:?}",
                tm.name
            );
            ensure!(
                c.oldest_queued_at_ms.is_some() == (live > 0),
                "{}: oldest_queued_at_ms {:?} with {live} deltas queued",
                tm.name,
                c.oldest_queued_at_ms
            );
            let mut listed: Vec<(String, u64)> = dead_list
                .iter()
                .filter(|(t, _)| *t == tm.name)
                .map(|(_, d)| (d.queued.record.key.clone(), d.queued.seq))
                .collect();
            listed.sort_by_key(|x| x.1);
            let want: Vec<(String, u64)> = dead.iter().map(|(k, s)| (k.to_string(), *s)).collect();
            ensure!(
                listed == want,
                "{}: dead_list shows {listed:?}, expected {want:?}",
                tm.name
            );
        }
        Ok(())
    }

    /// Lease and ack until nothing is left; dead letters retried (or dropped).
    fn drain(&mut self, drop_dead: bool) -> Result<(), String> {
        for _round in 0..20 {
            let latest = self
                .targets
                .iter()
                .flat_map(|t| t.recs.values())
                .flat_map(|r| r.entries.iter())
                .map(|e| e.not_before)
                .max()
                .unwrap_or(0);
            self.now = self.now.max(latest) + 1;
            for ti in 0..self.targets.len() {
                // Anything a strict run left half-delivered is acknowledged first.
                self.ack_all(ti)?;
                while self.lease(ti, 100)? > 0 {
                    self.check_counts()?;
                    self.ack_all(ti)?;
                    self.check_counts()?;
                }
                for pick in 0..self.targets[ti].dead().len() {
                    let _ = pick;
                    self.dead_op(ti, 0, drop_dead)?;
                    self.check_counts()?;
                }
            }
            if self
                .targets
                .iter()
                .all(|t| t.live() == 0 && t.dead().is_empty())
            {
                return Ok(());
            }
        }
        Err("the queue did not drain".into())
    }

    fn check_final(&mut self) -> Result<(), String> {
        for tm in &self.targets {
            for key in KEYS {
                let want = project(&self.truth.get(key).cloned(), tm.fields.as_deref());
                let rec = tm.recs.get(key).cloned().unwrap_or_default();
                let name = &tm.name;
                if !rec.tainted {
                    ensure!(
                        rec.view == want,
                        "{name}/{key}: after draining the legacy system holds {} but the record's latest state is {} (an accepted change was lost)",
                        show(&rec.view),
                        show(&want)
                    );
                    continue;
                }
                if !rec.lag_existence {
                    ensure!(
                        rec.view.is_some() == want.is_some(),
                        "{name}/{key}: after draining the legacy system holds {} but the latest state is {} (no dropped dead letter excuses it)",
                        show(&rec.view),
                        show(&want)
                    );
                }
                let v = rec.view.clone().unwrap_or_default();
                let w = want.clone().unwrap_or_default();
                for p in v.keys().chain(w.keys()) {
                    ensure!(
                        rec.lag_paths.contains(p) || v.get(p) == w.get(p),
                        "{name}/{key}: after draining the legacy system holds {} but the latest state is {}; path {p} was not touched by any dropped dead letter (lag {:?})",
                        show(&rec.view),
                        show(&want),
                        rec.lag_paths
                    );
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Failure {
    Release,
    Retry(u64),
    Dead,
}

/// Runs the steps, checking after each one, then drains and checks the end state.
fn run(strict: bool, steps: &[Step], drop_dead: bool) -> Result<(), String> {
    let mut r = Run::new(strict)?;
    for (i, step) in steps.iter().enumerate() {
        r.step(step)
            .and_then(|()| r.check_counts())
            .map_err(|e| format!("step {i} {step:?}: {e}"))?;
    }
    let ctx = |e: String| format!("draining (drop dead letters: {drop_dead}): {e}");
    r.drain(drop_dead).map_err(ctx)?;
    r.check_final().map_err(ctx)?;
    r.restart().map_err(ctx)?;
    r.check_counts().map_err(ctx)?;
    for ti in 0..r.targets.len() {
        let n = r.lease(ti, 100).map_err(ctx)?;
        ensure!(n == 0, "after draining and a restart, {n} deltas came back");
    }
    Ok(())
}

// ---- strategies ---------------------------------------------------------------

fn doc() -> impl Strategy<Value = Option<Doc>> {
    let fields = [
        proptest::option::of(0u8..2),
        proptest::option::of(0u8..2),
        proptest::option::of(0u8..2),
    ]
    .prop_map(|mut v| {
        if v.iter().all(Option::is_none) {
            v[0] = Some(0);
        }
        Doc(v)
    });
    prop_oneof![1 => Just(None), 3 => fields.prop_map(Some)]
}

fn step(strict: bool) -> BoxedStrategy<Step> {
    let t = || 0..2usize;
    let p = || 0..4usize;
    let common = prop_oneof![
        8 => (0..KEYS.len(), doc()).prop_map(|(key, doc)| Step::Ingest { key, doc }),
        5 => (t(), 1..4usize).prop_map(|(target, max)| Step::Lease { target, max }),
        4 => (t(), p()).prop_map(|(target, pick)| Step::Ack { target, pick }),
        1 => t().prop_map(|target| Step::AckAll { target }),
        2 => (t(), p()).prop_map(|(target, pick)| Step::Release { target, pick }),
        2 => (t(), p(), prop_oneof![Just(-5i64), Just(0), Just(20), Just(200)])
            .prop_map(|(target, pick, wait)| Step::RetryLater { target, pick, wait }),
        2 => (t(), p()).prop_map(|(target, pick)| Step::DeadLetter { target, pick }),
        2 => (t(), p()).prop_map(|(target, pick)| Step::DeadRetry { target, pick }),
        1 => (t(), p()).prop_map(|(target, pick)| Step::DeadDrop { target, pick }),
        1 => (1u64..60).prop_map(|ms| Step::Tick { ms }),
        1 => Just(Step::Restart),
    ];
    if strict {
        prop_oneof![
            14 => common,
            2 => (t(), p()).prop_map(|(target, pick)| Step::Deliver { target, pick }),
            2 => (t(), p()).prop_map(|(target, pick)| Step::Timeout { target, pick }),
            1 => (t(), p()).prop_map(|(target, pick)| Step::CrashAfterGotIt { target, pick }),
        ]
        .boxed()
    } else {
        common.boxed()
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Everything in the module docs, with a legacy system that only processes what
    /// is acknowledged (outages are clean: nothing reached it).
    #[test]
    fn queue_follows_the_model(
        steps in proptest::collection::vec(step(false), 1..70),
        drop_dead in any::<bool>(),
    ) {
        run(false, &steps, drop_dead).map_err(TestCaseError::fail)?;
    }

    /// The same, with a legacy system that may process a delivery whose answer
    /// never reaches the queue — then a restart (crash between its "got it" and
    /// the ack) or a release (timeout) follows — and that drops repeated ids.
    #[test]
    fn queue_follows_the_model_across_crashes_after_got_it(
        steps in proptest::collection::vec(step(true), 1..70),
        drop_dead in any::<bool>(),
    ) {
        run(true, &steps, drop_dead).map_err(TestCaseError::fail)?;
    }
}

// ---- regressions found by the model -------------------------------------------------
//
// Each of these failed before the fix it names; they pin the fixed behaviour.

fn ingest(key: usize, doc: Option<[Option<u8>; 3]>) -> Step {
    Step::Ingest {
        key,
        doc: doc.map(Doc),
    }
}

fn must_pass(strict: bool, steps: &[Step]) {
    for drop_dead in [false, true] {
        if let Err(e) = run(strict, steps, drop_dead) {
            panic!("{e}");
        }
    }
}

/// Diff Engine, `merge(update, delete)` used to keep only the newer delete's
/// `unset` (the paths of the state just before the delete) and forget the paths
/// the older update took away; `merge(delete, create)` then built an update that
/// left those paths on the legacy system. Legacy holds {a:0}; then {n.x:0}
/// (update: set n.x, unset a), delete, {b:0}: the legacy system ended with
/// {a:0,b:0} instead of {b:0}. Fixed: the delete's `unset` is the union.
#[test]
fn regression_update_then_delete_then_create_removes_every_old_field() {
    must_pass(
        false,
        &[
            ingest(0, Some([Some(0), None, None])),
            Step::Lease { target: 0, max: 1 },
            ingest(0, Some([None, None, Some(0)])),
            ingest(0, None),
            ingest(0, Some([None, Some(0), None])),
        ],
    );
}

/// Sync Queue, restart: a delta that was in flight when the daemon stopped used to
/// come back waiting with its coalescing index intact, so the next change merged
/// into it (here create ∘ delete folded into nothing: had the legacy system
/// processed the create, it kept the record forever). Fixed: sealed at lease.
#[test]
fn regression_change_after_restart_does_not_merge_into_a_handed_out_delta() {
    must_pass(
        true,
        &[
            ingest(0, Some([Some(0), None, None])),
            Step::Lease { target: 0, max: 1 },
            Step::CrashAfterGotIt { target: 0, pick: 0 },
            ingest(0, None),
        ],
    );
}

/// Sync Queue, release: the failed delta used to absorb the newer delta waiting
/// behind it (create ∘ delete = nothing), though the legacy system may have
/// processed it before the answer timed out. Fixed: released unchanged.
#[test]
fn regression_change_after_a_timeout_does_not_merge_into_the_released_delta() {
    must_pass(
        true,
        &[
            ingest(0, Some([Some(0), None, None])),
            Step::Lease { target: 0, max: 1 },
            ingest(0, None),
            Step::Timeout { target: 0, pick: 0 },
            ingest(0, Some([None, Some(1), None])),
            Step::Lease { target: 0, max: 1 },
            Step::Timeout { target: 0, pick: 0 },
            ingest(0, Some([None, Some(0), None])),
        ],
    );
}

/// dead_letter takes in the newer delta that waited behind the rejected one;
/// dead_retry merges it back into the dead letter, which is unsealed again and
/// absorbs later changes until it is leased (here down to nothing: create ∘
/// update ∘ delete).
#[test]
fn dead_letter_holds_the_newer_delta_and_retry_merges_it() {
    must_pass(
        false,
        &[
            ingest(1, Some([Some(0), None, None])),
            Step::Lease { target: 0, max: 1 },
            ingest(1, Some([Some(1), None, None])),
            Step::DeadLetter { target: 0, pick: 0 },
            ingest(1, Some([Some(1), Some(1), None])),
            Step::DeadRetry { target: 0, pick: 0 },
            ingest(1, None),
        ],
    );
}

fn one_change(key: &str, doc: Option<Value>) -> ChangeSet {
    ChangeSet {
        changes: vec![Change {
            record: RecordId::new(COLLECTION, key),
            doc: doc
                .map(|d| crate::diff::flatten(d.as_object().expect("object"), 32).expect("flat")),
        }],
        full_collections: vec![],
    }
}

/// A legacy system that drops delivery ids it has processed (SPEC §3.2).
#[derive(Default)]
struct Legacy {
    seen: HashSet<u64>,
    view: View,
}

impl Legacy {
    fn receive(&mut self, l: &Leased) {
        if self.seen.insert(l.queued.seq) {
            self.view = apply(&self.view, &l.queued.delta);
        }
    }
}

fn reopen(q: Queue, dir: &std::path::Path) -> Queue {
    drop(q);
    Queue::open(dir, 1, specs()).expect("cannot reopen the queue")
}

/// Lease and ack until the target's queue is empty, feeding the legacy system.
fn drain_into(q: &mut Queue, legacy: &mut Legacy) {
    loop {
        let lease = q.lease("full", 100, u64::MAX).unwrap();
        if lease.items.is_empty() {
            return;
        }
        for l in &lease.items {
            legacy.receive(l);
        }
        let seqs: Vec<u64> = lease.items.iter().map(|l| l.queued.seq).collect();
        q.ack("full", &seqs).unwrap();
    }
}

/// SPEC §3.2: "A crash between the legacy system's 'got it' and the queue update
/// may repeat that one delivery, never lose it." The create was processed, the
/// daemon died before the ack; after the restart the delete used to merge into
/// the create (create ∘ delete = nothing) and nothing was ever sent again.
#[test]
fn regression_crash_after_got_it_then_delete_still_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1, specs()).unwrap();
    let mut legacy = Legacy::default();
    q.ingest(&[one_change("k0", Some(serde_json::json!({"a": 1})))])
        .unwrap();
    q.commit().unwrap();
    let lease = q.lease("full", 10, u64::MAX).unwrap();
    legacy.receive(&lease.items[0]); // "got it" ... and the daemon dies before the ack
    q.commit().unwrap();
    let mut q = reopen(q, dir.path());
    q.ingest(&[one_change("k0", None)]).unwrap();
    q.commit().unwrap();
    drain_into(&mut q, &mut legacy);
    assert_eq!(
        legacy.view, None,
        "the record was deleted at the source, the legacy system still holds it"
    );
}

/// The same crash, then an update: it used to merge into the re-sent delivery,
/// which keeps its id, so a legacy system that drops repeated ids never saw the
/// new value.
#[test]
fn regression_crash_after_got_it_then_update_is_not_dropped_as_a_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1, specs()).unwrap();
    let mut legacy = Legacy::default();
    q.ingest(&[one_change("k0", Some(serde_json::json!({"a": 1})))])
        .unwrap();
    q.commit().unwrap();
    let lease = q.lease("full", 10, u64::MAX).unwrap();
    legacy.receive(&lease.items[0]);
    q.commit().unwrap();
    let mut q = reopen(q, dir.path());
    q.ingest(&[one_change("k0", Some(serde_json::json!({"a": 2})))])
        .unwrap();
    q.commit().unwrap();
    drain_into(&mut q, &mut legacy);
    let want: Flat = [("a".to_string(), Value::from(2))].into_iter().collect();
    assert_eq!(
        legacy.view,
        Some(want),
        "the change to a:2 went out under the already-processed id full:1 and was dropped"
    );
}

/// Processed, then the answer timed out (release), then an update: it used to be
/// folded into the released delivery, re-sent under the id the legacy system had
/// already processed, and dropped there as a repeat.
#[test]
fn regression_timeout_after_got_it_then_update_is_not_dropped_as_a_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1, specs()).unwrap();
    let mut legacy = Legacy::default();
    q.ingest(&[one_change("k0", Some(serde_json::json!({"a": 1})))])
        .unwrap();
    let lease = q.lease("full", 10, u64::MAX).unwrap();
    legacy.receive(&lease.items[0]); // processed ... and the answer times out
    q.ingest(&[one_change("k0", Some(serde_json::json!({"a": 2})))])
        .unwrap();
    q.release("full", lease.items[0].queued.seq).unwrap();
    drain_into(&mut q, &mut legacy);
    let want: Flat = [("a".to_string(), Value::from(2))].into_iter().collect();
    assert_eq!(legacy.view, Some(want), "the change to a:2 was lost");
}
