//! Journal commit mode against files mode, whatever mode the rest of the suite runs in: the live mirror writes
//! the same tree, a lock-free tree reader never sees a hole or a torn file at or below the ledger, and the tree is
//! re-derived from the journal for every position after the mirror's last durable checkpoint.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use opossum::journal::{journal_dir, Marks};
use opossum::model::{Event, Query, QueryItem, ReadOptions, Tag};
use opossum::store::{CommitMode, Durability, MirrorMode, Store, StoreOptions};

use super::{backend, cond};

pub(super) fn mode(commit: CommitMode, mirror: MirrorMode) -> StoreOptions {
    StoreOptions { commit, mirror, durability: Durability::Fsync, io: Some(backend()), ..StoreOptions::default() }
}

/// An event with a fixed timestamp, so two stores write the same bytes.
fn fixed(n: u64, ty: &str, tags: &[(&str, &str)]) -> Event {
    let mut e = Event::new(
        ty,
        &format!(r#"{{ "n": {n}, "s": "Zoë <&>" }}"#),
        tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect(),
    )
    .unwrap();
    e.metadata = Some(
        serde_json::value::RawValue::from_string(format!(
            r#"{{"timestamp":"2026-11-29T12:00:{:02}.0000000+00:00","c":{n}}}"#,
            n % 60
        ))
        .unwrap(),
    );
    e
}

fn workload(store: &Store) {
    for n in 0..40u64 {
        let tag = format!("{}", n % 7);
        let events = (0..1 + n % 3)
            .map(|i| fixed(n * 10 + i, if n % 2 == 0 { "A" } else { "B x" }, &[("k", &tag), ("all", "1")]))
            .collect();
        let condition =
            (n % 5 == 0).then(|| cond(Query::items(vec![QueryItem::types(&["Never"])]).unwrap(), None)).flatten();
        store.append(events, condition).unwrap();
    }
}

/// Every file of the tree (events, index files, ledger) with its bytes, relative to the store root.
pub(super) fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(".ledger".to_string(), std::fs::read(root.join(".ledger")).unwrap())];
    for dir in ["events", "Indices/EventType", "Indices/Tags"] {
        let mut names: Vec<String> =
            std::fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        for name in names {
            let rel = format!("{dir}/{name}");
            out.push((rel.clone(), std::fs::read(root.join(&rel)).unwrap()));
        }
    }
    out
}

#[test]
#[cfg_attr(
    windows,
    ignore = "flaky under Wine 8 (1 of 2 runs: the mirror stopped before the close caught up); suspected the same \
              Wine gap as concurrent_writers_from_many_threads_lose_nothing: a rename over a file another thread \
              holds open fails with ERROR_ACCESS_DENIED"
)]
fn after_a_clean_stop_the_live_mirror_is_byte_for_byte_what_files_mode_writes() {
    let files_dir = tempfile::tempdir().unwrap();
    let journal_dir_ = tempfile::tempdir().unwrap();
    let files = Store::open(files_dir.path(), mode(CommitMode::Files, MirrorMode::Live)).unwrap();
    let journal = Store::open(journal_dir_.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    workload(&files);
    workload(&journal);
    assert_eq!(files.head(), journal.head());
    let all = |s: &Store| s.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
    let (a, b) = (all(&files), all(&journal));
    assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap(), "reads differ between modes");
    files.close().unwrap();
    journal.close().unwrap();
    let (a, b) = (tree(files_dir.path()), tree(journal_dir_.path()));
    assert_eq!(a.len(), b.len(), "{:?}", b.iter().map(|f| &f.0).collect::<Vec<_>>());
    for ((name_a, bytes_a), (name_b, bytes_b)) in a.iter().zip(&b) {
        assert_eq!(name_a, name_b);
        assert!(
            bytes_a == bytes_b,
            "{name_a} differs: {:?} vs {:?}",
            String::from_utf8_lossy(bytes_a),
            String::from_utf8_lossy(bytes_b)
        );
    }
    assert!(journal_dir(journal_dir_.path()).join("00000000000000000001.seg").exists());
}

#[test]
fn a_lockless_tree_reader_never_finds_a_position_at_or_below_the_ledger_missing_or_torn() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let root = dir.path().to_path_buf();
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut checked = 0u64;
            while !done.load(Ordering::Relaxed) {
                // As .NET Opossum reads: the ledger first, then event files up to it.
                let Ok(bytes) = std::fs::read(root.join(".ledger")) else { continue };
                let ledger = opossum::format::Ledger::decode(&bytes).unwrap().map_or(0, |l| l.last_sequence_position);
                for p in checked.saturating_sub(3).max(1)..=ledger {
                    let path = root.join("events").join(opossum::format::event_file_name(p));
                    let file = std::fs::read(&path)
                        .unwrap_or_else(|e| panic!("{} missing at ledger {ledger}: {e}", path.display()));
                    let event =
                        opossum::format::decode_event(&file).unwrap_or_else(|e| panic!("{} torn: {e}", path.display()));
                    assert_eq!(event.position, p);
                }
                checked = checked.max(ledger);
            }
            checked
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in 0..60u64 {
                    store.append(vec![fixed(n, "A", &[("t", &t.to_string())])], None).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    // A bulk append within a batch of the lag bound: the mirror writes its event files in paced steps and replaces
    // the ledger once per batch, after the batch's last step.
    let bulk = opossum::limits::MIRROR_LAG_EVENTS_MAX - opossum::limits::MIRROR_BATCH_EVENTS_MAX as u64 / 2;
    store.append((0..bulk).map(|n| fixed(n, "B", &[("b", &(n % 5).to_string())])).collect(), None).unwrap();
    // The mirror follows on its own thread: let the reader watch it catch up too.
    store.sync().unwrap();
    done.store(true, Ordering::Relaxed);
    let checked = reader.join().unwrap();
    assert!(checked > 0, "the reader saw no ledger at all");
    assert_eq!(store.head(), 240 + bulk);
}

#[test]
fn the_tree_is_rederived_from_the_journal_after_the_mirrors_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    workload(&store);
    let head = store.head();
    store.close().unwrap();
    let expected = tree(dir.path());
    // What a crash after the last checkpoint at position 5 could leave: files missing, torn, a ledger behind.
    let marks = journal_dir(dir.path()).join("marks");
    std::fs::write(&marks, Marks { durable_head: head, mirror_durable: 5 }.encode()).unwrap();
    std::fs::remove_file(dir.path().join("events/0000000009.json")).unwrap();
    std::fs::write(dir.path().join("events/0000000012.json"), b"{\"event\":{\"ev").unwrap();
    std::fs::remove_file(dir.path().join("Indices/Tags/k_3.json")).unwrap();
    std::fs::write(dir.path().join(".ledger"), br#"{"LastSequencePosition":7,"EventCount":7}"#).unwrap();
    // An event file after the checkpoint that the crash left whole is compared, not written again (Linux: one
    // `syncfs` makes it durable; elsewhere each file is fsynced as it is written, so all are).
    let intact = dir.path().join("events/0000000010.json");
    let inode = |path: &Path| {
        #[cfg(unix)]
        return std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap());
        #[cfg(not(unix))]
        return {
            let _ = path;
            0u64
        };
    };
    let intact_before = inode(&intact);
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    assert_eq!(store.head(), head);
    store.close().unwrap();
    assert!(tree(dir.path()) == expected, "the tree was not re-derived");
    if cfg!(target_os = "linux") {
        assert_eq!(inode(&intact), intact_before, "an intact event file was written again");
    }
    // The mirror off writes no tree for new events, and the journal still serves them.
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Off)).unwrap();
    store.append(vec![fixed(1, "Late", &[])], None).unwrap();
    store.close().unwrap();
    assert!(!dir.path().join(format!("events/{}", opossum::format::event_file_name(head + 1))).exists());
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    assert_eq!(
        store
            .read_to_vec(&Query::items(vec![QueryItem::types(&["Late"])]).unwrap(), ReadOptions::default())
            .unwrap()
            .len(),
        1
    );
    store.close().unwrap();
    assert!(
        dir.path().join(format!("events/{}", opossum::format::event_file_name(head + 1))).exists(),
        "live mirror materialises what off skipped"
    );
}

/// What `workload`'s store answers: every event, and the type and tag queries, forwards, backwards and limited, as
/// JSON (position, type, tags, data, metadata), so two stores (or two modes) compare whole.
fn answers(store: &Store) -> Vec<String> {
    let queries = [
        Query::All,
        Query::items(vec![QueryItem::types(&["A"])]).unwrap(),
        Query::items(vec![QueryItem::types(&["B x"])]).unwrap(),
        Query::items(vec![QueryItem::tags(&[("all", "1")])]).unwrap(),
        Query::items(vec![QueryItem::tags(&[("k", "3")]), QueryItem::tags(&[("k", "5")])]).unwrap(),
        Query::items((0..7).map(|k| QueryItem::tags(&[("k", &k.to_string())])).collect()).unwrap(),
    ];
    let mut out = Vec::new();
    for query in &queries {
        for options in [
            ReadOptions::default(),
            ReadOptions { backwards: true, limit: Some(5), ..ReadOptions::default() },
            ReadOptions { after: Some(7), before: Some(60), ..ReadOptions::default() },
        ] {
            let events = store.read_to_vec(query, options).unwrap();
            out.push(serde_json::to_string(&events).unwrap());
        }
    }
    for k in 0..7 {
        let query = Query::items(vec![QueryItem::tags(&[("k", &k.to_string())])]).unwrap();
        out.push(serde_json::to_string(&store.read_to_vec(&query, ReadOptions::default()).unwrap()).unwrap());
    }
    out
}

/// The journal's "mirror durable through" mark (0 before any is recorded).
fn mirror_durable(root: &Path) -> u64 {
    match std::fs::read(journal_dir(root).join("marks")) {
        Ok(bytes) => Marks::decode(&bytes).unwrap().mirror_durable,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => panic!("{e}"),
    }
}

/// A journal-mode run with the mirror live that did not stop cleanly leaves the tree after the journal's
/// "mirror durable through" mark unsynced: after a machine crash an index file a checkpoint wrote into a recycled
/// inode may hold another index file's old bytes, event files may be torn or missing, and the ledger may claim them.
/// A `--commit files` open of that store repairs the tree from the journal first (as a journal-mode open and clean
/// stop would: byte for byte the tree of the clean stop, the mark at the head) and serves exactly the journal's
/// events.
#[test]
fn a_files_mode_open_after_a_journal_run_that_did_not_stop_cleanly_repairs_the_tree_from_the_journal() {
    let clean = tempfile::tempdir().unwrap();
    let store = Store::open(clean.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    workload(&store);
    let head = store.head();
    let expected = answers(&store);
    store.close().unwrap();
    let expected_tree = tree(clean.path());
    // What a machine crash after the mirror's checkpoint through 5 may leave, each on a copy of the store:
    // index files that checkpoints wrote into recycled inodes holding other index files' old bytes (files mode
    // would answer from them, silently wrong); event files torn or missing that the ledger claims.
    let index_files_of_others = |root: &Path| {
        let path = |rel: &str| root.join(rel);
        std::fs::write(path("Indices/Tags/k_3.json"), std::fs::read(path("Indices/Tags/k_5.json")).unwrap()).unwrap();
        std::fs::write(path("Indices/EventType/A.json"), std::fs::read(path("Indices/Tags/k_6.json")).unwrap())
            .unwrap();
    };
    let event_files_torn_and_missing = |root: &Path| {
        std::fs::write(root.join("events/0000000012.json"), b"").unwrap();
        std::fs::remove_file(root.join("events/0000000020.json")).unwrap();
    };
    type Damage<'a> = (&'a str, &'a dyn Fn(&Path));
    let damages: [Damage<'_>; 2] =
        [("index files", &index_files_of_others), ("event files", &event_files_torn_and_missing)];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        super::copy_dir(clean.path(), dir.path());
        std::fs::write(journal_dir(dir.path()).join("marks"), Marks { durable_head: head, mirror_durable: 5 }.encode())
            .unwrap();
        damage(dir.path());
        let ledger = opossum::format::Ledger::decode(&std::fs::read(dir.path().join(".ledger")).unwrap()).unwrap();
        assert_eq!(ledger.map(|l| l.last_sequence_position), Some(head));

        let store = Store::open(dir.path(), mode(CommitMode::Files, MirrorMode::Live)).unwrap();
        assert_eq!(store.head(), head);
        assert!(answers(&store) == expected, "{what}: files mode served a tree the journal does not vouch for");
        store.close().unwrap();
        assert_eq!(mirror_durable(dir.path()), head, "{what}: the repair records the tree durable through the head");
        assert!(tree(dir.path()) == expected_tree, "{what}: the tree is not the clean stop's");
        // Files mode goes on as usual: appends to the tree only, and the next open repairs nothing.
        let store = Store::open(dir.path(), mode(CommitMode::Files, MirrorMode::Live)).unwrap();
        store.append(vec![fixed(1_000, "A", &[("k", "3")])], None).unwrap();
        store.close().unwrap();
        let store = Store::open(dir.path(), mode(CommitMode::Files, MirrorMode::Live)).unwrap();
        assert_eq!(store.head(), head + 1);
        store.close().unwrap();
        assert_eq!(mirror_durable(dir.path()), head);
    }
}

/// A journal-mode run that did not stop cleanly (the tree after the mark unsynced), then events a .NET writer
/// appended to the tree while the daemon was stopped: the journal-mode open imports them, and still re-derives the
/// tree after the old mark (the import vouches for the appended files only, not for what the crash left before them).
#[test]
fn an_import_after_a_journal_run_that_did_not_stop_cleanly_still_rederives_the_tree_after_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    workload(&store);
    let head = store.head();
    store.close().unwrap();
    // The .NET writer's append (files mode writes the tree as .NET does).
    let store = Store::open(dir.path(), mode(CommitMode::Files, MirrorMode::Live)).unwrap();
    store.append(vec![fixed(1_000, "A", &[("k", "3")])], None).unwrap();
    store.close().unwrap();
    let expected_tree = tree(dir.path());
    std::fs::write(journal_dir(dir.path()).join("marks"), Marks { durable_head: head, mirror_durable: 5 }.encode())
        .unwrap();
    let path = |rel: &str| dir.path().join(rel);
    std::fs::write(path("Indices/Tags/k_4.json"), std::fs::read(path("Indices/Tags/k_5.json")).unwrap()).unwrap();
    std::fs::write(path("events/0000000012.json"), b"").unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    assert_eq!(store.head(), head + 1);
    store.close().unwrap();
    assert!(tree(dir.path()) == expected_tree, "the tree before the imported events was not re-derived");
    assert_eq!(mirror_durable(dir.path()), head + 1);
}

/// After a clean journal-mode stop (the mark at the journal's head), files-mode appends go to the tree only (files
/// mode never writes the journal): a later files-mode open neither refuses the store nor repairs the tree (the journal
/// is left as it was), and journal mode imports the appends.
#[test]
fn after_a_clean_journal_stop_files_mode_appends_and_reopens_without_touching_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    workload(&store);
    let head = store.head();
    store.close().unwrap();
    assert_eq!(mirror_durable(dir.path()), head);
    let journal_files = || {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(journal_dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap()))
            .collect();
        files.sort();
        files
    };
    let journal_before = journal_files();
    for round in 0..2u64 {
        let store = Store::open(dir.path(), mode(CommitMode::Files, MirrorMode::Live)).unwrap();
        assert_eq!(store.head(), head + round);
        store.append(vec![fixed(round, "Files", &[("k", "3")])], None).unwrap();
        store.close().unwrap();
        assert!(journal_files() == journal_before, "a files-mode open or append wrote the journal");
    }
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    let files = Query::items(vec![QueryItem::types(&["Files"])]).unwrap();
    let found = store.read_to_vec(&files, ReadOptions::default()).unwrap();
    assert_eq!(found.iter().map(|e| e.position).collect::<Vec<_>>(), [head + 1, head + 2]);
    store.close().unwrap();
    assert_eq!(mirror_durable(dir.path()), head + 2);
}

/// `--durability none` makes nothing durable while the store runs, so the mirror's checkpoints must not record
/// "mirror durable through P" either: a machine crash may keep that mark and lose what the checkpoint wrote (an index
/// file written into a recycled inode, holding another index file's old bytes), and the next open would trust the
/// tree through the mark: wrong answers. The state such a crash leaves is the store's files while it runs (copied),
/// with that index file damaged: the open repairs it, and a clean stop records the mark (one sync at close).
#[test]
fn under_durability_none_a_crash_after_a_checkpoint_never_leaves_a_tree_the_mark_vouches_for_wrongly() {
    let dir = tempfile::tempdir().unwrap();
    let none = || StoreOptions { durability: Durability::None, ..mode(CommitMode::Journal, MirrorMode::Live) };
    let store = Store::open(dir.path(), none()).unwrap();
    workload(&store);
    let head = store.head();
    // A mirror checkpoint through the head: index files written (not synced, under `none`).
    assert_eq!(store.sync().unwrap(), head);
    let expected = answers(&store);
    let crashed = tempfile::tempdir().unwrap();
    // As a crash leaves it, without the lock files: a crashed process holds no lock, and on Windows an open
    // store's lock files are opened without sharing, so they cannot be read.
    super::copy_dir_except(dir.path(), crashed.path(), &[opossum::format::LOCK_FILE, opossum::format::OWNER_LOCK_FILE]);
    store.close().unwrap();
    // A clean stop under none syncs the tree once and records it durable, on Linux (`syncfs`); elsewhere the mark
    // never moves under none, and every open re-checks the tree.
    let marked_at_stop = |root: &std::path::Path| {
        let mark = mirror_durable(root);
        if cfg!(target_os = "linux") {
            assert_eq!(mark, head, "a clean stop under none records the tree durable");
        } else {
            assert!(mark < head, "the mark moved under none without a sync: {mark}");
        }
    };
    marked_at_stop(dir.path());
    let expected_tree = tree(dir.path());
    let path = |rel: &str| crashed.path().join(rel);
    std::fs::write(path("Indices/Tags/k_3.json"), std::fs::read(path("Indices/Tags/k_5.json")).unwrap()).unwrap();

    let store = Store::open(crashed.path(), none()).unwrap();
    assert!(answers(&store) == expected);
    store.close().unwrap();
    marked_at_stop(crashed.path());
    assert!(tree(crashed.path()) == expected_tree, "the tree was not repaired");
    let store = Store::open(crashed.path(), mode(CommitMode::Files, MirrorMode::Live)).unwrap();
    assert!(answers(&store) == expected, "files mode serves wrong answers");
    store.close().unwrap();
}

#[test]
fn files_mode_brings_a_tree_behind_its_journal_up_and_journal_mode_imports_what_files_mode_appended() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Off)).unwrap();
    store.append(vec![fixed(1, "A", &[])], None).unwrap();
    store.close().unwrap();
    assert!(!dir.path().join("events/0000000001.json").exists(), "the mirror off writes no tree");
    // Files mode brings the tree up to the journal (as an open with the mirror live would), then appends to the
    // tree only; journal mode imports that.
    let store = Store::open(dir.path(), mode(CommitMode::Files, MirrorMode::Live)).unwrap();
    assert!(dir.path().join("events/0000000001.json").exists());
    assert_eq!(store.head(), 1);
    store.append(vec![fixed(2, "B", &[("k", "v")])], None).unwrap();
    store.close().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Off)).unwrap();
    let all = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
    assert_eq!(all.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), ["A", "B"]);
    assert_eq!(all[1].tags, vec![Tag::new("k", "v")]);
    // The imported event is in the index (loaded from the journal before the import, which added event 2).
    for query in [QueryItem::types(&["B"]), QueryItem::tags(&[("k", "v")])] {
        let found = store.read_to_vec(&Query::items(vec![query]).unwrap(), ReadOptions::default()).unwrap();
        assert_eq!(found.iter().map(|e| e.position).collect::<Vec<_>>(), [2]);
    }
}

#[test]
fn sync_waits_for_a_mirror_checkpoint_that_covers_the_head_and_stats_report_the_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    workload(&store);
    let head = store.sync().unwrap();
    assert_eq!(head, store.head());
    let stats = store.stats();
    assert_eq!((stats.mirror_head, stats.mirror_durable, stats.mirror_lag), (head, head, 0), "{stats:?}");
    assert!(stats.mirror_checkpoints >= 1, "{stats:?}");
    assert!(!stats.mirror_failed);
    // What the checkpoint recorded, and what it covers: the ledger and the index files, while the store is open.
    let marks = Marks::decode(&std::fs::read(journal_dir(dir.path()).join("marks")).unwrap()).unwrap();
    assert_eq!(marks.mirror_durable, head);
    let ledger = opossum::format::Ledger::decode(&std::fs::read(dir.path().join(".ledger")).unwrap()).unwrap();
    assert_eq!(ledger.map(|l| l.last_sequence_position), Some(head));
    let type_a = opossum::format::decode_index(&std::fs::read(dir.path().join("Indices/EventType/A.json")).unwrap());
    assert_eq!(type_a.unwrap().last().copied(), Some(head - 1), "the type index file of the last A event");
    store.close().unwrap();
}

/// Makes every later event file write of the mirror fail: the events directory becomes a file. Returns a guard
/// that puts it back.
fn break_the_events_directory(root: &Path) -> impl FnOnce() {
    let events = root.join("events");
    let aside = root.join("events.aside");
    std::fs::rename(&events, &aside).unwrap();
    std::fs::write(&events, b"not a directory").unwrap();
    move || {
        std::fs::remove_file(&events).unwrap();
        std::fs::rename(&aside, &events).unwrap();
    }
}

#[test]
fn a_failed_mirror_stops_mirroring_appends_go_on_and_the_next_open_rederives_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    store.append(vec![fixed(1, "A", &[])], None).unwrap();
    store.sync().unwrap();
    let repair = break_the_events_directory(dir.path());
    for n in 0..50 {
        store.append(vec![fixed(n, "B", &[("k", "v")])], None).unwrap();
    }
    let head = store.head();
    // The mirror is asynchronous: it meets the broken directory at its next batch (at most
    // `MIRROR_BATCH_INTERVAL_MIN` after the appends; the appends may take less than that on a fast disk).
    let started = std::time::Instant::now();
    while !store.stats().mirror_failed && started.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let stats = store.stats();
    assert!(stats.mirror_failed, "{stats:?}");
    assert_eq!(stats.mirror_durable, 1);
    // Reads come from the journal; sync does not wait for a mirror that stopped.
    assert_eq!(store.read_to_vec(&Query::All, ReadOptions::default()).unwrap().len(), 51);
    assert_eq!(store.sync().unwrap(), head);
    store.close().unwrap();
    repair();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    let stats = store.stats();
    assert_eq!((stats.mirror_head, stats.mirror_durable, stats.mirror_failed), (head, head, false));
    store.close().unwrap();
    let ledger = opossum::format::Ledger::decode(&std::fs::read(dir.path().join(".ledger")).unwrap()).unwrap();
    assert_eq!(ledger.map(|l| l.last_sequence_position), Some(head));
    for p in 1..=head {
        assert!(dir.path().join("events").join(opossum::format::event_file_name(p)).exists(), "position {p}");
    }
    let tagged = opossum::format::decode_index(&std::fs::read(dir.path().join("Indices/Tags/k_v.json")).unwrap());
    assert_eq!(tagged.unwrap(), (2..=head).collect::<Vec<_>>());
}

#[test]
fn once_the_mirror_failed_appends_no_longer_wait_for_it_past_the_lag_bound() {
    use opossum::limits::{APPEND_EVENTS_MAX, MIRROR_LAG_EVENTS_MAX};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    let _broken = break_the_events_directory(dir.path());
    let batches = MIRROR_LAG_EVENTS_MAX as usize / APPEND_EVENTS_MAX + 2;
    for b in 0..batches {
        let batch = (0..APPEND_EVENTS_MAX as u64).map(|n| fixed(n, "Bulk", &[("b", &b.to_string())])).collect();
        store.append(batch, None).unwrap();
    }
    let stats = store.stats();
    assert!(stats.mirror_failed, "{stats:?}");
    assert_eq!(stats.head, (batches * APPEND_EVENTS_MAX) as u64);
    assert!(stats.mirror_lag > MIRROR_LAG_EVENTS_MAX, "{stats:?}");
    store.close().unwrap();
}

/// What a test backend ([`HookedIo`]) does before each write it forwards: `files`, and whether they go through the
/// trash.
trait BeforeWrite: Send + Sync {
    fn before_write(&self, files: &[opossum::io::FileWrite<'_>], through_trash: bool);
}

/// The test's real backend (`backend()`), calling its hook before every write it forwards; derefs to the hook.
struct HookedIo<H> {
    inner: Arc<dyn opossum::io::BatchIo>,
    hook: H,
}

impl<H> std::ops::Deref for HookedIo<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hook
    }
}

impl<H: BeforeWrite> opossum::io::BatchIo for HookedIo<H> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn read_files(&self, paths: &[std::path::PathBuf]) -> Vec<Result<Vec<u8>, opossum::io::IoError>> {
        self.inner.read_files(paths)
    }
    fn read_extents(&self, extents: &[opossum::io::Extent<'_>]) -> Vec<Result<Vec<u8>, opossum::io::IoError>> {
        self.inner.read_extents(extents)
    }
    fn read_extents_cached(
        &self,
        extents: &[opossum::io::Extent<'_>],
    ) -> Option<Vec<Result<Vec<u8>, opossum::io::IoError>>> {
        self.inner.read_extents_cached(extents)
    }
    fn write_files(&self, files: &[opossum::io::FileWrite<'_>], durable: bool) -> Result<(), opossum::io::IoError> {
        self.hook.before_write(files, false);
        self.inner.write_files(files, durable)
    }
    fn write_files_with_trash(
        &self,
        files: &[opossum::io::FileWrite<'_>],
        durable: bool,
        trash: &Path,
    ) -> Result<(), opossum::io::IoError> {
        self.hook.before_write(files, true);
        self.inner.write_files_with_trash(files, durable, trash)
    }
    fn write_files_recycling(
        &self,
        files: &[opossum::io::FileWrite<'_>],
        trash: &Path,
        spares: &opossum::io::Spares,
    ) -> Result<(), opossum::io::IoError> {
        self.hook.before_write(files, true);
        self.inner.write_files_recycling(files, trash, spares)
    }
}

/// Writes of files in one directory (`gated_dir`: the event files, or the tag files) wait while the gate is shut (a
/// mirror that cannot keep up, a checkpoint that takes long).
struct Gate {
    gated_dir: &'static str,
    shut: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    /// A write waits at the gate (or did).
    waiting: AtomicBool,
    /// Writes through the trash in `gated_dir`.
    trash_writes: std::sync::atomic::AtomicUsize,
}

impl Gate {
    fn open_gate(&self) {
        *self.shut.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.opened.notify_all();
    }
}

impl BeforeWrite for Gate {
    fn before_write(&self, files: &[opossum::io::FileWrite<'_>], through_trash: bool) {
        if !files.iter().any(|f| f.path.parent().is_some_and(|d| d.ends_with(self.gated_dir))) {
            return;
        }
        if through_trash {
            self.trash_writes.fetch_add(1, Ordering::SeqCst);
        }
        let mut shut = self.shut.lock().unwrap();
        self.waiting.store(*shut, Ordering::SeqCst);
        while *shut {
            shut = self.opened.wait(shut).unwrap();
        }
    }
}

/// The real backend with writes in `gated_dir` held at a gate, shut or not.
fn gated_backend(gated_dir: &'static str, shut: bool) -> Arc<HookedIo<Gate>> {
    let gate = Gate {
        gated_dir,
        shut: std::sync::Mutex::new(shut),
        opened: Default::default(),
        waiting: Default::default(),
        trash_writes: Default::default(),
    };
    Arc::new(HookedIo { inner: backend(), hook: gate })
}

/// Opens the gate when dropped, so a failing test does not leave the store's close waiting on it.
struct OpenOnDrop(Arc<HookedIo<Gate>>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open_gate();
    }
}

#[test]
fn appends_wait_for_a_mirror_that_falls_behind_by_the_lag_bound() {
    use opossum::limits::MIRROR_LAG_MAX;
    let dir = tempfile::tempdir().unwrap();
    let gated = gated_backend(opossum::format::EVENTS_DIR, true);
    let options = StoreOptions { io: Some(gated.clone()), ..mode(CommitMode::Journal, MirrorMode::Live) };
    let store = Arc::new(Store::open(dir.path(), options).unwrap());
    let _gate = OpenOnDrop(gated.clone());
    // The mirror cannot write this event; once it is older than the lag bound in time, the next append waits.
    store.append(vec![fixed(1, "A", &[])], None).unwrap();
    std::thread::sleep(MIRROR_LAG_MAX + std::time::Duration::from_millis(100));
    let appender = {
        let store = store.clone();
        std::thread::spawn(move || store.append(vec![fixed(2, "A", &[])], None).unwrap())
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let stats = store.stats();
    assert_eq!((stats.head, stats.mirror_head, stats.mirror_lag), (1, 0, 1), "{stats:?}");
    assert!(!appender.is_finished(), "an append went past the mirror's lag bound");
    gated.open_gate();
    assert_eq!(appender.join().unwrap().first, 2);
    assert!(store.stats().mirror_waits >= 1);
    assert_eq!(store.sync().unwrap(), 2);
    let stats = store.stats();
    assert_eq!((stats.mirror_head, stats.mirror_durable, stats.mirror_lag), (2, 2, 0), "{stats:?}");
}

/// A bulk load with a new tag per event dirties an index file per event; the checkpoints write them beside the
/// event files. When they cannot keep up (here: their tag files held at a gate), appends wait once the index files
/// still to write reach the bound (`MIRROR_INDEX_BACKLOG_FILES_MIN` before any checkpoint was measured), so a clean
/// stop's work stays bounded; they resume as the checkpoints write, and every tag's index file ends right.
#[test]
fn appends_wait_while_the_checkpoints_index_files_to_write_reach_their_bound() {
    use opossum::limits::{MIRROR_INDEX_BACKLOG_FILES_MIN, MIRROR_LAG_EVENTS_MAX};
    let dir = tempfile::tempdir().unwrap();
    let gated = gated_backend("Tags", true);
    // No fsyncs (the bound is the same): elsewhere than Linux the mirror would fsync every event file.
    let options = StoreOptions {
        io: Some(gated.clone()),
        durability: Durability::None,
        ..mode(CommitMode::Journal, MirrorMode::Live)
    };
    let store = Arc::new(Store::open(dir.path(), options).unwrap());
    let _gate = OpenOnDrop(gated.clone());
    // The writer may run up to the event lag bound ahead of the mirror, whose written events dirty the index files.
    let groups = (MIRROR_LAG_EVENTS_MAX + 2 * MIRROR_INDEX_BACKLOG_FILES_MIN) / 100;
    let appender = {
        let store = store.clone();
        std::thread::spawn(move || {
            for g in 0..groups {
                let events = (0..100).map(|i| g * 100 + i).map(|n| fixed(n, "A", &[("k", &n.to_string())])).collect();
                store.append(events, None).unwrap();
            }
        })
    };
    // The appender stops short of its last group, and stays stopped while the tag files cannot be written. (Stopped
    // = no append for 2 s with the mirror caught up; generous, so a thread the scheduler starves under Wine or a
    // loaded CI machine is not taken for one waiting at the bound.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut last = (0, std::time::Instant::now());
    loop {
        assert!(!appender.is_finished(), "every append went through with no index file written");
        let head = store.head();
        if head != last.0 {
            last = (head, std::time::Instant::now());
        } else if last.1.elapsed() >= std::time::Duration::from_secs(2) && store.stats().mirror_head == head {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the appends never stopped (head {head})");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let head = store.head();
    assert!(head >= MIRROR_INDEX_BACKLOG_FILES_MIN - 1 && head < groups * 100, "stopped at {head}");
    assert!(gated.hook.waiting.load(Ordering::SeqCst), "a checkpoint waits at the gate");
    gated.open_gate();
    appender.join().unwrap();
    assert!(store.stats().mirror_waits >= 1);
    assert_eq!(store.sync().unwrap(), groups * 100);
    for n in [0, head - 1, groups * 100 - 1] {
        let file = dir.path().join("Indices/Tags").join(format!("k_{n}.json"));
        let positions = opossum::format::decode_index(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(positions, vec![n + 1], "{}", file.display());
    }
}

/// Counts the ledger replacements written (`HookedIo`).
#[derive(Default)]
struct LedgerCount(std::sync::atomic::AtomicU64);

impl BeforeWrite for LedgerCount {
    fn before_write(&self, files: &[opossum::io::FileWrite<'_>], _: bool) {
        let ledgers = files.iter().filter(|f| f.path.file_name().is_some_and(|n| n == ".ledger")).count();
        self.0.fetch_add(ledgers as u64, Ordering::SeqCst);
    }
}

/// One append leaves the mirror within a batch of its lag bound, where it publishes its event files in small steps
/// (a waiting writer resumes after each): it still replaces the ledger once per batch of `MIRROR_BATCH_EVENTS_MAX`
/// events, not once per step (each replacement creates a file and frees one, a discard on some mounts), and the
/// tree ends complete.
#[test]
fn near_the_lag_bound_the_mirror_replaces_the_ledger_once_per_batch_not_once_per_paced_step() {
    use opossum::limits::{MIRROR_BATCH_EVENTS_MAX, MIRROR_LAG_EVENTS_MAX};
    let dir = tempfile::tempdir().unwrap();
    let counted = Arc::new(HookedIo { inner: backend(), hook: LedgerCount::default() });
    let options = StoreOptions { io: Some(counted.clone()), ..mode(CommitMode::Journal, MirrorMode::Live) };
    let store = Store::open(dir.path(), options).unwrap();
    let opened = counted.0.load(Ordering::SeqCst);
    // Within a batch of the bound, below it: one group, published at once, so the mirror sees it all at its first
    // batch.
    let events = MIRROR_LAG_EVENTS_MAX - MIRROR_BATCH_EVENTS_MAX as u64 / 2;
    store.append((0..events).map(|n| fixed(n, "A", &[("k", &(n % 7).to_string())])).collect(), None).unwrap();
    assert_eq!(store.sync().unwrap(), events);
    let ledgers = counted.0.load(Ordering::SeqCst) - opened;
    assert_eq!(ledgers, events.div_ceil(MIRROR_BATCH_EVENTS_MAX as u64), "ledger replacements for {events} events");
    let ledger = opossum::format::Ledger::decode(&std::fs::read(dir.path().join(".ledger")).unwrap()).unwrap();
    assert_eq!(ledger.map(|l| l.last_sequence_position), Some(events));
    for p in [1, MIRROR_BATCH_EVENTS_MAX as u64 + 1, events] {
        let file = std::fs::read(dir.path().join("events").join(opossum::format::event_file_name(p))).unwrap();
        assert_eq!(opossum::format::decode_event(&file).unwrap().position, p);
    }
    store.close().unwrap();
}

#[test]
fn a_checkpoint_writing_index_files_does_not_stop_the_mirror_writing_event_files_and_ledgers() {
    let dir = tempfile::tempdir().unwrap();
    let gated = gated_backend(opossum::format::TAG_INDEX_DIR, true);
    let options = StoreOptions { io: Some(gated.clone()), ..mode(CommitMode::Journal, MirrorMode::Live) };
    let store = Arc::new(Store::open(dir.path(), options).unwrap());
    let _gate = OpenOnDrop(gated.clone());
    store.append(vec![fixed(1, "A", &[("k", "1")])], None).unwrap();
    // A checkpoint through 1 starts and waits at its tag files.
    let syncer = {
        let store = store.clone();
        std::thread::spawn(move || store.sync().unwrap())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !gated.waiting.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "no checkpoint reached its tag files");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Meanwhile the mirror writes the event files and ledgers of later appends.
    for n in 2..=20 {
        store.append(vec![fixed(n, "A", &[("k", &n.to_string())])], None).unwrap();
    }
    while store.stats().mirror_head < 20 {
        assert!(std::time::Instant::now() < deadline, "the mirror stopped during a checkpoint: {:?}", store.stats());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let ledger = opossum::format::Ledger::decode(&std::fs::read(dir.path().join(".ledger")).unwrap()).unwrap();
    assert_eq!(ledger.map(|l| l.last_sequence_position), Some(20));
    assert!(dir.path().join("events").join(opossum::format::event_file_name(20)).exists());
    // Nothing is durable until the checkpoint has written its index files (and synced).
    let stats = store.stats();
    assert_eq!((stats.mirror_durable, stats.mirror_checkpoints), (0, 0), "{stats:?}");
    assert!(!syncer.is_finished(), "sync returned before its checkpoint wrote the index files");
    gated.open_gate();
    assert_eq!(syncer.join().unwrap(), 1);
    assert_eq!(store.sync().unwrap(), 20);
    let stats = store.stats();
    assert_eq!((stats.mirror_head, stats.mirror_durable, stats.mirror_lag), (20, 20, 0), "{stats:?}");
    let tag_20 = opossum::format::decode_index(&std::fs::read(dir.path().join("Indices/Tags/k_20.json")).unwrap());
    assert_eq!(tag_20.unwrap(), vec![20]);
}

/// Files mode writes a tree of several read batches and import groups (as .NET would). A missing event file in a
/// later batch stops journal mode's import naming that file, with whole groups imported and the tree untouched;
/// with the file back the next open imports the rest, every event in order and in the index (which the import
/// builds as it goes, on top of the index of the groups imported before).
#[test]
fn an_interrupted_import_of_many_read_batches_and_groups_leaves_the_tree_and_resumes_in_order() {
    use opossum::limits::{IMPORT_GROUP_BYTES_MAX, IMPORT_READ_BATCH_FILES_MAX};
    let events = IMPORT_READ_BATCH_FILES_MAX as u64 * 2 + 300;
    // Data big enough that the first read batch alone makes more than one import group.
    let pad = "x".repeat(IMPORT_GROUP_BYTES_MAX / IMPORT_READ_BATCH_FILES_MAX * 2);
    let event = |n: u64| {
        Event::new(
            if n.is_multiple_of(3) { "A" } else { "B" },
            &format!(r#"{{"n":{n},"pad":"{pad}"}}"#),
            vec![Tag::new("k", format!("{}", n % 11))],
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    // Written as a clean .NET tree would be: durably where a clean stop cannot sync a `--durability none` run
    // (no `syncfs` outside Linux: its unsynced-writes marker stays, and the next open repairs the tree, cutting it
    // back at the missing file, instead of stopping the import as this test expects).
    let durability = if cfg!(target_os = "linux") { Durability::None } else { Durability::Fsync };
    let files = StoreOptions { durability, ..mode(CommitMode::Files, MirrorMode::Live) };
    let store = Store::open(dir.path(), files).unwrap();
    for chunk in (1..=events).collect::<Vec<_>>().chunks(2000) {
        store.append(chunk.iter().map(|&n| event(n)).collect(), None).unwrap();
    }
    store.close().unwrap();
    assert!(!journal_dir(dir.path()).exists());
    let written = tree(dir.path());

    let missing = IMPORT_READ_BATCH_FILES_MAX as u64 + 7;
    let name = opossum::format::event_file_name(missing);
    let path = dir.path().join("events").join(&name);
    let aside = dir.path().join("missing.aside");
    std::fs::rename(&path, &aside).unwrap();
    let err = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).err().expect("a missing event file");
    assert!(err.to_string().contains(&name), "{err}");
    let (journal, _) = opossum::journal::Journal::open_dir(dir.path(), Default::default()).unwrap();
    let imported = journal.head();
    drop(journal);
    assert!(imported > 0 && imported < missing, "whole groups before the missing file imported: {imported}");
    std::fs::rename(&aside, &path).unwrap();
    assert!(tree(dir.path()) == written, "the failed import changed the tree");

    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    assert_eq!(store.head(), events);
    let all = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
    assert_eq!(all.len() as u64, events);
    for (e, n) in all.iter().zip(1..) {
        let want = event(n);
        assert_eq!(
            (e.position, &e.event_type, e.data.get(), &e.tags),
            (n, &want.event_type, want.data.get(), &want.tags)
        );
    }
    let positions = |query: Query| -> Vec<u64> {
        store.read_to_vec(&query, ReadOptions::default()).unwrap().iter().map(|e| e.position).collect()
    };
    let k3 = Query::items(vec![QueryItem::tags(&[("k", "3")])]).unwrap();
    assert_eq!(positions(k3), (1..=events).filter(|n| n % 11 == 3).collect::<Vec<_>>());
    let type_a = Query::items(vec![QueryItem::types(&["A"])]).unwrap();
    assert_eq!(positions(type_a), (1..=events).filter(|n| n % 3 == 0).collect::<Vec<_>>());
    assert_eq!(store.append(vec![event(events + 1)], None).unwrap().last, events + 1);
    store.close().unwrap();
}

/// The positions of a read through `next_views` (a thread that may block), from where `reader` stands.
/// A query whose index lists may hold more than `READ_INLINE_CANDIDATES_MAX` positions is not started on the
/// caller's (async) task: its candidate list would be built there before knowing whether the read is small. A
/// narrow query of the same store is, and both read the same events as the blocking read.
#[test]
fn a_broad_query_is_not_started_on_the_callers_task_and_a_narrow_one_is() {
    use opossum::limits::READ_INLINE_CANDIDATES_MAX;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Off)).unwrap();
    let n = READ_INLINE_CANDIDATES_MAX as u64 + 1;
    let events: Vec<Event> =
        (1..=n).map(|i| Event::new("Broad", "{}", vec![Tag::new("n", format!("{}", i % 1_000))]).unwrap()).collect();
    for chunk in events.chunks(1_000) {
        store.append(chunk.to_vec(), None).unwrap();
    }
    let broad = Query::items(vec![QueryItem::types(&["Broad"])]).unwrap();
    assert!(store.try_read_now(&broad, ReadOptions { limit: Some(1), ..ReadOptions::default() }).is_none());
    assert_eq!(store.read(&broad, ReadOptions::default()).unwrap().count() as u64, n);
    let narrow = Query::items(vec![QueryItem::types(&["Broad"]).with_tags(&[("n", "7")])]).unwrap();
    let want: Vec<u64> = store.read(&narrow, ReadOptions::default()).unwrap().map(|e| e.unwrap().position).collect();
    assert_eq!(want, (7..=n).step_by(1_000).collect::<Vec<u64>>());
    let mut reader =
        store.try_read_now(&narrow, ReadOptions::default()).expect("a narrow query starts at once").unwrap();
    assert_eq!(rest_of(&mut reader), want);
}

fn rest_of(reader: &mut opossum::store::EventReader) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(batch) = reader.next_views() {
        out.extend(batch.unwrap().views().map(|v| v.position));
    }
    out
}

/// A cached read (how the server answers small reads on its async task) returns what the blocking read returns, and
/// a step it does not take (more events or bytes than asked, or not cached) consumes nothing: the blocking read
/// goes on from the same place. Files mode has no cached reads.
#[test]
fn cached_reads_return_what_blocking_reads_do_and_a_step_not_taken_consumes_nothing() {
    use opossum::store::CachedStep;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Off)).unwrap();
    workload(&store);
    let queries = [
        Query::All,
        Query::items(vec![QueryItem::new(Vec::new(), vec![Tag::new("k", "3")]).unwrap()]).unwrap(),
        Query::items(vec![QueryItem::types(&["B x"])]).unwrap(),
        Query::items(vec![QueryItem::new(Vec::new(), vec![Tag::new("k", "none")]).unwrap()]).unwrap(),
    ];
    let options = [
        ReadOptions::default(),
        ReadOptions { backwards: true, ..ReadOptions::default() },
        ReadOptions { limit: Some(3), ..ReadOptions::default() },
        ReadOptions { after: Some(30), before: Some(70), backwards: true, ..ReadOptions::default() },
    ];
    let mut cached_batches = 0;
    for query in &queries {
        for &options in &options {
            let want: Vec<u64> = store.read(query, options).unwrap().map(|e| e.unwrap().position).collect();
            let what = format!("{query:?} {options:?}");

            // Cached steps to the end (a step the page cache cannot serve hands over to the blocking read).
            let mut reader = store.try_read_now(query, options).expect("journal mode reads cached").unwrap();
            let mut got = Vec::new();
            loop {
                match reader.next_views_cached(usize::MAX, usize::MAX) {
                    CachedStep::Batch(batch) => {
                        cached_batches += 1;
                        got.extend(batch.views().map(|v| v.position));
                    }
                    CachedStep::End => break,
                    CachedStep::WouldWait => {
                        got.extend(rest_of(&mut reader));
                        break;
                    }
                    CachedStep::Failed(e) => panic!("{what}: {e}"),
                }
            }
            assert!(reader.is_done(), "{what}");
            assert_eq!(got, want, "{what}");

            // Steps over the event or byte bound are not taken and consume nothing.
            let mut reader = store.try_read_now(query, options).unwrap().unwrap();
            if want.is_empty() && matches!(query, Query::Items(_)) {
                assert!(matches!(reader.next_views_cached(0, 0), CachedStep::End | CachedStep::Batch(_)), "{what}");
                continue;
            }
            assert!(matches!(reader.next_views_cached(0, usize::MAX), CachedStep::WouldWait), "{what}");
            assert!(matches!(reader.next_views_cached(usize::MAX, 0), CachedStep::WouldWait), "{what}");
            assert!(!reader.is_done(), "{what}");
            assert_eq!(rest_of(&mut reader), want, "{what}");
        }
    }
    // Only Linux has a read that returns at once when the page cache lacks the bytes (`preadv2(RWF_NOWAIT)`);
    // elsewhere every step hands over to the blocking read, which the loop above checked.
    if cfg!(target_os = "linux") {
        assert!(cached_batches > 0, "nothing was read from the page cache right after writing it");
    }

    let files_dir = tempfile::tempdir().unwrap();
    let files = Store::open(files_dir.path(), mode(CommitMode::Files, MirrorMode::Live)).unwrap();
    assert!(files.try_read_now(&Query::All, ReadOptions::default()).is_none());
}

/// Every file under `dir` (recursively), relative to it; none when it does not exist.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            found.extend(files_under(&entry.path()).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            found.push(name);
        }
    }
    found
}

/// What an earlier run left in `.opossumd/trash` (a crash, a close out of time) is junk: never read, even when it is
/// named like a tree file, and deleted by the store (in the background from the open, or at the latest by the close).
#[test]
fn junk_in_the_trash_is_never_read_and_the_store_deletes_it() {
    for commit in [CommitMode::Files, CommitMode::Journal] {
        let dir = tempfile::tempdir().unwrap();
        let trash = dir.path().join(opossum::format::DAEMON_DIR).join(opossum::format::TRASH_DIR);
        std::fs::create_dir_all(trash.join("12345")).unwrap();
        std::fs::write(trash.join("12345").join("k_1.json"), b"[99]").unwrap();
        std::fs::write(trash.join("12345").join(".ledger"), b"{}").unwrap();
        std::fs::write(trash.join("stray"), b"x").unwrap();
        let store = Store::open(dir.path(), mode(commit, MirrorMode::Live)).unwrap();
        store.append(vec![fixed(1, "A", &[("k", "1")])], None).unwrap();
        store.sync().unwrap();
        // Replaces `k_1.json` and the ledger.
        store.append(vec![fixed(2, "A", &[("k", "1")])], None).unwrap();
        let read = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
        assert_eq!(read.iter().map(|e| e.position).collect::<Vec<_>>(), vec![1, 2], "{commit:?}");
        store.close().unwrap();
        assert_eq!(files_under(&trash), Vec::<String>::new(), "{commit:?}: the trash after a close");
        let tag = opossum::format::decode_index(&std::fs::read(dir.path().join("Indices/Tags/k_1.json")).unwrap());
        assert_eq!(tag.unwrap(), vec![1, 2], "{commit:?}");
        let store = Store::open(dir.path(), mode(commit, MirrorMode::Live)).unwrap();
        assert_eq!(store.head(), 2);
    }
}

/// A store told it will close soon (`Store::begin_close`, a daemon's stop) goes on serving: appends are taken and
/// mirrored, and `sync` still waits for a checkpoint through the head (the daemon's stop relies on it when the
/// close cannot run).
#[test]
fn a_store_told_it_will_close_still_takes_appends_and_its_sync_still_checkpoints_the_head() {
    for (commit, mirror) in [
        (CommitMode::Journal, MirrorMode::Live),
        (CommitMode::Journal, MirrorMode::Off),
        (CommitMode::Files, MirrorMode::Live),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), mode(commit, mirror)).unwrap();
        store.append(vec![fixed(1, "A", &[("k", "1")])], None).unwrap();
        store.begin_close();
        store.append(vec![fixed(2, "A", &[("k", "1")])], None).unwrap();
        assert_eq!(store.sync().unwrap(), 2, "{commit:?} {mirror:?}");
        let read = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
        assert_eq!(read.iter().map(|e| e.position).collect::<Vec<_>>(), vec![1, 2], "{commit:?} {mirror:?}");
        if mirror == MirrorMode::Live {
            let stats = store.stats();
            assert_eq!(
                (stats.mirror_head, stats.mirror_durable),
                match commit {
                    CommitMode::Journal => (2, 2),
                    CommitMode::Files => (0, 0),
                }
            );
            let tag = std::fs::read(dir.path().join("Indices/Tags/k_1.json")).unwrap();
            assert_eq!(opossum::format::decode_index(&tag).unwrap(), vec![1, 2], "{commit:?}");
        }
        store.close().unwrap();
    }
}

/// A checkpoint replaces index files through the trash (a rename over each would free its block under the
/// directory's lock, and the freed inodes slow later creates), and a close waits for one still running, blocked in
/// the middle of its tag files, before its own last one.
#[test]
fn a_checkpoint_replaces_index_files_through_the_trash_and_a_close_waits_for_one_running() {
    use opossum::limits::MIRROR_CHECKPOINT_CHUNK_FILES;
    let dir = tempfile::tempdir().unwrap();
    let gated = gated_backend(opossum::format::TAG_INDEX_DIR, false);
    let options = StoreOptions { io: Some(gated.clone()), ..mode(CommitMode::Journal, MirrorMode::Live) };
    let store = Store::open(dir.path(), options).unwrap();
    let _gate = OpenOnDrop(gated.clone());
    // Events touching more than two chunks of tag files.
    const TAGS_PER_EVENT: usize = 64;
    let events_for = |from: u64| -> Vec<Event> {
        let n = (2 * MIRROR_CHECKPOINT_CHUNK_FILES + 1).div_ceil(TAGS_PER_EVENT) as u64;
        (from..from + n)
            .map(|n| {
                let tags: Vec<(String, String)> =
                    (0..TAGS_PER_EVENT).map(|t| (format!("t{t}"), n.to_string())).collect();
                let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                fixed(n, "A", &tags)
            })
            .collect()
    };
    let first = events_for(1);
    let head = first.len() as u64;
    store.append(first, None).unwrap();
    assert_eq!(store.sync().unwrap(), head);
    let trash_writes = gated.trash_writes.load(Ordering::SeqCst);
    assert!(trash_writes > 0, "a checkpoint replaced its index files without the trash");

    // The next checkpoint (due by time) stops at its first chunk of tag files; then the store starts closing.
    *gated.shut.lock().unwrap() = true;
    gated.waiting.store(false, Ordering::SeqCst);
    let second = events_for(head + 1);
    let head = head + second.len() as u64;
    store.append(second, None).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !gated.waiting.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "no checkpoint reached its tag files: {:?}", store.stats());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let opener = {
        let gated = gated.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            gated.open_gate();
        })
    };
    store.close().unwrap();
    opener.join().unwrap();
    assert!(gated.trash_writes.load(Ordering::SeqCst) > trash_writes, "the checkpoints at close skipped the trash");
    let last =
        opossum::format::decode_index(&std::fs::read(dir.path().join(format!("Indices/Tags/t7_{head}.json"))).unwrap());
    assert_eq!(last.unwrap(), vec![head]);
    let reopened = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    assert_eq!(reopened.head(), head);
    reopened.close().unwrap();
}

/// Every file under `dir` (recursively) by identity: inode number and birth time (a new inode given a freed inode's
/// number is another file).
#[cfg(unix)]
fn inodes_under(dir: &Path) -> std::collections::BTreeSet<(u64, Option<std::time::SystemTime>)> {
    use std::os::unix::fs::MetadataExt;
    let mut found = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            found.extend(inodes_under(&entry.path()));
        } else {
            found.insert((meta.ino(), meta.created().ok()));
        }
    }
    found
}

/// The mirror's checkpoints replace index files without creating or freeing inodes once the spares are warm: the
/// index files a third checkpoint writes are inodes the tree or the trash held after the second (the spares the
/// second's swaps left), none new; and the store's reads and a reopen see the right lists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_later_mirror_checkpoint_writes_its_index_files_into_the_inodes_an_earlier_one_swapped_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    const TAGS: u64 = 40;
    let round = |r: u64| {
        let events = (0..TAGS).map(|t| fixed(r * TAGS + t, "A", &[("k", &t.to_string())])).collect();
        store.append(events, None).unwrap();
        store.sync().unwrap();
    };
    let indices = dir.path().join(opossum::format::INDICES_DIR);
    let trash = dir.path().join(opossum::format::DAEMON_DIR).join(opossum::format::TRASH_DIR);
    // The first checkpoint creates the index files, the second swaps them out (its temporaries become spares).
    round(0);
    round(1);
    let mut warm = inodes_under(&indices);
    warm.extend(inodes_under(&trash));
    let created = store.stats().trash_spares_created;
    round(2);
    let written = inodes_under(&indices);
    let new: Vec<_> = written.difference(&warm).collect();
    assert!(new.is_empty(), "index files in new inodes: {new:?} of {}", written.len());
    let stats = store.stats();
    assert_eq!(stats.trash_spares_created, created, "{stats:?}");
    assert!(stats.trash_spares_reused > TAGS, "{stats:?}");
    let tag = opossum::format::decode_index(&std::fs::read(indices.join("Tags/k_7.json")).unwrap()).unwrap();
    assert_eq!(tag, vec![8, 48, 88]);
    store.close().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    let query = QueryItem::tags(&[("k", "7")]);
    let found = store.read_to_vec(&Query::items(vec![query]).unwrap(), ReadOptions::default()).unwrap();
    assert_eq!(found.iter().map(|e| e.position).collect::<Vec<_>>(), [8, 48, 88]);
    store.close().unwrap();
}
