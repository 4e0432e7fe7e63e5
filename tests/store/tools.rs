//! The operator tools (`opossum export --opossum`, `opossum verify`) through the library, and the open-time refusal
//! of a tree that contradicts the journal. Journal mode whatever mode the rest of the suite runs in.

use opossum::format::{encode_event, event_file_name, Ledger};
use opossum::journal::{journal_dir, Marks};
use opossum::model::{Event, Query, ReadOptions, Tag};
use opossum::store::tools::{export_tree, verify, ToolError};

use super::when_released;
use opossum::store::{CommitMode, MirrorMode, Store, StoreError, StoreOptions};

use super::journal_mode::{mode, tree};

/// An event with a fixed timestamp, so two stores write the same bytes.
fn fixed(n: u64, ty: &str, tags: &[(&str, &str)]) -> Event {
    let mut e =
        Event::new(ty, &format!(r#"{{"n":{n}}}"#), tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect()).unwrap();
    e.metadata = Some(
        serde_json::value::RawValue::from_string(format!(
            r#"{{"timestamp":"2026-11-29T12:00:00.0000000+00:00","c":{n}}}"#
        ))
        .unwrap(),
    );
    e
}

fn workload(store: &Store) {
    for n in 0..30u64 {
        let tag = format!("{}", n % 4);
        let events = (0..1 + n % 3)
            .map(|i| fixed(n * 10 + i, if n % 2 == 0 { "A" } else { "B x" }, &[("k", &tag), ("all", "1")]))
            .collect();
        store.append(events, None).unwrap();
    }
}

fn no_progress() -> impl FnMut(u64, u64) {
    |_, _| {}
}

#[test]
fn export_writes_exactly_the_tree_files_mode_writes_and_verify_passes_on_it() {
    let files = tempfile::tempdir().unwrap();
    let journal = tempfile::tempdir().unwrap();
    let store = Store::open(files.path(), mode(CommitMode::Files, MirrorMode::Live)).unwrap();
    workload(&store);
    assert_eq!((store.stats().journal_bytes, store.stats().journal_segments), (0, 0), "files mode has no journal");
    store.close().unwrap();
    let store = Store::open(journal.path(), mode(CommitMode::Journal, MirrorMode::Off)).unwrap();
    workload(&store);
    let head = store.head();
    let stats = store.stats();
    assert_eq!(stats.journal_segments, 1, "{stats:?}");
    // Each record holds its event's parts once (the event file is derived from them): less than the event files.
    let files_bytes: u64 =
        tree(files.path()).iter().filter(|f| f.0.starts_with("events/")).map(|f| f.1.len() as u64).sum();
    assert!(stats.journal_bytes > files_bytes / 2 && stats.journal_bytes < files_bytes, "{stats:?} vs {files_bytes}");
    store.close().unwrap();
    assert!(!journal.path().join("events").join(event_file_name(1)).exists(), "--mirror off wrote a tree");

    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("tree");
    let mut seen = Vec::new();
    let exported =
        when_released(|| export_tree(journal.path(), &target, &mut |done, total| seen.push((done, total)))).unwrap();
    assert_eq!(exported.events, head);
    assert_eq!(seen.last(), Some(&(head, head)), "progress ends at the head");
    let (a, b) = (tree(files.path()), tree(&target));
    assert_eq!(a.iter().map(|f| &f.0).collect::<Vec<_>>(), b.iter().map(|f| &f.0).collect::<Vec<_>>());
    for ((name, bytes_a), (_, bytes_b)) in a.iter().zip(&b) {
        assert!(bytes_a == bytes_b, "{name} differs from files mode's");
    }
    assert_eq!(exported.index_files as usize, a.iter().filter(|f| f.0.starts_with("Indices/")).count());

    // A non-empty target is refused and left alone.
    let err = export_tree(journal.path(), &target, &mut no_progress()).unwrap_err();
    assert!(matches!(err, ToolError::NotEmpty(_)), "{err}");
    assert_eq!(tree(&target), b);
    // The mirror off has no tree for these events: verify says so, naming the ledger and the first missing files.
    let report = when_released(|| verify(journal.path(), 5, &mut no_progress())).unwrap();
    assert!(!report.is_consistent());
    assert_eq!(report.differences.len(), 5);
    assert!(report.differences_total > head, "{report:?}");
    assert!(report.differences[0].file.ends_with(".ledger"), "{report:?}");
    assert_eq!(report.differences[1].position, Some(1), "{report:?}");
    assert_eq!(report.differences[1].what, "missing");
    // With the mirror live and a clean stop, the tree is the journal's.
    Store::open(journal.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap().close().unwrap();
    let mut last = (0, 0);
    let report = when_released(|| verify(journal.path(), 5, &mut |done, total| last = (done, total))).unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!((report.head, report.event_files), (head, head));
    assert_eq!(last, (head, head));
    assert_eq!(report.index_files as usize, a.iter().filter(|f| f.0.starts_with("Indices/")).count());
}

#[test]
fn verify_names_each_difference_with_its_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    workload(&store);
    let head = store.head();
    store.close().unwrap();
    assert!(when_released(|| verify(dir.path(), 10, &mut no_progress())).unwrap().is_consistent());
    let root = dir.path();
    let event = |p: u64| root.join("events").join(event_file_name(p));
    // Another event at position 3, position 5 gone, position 8 torn, a file beyond the head, position 4 missing
    // from its type file, position 999 added to a tag file, and a stray index file.
    std::fs::write(event(3), encode_event(3, "Other", &raw(r#"{"n":1}"#), &[], &raw("{}"))).unwrap();
    std::fs::remove_file(event(5)).unwrap();
    std::fs::write(event(8), b"{\"event\":{\"eve").unwrap();
    std::fs::write(event(head + 1), std::fs::read(event(1)).unwrap()).unwrap();
    let type_file = root.join("Indices/EventType/A.json");
    let listed: Vec<u64> = opossum::format::decode_index(&std::fs::read(&type_file).unwrap()).unwrap();
    assert!(listed.contains(&1) && listed.contains(&4) && !listed.contains(&3), "{listed:?}");
    let without_4: Vec<u64> = listed.iter().copied().filter(|&p| p != 4).collect();
    std::fs::write(&type_file, opossum::format::encode_index(&without_4)).unwrap();
    let tag_file = root.join("Indices/Tags/k_1.json");
    let mut with_999 = opossum::format::decode_index(&std::fs::read(&tag_file).unwrap()).unwrap();
    with_999.push(999);
    std::fs::write(&tag_file, opossum::format::encode_index(&with_999)).unwrap();
    std::fs::write(root.join("Indices/EventType/Ghost.json"), opossum::format::encode_index(&[4])).unwrap();

    let report = when_released(|| verify(root, 100, &mut no_progress())).unwrap();
    let found: Vec<(String, Option<u64>)> =
        report.differences.iter().map(|d| (tree_relative(&d.file), d.position)).collect();
    let expected: Vec<(String, Option<u64>)> = vec![
        ("events/0000000003.json".into(), Some(3)),
        ("events/0000000005.json".into(), Some(5)),
        ("events/0000000008.json".into(), Some(8)),
        (format!("events/{}", event_file_name(head + 1)), Some(head + 1)),
        ("Indices/EventType/A.json".into(), Some(4)),
        ("Indices/Tags/k_1.json".into(), Some(999)),
        ("Indices/EventType/Ghost.json".into(), Some(4)),
    ];
    for e in &expected {
        assert!(found.contains(e), "{e:?} not among {report:#?}");
    }
    assert_eq!(report.differences_total, expected.len() as u64, "{report:#?}");
    let what = |file: &str| &report.differences.iter().find(|d| d.file.ends_with(file)).unwrap().what;
    assert!(what("0000000003.json").contains("eventType"), "{}", what("0000000003.json"));
    assert!(what("0000000003.json").contains(".seg offset"), "names the journal record: {}", what("0000000003.json"));
    assert!(what("0000000008.json").contains("not a readable event file"), "{}", what("0000000008.json"));
    // At most N named, all counted.
    let report = when_released(|| verify(root, 2, &mut no_progress())).unwrap();
    assert_eq!((report.differences.len(), report.differences_total), (2, expected.len() as u64));
}

/// `events/...` or `Indices/...` with `/` between components, whatever form of the store's path (canonical or not,
/// `\\?\` on Windows) the report names the file under.
fn tree_relative(file: &std::path::Path) -> String {
    let parts: Vec<String> = file.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let from = parts.iter().rposition(|c| c == "events" || c == "Indices").expect("a file of the tree");
    parts[from..].join("/")
}

fn raw(json: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(json.to_string()).unwrap()
}

#[test]
fn the_tools_refuse_a_store_in_use_or_without_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { exclusive: true, ..mode(CommitMode::Journal, MirrorMode::Live) };
    let store = Store::open(dir.path(), options).unwrap();
    store.append(vec![fixed(1, "A", &[])], None).unwrap();
    let err = verify(dir.path(), 10, &mut no_progress()).unwrap_err();
    assert!(matches!(&err, ToolError::InUse { lock: ".opossumd.lock", .. }), "{err}");
    let out = tempfile::tempdir().unwrap();
    let err = export_tree(dir.path(), &out.path().join("t"), &mut no_progress()).unwrap_err();
    assert!(matches!(&err, ToolError::InUse { .. }), "{err}");
    assert!(!out.path().join("t").exists(), "nothing written for a store in use");
    store.close().unwrap();
    // A store never opened in journal mode has no journal to export from.
    let files = tempfile::tempdir().unwrap();
    Store::open(files.path(), mode(CommitMode::Files, MirrorMode::Live)).unwrap().close().unwrap();
    let err = verify(files.path(), 10, &mut no_progress()).unwrap_err();
    assert!(matches!(&err, ToolError::NoJournal(_)), "{err}");
    assert!(!journal_dir(files.path()).exists(), "verify created no journal");
}

/// Design §3.2: a tree event that contradicts the journal at the same position stops the open with an error naming
/// both files. Here a .NET writer appended to the tree of a `--mirror off` store while the daemon was stopped, at
/// positions the journal already holds.
#[test]
fn a_tree_event_contradicting_the_journal_stops_the_open_naming_both() {
    for mirror in [MirrorMode::Off, MirrorMode::Live] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Off)).unwrap();
        for n in 0..3 {
            store.append(vec![fixed(n, "Ours", &[("k", "v")])], None).unwrap();
        }
        store.close().unwrap();
        let root = dir.path();
        let event = |p: u64| root.join("events").join(event_file_name(p));
        // A torn file alone is no contradiction (a crash under the mirror): the open goes on and re-derives it.
        std::fs::write(event(1), b"{\"event\":").unwrap();
        std::fs::write(root.join(".ledger"), Ledger { last_sequence_position: 1, event_count: 1 }.encode()).unwrap();
        let store = Store::open(root, mode(CommitMode::Journal, mirror)).unwrap();
        assert_eq!(store.read_to_vec(&Query::All, ReadOptions::default()).unwrap().len(), 3);
        store.close().unwrap();
        // Theirs at positions 1 and 2 (the journal holds 1..=3).
        for p in 1..=2 {
            std::fs::write(event(p), encode_event(p, "Theirs", &raw(r#"{"x":1}"#), &[], &raw("{}"))).unwrap();
        }
        std::fs::write(root.join(".ledger"), Ledger { last_sequence_position: 2, event_count: 2 }.encode()).unwrap();
        let marks = journal_dir(root).join("marks");
        let durable_head = Marks::decode(&std::fs::read(&marks).unwrap()).unwrap().durable_head;
        std::fs::write(&marks, Marks { durable_head, mirror_durable: 0 }.encode()).unwrap();
        let err = Store::open(root, mode(CommitMode::Journal, mirror)).err().expect("a contradicting tree");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{mirror:?}: {text}");
        assert!(text.contains(&event_file_name(1)), "{mirror:?}: names the event file: {text}");
        assert!(text.contains("00000000000000000001.seg"), "{mirror:?}: names the journal segment: {text}");
        assert!(text.contains("offset 32"), "{mirror:?}: names the record's offset: {text}");
        assert!(text.contains("eventType"), "{mirror:?}: says what differs: {text}");
        // Nothing was changed: the tree still holds their file.
        assert!(std::fs::read_to_string(event(1)).unwrap().contains("Theirs"));
    }
}

/// The cheap witness after a clean stop: the event file at the ledger's head is compared too.
#[test]
fn a_replaced_event_file_at_the_ledger_head_stops_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    for n in 0..4 {
        store.append(vec![fixed(n, "Ours", &[])], None).unwrap();
    }
    store.close().unwrap();
    let file = dir.path().join("events").join(event_file_name(4));
    std::fs::write(&file, encode_event(4, "Ours", &raw(r#"{"n":"changed"}"#), &[], &raw("{}"))).unwrap();
    let err = Store::open(dir.path(), mode(CommitMode::Journal, MirrorMode::Live)).err().expect("contradiction");
    assert!(err.to_string().contains(&event_file_name(4)) && err.to_string().contains("data"), "{err}");
}

/// Found by the journal crash test: a files-mode writer killed mid-commit leaves event files beyond the ledger and
/// index files already listing their positions. Journal mode, opening next, must set those aside before its own
/// events take the positions, or an index file names the wrong event (`opossum verify` finds it).
#[test]
fn journal_mode_sets_aside_what_a_crashed_files_mode_commit_left_beyond_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Store::open(root, mode(CommitMode::Files, MirrorMode::Live)).unwrap();
    store.append(vec![fixed(1, "A", &[("k", "1")])], None).unwrap();
    store.close().unwrap();
    // The crashed commit of position 2: its event file and its tag file, but not the ledger.
    std::fs::write(
        root.join("events").join(event_file_name(2)),
        encode_event(2, "Lost", &raw("{}"), &[Tag::new("lost", "yes")], &raw("{}")),
    )
    .unwrap();
    std::fs::write(root.join("Indices/Tags/lost_yes.json"), opossum::format::encode_index(&[2])).unwrap();
    std::fs::write(root.join("Indices/EventType/Lost.json"), opossum::format::encode_index(&[2])).unwrap();
    let store = Store::open(root, mode(CommitMode::Journal, MirrorMode::Live)).unwrap();
    assert_eq!(store.append(vec![fixed(2, "B", &[("k", "2")])], None).unwrap().first, 2);
    store.close().unwrap();
    let report = when_released(|| verify(root, 10, &mut no_progress())).unwrap();
    assert!(report.is_consistent(), "{report:#?}");
    assert!(root.join(".quarantine").is_dir(), "the leftover event file is kept aside, not deleted");
}
