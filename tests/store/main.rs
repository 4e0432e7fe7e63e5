//! The store library against real files: DCB semantics, the on-disk layout, recovery, fault injection, races
//! and SIGKILL crashes. Runs over the backend named by `OPOSSUM_TEST_IO_BACKEND` (`threads`, `uring`, `auto`),
//! so CI runs it once per backend.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use opossum::io::{self, BatchIo, Fault, FaultyIo, IoBackendKind, SyncStrategy};
use opossum::journal::JournalFault;
use opossum::model::{AppendCondition, Event, Query, QueryItem, ReadOptions, SequencedEvent, Tag};
use opossum::store::{CommitMode, Durability, IndexWrites, MirrorMode, Store, StoreError, StoreOptions, WriteStatus};

#[path = "../common/mod.rs"]
mod common;
use common::{copy_dir, copy_dir_except};

mod checkpoint;
mod crash;
mod journal_faults;
mod journal_mode;
mod tools;
mod unsynced;

/// The backend named by `OPOSSUM_TEST_IO_BACKEND`, with the barrier named by `OPOSSUM_TEST_SYNC_STRATEGY`.
pub fn backend() -> Arc<dyn BatchIo> {
    let kind: IoBackendKind =
        std::env::var("OPOSSUM_TEST_IO_BACKEND").ok().map_or(IoBackendKind::Auto, |s| s.parse().expect("backend name"));
    let sync: SyncStrategy =
        std::env::var("OPOSSUM_TEST_SYNC_STRATEGY").ok().map_or(SyncStrategy::default(), |s| s.parse().expect("sync"));
    io::open_backend_with(kind, sync).expect("io backend")
}

pub fn options(durability: Durability) -> StoreOptions {
    StoreOptions {
        durability,
        io: Some(backend()),
        commit: commit_mode(),
        mirror: mirror_mode(),
        ..StoreOptions::default()
    }
}

/// The commit mode named by `OPOSSUM_TEST_COMMIT` (`files`, `journal`), so CI runs the suite once per mode.
pub fn commit_mode() -> CommitMode {
    std::env::var("OPOSSUM_TEST_COMMIT").ok().map_or(CommitMode::default(), |s| s.parse().expect("commit mode"))
}

/// The mirror named by `OPOSSUM_TEST_MIRROR` (`live`, `off`).
pub fn mirror_mode() -> MirrorMode {
    std::env::var("OPOSSUM_TEST_MIRROR").ok().map_or(MirrorMode::default(), |s| s.parse().expect("mirror mode"))
}

/// Whether this run keeps an Opossum tree for new events. Tests that inspect or write tree files directly call
/// this first and, without a tree, print why they skip (never silently); with the journal's live mirror the tree
/// follows the journal on its own thread, so they call `Store::sync` (a mirror checkpoint) before looking.
pub fn has_tree(test: &str) -> bool {
    let tree = commit_mode() == CommitMode::Files || mirror_mode() == MirrorMode::Live;
    if !tree {
        eprintln!("skipping {test}: it inspects the Opossum tree, which --commit journal --mirror off does not write");
    }
    tree
}

/// Whether this run commits through the files (`--commit files`). Tests of that protocol itself — a .NET writer
/// appending to the tree while the store is open, index files and ledger written per commit, faults injected into
/// `BatchIo::write_files` — print why they skip in journal mode, where the store holds `.store.lock` for its whole
/// life and commits go to the journal.
pub fn files_mode(test: &str, why: &str) -> bool {
    let files = commit_mode() == CommitMode::Files;
    if !files {
        eprintln!("skipping {test} in journal mode: {why}");
    }
    files
}

/// Runs an offline tool (`tools::verify`, `tools::export_tree`) on a store just closed, retrying while its locks read
/// as in use: a sibling test of this binary may be spawning a child (`crash.rs`), and between its fork and exec the
/// child holds a copy of every descriptor, our lock's included (flock belongs to the open file description).
pub fn when_released<T>(
    mut tool: impl FnMut() -> Result<T, opossum::store::tools::ToolError>,
) -> Result<T, opossum::store::tools::ToolError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tool() {
            Err(opossum::store::tools::ToolError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other,
        }
    }
}

pub fn open(dir: &Path) -> Store {
    Store::open(dir, options(Durability::None)).expect("open store")
}

pub fn ev(event_type: &str, tags: &[(&str, &str)]) -> Event {
    Event::new(event_type, r#"{"n":1}"#, tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect()).unwrap()
}

fn types(t: &[&str]) -> Query {
    Query::items(vec![QueryItem::types(t)]).unwrap()
}

pub fn tags(t: &[(&str, &str)]) -> Query {
    Query::items(vec![QueryItem::tags(t)]).unwrap()
}

pub fn cond(query: Query, after: Option<u64>) -> Option<AppendCondition> {
    Some(AppendCondition { fail_if_events_match: query, after })
}

pub fn positions(events: &[SequencedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

fn read(store: &Store, query: &Query, options: ReadOptions) -> Vec<u64> {
    positions(&store.read_to_vec(query, options).unwrap())
}

fn event_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir.join("events")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn positions_are_contiguous_from_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.head(), 0);
    let a = store.append(vec![ev("A", &[])], None).unwrap();
    let b = store.append(vec![ev("B", &[]), ev("C", &[]), ev("A", &[])], None).unwrap();
    assert_eq!((a.first, a.last, b.first, b.last), (1, 1, 2, 4));
    assert_eq!(read(&store, &Query::All, ReadOptions::default()), vec![1, 2, 3, 4]);
    let all = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
    assert_eq!(all.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), ["A", "B", "C", "A"]);
    if has_tree("positions_are_contiguous_from_one (its event-file check)") {
        store.sync().unwrap();
        assert_eq!(
            event_files(dir.path()),
            ["0000000001.json", "0000000002.json", "0000000003.json", "0000000004.json"]
        );
    }
}

#[test]
fn the_boundary_is_narrow_unrelated_events_do_not_fail_an_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.append(vec![ev("CourseCreated", &[("course", "1")])], None).unwrap();
    let seen = store.head();
    let boundary = || tags(&[("course", "1")]);
    // Someone else writes about another course after we read.
    store.append(vec![ev("CourseCreated", &[("course", "2")])], None).unwrap();
    let ok = store.append(vec![ev("SeatTaken", &[("course", "1")])], cond(boundary(), Some(seen))).unwrap();
    assert_eq!(ok.first, 3);
    // Now a matching event exists after `seen`: the same decision must fail, naming it.
    match store.append(vec![ev("SeatTaken", &[("course", "1")])], cond(boundary(), Some(seen))) {
        Err(StoreError::ConditionFailed { position }) => assert_eq!(position, 3),
        other => panic!("expected a condition failure, got {other:?}"),
    }
    // With an up-to-date `after` it passes.
    store.append(vec![ev("SeatTaken", &[("course", "1")])], cond(boundary(), Some(3))).unwrap();
}

#[test]
fn uniqueness_without_after_fails_on_any_matching_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let unique = || Query::items(vec![QueryItem::types(&["UserRegistered"]).with_tags(&[("email", "a@x")])]).unwrap();
    store.append(vec![ev("UserRegistered", &[("email", "b@x")])], None).unwrap();
    store.append(vec![ev("UserRegistered", &[("email", "a@x")])], cond(unique(), None)).unwrap();
    let err = store.append(vec![ev("UserRegistered", &[("email", "a@x")])], cond(unique(), None)).unwrap_err();
    assert!(matches!(err, StoreError::ConditionFailed { position: 2 }), "{err:?}");
    // `Query::All` with `after` = head passes, with an older `after` fails.
    store.append(vec![ev("X", &[])], cond(Query::All, Some(2))).unwrap();
    assert!(store.append(vec![ev("X", &[])], cond(Query::All, Some(2))).is_err());
}

#[test]
fn a_failed_append_leaves_nothing_behind_and_burns_no_positions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.append(vec![ev("A", &[("k", "v")])], None).unwrap();
    store.sync().unwrap();
    let tree = has_tree("a_failed_append_leaves_nothing_behind_and_burns_no_positions (its tree checks)");
    let read_tree = |path: &str| if tree { std::fs::read(dir.path().join(path)).unwrap() } else { Vec::new() };
    let files_before = event_files(dir.path());
    let index_before = read_tree("Indices/Tags/k_v.json");
    let ledger_before = read_tree(".ledger");
    let err = store.append(vec![ev("B", &[("k", "v")]), ev("C", &[])], cond(tags(&[("k", "v")]), None)).unwrap_err();
    assert!(matches!(err, StoreError::ConditionFailed { position: 1 }));
    for bad in [vec![], vec![ev("", &[])], vec![ev("A", &[("k", "a/b")])], vec![ev("A", &[("k", "..")])]] {
        assert!(matches!(store.append(bad, None), Err(StoreError::Invalid(_))));
    }
    assert_eq!(store.head(), 1);
    assert_eq!(event_files(dir.path()), files_before);
    assert_eq!(read_tree("Indices/Tags/k_v.json"), index_before);
    assert_eq!(read_tree(".ledger"), ledger_before);
    store.sync().unwrap();
    assert_eq!(event_files(dir.path()), files_before);
    assert!(!dir.path().join("Indices/EventType/B.json").exists());
    assert_eq!(store.append(vec![ev("B", &[])], None).unwrap().first, 2);
}

#[test]
fn read_options_combine_after_before_limit_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 1..=10 {
        store.append(vec![ev(if i % 2 == 0 { "Even" } else { "Odd" }, &[])], None).unwrap();
    }
    let o = |after, before, limit, backwards| ReadOptions { after, before, limit, backwards };
    assert_eq!(read(&store, &Query::All, o(Some(3), None, None, false)), vec![4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(read(&store, &Query::All, o(None, Some(4), None, false)), vec![1, 2, 3]);
    assert_eq!(read(&store, &Query::All, o(Some(2), Some(7), Some(2), false)), vec![3, 4]);
    assert_eq!(read(&store, &Query::All, o(None, None, Some(3), true)), vec![10, 9, 8], "backwards+limit = newest N");
    assert_eq!(read(&store, &Query::All, o(Some(2), Some(7), Some(2), true)), vec![6, 5]);
    let even = types(&["Even"]);
    assert_eq!(read(&store, &even, o(None, None, None, false)), vec![2, 4, 6, 8, 10]);
    assert_eq!(read(&store, &even, o(Some(4), None, Some(2), false)), vec![6, 8]);
    assert_eq!(read(&store, &even, o(None, Some(9), Some(2), true)), vec![8, 6]);
    assert_eq!(read(&store, &even, o(Some(10), None, None, false)), Vec::<u64>::new());
    assert_eq!(read(&store, &even, o(None, None, Some(0), false)), Vec::<u64>::new());
    assert_eq!(read(&store, &Query::All, o(Some(5), Some(6), None, false)), Vec::<u64>::new());
}

#[test]
fn query_items_are_ored_and_tags_anded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.append(vec![ev("Enrolled", &[("course", "1"), ("student", "a")])], None).unwrap();
    store.append(vec![ev("Enrolled", &[("course", "1"), ("student", "b")])], None).unwrap();
    store.append(vec![ev("Dropped", &[("course", "1"), ("student", "a")])], None).unwrap();
    store.append(vec![ev("Created", &[("course", "2")])], None).unwrap();
    let all = ReadOptions::default();
    assert_eq!(read(&store, &tags(&[("course", "1"), ("student", "a")]), all), vec![1, 3]);
    let q = Query::items(vec![
        QueryItem::types(&["Enrolled"]).with_tags(&[("student", "b")]),
        QueryItem::types(&["Created"]),
    ])
    .unwrap();
    assert_eq!(read(&store, &q, all), vec![2, 4]);
    assert_eq!(read(&store, &tags(&[("course", "3")]), all), Vec::<u64>::new());
}

#[test]
fn tags_sharing_an_index_file_are_post_filtered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.append(vec![ev("E", &[("a_b", "c")])], None).unwrap();
        store.append(vec![ev("E", &[("a", "b_c")])], None).unwrap();
        if has_tree("tags_sharing_an_index_file_are_post_filtered (its index-file check)") {
            store.sync().unwrap();
            assert_eq!(
                std::fs::read_to_string(dir.path().join("Indices/Tags/a_b_c.json")).unwrap(),
                r#"{"Positions":[1,2]}"#
            );
        }
        assert_eq!(read(&store, &tags(&[("a_b", "c")]), ReadOptions::default()), vec![1]);
        assert_eq!(read(&store, &tags(&[("a", "b_c")]), ReadOptions::default()), vec![2]);
        // Limit counts matches, not candidates.
        let newest = ReadOptions { limit: Some(1), backwards: true, ..Default::default() };
        assert_eq!(read(&store, &tags(&[("a_b", "c")]), newest), vec![1]);
    }
    // After a reopen the exact tags come from the event files, not memory: the condition must still be exact.
    let store = open(dir.path());
    store.append(vec![ev("E", &[("x", "1")])], cond(tags(&[("a_b", "x")]), None)).unwrap();
    let err = store.append(vec![ev("E", &[])], cond(tags(&[("a", "b_c")]), Some(1))).unwrap_err();
    assert!(matches!(err, StoreError::ConditionFailed { position: 2 }), "{err:?}");
    store.append(vec![ev("E", &[])], cond(tags(&[("a_b", "c")]), Some(1))).unwrap();
}

#[test]
fn on_disk_layout_matches_opossum() {
    if !has_tree("on_disk_layout_matches_opossum") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut e =
        Event::new("StudentRegistered", r#"{ "$type": "S, A", "name" : "Zoë" }"#, vec![Tag::new("studentId", "7")])
            .unwrap();
    e.metadata = Some(serde_json::value::RawValue::from_string(r#"{"correlationId":"c-1"}"#.into()).unwrap());
    store.append(vec![e], None).unwrap();
    store.append(vec![ev("CourseCreated", &[("courseId", "9")])], None).unwrap();
    store.sync().unwrap();
    let root = dir.path();
    assert_eq!(std::fs::read_to_string(root.join(".ledger")).unwrap(), r#"{"LastSequencePosition":2,"EventCount":2}"#);
    assert_eq!(
        std::fs::read_to_string(root.join("Indices/EventType/StudentRegistered.json")).unwrap(),
        r#"{"Positions":[1]}"#
    );
    assert_eq!(std::fs::read_to_string(root.join("Indices/Tags/courseId_9.json")).unwrap(), r#"{"Positions":[2]}"#);
    assert!(root.join(".store.lock").exists());
    let text = std::fs::read_to_string(root.join("events/0000000001.json")).unwrap();
    let prefix = r#"{"event":{"eventType":"StudentRegistered","event":{"$type":"S, A","name":"Zoë"},"tags":[{"key":"studentId","value":"7"}]},"position":1,"metadata":{"correlationId":"c-1","timestamp":""#;
    assert!(text.starts_with(prefix), "{text}");
    assert!(!text.contains('\n'));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ts = v["metadata"]["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), "2026-03-11T10:30:00.1234567+00:00".len(), "{ts}");
    assert!(ts.ends_with("+00:00"));
    let names: Vec<String> =
        std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    for expected in [".ledger", ".store.lock", "events", "Indices"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing in {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains(".tmp.")), "temporary files left: {names:?}");
}

fn fixture_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("OpossumSample");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dotnet-store"), &root);
    (dir, root)
}

const STUDENT: &str = "0d9a4b1e-5f7c-4c53-9a55-3b0f0a0e2c11";
const COURSE: &str = "7b2e9c40-1111-4d2a-8f00-aaaaaaaaaaaa";

#[test]
fn opens_a_store_written_by_dotnet_opossum() {
    let (_dir, root) = fixture_store();
    let store = open(&root);
    assert_eq!(store.head(), 3);
    let all = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
    assert_eq!(positions(&all), vec![1, 2, 3]);
    assert_eq!(all[0].event_type, "StudentRegisteredEvent");
    let data: serde_json::Value = serde_json::from_str(all[0].data.get()).unwrap();
    assert_eq!(data["firstName"], "Zoë");
    assert_eq!(data["lastName"], "O'Brien");
    assert_eq!(data["email"], "zoe+test@example.com");
    assert!(data["$type"]
        .as_str()
        .unwrap()
        .starts_with("OpossumSample.CourseManagement.Events.StudentRegisteredEvent, "));
    assert!(!all[0].data.get().contains('\n'), "indented payloads are minified for the wire");
    let course: serde_json::Value = serde_json::from_str(all[1].data.get()).unwrap();
    assert_eq!(course["name"], "Algebra <I> & Geometry");
    assert_eq!(all[2].tags, vec![Tag::new("studentId", STUDENT), Tag::new("courseId", COURSE)]);
    let meta: serde_json::Value = serde_json::from_str(all[1].metadata.get()).unwrap();
    assert_eq!(meta["timestamp"], "2026-03-11T10:30:01.0000000+00:00");
    assert_eq!(read(&store, &tags(&[("studentId", STUDENT)]), ReadOptions::default()), vec![1, 3]);
    assert_eq!(read(&store, &types(&["CourseCreatedEvent"]), ReadOptions::default()), vec![2]);
    // The DCB decision a .NET app would make: enrolling the same student twice fails.
    let boundary =
        Query::items(vec![QueryItem::types(&["StudentEnrolledToCourseEvent"])
            .with_tags(&[("studentId", STUDENT), ("courseId", COURSE)])])
        .unwrap();
    let err = store.append(vec![ev("StudentEnrolledToCourseEvent", &[])], cond(boundary, None)).unwrap_err();
    assert!(matches!(err, StoreError::ConditionFailed { position: 3 }));
    // Appending continues the .NET store's positions and index files.
    store.append(vec![ev("CourseCreatedEvent", &[("courseId", "new")])], None).unwrap();
    if !has_tree("opens_a_store_written_by_dotnet_opossum (its tree checks after an append)") {
        return;
    }
    store.sync().unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("Indices/EventType/CourseCreatedEvent.json")).unwrap(),
        r#"{"Positions":[2,4]}"#
    );
    assert_eq!(std::fs::read_to_string(root.join(".ledger")).unwrap(), r#"{"LastSequencePosition":4,"EventCount":4}"#);
}

#[test]
fn index_files_are_rebuilt_when_missing_corrupt_or_behind() {
    if !files_mode("index_files_are_rebuilt_when_missing_corrupt_or_behind", "it tests the files commit protocol's tree handling at open (index files, quarantine), which journal mode replaces with the journal") {
        return;
    }
    let (_dir, root) = fixture_store();
    let expect = |store: &Store| {
        assert_eq!(read(store, &tags(&[("studentId", STUDENT)]), ReadOptions::default()), vec![1, 3]);
        assert_eq!(read(store, &tags(&[("courseId", COURSE)]), ReadOptions::default()), vec![2, 3]);
        assert_eq!(read(store, &types(&["StudentEnrolledToCourseEvent"]), ReadOptions::default()), vec![3]);
    };
    // Missing entirely.
    std::fs::remove_dir_all(root.join("Indices")).unwrap();
    drop(open(&root));
    assert_eq!(
        std::fs::read_to_string(root.join(format!("Indices/Tags/studentId_{STUDENT}.json"))).unwrap(),
        r#"{"Positions":[1,3]}"#
    );
    expect(&open(&root));
    // A corrupt tag index: never read as "empty".
    std::fs::write(root.join(format!("Indices/Tags/courseId_{COURSE}.json")), b"{\"Posit").unwrap();
    expect(&open(&root));
    // A type index behind the ledger (an interrupted deferred flush): the uncovered event is re-indexed.
    std::fs::write(root.join("Indices/EventType/StudentEnrolledToCourseEvent.json"), br#"{"Positions":[]}"#).unwrap();
    std::fs::write(root.join(format!("Indices/Tags/courseId_{COURSE}.json")), br#"{"Positions":[2]}"#).unwrap();
    expect(&open(&root));
    // Positions beyond the ledger in index files (a crash before the ledger write) are dropped.
    std::fs::write(root.join("Indices/EventType/CourseCreatedEvent.json"), br#"{"Positions":[2,4]}"#).unwrap();
    let store = open(&root);
    assert_eq!(read(&store, &types(&["CourseCreatedEvent"]), ReadOptions::default()), vec![2]);
    assert_eq!(
        std::fs::read_to_string(root.join("Indices/EventType/CourseCreatedEvent.json")).unwrap(),
        r#"{"Positions":[2]}"#
    );
}

#[test]
fn files_beyond_the_ledger_are_quarantined_not_served() {
    if !files_mode("files_beyond_the_ledger_are_quarantined_not_served", "it tests the files commit protocol's tree handling at open (index files, quarantine), which journal mode replaces with the journal") {
        return;
    }
    let (_dir, root) = fixture_store();
    let orphan = std::fs::read_to_string(root.join("events/0000000003.json"))
        .unwrap()
        .replace("\"position\": 3", "\"position\": 4");
    std::fs::write(root.join("events/0000000004.json"), &orphan).unwrap();
    std::fs::write(root.join("events/0000000005.json.tmp.0123456789abcdef0123456789abcdef"), b"{\"ev").unwrap();
    let store = open(&root);
    assert_eq!(store.head(), 3);
    assert_eq!(read(&store, &Query::All, ReadOptions::default()), vec![1, 2, 3]);
    assert!(!root.join("events/0000000004.json").exists());
    let quarantined: Vec<PathBuf> = walk(&root.join(".quarantine"));
    let names: Vec<String> =
        quarantined.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.contains(&"0000000004.json".to_string()), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("0000000005.json.tmp.")), "{names:?}");
    let kept = quarantined.iter().find(|p| p.ends_with("0000000004.json")).unwrap();
    assert_eq!(std::fs::read_to_string(kept).unwrap(), orphan, "quarantine keeps the bytes");
    assert_eq!(store.append(vec![ev("A", &[])], None).unwrap().first, 4);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn damage_inside_the_ledger_is_a_loud_error_naming_the_file() {
    let (_dir, root) = fixture_store();
    std::fs::remove_file(root.join("events/0000000002.json")).unwrap();
    match Store::open(&root, options(Durability::None)) {
        Err(StoreError::MissingEvent { path, ledger: 3 }) => assert!(path.ends_with("events/0000000002.json")),
        other => panic!("expected MissingEvent, got {:?}", other.err()),
    }
    let (_dir, root) = fixture_store();
    std::fs::write(root.join(".ledger"), b"{\"LastSequencePos").unwrap();
    match Store::open(&root, options(Durability::None)) {
        Err(StoreError::Corrupt { path, .. }) => assert!(path.ends_with(".ledger")),
        other => panic!("expected a corrupt ledger error, got {:?}", other.err()),
    }
    let (_dir, root) = fixture_store();
    std::fs::write(root.join("events/0000000002.json"), b"{\"event\":").unwrap();
    if commit_mode() == CommitMode::Journal {
        // Journal mode imports every event file at open: the damage stops the open, naming the file.
        match Store::open(&root, options(Durability::None)) {
            Err(e @ StoreError::Corrupt { .. }) => assert!(e.to_string().contains("0000000002.json"), "{e}"),
            other => panic!("expected a corrupt event error, got {:?}", other.err()),
        }
        // A whole event file under another position's name: the import names the file and both positions.
        let (_dir, root) = fixture_store();
        std::fs::copy(root.join("events/0000000003.json"), root.join("events/0000000002.json")).unwrap();
        match Store::open(&root, options(Durability::None)) {
            Err(e @ StoreError::Corrupt { .. }) => {
                let text = e.to_string();
                assert!(text.contains("0000000002.json") && text.contains("position 3"), "{text}");
            }
            other => panic!("expected a corrupt event error, got {:?}", other.err()),
        }
        return;
    }
    let store = open(&root);
    let err = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap_err();
    match &err {
        StoreError::Corrupt { path, .. } => assert!(path.ends_with("events/0000000002.json")),
        other => panic!("expected a corrupt event error, got {other:?}"),
    }
    assert!(err.to_string().contains("0000000002.json"), "{err}");
}

#[test]
fn a_second_writer_process_is_noticed_before_the_condition_check() {
    if !files_mode(
        "a_second_writer_process_is_noticed_before_the_condition_check",
        "the store holds .store.lock from open to close, so a second writer waits for the first to close (design 3.1)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ours = open(dir.path());
    let theirs = open(dir.path()); // stands in for a .NET process: separate lock descriptor, separate index
    ours.append(vec![ev("A", &[])], None).unwrap();
    let seen = theirs.head();
    assert_eq!(seen, 0, "no refresh without the lock");
    let err = theirs.append(vec![ev("A", &[])], cond(types(&["A"]), Some(seen))).unwrap_err();
    assert!(matches!(err, StoreError::ConditionFailed { position: 1 }), "{err:?}");
    assert_eq!(theirs.append(vec![ev("B", &[])], None).unwrap().first, 2);
    // A read notices the moved ledger by itself and picks up the other writer's event.
    assert_eq!(read(&ours, &types(&["B"]), ReadOptions::default()), vec![2]);
    assert_eq!(ours.head(), 2);
    assert_eq!(ours.sync().unwrap(), 2);
    assert_eq!(std::fs::read_to_string(dir.path().join("Indices/EventType/A.json")).unwrap(), r#"{"Positions":[1]}"#);
}

/// The writer's queue is bounded (`APPEND_QUEUE_MAX`): while the writer is stalled (a .NET writer holds
/// `.store.lock`), `try_submit_refs` queues until the queue is full and then hands the append back as `QueueFull`,
/// queuing nothing; `QueueFull::submit` blocks until there is room. Once the lock is released every append, the
/// handed-back one included, commits exactly once, in the order it was submitted.
#[test]
fn a_full_writer_queue_hands_the_append_back_and_submit_waits_for_room() {
    use opossum::store::Submitted;
    if !files_mode(
        "a_full_writer_queue_hands_the_append_back_and_submit_waits_for_room",
        "it stalls the writer by holding .store.lock, which a journal-mode store holds itself from open to close",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    store.append(vec![ev("Before", &[])], None).unwrap();
    let dotnet = common::hold_like_dotnet(dir.path()).expect("the store holds no lock between commits");
    let event = ev("Queued", &[("q", "1")]);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    // The stalled writer takes at most one group's worth out of the queue before it blocks on the lock.
    let attempts_max = opossum::store::APPEND_QUEUE_MAX + opossum::store::GROUP_EVENTS_MAX + 1;
    let mut pending = Vec::new();
    let full = loop {
        assert!(
            pending.len() < attempts_max,
            "{} appends queued behind a stalled writer, the queue never filled",
            pending.len()
        );
        match store.try_submit_refs(&[event.as_ref()], None, None).unwrap() {
            Submitted::Queued(p) => pending.push(p),
            Submitted::QueueFull(full) => break full,
        }
    };
    assert!(pending.len() >= opossum::store::APPEND_QUEUE_MAX, "full after only {} appends", pending.len());
    assert_eq!(store.head(), 1, "nothing commits while the lock is held");
    let queued = pending.len();
    let submitter = {
        let store = store.clone();
        std::thread::spawn(move || full.submit(&store).expect("queued once there is room"))
    };
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(store.head(), 1, "nothing commits while the lock is held");
    drop(dotnet);
    pending.push(submitter.join().unwrap());
    let positions: Vec<u64> = pending
        .into_iter()
        .map(|p| {
            let appended = runtime.block_on(p).expect("committed");
            assert_eq!(appended.first, appended.last);
            appended.first
        })
        .collect();
    let expected: Vec<u64> = (2..=queued as u64 + 2).collect();
    assert_eq!(positions, expected, "every append once, in the order submitted, the handed-back one last");
    assert_eq!(read(&store, &tags(&[("q", "1")]), ReadOptions::default()), expected);
}

#[test]
fn exclusive_opens_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let exclusive = || StoreOptions { exclusive: true, ..options(Durability::None) };
    let first = Store::open(dir.path(), exclusive()).unwrap();
    assert!(matches!(Store::open(dir.path(), exclusive()), Err(StoreError::Locked(_))));
    drop(first);
    // Released at drop. Retried briefly: another test of this binary may be spawning a child process right now
    // (`crash.rs`), and between its fork and exec the child holds a copy of every descriptor, our lock's included
    // (flock belongs to the open file description); exec closes it (O_CLOEXEC).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir.path(), exclusive()) {
            Ok(_) => break,
            Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("the lock was not released by drop: {e}"),
        }
    }
}

#[test]
fn racing_for_one_free_seat_exactly_one_wins() {
    for opts in durable_modes() {
        racing_for_one_free_seat(opts);
    }
}

/// Durable options for both commit shapes: every-commit index files with the ledger renamed, and deferred index
/// files with the ledger overwritten in place.
fn durable_modes() -> [StoreOptions; 2] {
    [options(Durability::Fsync), deferred_durable()]
}

/// Durable, with deferred index writes whose flusher never runs by itself during a test.
fn deferred_durable() -> StoreOptions {
    let deferred = IndexWrites::Deferred { interval: std::time::Duration::from_secs(3600) };
    StoreOptions { index_writes: deferred, ..options(Durability::Fsync) }
}

fn racing_for_one_free_seat(opts: StoreOptions) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts).unwrap());
    store.append(vec![ev("CourseCreated", &[("course", "c1")])], None).unwrap();
    for round in 0..5 {
        let course = format!("seat-{round}");
        let seen = store.head();
        let k = 8;
        let barrier = Arc::new(Barrier::new(k));
        let handles: Vec<_> = (0..k)
            .map(|i| {
                let (store, barrier, course) = (store.clone(), barrier.clone(), course.clone());
                std::thread::spawn(move || {
                    let boundary =
                        Query::items(vec![QueryItem::types(&["SeatTaken"]).with_tags(&[("course", &course)])]).unwrap();
                    barrier.wait();
                    let student = format!("s{i}");
                    store.append(
                        vec![ev("SeatTaken", &[("course", &course), ("student", &student)])],
                        cond(boundary, Some(seen)),
                    )
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {results:?}");
        assert!(results.iter().all(|r| r.is_ok() || matches!(r, Err(StoreError::ConditionFailed { .. }))));
    }
    // Different courses do not conflict: everyone wins.
    let seen = store.head();
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                let course = format!("own-{i}");
                let boundary =
                    Query::items(vec![QueryItem::types(&["SeatTaken"]).with_tags(&[("course", &course)])]).unwrap();
                barrier.wait();
                store
                    .append(vec![ev("SeatTaken", &[("course", &course)]), ev("Extra", &[])], cond(boundary, Some(seen)))
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let all = read(&store, &Query::All, ReadOptions::default());
    assert_eq!(all, (1..=store.head()).collect::<Vec<_>>());
    assert_eq!(store.head(), 1 + 5 + 16);
    // Each two-event append is contiguous.
    let events =
        store.read_to_vec(&types(&["SeatTaken"]), ReadOptions { after: Some(seen), ..Default::default() }).unwrap();
    for e in events {
        let next = store
            .read_to_vec(&Query::All, ReadOptions { after: Some(e.position), limit: Some(1), ..Default::default() })
            .unwrap();
        assert_eq!(next[0].event_type, "Extra");
    }
}

#[test]
fn concurrent_durable_appends_share_group_commits() {
    for opts in durable_modes() {
        concurrent_durable_appends(opts);
    }
}

fn concurrent_durable_appends(opts: StoreOptions) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts).unwrap());
    let threads = 16;
    let per_thread = 20;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..per_thread)
                    .map(|i| {
                        store
                            .append(vec![ev("Tick", &[("t", &t.to_string()), ("i", &i.to_string())])], None)
                            .unwrap()
                            .first
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut firsts: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    firsts.sort();
    assert_eq!(firsts, (1..=(threads * per_thread) as u64).collect::<Vec<_>>());
    let stats = store.stats();
    assert_eq!(stats.appends, (threads * per_thread) as u64);
    assert!(stats.commits < stats.appends / 2, "appends were not grouped: {stats:?}");
}

#[test]
fn reads_stream_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions { read_batch_files: 64, ..options(Durability::None) }).unwrap();
    let batch: Vec<Event> = (0..1000).map(|i| ev(if i % 3 == 0 { "Third" } else { "Other" }, &[])).collect();
    store.append(batch, None).unwrap();
    let mut reader = store.read(&Query::All, ReadOptions::default()).unwrap();
    let mut seen = 0;
    let mut batches = 0;
    while let Some(batch) = reader.next_batch() {
        let batch = batch.unwrap();
        assert!(!batch.is_empty() && batch.len() <= 64);
        assert_eq!(batch[0].position, seen + 1);
        seen += batch.len() as u64;
        batches += 1;
    }
    assert_eq!((seen, batches), (1000, 16));
    let backwards = store.read(&types(&["Third"]), ReadOptions { backwards: true, ..Default::default() }).unwrap();
    let ps: Vec<u64> = backwards.map(|e| e.unwrap().position).collect();
    assert_eq!(ps.len(), 334);
    assert!(ps.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(ps[0], 1000);
}

#[test]
fn deferred_index_writes_are_recovered_from_event_files() {
    if !files_mode(
        "deferred_index_writes_are_recovered_from_event_files",
        "index writes are a files-mode knob; journal mode writes no index files per commit",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deferred = deferred_durable();
    let store = Store::open(dir.path(), deferred.clone()).unwrap();
    store.append(vec![ev("A", &[("k", "1")])], None).unwrap();
    store.append(vec![ev("B", &[("k", "1")])], None).unwrap();
    assert!(!dir.path().join("Indices/EventType/B.json").exists(), "index files are not written per commit");
    // Simulate a crash: the writer never gets to flush (leak the store; its thread waits forever).
    std::mem::forget(store);
    let reopened = open(dir.path());
    assert_eq!(read(&reopened, &tags(&[("k", "1")]), ReadOptions::default()), vec![1, 2]);
    assert_eq!(std::fs::read_to_string(dir.path().join("Indices/Tags/k_1.json")).unwrap(), r#"{"Positions":[1,2]}"#);
    drop(reopened);
    // A clean close flushes.
    let store = Store::open(dir.path(), deferred).unwrap();
    store.append(vec![ev("C", &[])], None).unwrap();
    store.close().unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("Indices/EventType/C.json")).unwrap(), r#"{"Positions":[3]}"#);
}

#[test]
fn reads_noticing_a_changed_ledger_never_flush_index_files() {
    if !files_mode(
        "reads_noticing_a_changed_ledger_never_flush_index_files",
        "the store holds .store.lock from open to close and reads never look at the ledger",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), deferred_durable()).unwrap();
    store.append(vec![ev("A", &[("k", "1")])], None).unwrap();
    store.append(vec![ev("B", &[("k", "1")])], None).unwrap();
    // What a read sees while our own writer is between writing the ledger and noting its new identity: a changed
    // fingerprint, and a ledger that says nothing beyond our head.
    let ledger = std::fs::File::options().write(true).open(dir.path().join(".ledger")).unwrap();
    ledger.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)).unwrap();
    drop(ledger);
    assert_eq!(read(&store, &tags(&[("k", "1")]), ReadOptions::default()), vec![1, 2]);
    let stats = store.stats();
    assert_eq!(stats.index_flushes, 0, "a read flushed the deferred index files: {stats:?}");
    assert!(!dir.path().join("Indices/EventType/B.json").exists());
    // A ledger that did move (another process appended) is still picked up by the next read.
    let theirs = open(dir.path());
    theirs.append(vec![ev("C", &[("k", "1")])], None).unwrap();
    drop(theirs);
    assert_eq!(read(&store, &tags(&[("k", "1")]), ReadOptions::default()), vec![1, 2, 3]);
    assert_eq!(store.stats().index_flushes, 0, "catching up is not flushing");
    store.close().unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("Indices/EventType/B.json")).unwrap(), r#"{"Positions":[2]}"#);
}

/// A store over `FaultyIo` whose writer waits an hour before recovering from a write fault in place (so a test
/// sees the poisoned state for as long as it looks).
fn faulty_store(dir: &Path, index_writes: IndexWrites) -> (Store, Arc<FaultyIo<Arc<dyn BatchIo>>>) {
    faulty_store_recovering_after(dir, index_writes, Duration::from_secs(3600))
}

fn faulty_store_recovering_after(
    dir: &Path,
    index_writes: IndexWrites,
    recovery_backoff_min: Duration,
) -> (Store, Arc<FaultyIo<Arc<dyn BatchIo>>>) {
    let io = Arc::new(FaultyIo::new(backend()));
    let options =
        StoreOptions { io: Some(io.clone()), index_writes, recovery_backoff_min, ..options(Durability::Fsync) };
    (Store::open(dir, options).unwrap(), io)
}

/// Issue 11 items 4 and 5: a create refused before anything was written (too many open files, no inodes) fails
/// only its append; the store stays writable, and the next append takes the same positions (the files the failed
/// batch left beyond the head are set aside).
#[test]
fn a_create_refused_before_writing_fails_the_append_without_poisoning() {
    if !files_mode(
        "a_create_refused_before_writing_fails_the_append_without_poisoning",
        "a journal commit creates no files (journal write faults: journal_faults.rs)",
    ) {
        return;
    }
    let deferred = IndexWrites::Deferred { interval: Duration::from_secs(3600) };
    for index_writes in [IndexWrites::EveryCommit, deferred] {
        for (errno, files_written) in [(libc::EMFILE, 0), (libc::ENFILE, 2), (libc::ENOSPC, 1)] {
            let case = format!("{index_writes:?} errno {errno} after {files_written}");
            let dir = tempfile::tempdir().unwrap();
            let (store, io) = faulty_store(dir.path(), index_writes);
            store.append(vec![ev("A", &[("k", "v")])], None).unwrap();
            io.arm(0, Fault::Open { errno, files_written });
            let batch = vec![ev("B", &[("k", "v")]), ev("B", &[("k", "v")]), ev("B", &[])];
            let err = store.append(batch, None).unwrap_err();
            assert!(matches!(&err, StoreError::Io(e) if e.source.raw_os_error() == Some(errno)), "{case}: {err:?}");
            assert_eq!(store.write_status(), WriteStatus::Writable, "{case}");
            assert!(store.stats().writable && store.stats().poisoned.is_none(), "{case}");
            assert_eq!(read(&store, &tags(&[("k", "v")]), ReadOptions::default()), vec![1], "{case}");
            let next = store.append(vec![ev("C", &[("k", "v")])], None).unwrap();
            assert_eq!((next.first, next.last), (2, 2), "{case}");
            assert_eq!(read(&store, &Query::All, ReadOptions::default()), vec![1, 2], "{case}");
            assert_eq!(read(&store, &tags(&[("k", "v")]), ReadOptions::default()), vec![1, 2], "{case}");
            drop(store);
            let store = open(dir.path());
            let all = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
            assert_eq!(all.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), ["A", "C"], "{case}");
        }
    }
}

/// Issue 11 item 4: running out of descriptors is never a durability fault. A read refused with EMFILE fails that
/// read; a catch-up refused with EMFILE (another process appended) fails that append; neither poisons.
#[test]
fn running_out_of_descriptors_on_reads_fails_only_that_request() {
    if !files_mode("running_out_of_descriptors_on_reads_fails_only_that_request", "journal reads open no files and no other process appends (a journal read error: journal_faults::a_journal_read_error_fails_that_read_and_the_store_stays_writable)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, io) = faulty_store(dir.path(), IndexWrites::EveryCommit);
    store.append(vec![ev("A", &[("k", "v")])], None).unwrap();
    io.arm(0, Fault::Read { errno: libc::EMFILE });
    let refused = store.read_to_vec(&Query::All, ReadOptions::default());
    assert!(matches!(&refused, Err(StoreError::Io(e)) if e.source.raw_os_error() == Some(libc::EMFILE)), "{refused:?}");
    assert_eq!(read(&store, &Query::All, ReadOptions::default()), vec![1]);
    // Another process appends; our writer must read its events before the next commit, and cannot.
    let theirs = open(dir.path());
    theirs.append(vec![ev("B", &[("k", "v")])], None).unwrap();
    drop(theirs);
    io.arm(0, Fault::Read { errno: libc::EMFILE });
    let err = store.append(vec![ev("C", &[("k", "v")])], cond(tags(&[("k", "v")]), Some(1))).unwrap_err();
    assert!(matches!(&err, StoreError::Io(e) if e.source.raw_os_error() == Some(libc::EMFILE)), "{err:?}");
    assert_eq!(store.write_status(), WriteStatus::Writable);
    // Next time the catch-up works: the condition sees their event, and an unconditional append goes on top.
    let err = store.append(vec![ev("C", &[("k", "v")])], cond(tags(&[("k", "v")]), Some(1))).unwrap_err();
    assert!(matches!(err, StoreError::ConditionFailed { position: 2 }), "{err:?}");
    assert_eq!(store.append(vec![ev("C", &[("k", "v")])], None).unwrap().first, 3);
    assert_eq!(read(&store, &tags(&[("k", "v")]), ReadOptions::default()), vec![1, 2, 3]);
}

/// Issue 11 item 5: after a write fault the writer re-runs recovery in place with backoff; once it completes the
/// store takes writes again without a reopen, and the status says so.
#[test]
fn a_poisoned_store_recovers_in_place_and_takes_writes_again() {
    if !files_mode("a_poisoned_store_recovers_in_place_and_takes_writes_again", "a failed journal write or fdatasync poisons the journal until the next open, which recovers it (journal_faults.rs); in-place recovery is files mode's") {
        return;
    }
    let deferred = IndexWrites::Deferred { interval: Duration::from_secs(3600) };
    for index_writes in [IndexWrites::EveryCommit, deferred] {
        for fault in [Fault::Write { errno: libc::ENOSPC, files_written: 1 }, Fault::Fsync { errno: libc::EIO }] {
            let case = format!("{index_writes:?}: {fault:?}");
            let dir = tempfile::tempdir().unwrap();
            let (store, io) = faulty_store_recovering_after(dir.path(), index_writes, Duration::from_millis(1));
            store.append(vec![ev("A", &[("k", "v")])], None).unwrap();
            io.arm(0, fault);
            assert!(store.append(vec![ev("B", &[("k", "v")]); 3], None).is_err(), "{case}");
            let mut status = store.write_status();
            let started = std::time::Instant::now();
            while status != WriteStatus::Writable {
                assert!(matches!(&status, WriteStatus::Unwritable { reason } if !reason.is_empty()), "{case}");
                assert!(started.elapsed() < Duration::from_secs(30), "{case}: never recovered");
                std::thread::sleep(Duration::from_millis(5));
                status = store.write_status();
            }
            let stats = store.stats();
            assert!(stats.writable && stats.recovery_attempts >= 1, "{case}: {stats:?}");
            let next = store.append(vec![ev("C", &[("k", "v")])], None).unwrap();
            let all = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
            let bs = all.iter().filter(|e| e.event_type == "B").count();
            assert!(bs == 0 || bs == 3, "{case}: partial batch visible: {:?}", positions(&all));
            assert_eq!(positions(&all), (1..=next.last).collect::<Vec<_>>(), "{case}");
            assert_eq!(read(&store, &tags(&[("k", "v")]), ReadOptions::default()).len(), 2 + bs, "{case}");
            store.close().unwrap();
        }
    }
}

/// Issue 11 item 2: index files are a derived cache. A deferred flush that fails is logged, counted and retried;
/// appends go on, and close reports the failed final flush without losing anything.
#[test]
fn a_failed_index_flush_never_stops_writes() {
    if !files_mode(
        "a_failed_index_flush_never_stops_writes",
        "journal mode has no deferred index flusher: the mirror writes index files",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deferred = IndexWrites::Deferred { interval: Duration::from_secs(3600) };
    let (store, io) = faulty_store(dir.path(), deferred);
    store.append(vec![ev("A", &[("k", "v")])], None).unwrap();
    io.arm(0, Fault::Write { errno: libc::EIO, files_written: 0 });
    assert!(store.sync().is_ok(), "a sync whose index flush failed still picks up and answers");
    let stats = store.stats();
    assert!(stats.writable && stats.index_write_failures == 1, "{stats:?}");
    store.append(vec![ev("B", &[("k", "v")])], None).unwrap();
    io.arm(0, Fault::Write { errno: libc::EIO, files_written: 0 });
    assert!(matches!(store.close(), Err(StoreError::IndexFlush)));
    let store = open(dir.path());
    assert_eq!(read(&store, &tags(&[("k", "v")]), ReadOptions::default()), vec![1, 2]);
}

#[test]
fn a_failed_write_poisons_the_writer_and_shows_nothing() {
    // Journal mode: the same faults under the journal (`journal::FaultyStorage`): a write that fails before, in
    // the middle of and after the group's bytes, and a failed fdatasync.
    let journal = commit_mode() == CommitMode::Journal;
    // One commit is one write batch: three event files, (every-commit) the index files, then the ledger as its
    // commit record, renamed (every-commit) or overwritten in place (deferred). The flusher's interval is an hour:
    // no index flush takes the armed fault.
    let deferred = IndexWrites::Deferred { interval: std::time::Duration::from_secs(3600) };
    let faults = [
        Fault::Write { errno: libc::ENOSPC, files_written: 0 },
        Fault::Write { errno: libc::ENOSPC, files_written: 1 },
        Fault::Write { errno: libc::EIO, files_written: 3 },
        Fault::Fsync { errno: libc::EIO },
    ];
    let cases: Vec<(IndexWrites, Fault)> =
        [IndexWrites::EveryCommit, deferred].into_iter().flat_map(|mode| faults.map(|f| (mode, f))).collect();
    for (index_writes, fault) in cases {
        let case = format!("{index_writes:?}: {fault:?}");
        let dir = tempfile::tempdir().unwrap();
        let (store, arm): (Arc<Store>, Box<dyn Fn()>) = if journal {
            let (store, storage) = journal_faults::faulty_journal_store(dir.path(), mirror_mode());
            let fault = match fault {
                Fault::Write { errno, files_written: 0 } => JournalFault::Write { errno, bytes_written: 0 },
                Fault::Write { errno, files_written: 1 } => JournalFault::Write { errno, bytes_written: 100 },
                Fault::Write { errno, .. } => JournalFault::Write { errno, bytes_written: usize::MAX },
                Fault::Fsync { errno } => JournalFault::SyncData { errno },
                other => unreachable!("{other:?}"),
            };
            (store, Box::new(move || storage.arm(0, fault)))
        } else {
            let (store, io) = faulty_store(dir.path(), index_writes);
            (Arc::new(store), Box::new(move || io.arm(0, fault)))
        };
        store.append(vec![ev("A", &[("k", "v")])], None).unwrap();
        arm();
        let batch = vec![ev("B", &[("k", "v")]), ev("B", &[("k", "v")]), ev("B", &[])];
        let err = store.append(batch, None).unwrap_err();
        assert!(matches!(err, StoreError::Io(_)), "{case}: {err:?}");
        // Poisoned: no further writes, even ones that would succeed.
        assert!(matches!(store.append(vec![ev("C", &[])], None), Err(StoreError::Poisoned(_))), "{case}");
        assert!(store.stats().poisoned.is_some());
        // Reads keep working and show only acknowledged events.
        assert_eq!(store.head(), 1);
        assert_eq!(read(&store, &Query::All, ReadOptions::default()), vec![1]);
        assert_eq!(read(&store, &tags(&[("k", "v")]), ReadOptions::default()), vec![1]);
        drop(store);
        // Reopening recovers: the batch is either wholly there (its ledger write reached the disk before the
        // fsync error) or wholly absent.
        let store = open(dir.path());
        let all = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
        let bs = all.iter().filter(|e| e.event_type == "B").count();
        assert!(bs == 0 || bs == 3, "{case}: partial batch visible: {:?}", positions(&all));
        assert_eq!(positions(&all), (1..=store.head()).collect::<Vec<_>>());
        assert_eq!(read(&store, &tags(&[("k", "v")]), ReadOptions::default()).len(), 1 + bs.min(2));
        let next = store.append(vec![ev("D", &[])], None).unwrap();
        assert_eq!(next.first, store.head());
    }
}
