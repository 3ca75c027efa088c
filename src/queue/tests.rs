use super::keys::*;
use super::*;
use crate::record::{Change, Op};
use crate::record::{ChangeSet, Delta, now_ms};
use serde_json::json;

fn spec(name: &str) -> TargetSpec {
    TargetSpec {
        name: name.into(),
        collections: vec!["permits".into()],
        fields: None,
    }
}

fn change(key: &str, doc: serde_json::Value) -> ChangeSet {
    let doc = if doc.is_null() {
        None
    } else {
        Some(crate::diff::flatten(doc.as_object().unwrap(), 32).unwrap())
    };
    ChangeSet {
        changes: vec![Change {
            record: RecordId::new("permits", key),
            doc,
        }],
        full_collections: vec![],
    }
}

#[test]
fn ingest_lease_ack_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
        q.ingest(&[change("1", json!({"a": 1}))]).unwrap();
        q.ingest(&[change("1", json!({"a": 1}))]).unwrap(); // same again: nothing
        q.ingest(&[change("2", json!({"a": 2}))]).unwrap();
        q.commit().unwrap();
        let lease = q.lease("t", 10, now_ms()).unwrap();
        assert_eq!(lease.items.len(), 2);
        assert_eq!(lease.items[0].queued.seq, 1);
        q.ack("t", &[1]).unwrap();
        q.commit().unwrap();
    }
    let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
    let lease = q.lease("t", 10, now_ms()).unwrap();
    assert_eq!(
        lease.items.len(),
        1,
        "seq 2 was in flight, not acked: it comes back"
    );
    assert_eq!(lease.items[0].queued.seq, 2);
    let counts = q.counts().unwrap();
    assert_eq!(
        (counts[0].pending, counts[0].in_flight, counts[0].delivered),
        (0, 1, 1)
    );
}

#[test]
fn waiting_deltas_coalesce_and_in_flight_ones_do_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
    q.ingest(&[change("1", json!({"a": 1}))]).unwrap();
    q.ingest(&[change("1", json!({"a": 2}))]).unwrap();
    let lease = q.lease("t", 10, 0).unwrap();
    assert_eq!(lease.items.len(), 1);
    assert_eq!(lease.items[0].queued.delta.op, Op::Create);
    assert_eq!(lease.items[0].queued.delta.set["a"], json!(2));
    // In flight: a newer change queues behind it and is not leased yet.
    q.ingest(&[change("1", json!({"a": 3}))]).unwrap();
    q.ingest(&[change("1", json!({"a": 4, "b": 1}))]).unwrap();
    assert!(q.lease("t", 10, 0).unwrap().items.is_empty());
    // The delivery fails: the handed-out delta comes back unchanged, under its
    // id; the newer changes wait behind it, coalesced into one delta.
    q.release("t", 1).unwrap();
    let lease = q.lease("t", 10, 0).unwrap();
    assert_eq!(lease.items.len(), 1);
    assert_eq!(lease.items[0].queued.seq, 1);
    assert_eq!(lease.items[0].queued.delta.set["a"], json!(2));
    q.ack("t", &[1]).unwrap();
    let lease = q.lease("t", 10, 0).unwrap();
    assert_eq!(lease.items.len(), 1);
    assert_eq!(lease.items[0].queued.seq, 2);
    assert_eq!(lease.items[0].queued.delta.op, Op::Update);
    assert_eq!(lease.items[0].queued.delta.set["a"], json!(4));
    assert_eq!(lease.items[0].queued.delta.set["b"], json!(1));
}

#[test]
fn a_delta_handed_out_before_a_restart_absorbs_nothing_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
        q.ingest(&[change("1", json!({"a": 1}))]).unwrap();
        assert_eq!(q.lease("t", 10, 0).unwrap().items.len(), 1);
        q.commit().unwrap();
    }
    // The legacy system may have processed seq 1 before the crash.
    let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
    q.ingest(&[change("1", serde_json::Value::Null)]).unwrap();
    let counts = q.counts().unwrap();
    assert_eq!(
        counts[0].pending, 2,
        "the delete is its own delta, not folded into the create"
    );
    let lease = q.lease("t", 10, 0).unwrap();
    assert_eq!(lease.items.len(), 1);
    assert_eq!(lease.items[0].queued.seq, 1);
    assert_eq!(lease.items[0].queued.delta.op, Op::Create);
}

#[test]
fn create_then_delete_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
    q.ingest(&[change("1", json!({"a": 1}))]).unwrap();
    q.ingest(&[change("1", serde_json::Value::Null)]).unwrap();
    assert!(q.lease("t", 10, 0).unwrap().items.is_empty());
    assert_eq!(q.counts().unwrap()[0].pending, 0);
}

#[test]
fn dead_letters_hold_their_record_until_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
    q.ingest(&[change("1", json!({"a": 1}))]).unwrap();
    q.ingest(&[change("2", json!({"a": 1}))]).unwrap();
    let lease = q.lease("t", 1, 0).unwrap();
    let dead = q
        .dead_letter("t", lease.items[0].queued.seq, "Fault")
        .unwrap()
        .unwrap();
    assert_eq!(dead.queued.attempts, 1);
    q.ingest(&[change("1", json!({"a": 5}))]).unwrap();
    let lease = q.lease("t", 10, 0).unwrap();
    assert_eq!(lease.items.len(), 1, "record 1 is held by its dead letter");
    assert_eq!(lease.items[0].queued.record.key, "2");
    let listed = q.dead_list(None).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1.held.as_ref().unwrap().set["a"], json!(5));
    q.dead_retry("t:1").unwrap();
    let lease = q.lease("t", 10, 0).unwrap();
    assert_eq!(lease.items.len(), 1);
    assert_eq!(
        lease.items[0].queued.seq, 1,
        "the merged delta keeps the dead letter's delivery id"
    );
    assert_eq!(lease.items[0].queued.delta.op, Op::Create);
    assert_eq!(lease.items[0].queued.delta.set["a"], json!(5));
    assert_eq!(lease.items[0].queued.attempts, 0);
}

#[test]
fn retry_waits_do_not_hold_other_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
    q.ingest(&[change("1", json!({"a": 1}))]).unwrap();
    q.ingest(&[change("2", json!({"a": 1}))]).unwrap();
    let lease = q.lease("t", 1, 1000).unwrap();
    q.retry_later("t", lease.items[0].queued.seq, "no", 5000)
        .unwrap();
    let lease = q.lease("t", 10, 1000).unwrap();
    assert_eq!(lease.items.len(), 1);
    assert_eq!(lease.items[0].queued.record.key, "2");
    assert_eq!(lease.next_due_ms, Some(5000));
}

#[test]
fn snapshot_files_delete_absent_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
    q.ingest(&[change("1", json!({"a": 1})), change("2", json!({"a": 2}))])
        .unwrap();
    let mut full = change("1", json!({"a": 1}));
    full.full_collections.push("permits".into());
    q.ingest(&[full]).unwrap();
    assert!(
        q.snapshot(&RecordId::new("permits", "2"))
            .unwrap()
            .is_none()
    );
    assert!(
        q.snapshot(&RecordId::new("permits", "1"))
            .unwrap()
            .is_some()
    );
}

#[test]
fn resync_pages_through_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
    for k in ["1", "2", "10", "3"] {
        q.ingest(&[change(k, json!({"a": 1}))]).unwrap();
    }
    let lease = q.lease("t", 10, 0).unwrap();
    let seqs: Vec<u64> = lease.items.iter().map(|l| l.queued.seq).collect();
    q.ack("t", &seqs).unwrap();
    let (n, after) = q.resync("t", None, None, 3).unwrap();
    assert_eq!(n, 3);
    let (n2, done) = q.resync("t", None, after.as_ref(), 3).unwrap();
    assert_eq!((n2, done), (1, None));
    assert_eq!(q.lease("t", 10, 0).unwrap().items.len(), 4);
}

/// Bytes of the waiting deltas as stored, chunk by chunk.
fn stored_bytes(q: &Queue, name: &str) -> u64 {
    q.stored_bytes(name).unwrap()
}

fn chunk_count(q: &Queue, name: &str) -> usize {
    q.store
        .reader()
        .unwrap()
        .scan_prefix(&key_of(b'p', &[name], None))
        .unwrap()
        .count()
}

/// Many deltas per chunk: acks, coalescing, dead letters and retries that land in
/// the middle of chunks keep queue order, content and byte counts exact.
#[test]
fn deltas_in_shared_chunks_keep_order_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1200u64;
    let set = ChangeSet {
        changes: (1..=n)
            .map(|i| change(&i.to_string(), json!({"v": i})).changes.remove(0))
            .collect(),
        full_collections: vec![],
    };
    {
        let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
        q.ingest(&[set]).unwrap();
        q.commit().unwrap();
        // 1200 small deltas: three chunks of at most CHUNK_MAX.
        assert_eq!(chunk_count(&q, "t"), 3);
        assert_eq!(stored_bytes(&q, "t"), q.pending_bytes());

        let lease = q.lease("t", 1000, now_ms()).unwrap();
        let seqs: Vec<u64> = lease.items.iter().map(|l| l.queued.seq).collect();
        assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
        // Every odd one is delivered; every even one failed (outage) except 500,
        // which is refused for the last time.
        let odd: Vec<u64> = seqs.iter().copied().filter(|s| s % 2 == 1).collect();
        q.ack("t", &odd).unwrap();
        for s in seqs.iter().copied().filter(|s| s % 2 == 0 && *s != 500) {
            q.release("t", s).unwrap();
        }
        // A change to a record whose delta waits unleased (seq 1100) merges into it,
        // in the middle of its chunk; one to a released (sealed) delta does not.
        q.ingest(&[change("1100", json!({"v": 1100, "w": 1}))])
            .unwrap();
        q.ingest(&[change("2", json!({"v": 2, "w": 2}))]).unwrap();
        let dead = q.dead_letter("t", 500, "refused").unwrap().unwrap();
        assert_eq!(dead.queued.seq, 500);
        q.commit().unwrap();
        assert_eq!(stored_bytes(&q, "t"), q.pending_bytes());
        q.dead_retry("t:500").unwrap();
        q.commit().unwrap();
        assert_eq!(stored_bytes(&q, "t"), q.pending_bytes());
    }
    // After a restart: the 500 even ones (500 back at its place), the 200 never
    // leased, then the new delta for record 2 — in queue order.
    let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
    let lease = q.lease("t", 5000, now_ms()).unwrap();
    let seqs: Vec<u64> = lease.items.iter().map(|l| l.queued.seq).collect();
    let mut want: Vec<u64> = (2..=1000).step_by(2).collect();
    want.extend(1001..=1200);
    // Record 2's second delta waits behind its first: not in this lease.
    assert_eq!(seqs, want);
    let merged = lease.items.iter().find(|l| l.queued.seq == 1100).unwrap();
    assert_eq!(merged.queued.delta.set.get("w"), Some(&json!(1)));
    let counts = q.counts().unwrap();
    assert_eq!(counts[0].pending + counts[0].in_flight, 701);
    assert_eq!(counts[0].delivered, 500);
    q.ack("t", &seqs).unwrap();
    let last = q.lease("t", 10, now_ms()).unwrap();
    assert_eq!(last.items.len(), 1);
    assert_eq!(last.items[0].queued.seq, 1201);
    assert_eq!(last.items[0].queued.record.key, "2");
    q.ack("t", &[1201]).unwrap();
    q.commit().unwrap();
    assert_eq!(chunk_count(&q, "t"), 0);
    assert_eq!(q.pending_bytes(), 0);
}

/// A queue written by version 1 kept the coalescing index under 'i' keys: after
/// an upgrade the waiting delta still absorbs the record's next change.
#[test]
fn a_sled_queue_of_version_1_moves_into_redb_and_its_index_into_the_record_entries() {
    let dir = tempfile::tempdir().unwrap();
    let record = RecordId::new("permits", "1");
    let state = crate::diff::flatten(json!({"a": 1}).as_object().unwrap(), 8).unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("hms").unwrap();
        let delta = codec::encode_queued(&QueuedDelta {
            seq: 1,
            record: record.clone(),
            delta: Delta {
                op: Op::Create,
                set: state.clone(),
                unset: Default::default(),
            },
            attempts: 0,
            not_before_ms: 0,
            queued_at_ms: 1,
            last_error: None,
        });
        let counters = Counters {
            next_seq: 1,
            pending: 1,
            pending_bytes: delta.len() as u64,
            dead: 0,
            delivered: 0,
        };
        tree.insert(snapshot_key(&record), codec::encode_state_v1(&state))
            .unwrap();
        tree.insert(pending_key("t", 1), delta).unwrap();
        tree.insert(index_key("t", &record), &1u64.to_be_bytes())
            .unwrap();
        tree.insert(counters_key("t"), codec::encode_counters(&counters))
            .unwrap();
        db.flush().unwrap();
    }
    // sled's background threads let go of its file lock a moment after the drop.
    let mut tries = 0;
    let mut q = loop {
        match Queue::open(dir.path(), 8, vec![spec("t")]) {
            Err(QueueError::SledMigrate { .. }) if tries < 200 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other.unwrap(),
        }
    };
    let reader = q.store.reader().unwrap();
    assert_eq!(reader.scan_prefix(b"i").unwrap().count(), 0);
    drop(reader);
    // The sled files went aside, whole; the queue now lives in queue.redb.
    assert!(!migrate::has_sled(dir.path()));
    let backup = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("sled-backup-"))
        .expect("a sled-backup folder");
    assert!(backup.path().join("db").is_file() && backup.path().join("conf").is_file());
    q.ingest(&[change("1", json!({"a": 2}))]).unwrap();
    let lease = q.lease("t", 10, now_ms()).unwrap();
    assert_eq!(lease.items.len(), 1, "merged into the waiting delta");
    let item = &lease.items[0].queued;
    assert_eq!((item.seq, item.delta.op), (1, Op::Create));
    assert_eq!(item.delta.set.get("a"), Some(&json!(2)));
    assert_eq!(
        q.snapshot(&record).unwrap().unwrap().get("a"),
        Some(&json!(2))
    );
}

/// A panic on the writer thread must not leave callers waiting for answers that
/// never come: they get an error at once, and the daemon learns of it (and exits).
#[test]
fn a_panic_in_the_queue_writer_answers_every_caller_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
    let (handle, thread) = handle::QueueHandle::spawn(q);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let boom = handle.call(|_| -> Result<(), QueueError> { panic!("a bug in the queue") });
        let later = handle.ingest(change("1", json!({"a": 1})));
        let (boom, later) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            tokio::join!(boom, later)
        })
        .await
        .expect("answers come, they do not hang");
        assert!(matches!(boom, Err(QueueError::CommitFailed(_))), "{boom:?}");
        assert!(later.is_err(), "{later:?}");
        tokio::time::timeout(std::time::Duration::from_secs(10), handle.writer_panicked())
            .await
            .expect("the daemon is told");
    });
    thread.join().expect("the thread itself ends cleanly");
}

/// `recover` on a whole queue keeps every record, delta and dead letter, with
/// the same counters, and keeps the old file aside.
#[test]
fn recover_copies_a_whole_queue_with_its_counters() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
        for k in 0..700 {
            q.ingest(&[change(&k.to_string(), json!({"a": k}))])
                .unwrap();
        }
        let lease = q.lease("t", 2, now_ms()).unwrap();
        q.dead_letter("t", lease.items[0].queued.seq, "refused")
            .unwrap();
        q.ack("t", &[lease.items[1].queued.seq]).unwrap();
        q.commit().unwrap();
    }
    let report = recover::recover(dir.path(), 8).unwrap();
    assert!(report.lost.is_empty(), "{:?}", report.lost);
    assert!(report.open_error.is_none());
    assert_eq!(
        (report.records, report.pending, report.dead_letters),
        (700, 698, 1)
    );
    assert!(report.damaged.as_ref().unwrap().is_file());
    let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
    let counts = &q.counts().unwrap()[0];
    assert_eq!((counts.pending, counts.dead, counts.delivered), (698, 1, 1));
    // The dead letter still holds its record; the rest flows.
    q.ingest(&[change("0", json!({"a": "new"}))]).unwrap();
    let lease = q.lease("t", 1000, now_ms()).unwrap();
    assert_eq!(lease.items.len(), 698);
    assert!(lease.items.iter().all(|l| l.queued.record.key != "0"));
    assert!(q.dead_get("t:1").unwrap().1.held.is_some());
}

/// `tests/fixtures/redb-state-v0.2.tar.gz` is a `queue.redb` written by this
/// version (the 0.1 fixture after its upgrade: permit 123 delivered, four deltas
/// pending). A newer redb or codec must still read it, or come with a migration.
#[test]
fn a_queue_file_of_version_0_2_still_opens_with_its_deltas_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/redb-state-v0.2.tar.gz");
    let untar = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(untar.success());
    let housing = TargetSpec {
        name: "housing".into(),
        collections: vec!["permits".into()],
        fields: None,
    };
    let mut q = Queue::open(dir.path(), 8, vec![housing]).unwrap();
    let counts = &q.counts().unwrap()[0];
    assert_eq!((counts.pending, counts.delivered, counts.dead), (4, 1, 0));
    let lease = q.lease("housing", 10, now_ms()).unwrap();
    let got: Vec<(u64, &str, Op)> = lease
        .items
        .iter()
        .map(|l| {
            (
                l.queued.seq,
                l.queued.record.key.as_str(),
                l.queued.delta.op,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (2, "7001", Op::Create),
            (3, "7002", Op::Create),
            (4, "7003", Op::Create),
            (5, "123", Op::Update)
        ]
    );
    let state = q
        .snapshot(&RecordId::new("permits", "123"))
        .unwrap()
        .unwrap();
    assert_eq!(state.get("status"), Some(&json!("APPROVED")));
}

/// A snapshot file taken in parts across a restart: a part is never queued
/// twice, the records it holds are never deleted, the others are, and the marks
/// and progress go away at the end.
#[test]
fn a_snapshot_in_parts_resumes_after_a_restart_and_deletes_only_what_it_lacks() {
    use super::codec::FilePhase;
    use super::files::FileRef;
    let dir = tempfile::tempdir().unwrap();
    let doc = |k: usize, v: &str| {
        crate::diff::flatten(json!({"id": k, "v": v}).as_object().unwrap(), 8).unwrap()
    };
    let rows = |from: usize, to: usize, v: &str| -> Vec<Change> {
        (from..to)
            .map(|k| Change {
                record: RecordId::new("permits", k.to_string()),
                doc: Some(doc(k, v)),
            })
            .collect()
    };
    let file = FileRef {
        dir: "/in".into(),
        name: "export.csv".into(),
        identity: (1, 2, 3, 4),
    };
    {
        let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
        q.ingest(&[ChangeSet {
            changes: rows(0, 10, "old"),
            full_collections: vec![],
        }])
        .unwrap();
        assert!(q.file_progress(&file).unwrap().is_none());
        assert!(q.begin_file(&file, Some("permits"), 100).unwrap());
        q.ingest_part(&file, 0, &rows(5, 10, "old"), true).unwrap();
        q.commit().unwrap();
    }
    let mut q = Queue::open(dir.path(), 8, vec![spec("t")]).unwrap();
    let p = q.file_progress(&file).unwrap().unwrap();
    assert_eq!((p.rows_done, p.phase), (5, FilePhase::Ingest));
    // The same part again is refused, not counted twice.
    assert!(matches!(
        q.ingest_part(&file, 0, &rows(5, 10, "old"), true),
        Err(QueueError::FileProgress(_))
    ));
    // Another file under the same name is a different file.
    let other = FileRef {
        identity: (1, 2, 3, 5),
        ..file.clone()
    };
    assert!(q.file_progress(&other).unwrap().is_none());
    q.ingest_part(&file, 5, &rows(10, 15, "new"), true).unwrap();
    q.file_ingested(&file, true).unwrap();
    while !q.snapshot_deletes(&file, "permits", 3).unwrap().1 {}
    while !q.clear_marks(&file, "permits", 3).unwrap() {}
    assert_eq!(
        q.file_progress(&file).unwrap().unwrap().phase,
        FilePhase::Done
    );
    q.forget_file(&file).unwrap();
    assert!(q.file_progress(&file).unwrap().is_none());
    let reader = q.store.reader().unwrap();
    assert_eq!(
        reader.scan_prefix(b"g").unwrap().count(),
        0,
        "marks removed"
    );
    drop(reader);
    for k in 0..15 {
        let state = q
            .snapshot(&RecordId::new("permits", k.to_string()))
            .unwrap();
        assert_eq!(state.is_some(), k >= 5, "record {k}");
    }
    let lease = q.lease("t", 100, now_ms()).unwrap();
    let deletes: Vec<&str> = lease
        .items
        .iter()
        .filter(|l| l.queued.delta.op == Op::Delete)
        .map(|l| l.queued.record.key.as_str())
        .collect();
    assert!(
        deletes.is_empty(),
        "creates and deletes of unsent records cancel out: {deletes:?}"
    );
    // 0..4 were created and deleted before anything was sent: nothing goes out
    // for them; 5..9 once (created), 10..14 once (created).
    let keys: Vec<&str> = lease
        .items
        .iter()
        .map(|l| l.queued.record.key.as_str())
        .collect();
    assert_eq!(
        keys,
        ["5", "6", "7", "8", "9", "10", "11", "12", "13", "14"]
    );
}
