//! Index checkpoints (journal mode, whatever mode the rest of the suite runs in; the mirror as the suite runs it):
//! an open from the checkpoint answers every query exactly as an open that scans the whole journal; a damaged,
//! truncated, foreign or stale checkpoint is ignored (the same answers, and a good checkpoint written at the next
//! close); events appended after the checkpoint are found; the checkpointer writes one while appends go on.

use std::path::Path;
use std::time::{Duration, Instant};

use opossum::journal::index_checkpoint_path;
use opossum::limits::INDEX_CHECKPOINT_EVENTS_DEFAULT;
use opossum::model::{Event, Query, QueryItem, ReadOptions, Tag};
use opossum::store::{CommitMode, Durability, Store, StoreError, StoreOptions};

use super::{backend, cond, mirror_mode};

fn journal_options() -> StoreOptions {
    StoreOptions {
        commit: CommitMode::Journal,
        mirror: mirror_mode(),
        durability: Durability::None,
        io: Some(backend()),
        ..StoreOptions::default()
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, journal_options()).expect("open store")
}

/// Event `n`: types whose index file stems collide ("B x", "B_x"), shared tags, tags whose stems collide
/// (a_b=c, a=b_c), one event carrying both of those, tags of their own, events without tags.
fn event(n: u64, salt: &str) -> Event {
    let ty = ["A", "B x", "B_x", "C"][(n % 4) as usize];
    let mut tags = vec![Tag::new("k", format!("{}", n % 7))];
    match n % 5 {
        0 => tags.push(Tag::new("a_b", "c")),
        1 => tags.push(Tag::new("a", "b_c")),
        2 => tags.extend([Tag::new("a_b", "c"), Tag::new("a", "b_c")]),
        3 => tags.push(Tag::new("own", format!("{n}"))),
        _ => tags.clear(),
    }
    Event::new(ty, &format!(r#"{{"n":{n},"s":"{salt}"}}"#), tags).unwrap()
}

fn fill(store: &Store, from: u64, to: u64, salt: &str) {
    let mut n = from;
    while n < to {
        let last = (n + 1 + n % 4).min(to);
        store.append((n..last).map(|i| event(i, salt)).collect(), None).unwrap();
        n = last;
    }
}

fn queries() -> Vec<Query> {
    let mut out = vec![Query::All];
    let types = ["A", "B x", "B_x", "C", "Z"];
    let tags = [("k", "0"), ("k", "3"), ("a_b", "c"), ("a", "b_c"), ("own", "8"), ("own", "13"), ("new", "1")];
    for t in types {
        out.push(Query::items(vec![QueryItem::types(&[t])]).unwrap());
        for tag in tags {
            out.push(Query::items(vec![QueryItem::types(&[t]).with_tags(&[tag])]).unwrap());
        }
    }
    for a in tags {
        out.push(Query::items(vec![QueryItem::tags(&[a])]).unwrap());
        for b in tags {
            out.push(Query::items(vec![QueryItem::tags(&[a, b])]).unwrap());
            out.push(
                Query::items(vec![QueryItem::types(&["C"]), QueryItem::tags(&[a]), QueryItem::tags(&[b])]).unwrap(),
            );
        }
    }
    out
}

/// What the store answers to every query: all matches, the newest three, and the matches after the middle.
fn answers(store: &Store) -> Vec<Vec<u64>> {
    let head = store.head();
    let mut out = Vec::new();
    for q in queries() {
        for options in [
            ReadOptions::default(),
            ReadOptions { limit: Some(3), backwards: true, ..ReadOptions::default() },
            ReadOptions { after: Some(head / 2), ..ReadOptions::default() },
        ] {
            out.push(store.read_to_vec(&q, options).unwrap().into_iter().map(|e| e.position).collect());
        }
    }
    out
}

/// The position a checkpoint file holds through (header bytes 16..24, `docs/journal.md`).
fn checkpoint_through(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(index_checkpoint_path(dir)).ok()?;
    Some(u64::from_le_bytes(bytes.get(16..24)?.try_into().unwrap()))
}

/// The checkpointer starts from the checkpoint the open loaded: a store closed without appends keeps that file (the
/// same inode: a rewrite replaces it by rename), and an open that found no usable one writes one at close.
#[cfg(unix)]
#[test]
fn a_close_without_appends_keeps_the_checkpoint_the_open_loaded() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, 0, 300, "one");
    store.close().unwrap();
    let inode = || std::fs::metadata(index_checkpoint_path(dir.path())).unwrap().ino();
    let written = inode();

    open(dir.path()).close().unwrap();
    assert_eq!(inode(), written, "nothing was appended: the checkpoint on disk holds through the head already");

    std::fs::remove_file(index_checkpoint_path(dir.path())).unwrap();
    open(dir.path()).close().unwrap();
    assert_eq!(checkpoint_through(dir.path()), Some(300), "no checkpoint was loaded: the close writes one");
}

#[test]
fn reopening_from_the_index_checkpoint_answers_every_query_as_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, 0, 700, "one");
    let live = answers(&store);
    assert!(live.iter().any(|a| a.len() > 100), "the workload matches something");
    store.close().unwrap();
    assert_eq!(checkpoint_through(dir.path()), Some(700), "a clean close writes the checkpoint");

    let store = open(dir.path());
    assert_eq!(answers(&store), live, "from the checkpoint");
    store.close().unwrap();

    std::fs::remove_file(index_checkpoint_path(dir.path())).unwrap();
    let store = open(dir.path());
    assert_eq!(answers(&store), live, "from a scan of the whole journal");
    store.close().unwrap();
    assert_eq!(checkpoint_through(dir.path()), Some(700), "written again at close");
}

#[test]
fn a_damaged_truncated_foreign_or_stale_checkpoint_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, 0, 300, "mine");
    let expected = answers(&store);
    store.close().unwrap();
    let path = index_checkpoint_path(dir.path());
    let good = std::fs::read(&path).unwrap();

    // Another store with the same positions, types and tags, and other events.
    let other = tempfile::tempdir().unwrap();
    let theirs = open(other.path());
    fill(&theirs, 0, 300, "theirs");
    theirs.close().unwrap();
    let foreign = std::fs::read(index_checkpoint_path(other.path())).unwrap();
    // A copy of this store that went on: its checkpoint holds positions this journal does not have.
    let ahead_dir = tempfile::tempdir().unwrap();
    super::copy_dir(dir.path(), ahead_dir.path());
    let ahead_store = open(ahead_dir.path());
    fill(&ahead_store, 300, 340, "mine");
    ahead_store.close().unwrap();
    let ahead = std::fs::read(index_checkpoint_path(ahead_dir.path())).unwrap();
    assert_eq!(checkpoint_through(ahead_dir.path()), Some(340));

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    let mut header_flipped = good.clone();
    header_flipped[18] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a flipped byte in the body", flipped),
        ("a flipped byte in the header", header_flipped),
        ("a truncated file", good[..good.len() - 5].to_vec()),
        ("a header only", good[..48].to_vec()),
        ("an empty file", Vec::new()),
        ("a checkpoint of another store", foreign),
        ("a checkpoint ahead of the journal", ahead),
    ];
    for (case, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let store = open(dir.path());
        assert_eq!(answers(&store), expected, "{case}");
        store.close().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), good, "{case}: the close writes a good checkpoint again");
    }
}

#[test]
fn events_appended_after_the_checkpoint_are_found_by_reads_and_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, 0, 200, "one");
    store.close().unwrap();
    let old = std::fs::read(index_checkpoint_path(dir.path())).unwrap();

    let store = open(dir.path());
    fill(&store, 200, 260, "two");
    let fresh = Event::new("Fresh", "{}", vec![Tag::new("new", "1")]).unwrap();
    let at = store.append(vec![fresh], None).unwrap().first;
    let expected = answers(&store);
    store.close().unwrap();
    // As after a crash: the checkpoint is older than the journal.
    std::fs::write(index_checkpoint_path(dir.path()), &old).unwrap();
    assert_eq!(checkpoint_through(dir.path()), Some(200));

    let store = open(dir.path());
    assert_eq!(store.head(), at);
    assert_eq!(answers(&store), expected);
    let new_tag = || Query::items(vec![QueryItem::tags(&[("new", "1")])]).unwrap();
    let found: Vec<u64> =
        store.read_to_vec(&new_tag(), ReadOptions::default()).unwrap().into_iter().map(|e| e.position).collect();
    assert_eq!(found, vec![at]);
    let fresh_type = Query::items(vec![QueryItem::types(&["Fresh"])]).unwrap();
    assert_eq!(store.read_to_vec(&fresh_type, ReadOptions::default()).unwrap().len(), 1);
    // A condition sees it too, through the same index.
    let again = Event::new("Fresh", "{}", vec![Tag::new("new", "1")]).unwrap();
    match store.append(vec![again.clone()], cond(new_tag(), None)) {
        Err(StoreError::ConditionFailed { position }) => assert_eq!(position, at),
        other => panic!("expected a condition failure at {at}, got {other:?}"),
    }
    assert_eq!(store.append(vec![again], cond(new_tag(), Some(at))).unwrap().first, at + 1);
    store.close().unwrap();
    assert_eq!(checkpoint_through(dir.path()), Some(at + 1));
}

#[test]
fn the_checkpointer_writes_a_checkpoint_while_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // Mirror off whatever the suite runs: the checkpointer does not depend on the tree, and a live mirror would
    // write 100,000 event files first.
    let off = || StoreOptions { mirror: opossum::store::MirrorMode::Off, ..journal_options() };
    let store = Store::open(dir.path(), off()).unwrap();
    let target = INDEX_CHECKPOINT_EVENTS_DEFAULT + 1000;
    let mut n = 0;
    while n < target {
        let batch = (n..n + 1000).map(|i| Event::new("E", "{}", vec![Tag::new("s", format!("{}", i % 50))]).unwrap());
        store.append(batch.collect(), None).unwrap();
        n += 1000;
    }
    let started = Instant::now();
    let through = loop {
        match checkpoint_through(dir.path()) {
            Some(through) if through >= INDEX_CHECKPOINT_EVENTS_DEFAULT => break through,
            _ => {
                assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint written while the store is open");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert!(through <= store.head());
    store.close().unwrap();
    let store = Store::open(dir.path(), off()).unwrap();
    let s7 = Query::items(vec![QueryItem::tags(&[("s", "7")])]).unwrap();
    assert_eq!(store.read_to_vec(&s7, ReadOptions::default()).unwrap().len() as u64, target / 50);
}
