//! What a machine crash can leave after a run that wrote without syncing (`--durability none`), built directly:
//! the store's files as a clean stop left them, then changed as the crash would have (an index file newer than
//! another, a ledger beyond the event files that reached the disk, a torn event file, tree files beyond a journal
//! whose tail was lost), plus the marker such a run leaves (`.opossumd/unsynced`, `store/unsynced.rs`). The reopened
//! store must answer tag queries right, show no half batch, open, and set aside rather than delete. Also a crashed
//! tree writer's leftovers after a gap in its positions, which needs no `none` at all. Every test names its modes, so
//! it runs the same in every pass of the suite.

use std::path::{Path, PathBuf};

use opossum::model::{Event, Query, ReadOptions};
use opossum::store::{CommitMode, Durability, MirrorMode, Store, StoreOptions};

use super::{backend, ev, positions, tags};

fn options(commit: CommitMode, mirror: MirrorMode, durability: Durability) -> StoreOptions {
    StoreOptions { commit, mirror, durability, io: Some(backend()), ..StoreOptions::default() }
}

fn files(durability: Durability) -> StoreOptions {
    options(CommitMode::Files, MirrorMode::Live, durability)
}

fn marker(root: &Path) -> PathBuf {
    root.join(".opossumd").join(opossum::format::UNSYNCED_MARKER_FILE)
}

/// The marker a run under `none` that did not stop cleanly leaves: the tree durable through `through`.
fn crashed_unsynced(root: &Path, through: u64) {
    std::fs::create_dir_all(root.join(".opossumd")).unwrap();
    std::fs::write(marker(root), format!("durable-through {through}\n")).unwrap();
}

/// Every file name under `.quarantine/`.
fn quarantined(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), out);
            } else {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(&root.join(".quarantine"), &mut out);
    out.sort();
    out
}

fn all(store: &Store) -> Vec<u64> {
    positions(&store.read_to_vec(&Query::All, ReadOptions::default()).unwrap())
}

fn by_tag(store: &Store, key: &str, value: &str) -> Vec<u64> {
    positions(&store.read_to_vec(&tags(&[(key, value)]), ReadOptions::default()).unwrap())
}

fn event_file(root: &Path, position: u64) -> PathBuf {
    root.join("events").join(format!("{position:010}.json"))
}

/// Three appends in files mode under `none`, closed cleanly: batch 1 = 1..=2, batch 2 = 3..=5, batch 3 = 6.
fn three_batches(root: &Path) {
    let store = Store::open(root, files(Durability::None)).unwrap();
    store.append(vec![ev("T", &[("k", "1")]), ev("T", &[("k", "1")])], None).unwrap();
    store.append(vec![ev("T", &[("k", "3")]), ev("U", &[("k", "3")]), ev("T", &[("k", "3")])], None).unwrap();
    store.append(vec![ev("U", &[("k", "6")])], None).unwrap();
    store.close().unwrap();
    // Only where a clean stop can sync the filesystem (Linux); elsewhere the marker stays and opens check the tree.
    assert_eq!(marker(root).exists(), !cfg!(target_os = "linux"), "a clean stop under none syncs and removes it");
}

#[test]
fn a_run_under_none_leaves_its_marker_until_its_clean_stop_and_a_run_under_fsync_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), files(Durability::None)).unwrap();
    assert!(marker(dir.path()).exists(), "made before the run's first unsynced write");
    store.append(vec![ev("T", &[])], None).unwrap();
    store.close().unwrap();
    let linux = cfg!(target_os = "linux");
    assert_eq!(marker(dir.path()).exists(), !linux);
    let store = Store::open(dir.path(), options(CommitMode::Journal, MirrorMode::Live, Durability::Fsync)).unwrap();
    assert_eq!(marker(dir.path()).exists(), !linux);
    store.close().unwrap();
}

/// Files mode writes tag files then type files, without syncing: a crash can keep a type file that lists an event
/// and lose the tag file that does. The type files are the coverage record a normal open trusts.
#[test]
fn files_mode_after_an_unsynced_crash_answers_tag_queries_from_the_events_not_a_stale_tag_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    three_batches(root);
    // The tag file of k=6 as it was before position 6 (a crash kept the type file U, which lists 6).
    std::fs::remove_file(root.join("Indices/Tags/k_6.json")).unwrap();
    // And k=3's file from before batch 2.
    std::fs::write(root.join("Indices/Tags/k_3.json"), br#"{"Positions":[]}"#).unwrap();
    crashed_unsynced(root, 2);
    let store = Store::open(root, files(Durability::None)).unwrap();
    assert_eq!(store.head(), 6);
    assert_eq!(by_tag(&store, "k", "6"), vec![6]);
    assert_eq!(by_tag(&store, "k", "3"), vec![3, 4, 5]);
    store.close().unwrap();
    assert_eq!(marker(root).exists(), !cfg!(target_os = "linux"));
    // The index files were repaired, not only the in-memory index: a normal open trusts them again.
    let store = Store::open(root, files(Durability::Fsync)).unwrap();
    assert_eq!(by_tag(&store, "k", "6"), vec![6]);
    assert_eq!(by_tag(&store, "k", "3"), vec![3, 4, 5]);
    store.close().unwrap();
}

/// A ledger that reached the disk while an event file it covers did not (or did, torn): the tree goes back to the
/// marker's durable point, a group boundary, so no batch shows in part; what lies beyond is quarantined, not deleted.
#[test]
fn files_mode_after_an_unsynced_crash_cuts_a_ledger_beyond_its_event_files_back_to_whole_batches() {
    for torn in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        three_batches(root);
        match torn {
            true => std::fs::write(event_file(root, 4), b"{\"position\":4,\"ev").unwrap(),
            false => std::fs::remove_file(event_file(root, 4)).unwrap(),
        }
        crashed_unsynced(root, 2);
        let store = Store::open(root, files(Durability::None)).expect("the open cuts back instead of stopping");
        assert_eq!(store.head(), 2, "torn: {torn}");
        assert_eq!(all(&store), vec![1, 2]);
        assert_eq!(by_tag(&store, "k", "3"), Vec::<u64>::new());
        assert_eq!(by_tag(&store, "k", "1"), vec![1, 2]);
        let mut expected: Vec<String> = [3, 5, 6].iter().map(|p| format!("{p:010}.json")).collect();
        if torn {
            expected.push(format!("{:010}.json", 4));
            expected.sort();
        }
        assert_eq!(quarantined(root), expected, "set aside, never deleted");
        // The positions are taken again.
        assert_eq!(store.append(vec![ev("V", &[("k", "3")])], None).unwrap().first, 3);
        assert_eq!(by_tag(&store, "k", "3"), vec![3]);
        store.close().unwrap();
        let store = Store::open(root, files(Durability::Fsync)).unwrap();
        assert_eq!(all(&store), vec![1, 2, 3]);
        store.close().unwrap();
    }
}

/// Every event file the unsynced run wrote reached the disk whole: nothing is lost.
#[test]
fn files_mode_after_an_unsynced_crash_keeps_every_batch_whose_files_all_reached_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    three_batches(root);
    crashed_unsynced(root, 2);
    let store = Store::open(root, files(Durability::None)).unwrap();
    assert_eq!(all(&store), (1..=6).collect::<Vec<_>>());
    assert!(quarantined(root).is_empty());
    store.close().unwrap();
}

/// Event files of positions 4..=`last`, as a files-mode store writes them (to plant as another writer's files).
fn foreign_event_files(last: u64) -> Vec<(u64, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), files(Durability::None)).unwrap();
    let events: Vec<Event> = (1..=last).map(|p| ev("Foreign", &[("f", &p.to_string())])).collect();
    store.append(events, None).unwrap();
    store.close().unwrap();
    (4..=last).map(|p| (p, std::fs::read(event_file(dir.path(), p)).unwrap())).collect()
}

/// Journal mode under `none`: the journal is not synced, so a crash can cut it below event files its mirror wrote
/// (and a ledger covering them). Those files are the unsynced run's: a torn one among them must not stop the open,
/// and none of them may show (the batch they belong to is not whole).
#[test]
fn journal_mode_after_an_unsynced_crash_sets_aside_torn_tree_files_beyond_the_journal_head() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let live = || options(CommitMode::Journal, MirrorMode::Live, Durability::None);
    let store = Store::open(root, live()).unwrap();
    for n in 1..=3 {
        store.append(vec![ev("T", &[("k", &n.to_string())])], None).unwrap();
    }
    store.close().unwrap();
    // The mirror's files of a group 4..=6 the crash cut from the journal: 4 and 6 whole, 5 torn, the ledger at 6.
    let planted = foreign_event_files(6);
    for (p, bytes) in &planted {
        std::fs::write(event_file(root, *p), if *p == 5 { &bytes[..bytes.len() / 2] } else { &bytes[..] }).unwrap();
    }
    std::fs::write(root.join(".ledger"), br#"{"LastSequencePosition":6,"EventCount":6}"#).unwrap();
    crashed_unsynced(root, 3);
    let store = Store::open(root, live()).expect("a torn file beyond the journal does not stop the open");
    assert_eq!(store.head(), 3);
    assert_eq!(all(&store), vec![1, 2, 3]);
    assert!(by_tag(&store, "f", "4").is_empty(), "half a batch shows");
    let expected: Vec<String> = (4..=6).map(|p| format!("{p:010}.json")).collect();
    assert_eq!(quarantined(root), expected);
    store.append(vec![ev("T", &[("k", "4")])], None).unwrap();
    store.close().unwrap();
    assert_eq!(marker(root).exists(), !cfg!(target_os = "linux"));
    // The tree is the journal's again: files mode serves it.
    let store = Store::open(root, files(Durability::Fsync)).unwrap();
    assert_eq!(all(&store), vec![1, 2, 3, 4]);
    assert_eq!(by_tag(&store, "k", "4"), vec![4]);
    store.close().unwrap();
}

/// Files mode under `none` appended beyond the journal's head and crashed with one of its files lost. Journal mode's
/// import must not take the tree as it is (a missing file stopped the open; a torn one would be imported and the
/// mark moved over files never synced): the tree goes back to whole batches first.
#[test]
fn journal_mode_after_an_unsynced_files_mode_crash_imports_only_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Store::open(root, options(CommitMode::Journal, MirrorMode::Live, Durability::Fsync)).unwrap();
    store.append(vec![ev("T", &[("k", "1")]), ev("T", &[("k", "1")])], None).unwrap();
    store.close().unwrap();
    let store = Store::open(root, files(Durability::None)).unwrap();
    store.append(vec![ev("T", &[("k", "3")]), ev("T", &[("k", "3")])], None).unwrap();
    store.append(vec![ev("T", &[("k", "5")]), ev("T", &[("k", "5")])], None).unwrap();
    store.close().unwrap();
    std::fs::remove_file(event_file(root, 6)).unwrap();
    crashed_unsynced(root, 2);
    for mirror in [MirrorMode::Off, MirrorMode::Live] {
        let store = Store::open(root, options(CommitMode::Journal, mirror, Durability::None)).unwrap();
        assert_eq!(all(&store), vec![1, 2], "{mirror:?}");
        assert!(by_tag(&store, "k", "5").is_empty());
        store.close().unwrap();
    }
    let expected: Vec<String> = (3..=5).map(|p| format!("{p:010}.json")).collect();
    assert_eq!(quarantined(root), expected);
    let store = Store::open(root, files(Durability::Fsync)).unwrap();
    assert_eq!(all(&store), vec![1, 2]);
    store.close().unwrap();
}

/// A tree writer (files mode or .NET) that crashed mid-commit can leave any of its group's event files and index
/// entries: position top + 1 missing, top + 3 there. Journal mode must set them aside before it takes those
/// positions, even with fsync durability (no marker), else an index file names an event that is not its.
#[test]
fn journal_mode_sets_aside_a_crashed_writers_leftovers_after_a_gap_in_its_positions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let live = || options(CommitMode::Journal, MirrorMode::Live, Durability::Fsync);
    let store = Store::open(root, live()).unwrap();
    for n in 1..=3 {
        store.append(vec![ev("T", &[("k", &n.to_string())])], None).unwrap();
    }
    store.close().unwrap();
    let planted = foreign_event_files(6);
    std::fs::write(event_file(root, 6), &planted[2].1).unwrap();
    std::fs::write(root.join("Indices/Tags/f_6.json"), br#"{"Positions":[6]}"#).unwrap();
    std::fs::write(root.join("Indices/EventType/Foreign.json"), br#"{"Positions":[6]}"#).unwrap();
    let store = Store::open(root, live()).unwrap();
    assert_eq!(quarantined(root), vec![format!("{:010}.json", 6)], "the leftover after the gap is set aside");
    let appended = store.append(vec![ev("T", &[("k", "4")]), ev("T", &[("k", "5")]), ev("T", &[("k", "6")])], None);
    assert_eq!(appended.unwrap().last, 6);
    assert!(by_tag(&store, "f", "6").is_empty());
    store.close().unwrap();
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).unwrap();
    assert!(!read("Indices/Tags/f_6.json").contains('6'), "an index file names an event that is not its");
    let store = Store::open(root, files(Durability::Fsync)).unwrap();
    assert!(by_tag(&store, "f", "6").is_empty());
    assert_eq!(by_tag(&store, "k", "6"), vec![6]);
    assert_eq!(all(&store), (1..=6).collect::<Vec<_>>());
    store.close().unwrap();
}

/// The ledger itself: overwritten in place and torn, or replaced by a file whose bytes never reached the disk (it
/// reads empty). Where the unsynced groups end is then unknown: the tree goes back to the durable point, never to
/// nothing (a ledger read as 0 made every event a leftover).
#[test]
fn files_mode_after_an_unsynced_crash_takes_a_torn_or_empty_ledger_back_to_the_durable_point() {
    for ledger in [&b""[..], &b"{\"LastSequencePos"[..], &b"\0\0\0\0"[..]] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        three_batches(root);
        std::fs::write(root.join(".ledger"), ledger).unwrap();
        crashed_unsynced(root, 2);
        let store = Store::open(root, files(Durability::None)).unwrap();
        assert_eq!(all(&store), vec![1, 2], "ledger {ledger:?}");
        assert_eq!(by_tag(&store, "k", "1"), vec![1, 2]);
        store.close().unwrap();
        let expected: Vec<String> = (3..=6).map(|p| format!("{p:010}.json")).collect();
        assert_eq!(quarantined(root), expected);
    }
}
