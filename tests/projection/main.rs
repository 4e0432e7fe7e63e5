//! The projection store against real files: every operation over both backends (thread pool and io_uring when the
//! kernel allows it), .NET-written fixtures, tag changes, restart persistence, index rebuilds, hostile names,
//! concurrency, group commit, the hot tier (cached reads after puts and deletes, other processes' rewrites), and
//! SIGKILL crashes (`projection/crash.rs`).
//!
//! Stores opened with [`open_with`] use the default cache budget; `OPOSSUM_TEST_PROJECTION_CACHE_BYTES=0 cargo test
//! --test projection` runs the whole suite with the cache off (the cache tests below cover both settings anyway).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use opossum::io::{self, BatchIo, FileWrite, IoBackendKind, IoError};
use opossum::model::Tag;
use opossum::projection::{format, ProjectionError, ProjectionItem, ProjectionOptions, ProjectionStore, Put};
use opossum::store::Durability;
use serde_json::value::RawValue;

#[path = "../common/mod.rs"]
mod common;
use common::copy_dir;

mod crash;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/projections/dotnet-store");

/// The thread pool always; io_uring when the kernel allows it.
pub fn backends() -> Vec<Arc<dyn BatchIo>> {
    let mut out = vec![io::open_backend(IoBackendKind::Threads).unwrap()];
    match io::open_backend(IoBackendKind::Uring) {
        Ok(io) => out.push(io),
        Err(e) => eprintln!("io_uring unavailable, testing the thread pool only: {e}"),
    }
    out
}

/// `OPOSSUM_TEST_PROJECTION_CACHE_BYTES`, else the default budget.
pub fn cache_bytes() -> usize {
    match std::env::var("OPOSSUM_TEST_PROJECTION_CACHE_BYTES") {
        Ok(v) => v.parse().expect("OPOSSUM_TEST_PROJECTION_CACHE_BYTES is a number"),
        Err(_) => opossum::projection::PROJECTION_CACHE_BYTES_DEFAULT,
    }
}

pub fn open_with(root: &Path, io: Arc<dyn BatchIo>, durability: Durability) -> ProjectionStore {
    let options = ProjectionOptions { durability, cache_bytes: cache_bytes(), ..ProjectionOptions::default() };
    ProjectionStore::open(root, io, options).expect("open")
}

/// Every backend, with the cache at its default budget (when the platform has one) and off.
fn backends_and_cache_budgets() -> Vec<(Arc<dyn BatchIo>, usize)> {
    let mut budgets = vec![0];
    if opossum::projection::PROJECTION_CACHE_BYTES_DEFAULT > 0 {
        budgets.push(opossum::projection::PROJECTION_CACHE_BYTES_DEFAULT);
    }
    backends().into_iter().flat_map(|io| budgets.iter().map(move |&b| (io.clone(), b))).collect()
}

fn open_cached(root: &Path, io: Arc<dyn BatchIo>, cache_bytes: usize) -> ProjectionStore {
    let options = ProjectionOptions { durability: Durability::None, cache_bytes, ..ProjectionOptions::default() };
    ProjectionStore::open(root, io, options).expect("open")
}

pub fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_string()).unwrap()
}

pub fn put(projection: &str, key: &str, state: &str, tags: &[(&str, &str)], expected: Option<u64>) -> Put {
    Put {
        projection: projection.into(),
        key: key.into(),
        state: raw(state),
        tags: tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect(),
        expected_version: expected,
    }
}

pub fn keys(items: impl IntoIterator<Item = Result<ProjectionItem, ProjectionError>>) -> Vec<String> {
    items.into_iter().map(|i| i.unwrap().key).collect()
}

fn query_keys(store: &ProjectionStore, projection: &str, tags: &[(&str, &str)]) -> Vec<String> {
    let tags: Vec<Tag> = tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect();
    keys(store.query(projection, &tags).unwrap())
}

/// Tag index files of a projection as on disk: stem → keys.
pub fn tag_files(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let Ok(read) = std::fs::read_dir(dir.join("Indices")) else { return out };
    for entry in read {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = format::parse_json_file_name(&name) {
            let keys = format::decode_tag_index(&std::fs::read(dir.join("Indices").join(&name)).unwrap()).unwrap();
            out.insert(stem.to_string(), keys);
        }
    }
    out
}

/// Wraps a backend and counts `write_files` calls.
struct CountingIo {
    inner: Arc<dyn BatchIo>,
    writes: AtomicUsize,
}

impl BatchIo for CountingIo {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn read_files(&self, paths: &[PathBuf]) -> Vec<Result<Vec<u8>, IoError>> {
        self.inner.read_files(paths)
    }
    fn read_extents(&self, extents: &[opossum::io::Extent<'_>]) -> Vec<Result<Vec<u8>, IoError>> {
        self.inner.read_extents(extents)
    }
    fn write_files(&self, files: &[FileWrite<'_>], durable: bool) -> Result<(), IoError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write_files(files, durable)
    }
}

#[test]
fn put_get_versions_conflicts_delete_and_restart_over_every_backend() {
    for io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let name = io.name();
        let store = open_with(dir.path(), io.clone(), Durability::Fsync);
        assert_eq!(store.put(put("P", "k1", r#"{ "a": 1 }"#, &[("Tier", "Gold")], Some(0))).unwrap(), 1, "{name}");
        assert_eq!(store.put(put("P", "k1", r#"{"a":2}"#, &[("Tier", "Gold")], None)).unwrap(), 2);
        assert_eq!(store.put(put("P", "k1", r#"{"a":3}"#, &[("Tier", "Gold")], Some(2))).unwrap(), 3);
        // Stale and "must not exist" expectations fail with the actual version.
        match store.put(put("P", "k1", r#"{"a":9}"#, &[], Some(2))) {
            Err(ProjectionError::VersionConflict { expected: 2, actual: 3, .. }) => {}
            other => panic!("{name}: {other:?}"),
        }
        assert!(matches!(
            store.put(put("P", "k1", "{}", &[], Some(0))),
            Err(ProjectionError::VersionConflict { expected: 0, actual: 3, .. })
        ));
        assert!(matches!(
            store.put(put("P", "new", "{}", &[], Some(1))),
            Err(ProjectionError::VersionConflict { expected: 1, actual: 0, .. })
        ));
        let item = store.get("P", "k1").unwrap();
        assert_eq!(item.state.get(), r#"{"a":3}"#, "states are stored minified");
        assert_eq!(item.metadata.version, 3);
        assert_eq!(item.tags, Some(vec![Tag::new("Tier", "Gold")]));
        assert_eq!(
            item.metadata.size_in_bytes,
            std::fs::metadata(dir.path().join("Projections/P/k1.json")).unwrap().len()
        );
        assert!(matches!(store.get("P", "nope"), Err(ProjectionError::NotFound { .. })));
        assert!(matches!(store.get("Unknown", "k1"), Err(ProjectionError::NotFound { .. })));

        store.put(put("P", "k2", r#"{"b":1}"#, &[("Tier", "Silver")], None)).unwrap();
        assert!(store.delete("P", "k2").unwrap());
        assert!(!store.delete("P", "k2").unwrap(), "deleting twice is a no-op");
        assert!(matches!(store.get("P", "k2"), Err(ProjectionError::NotFound { .. })));
        assert!(!dir.path().join("Projections/P/k2.json").exists());
        assert!(!dir.path().join("Projections/P/Indices/tier_silver.json").exists(), "emptied tag index removed");
        assert!(query_keys(&store, "P", &[("tier", "silver")]).is_empty());
        // A deleted key starts again at version 1.
        assert_eq!(store.put(put("P", "k2", "{}", &[], Some(0))).unwrap(), 1);

        store.set_checkpoint("P", 17).unwrap();
        assert_eq!(store.checkpoint("P").unwrap().unwrap().last_processed_position, 17);
        assert_eq!(store.checkpoint("Other").unwrap(), None);
        store.close().unwrap();
        assert!(!dir.path().join("Projections/P/Metadata/opossumd.dirty").exists(), "clean close clears the marker");

        // Restart: everything is still there, from the index files (no rebuild after a clean close).
        let store = open_with(dir.path(), io.clone(), Durability::Fsync);
        assert!(store.open_report().rebuilt.is_empty(), "{:?}", store.open_report());
        assert_eq!(store.get("P", "k1").unwrap().metadata.version, 3);
        assert_eq!(store.put(put("P", "k1", "{}", &[("Tier", "Gold")], Some(3))).unwrap(), 4);
        assert_eq!(keys(store.get_all("P").unwrap()), ["k1", "k2"]);
        assert_eq!(query_keys(&store, "P", &[("TIER", "gold")]), ["k1"]);
        assert_eq!(store.checkpoint("P").unwrap().unwrap().last_processed_position, 17);
        let list = store.list();
        assert_eq!((list[0].name.as_str(), list[0].count), ("P", 2));
        // Metadata/index.json agrees.
        let meta = format::decode_metadata_index(
            &std::fs::read(dir.path().join("Projections/P/Metadata/index.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta.keys().collect::<Vec<_>>(), ["k1", "k2"]);
        assert_eq!(meta["k1"].version, 4);
    }
}

#[test]
fn tag_changes_remove_old_tags_and_queries_are_case_insensitive_and() {
    for io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(dir.path(), io, Durability::None);
        store.put(put("S", "a", "{}", &[("Tier", "Basic"), ("Group", "A")], None)).unwrap();
        store.put(put("S", "b", "{}", &[("tier", "BASIC"), ("Group", "B")], None)).unwrap();
        store.put(put("S", "c", "{}", &[("Tier", "Premium"), ("Group", "A")], None)).unwrap();
        assert_eq!(query_keys(&store, "S", &[("TIER", "basic")]), ["a", "b"]);
        assert_eq!(query_keys(&store, "S", &[("tier", "Basic"), ("group", "a")]), ["a"]);
        assert_eq!(query_keys(&store, "S", &[("group", "A")]), ["a", "c"]);
        assert!(query_keys(&store, "S", &[("tier", "basic"), ("group", "c")]).is_empty());
        assert!(query_keys(&store, "Nope", &[("tier", "basic")]).is_empty());
        assert!(matches!(store.query("S", &[]), Err(ProjectionError::Invalid(_))));
        let pdir = dir.path().join("Projections/S");
        let files = tag_files(&pdir);
        assert_eq!(files.keys().collect::<Vec<_>>(), ["group_a", "group_b", "tier_basic", "tier_premium"]);
        assert_eq!(files["tier_basic"], BTreeSet::from(["a".to_string(), "b".to_string()]));

        // a moves from Basic/A to Premium/B: its old tags leave both the query results and the index files.
        store.put(put("S", "a", "{}", &[("Tier", "Premium"), ("Group", "B")], None)).unwrap();
        assert_eq!(query_keys(&store, "S", &[("tier", "basic")]), ["b"]);
        assert_eq!(query_keys(&store, "S", &[("tier", "premium")]), ["a", "c"]);
        assert_eq!(query_keys(&store, "S", &[("group", "a")]), ["c"]);
        let files = tag_files(&pdir);
        assert_eq!(files["tier_basic"], BTreeSet::from(["b".to_string()]));
        assert_eq!(files["group_a"], BTreeSet::from(["c".to_string()]));
        assert_eq!(files["group_b"], BTreeSet::from(["a".to_string(), "b".to_string()]));
        // A put without tags leaves none.
        store.put(put("S", "b", "{}", &[], None)).unwrap();
        assert!(query_keys(&store, "S", &[("tier", "basic")]).is_empty());
        assert!(!pdir.join("Indices/tier_basic.json").exists());
        assert_eq!(store.get("S", "b").unwrap().tags, Some(vec![]));
        drop(store);
        let store = open_with(dir.path(), io_threads(), Durability::None);
        assert_eq!(query_keys(&store, "S", &[("group", "b")]), ["a"]);
    }
}

fn io_threads() -> Arc<dyn BatchIo> {
    io::open_backend(IoBackendKind::Threads).unwrap()
}

#[test]
fn dotnet_fixture_is_read_and_extended() {
    for io in backends() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(Path::new(FIXTURE), dir.path());
        let store = open_with(dir.path(), io.clone(), Durability::Fsync);
        assert!(store.open_report().rebuilt.is_empty(), "a consistent .NET tree is trusted: {:?}", store.open_report());
        let list: Vec<(String, usize)> = store.list().into_iter().map(|s| (s.name, s.count)).collect();
        assert_eq!(list, [("CourseDetails".to_string(), 1), ("StudentShortInfo".to_string(), 4)]);

        let anna = store.get("StudentShortInfo", "0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
        assert_eq!(
            anna.state.get(),
            r#"{"StudentId":"0f8fad5b-d9cb-469f-a165-70867728950e","FirstName":"Anna","LastName":"Kov\u00E1cs","Email":"anna.kovacs@example.com","EnrollmentTier":0,"CurrentEnrollmentCount":1,"MaxEnrollmentCount":2,"IsMaxedOut":false}"#
        );
        assert_eq!(anna.metadata.version, 3);
        assert_eq!(anna.metadata.created_at, "2026-03-11T10:30:00.1234567+00:00");
        assert_eq!(anna.tags, None, ".NET files carry no tags");
        // The CRLF file.
        let chloe = store.get("StudentShortInfo", "a3bb189e-8bf9-3888-9912-ace4e6543002").unwrap();
        assert!(chloe.state.get().contains(r#""LastName":"O\u0027Brien""#), "{}", chloe.state.get());
        let all = keys(store.get_all("StudentShortInfo").unwrap());
        assert_eq!(all.len(), 4);
        assert_eq!(
            query_keys(&store, "StudentShortInfo", &[("EnrollmentTier", "BASIC")]),
            ["0f8fad5b-d9cb-469f-a165-70867728950e", "a3bb189e-8bf9-3888-9912-ace4e6543002"]
        );
        assert_eq!(
            query_keys(&store, "StudentShortInfo", &[("enrollmentTier", "premium"), ("IsMaxedOut", "True")]),
            ["7c9e6679-7425-40de-944b-e07fc1f90ae7"]
        );
        let cp = store.checkpoint("StudentShortInfo").unwrap().unwrap();
        assert_eq!((cp.last_processed_position, cp.total_events_processed), (42, 42));
        assert_eq!(keys(store.get_all("CourseDetails").unwrap()), ["c1"]);

        // Extend it: Anna moves to Premium. Version continues from .NET's, old tag removed from the .NET index.
        let v = store
            .put(put(
                "StudentShortInfo",
                "0f8fad5b-d9cb-469f-a165-70867728950e",
                r#"{"StudentId":"0f8fad5b-d9cb-469f-a165-70867728950e","EnrollmentTier":1}"#,
                &[("EnrollmentTier", "Premium")],
                Some(3),
            ))
            .unwrap();
        assert_eq!(v, 4);
        store.close().unwrap();
        let pdir = dir.path().join("Projections/StudentShortInfo");
        let files = tag_files(&pdir);
        assert_eq!(files["enrollmenttier_basic"], BTreeSet::from(["a3bb189e-8bf9-3888-9912-ace4e6543002".to_string()]));
        assert!(files["enrollmenttier_premium"].contains("0f8fad5b-d9cb-469f-a165-70867728950e"));
        // What we wrote is what .NET reads: a {"Data","Metadata"} wrapper with the four PascalCase fields.
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(pdir.join("0f8fad5b-d9cb-469f-a165-70867728950e.json")).unwrap())
                .unwrap();
        let meta = written["Metadata"].as_object().unwrap();
        for field in ["CreatedAt", "LastUpdatedAt", "Version", "SizeInBytes"] {
            assert!(meta.contains_key(field), "{field} missing in {written}");
        }
        assert_eq!(written["Metadata"]["CreatedAt"], "2026-03-11T10:30:00.1234567+00:00", "creation time is kept");
        assert_eq!(written["Data"]["EnrollmentTier"], 1);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(pdir.join("Metadata/index.json")).unwrap()).unwrap();
        assert_eq!(index["0f8fad5b-d9cb-469f-a165-70867728950e"]["Version"], 4);
        assert_eq!(index.as_object().unwrap().len(), 4);
    }
}

#[test]
fn missing_or_corrupt_indices_are_rebuilt_never_empty() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new(FIXTURE), dir.path());
    let pdir = dir.path().join("Projections/StudentShortInfo");
    // .NET's own rebuild leaves no Metadata/index.json; a torn tag file is worse.
    std::fs::remove_file(pdir.join("Metadata/index.json")).unwrap();
    let store = open_with(dir.path(), io_threads(), Durability::Fsync);
    assert_eq!(store.open_report().rebuilt.len(), 1, "{:?}", store.open_report());
    assert_eq!(store.get("StudentShortInfo", "0f8fad5b-d9cb-469f-a165-70867728950e").unwrap().metadata.version, 3);
    assert_eq!(query_keys(&store, "StudentShortInfo", &[("enrollmenttier", "basic")]).len(), 2, "legacy tags kept");
    drop(store);
    assert!(pdir.join("Metadata/index.json").exists(), "rebuilt index written back");

    // Our own files carry their tags, so even a lost Indices/ comes back.
    let store = open_with(dir.path(), io_threads(), Durability::Fsync);
    store.put(put("Mine", "x", "{}", &[("Color", "Red")], None)).unwrap();
    store.put(put("Mine", "y", "{}", &[("Color", "Red"), ("Size", "L")], None)).unwrap();
    store.close().unwrap();
    let mine = dir.path().join("Projections/Mine");
    std::fs::write(mine.join("Indices/color_red.json"), b"[\"x\", ").unwrap();
    std::fs::remove_file(mine.join("Indices/size_l.json")).unwrap();
    std::fs::write(mine.join("Metadata/index.json"), b"{}").unwrap();
    let store = open_with(dir.path(), io_threads(), Durability::Fsync);
    assert!(store.open_report().rebuilt.iter().any(|(n, _)| n == "Mine"), "{:?}", store.open_report());
    assert_eq!(query_keys(&store, "Mine", &[("color", "red")]), ["x", "y"]);
    assert_eq!(query_keys(&store, "Mine", &[("size", "l")]), ["y"]);
    assert_eq!(keys(store.get_all("Mine").unwrap()), ["x", "y"]);
    drop(store);
    let files = tag_files(&mine);
    assert_eq!(files["color_red"].len(), 2);
    assert_eq!(files["size_l"].len(), 1);

    // A stale index (lists a key whose file is gone) is rebuilt too.
    std::fs::remove_file(mine.join("x.json")).unwrap();
    let store = open_with(dir.path(), io_threads(), Durability::Fsync);
    assert!(!store.open_report().rebuilt.is_empty());
    assert_eq!(query_keys(&store, "Mine", &[("color", "red")]), ["y"]);
    assert_eq!(store.list().iter().find(|s| s.name == "Mine").unwrap().count, 1);
}

#[test]
fn unclean_shutdown_leaves_a_marker_and_open_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), io_threads(), Durability::Fsync);
    store.put(put("P", "a", "{}", &[("T", "1")], None)).unwrap();
    let marker = dir.path().join("Projections/P/Metadata/opossumd.dirty");
    assert!(marker.exists(), "the marker is written before the first change");
    // Simulate a crash after the projection file was renamed but before the indices were: stale indices.
    std::fs::write(dir.path().join("Projections/P/Indices/t_1.json"), b"[]").unwrap();
    std::fs::write(dir.path().join("Projections/P/Metadata/index.json"), b"{}").unwrap();
    std::mem::forget(store); // no clean close: the marker stays
    let store = open_with(dir.path(), io_threads(), Durability::Fsync);
    assert!(store.open_report().rebuilt[0].1.contains("dirty marker"), "{:?}", store.open_report());
    assert!(!marker.exists(), "the rebuild brings the indices up to date and clears the marker");
    assert_eq!(query_keys(&store, "P", &[("t", "1")]), ["a"]);
    assert_eq!(tag_files(&dir.path().join("Projections/P"))["t_1"], BTreeSet::from(["a".to_string()]));
}

#[test]
fn hostile_names_never_create_files_outside_the_store() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("store");
    let store = open_with(&root, io_threads(), Durability::None);
    let hostile_keys =
        ["..", ".", "", " ", "../evil", "../../evil", "/tmp/evil", "a/../../evil", "a\0b", "./x", "e.json.tmp.1"];
    for key in hostile_keys {
        assert!(matches!(store.put(put("P", key, "{}", &[], None)), Err(ProjectionError::InvalidName(_))), "{key:?}");
        assert!(matches!(store.get("P", key), Err(ProjectionError::InvalidName(_))), "{key:?}");
        assert!(matches!(store.delete("P", key), Err(ProjectionError::InvalidName(_))), "{key:?}");
    }
    let hostile_names = ["..", ".", "", "../evil", "/tmp/evil", "a/b", "x\0", "_checkpoints", "P.tmp.abc"];
    for name in hostile_names {
        assert!(matches!(store.put(put(name, "k", "{}", &[], None)), Err(ProjectionError::InvalidName(_))), "{name:?}");
        assert!(matches!(store.set_checkpoint(name, 1), Err(ProjectionError::InvalidName(_))), "{name:?}");
        assert!(store.get_all(name).is_err() && store.checkpoint(name).is_err(), "{name:?}");
    }
    // Sanitised as Opossum does, inside the directory: '/' becomes '_'. Tags too.
    store.put(put("P", "a/b", "{}", &[("../k", "../../v")], None)).unwrap();
    assert_eq!(store.get("P", "a/b").unwrap().key, "a/b");
    assert!(root.join("Projections/P/a_b.json").exists());
    assert!(root.join("Projections/P/Indices/.._k_.._.._v.json").exists());
    // "a_b" would take the same file: refused, and not readable as "a/b"'s state.
    assert!(matches!(store.put(put("P", "a_b", "{}", &[], None)), Err(ProjectionError::KeyCollision { .. })));
    assert!(matches!(store.get("P", "a_b"), Err(ProjectionError::NotFound { .. })));
    store.close().unwrap();
    // Nothing anywhere under the base directory but the store's own tree.
    let mut stack = vec![base.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            assert!(path == root || path.starts_with(root.join("Projections")), "{}", path.display());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    assert!(!Path::new("/tmp/evil.json").exists());
}

#[test]
fn put_many_is_one_durable_write_batch_and_all_or_nothing() {
    let counting = Arc::new(CountingIo { inner: io_threads(), writes: AtomicUsize::new(0) });
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), counting.clone(), Durability::Fsync);
    store.put(put("P", "warm", "{}", &[], None)).unwrap(); // creates the directory and the dirty marker
    let before = counting.writes.load(Ordering::SeqCst);
    let puts: Vec<Put> =
        (0..500).map(|i| put("P", &format!("k{i:03}"), r#"{"n":1}"#, &[("Tier", "x")], None)).collect();
    let versions = store.put_many(puts).unwrap();
    assert_eq!(versions, vec![1; 500]);
    assert_eq!(counting.writes.load(Ordering::SeqCst) - before, 1, "500 puts, one write batch");
    assert_eq!(query_keys(&store, "P", &[("tier", "X")]).len(), 500);
    // One stale put rejects the whole batch.
    let puts = vec![put("P", "k000", "{}", &[], Some(1)), put("P", "k001", "{}", &[], Some(7))];
    assert!(matches!(store.put_many(puts), Err(ProjectionError::VersionConflict { expected: 7, actual: 1, .. })));
    assert_eq!(store.get("P", "k000").unwrap().metadata.version, 1, "nothing of a rejected batch is applied");
    // Within one batch later puts see earlier ones.
    let puts = vec![put("P", "n", "{}", &[], Some(0)), put("P", "n", "{}", &[], Some(1))];
    assert_eq!(store.put_many(puts).unwrap(), [1, 2]);
    assert!(matches!(
        store.put_many((0..10_001).map(|i| put("P", &i.to_string(), "{}", &[], None)).collect()),
        Err(ProjectionError::LimitExceeded { limit: "PUT_MANY_MAX", value: 10_001, max: 10_000, .. })
    ));
}

#[test]
fn get_all_streams_in_bounded_batches_over_every_backend() {
    for io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let options =
            ProjectionOptions { durability: Durability::None, read_batch_files: 7, cache_bytes: cache_bytes() };
        let store = ProjectionStore::open(dir.path(), io.clone(), options).unwrap();
        let puts: Vec<Put> = (0..50)
            .map(|i| {
                put(
                    "P",
                    &format!("k{i:02}"),
                    &format!(r#"{{"i":{i}}}"#),
                    &[("Even", if i % 2 == 0 { "yes" } else { "no" })],
                    None,
                )
            })
            .collect();
        store.put_many(puts).unwrap();
        let mut reader = store.get_all("P").unwrap();
        assert_eq!(reader.len_hint(), 50);
        let mut seen = Vec::new();
        while let Some(batch) = reader.next_batch() {
            let batch = batch.unwrap();
            assert!(!batch.is_empty() && batch.len() <= 7, "{}", batch.len());
            seen.extend(batch.into_iter().map(|i| (i.key, i.state.get().to_string())));
        }
        assert_eq!(seen.len(), 50, "{}", io.name());
        assert_eq!(seen[13], ("k13".to_string(), r#"{"i":13}"#.to_string()));
        let even = keys(store.query("P", &[Tag::new("even", "YES")]).unwrap());
        assert_eq!(even.len(), 25);
        // A key deleted after the read started is skipped, not an error.
        let mut reader = store.get_all("P").unwrap();
        store.delete("P", "k49").unwrap();
        let mut n = 0;
        while let Some(batch) = reader.next_batch() {
            n += batch.unwrap().len();
        }
        assert_eq!(n, 49);
    }
}

#[test]
#[cfg_attr(
    windows,
    ignore = "Wine 8: renaming over a file another thread holds open fails with ERROR_ACCESS_DENIED (std falls back \
              to FileRenameInfoEx with POSIX semantics, which NTFS on Windows 10 1809+ has and Wine lacks)"
)]
fn concurrent_writers_from_many_threads_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open_with(dir.path(), io_threads(), Durability::Fsync));
    let threads = 8;
    let per_thread = 25;
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = store.clone();
            s.spawn(move || {
                for i in 0..per_thread {
                    store.put(put("P", &format!("t{t}-{i}"), "{}", &[("Thread", &t.to_string())], Some(0))).unwrap();
                    // Everyone also bumps one shared counter with optimistic concurrency, retrying on conflict.
                    loop {
                        let v = store.get("P", "counter").map(|i| i.metadata.version).unwrap_or(0);
                        match store.put(put("P", "counter", &format!(r#"{{"v":{}}}"#, v + 1), &[], Some(v))) {
                            Ok(_) => break,
                            Err(ProjectionError::VersionConflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    assert_eq!(store.get("P", "counter").unwrap().metadata.version, (threads * per_thread) as u64);
    assert_eq!(keys(store.get_all("P").unwrap()).len(), threads * per_thread + 1);
    for t in 0..threads {
        assert_eq!(query_keys(&store, "P", &[("thread", &t.to_string())]).len(), per_thread);
    }
}

fn states(items: impl IntoIterator<Item = Result<ProjectionItem, ProjectionError>>) -> Vec<(String, String, u64)> {
    items
        .into_iter()
        .map(|i| {
            let i = i.unwrap();
            (i.key, i.state.get().to_string(), i.metadata.version)
        })
        .collect()
}

#[test]
fn cached_reads_follow_puts_and_deletes_with_and_without_the_cache() {
    for (io, budget) in backends_and_cache_budgets() {
        let name = format!("{} cache {budget}", io.name());
        let dir = tempfile::tempdir().unwrap();
        let store = open_cached(dir.path(), io.clone(), budget);
        store.put(put("P", "k1", r#"{"v":1}"#, &[("T", "a")], None)).unwrap();
        store.put(put("P", "k2", r#"{"v":1}"#, &[("T", "a")], None)).unwrap();
        for _ in 0..2 {
            assert_eq!(store.get("P", "k1").unwrap().state.get(), r#"{"v":1}"#, "{name}");
            assert_eq!(states(store.get_all("P").unwrap())[0], ("k1".into(), r#"{"v":1}"#.into(), 1), "{name}");
        }
        // A cached get after a put returns the new version, through every read.
        store.put(put("P", "k1", r#"{"v":2}"#, &[("T", "a")], None)).unwrap();
        let item = store.get("P", "k1").unwrap();
        assert_eq!((item.state.get(), item.metadata.version), (r#"{"v":2}"#, 2), "{name}");
        let expected = vec![("k1".to_string(), r#"{"v":2}"#.to_string(), 2), ("k2".into(), r#"{"v":1}"#.into(), 1)];
        assert_eq!(states(store.get_all("P").unwrap()), expected, "{name}");
        assert_eq!(states(store.query("P", &[Tag::new("T", "a")]).unwrap()), expected, "{name}");
        // put_many too.
        store.put_many(vec![put("P", "k1", r#"{"v":3}"#, &[], None), put("P", "k2", r#"{"v":3}"#, &[], None)]).unwrap();
        assert_eq!(store.get("P", "k2").unwrap().state.get(), r#"{"v":3}"#, "{name}");
        let expected = vec![("k1".to_string(), r#"{"v":3}"#.to_string(), 3), ("k2".into(), r#"{"v":3}"#.into(), 2)];
        assert_eq!(states(store.get_all("P").unwrap()), expected, "{name}");
        assert!(query_keys(&store, "P", &[("T", "a")]).is_empty(), "{name}");
        // Delete, then get: not_found; get_all: gone.
        assert!(store.delete("P", "k1").unwrap());
        assert!(matches!(store.get("P", "k1"), Err(ProjectionError::NotFound { .. })), "{name}");
        assert_eq!(keys(store.get_all("P").unwrap()), vec!["k2"], "{name}");
        store.put(put("P", "k1", r#"{"v":4}"#, &[], None)).unwrap();
        assert_eq!(store.get("P", "k1").unwrap().metadata.version, 1, "{name}");
        let stats = store.cache_stats();
        if budget == 0 {
            assert_eq!(stats, Default::default(), "{name}");
        } else {
            assert!(stats.hits > 0 && stats.entries == 2 && stats.bytes > 0, "{name}: {stats:?}");
            assert!(stats.bytes <= stats.budget_bytes, "{name}: {stats:?}");
        }
        store.close().unwrap();
        // After a restart the cache is empty: reads fill it from disk (a file is admitted on its second read).
        let store = open_cached(dir.path(), io, budget);
        for _ in 0..3 {
            assert_eq!(keys(store.get_all("P").unwrap()), vec!["k1", "k2"], "{name}");
        }
        let stats = store.cache_stats();
        if budget > 0 {
            assert_eq!((stats.misses, stats.hits, stats.entries), (4, 2, 2), "{name}: {stats:?}");
        }
    }
}

/// Another process rewrites a cached projection file in place (same inode): the next read sees it.
#[cfg(target_os = "linux")]
#[test]
fn another_process_rewriting_a_cached_file_is_seen_by_the_next_read() {
    use std::os::unix::fs::MetadataExt;
    for (io, budget) in backends_and_cache_budgets() {
        let name = format!("{} cache {budget}", io.name());
        let dir = tempfile::tempdir().unwrap();
        let store = open_cached(dir.path(), io.clone(), budget);
        let tags = [("T", "a")];
        store.put(put("P", "k1", r#"{"v":1}"#, &tags, None)).unwrap();
        store.put(put("P", "k2", r#"{"v":1}"#, &tags, None)).unwrap();
        // Cached by the writer, and by a read (k2 read twice more after a restart).
        store.close().unwrap();
        let store = open_cached(dir.path(), io.clone(), budget);
        store.put(put("P", "k1", r#"{"v":2}"#, &tags, None)).unwrap();
        for _ in 0..3 {
            assert_eq!(store.get("P", "k2").unwrap().state.get(), r#"{"v":1}"#);
        }
        let hits_before = store.cache_stats().hits;
        assert_eq!(store.get("P", "k1").unwrap().state.get(), r#"{"v":2}"#);
        if budget > 0 {
            assert_eq!(store.cache_stats().hits, hits_before + 1, "{name}: k1 is served from memory");
        }
        let rewrite = |key: &str, state: &str| {
            let path = dir.path().join("Projections/P").join(format!("{key}.json"));
            let inode = std::fs::metadata(&path).unwrap().ino();
            let meta = format::ProjectionMetadata {
                created_at: "2024-01-01T00:00:00.0000000+00:00".into(),
                last_updated_at: "2024-01-02T00:00:00.0000000+00:00".into(),
                version: 9,
                size_in_bytes: 0,
            };
            let tags = [Tag::new("T", "a")];
            std::fs::write(&path, format::encode_projection(key, &raw(state), &meta, &tags)).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode, "rewritten in place");
        };
        rewrite("k1", r#"{"v":"external"}"#);
        let item = store.get("P", "k1").unwrap();
        assert_eq!((item.state.get(), item.metadata.version), (r#"{"v":"external"}"#, 9), "{name}");
        rewrite("k2", r#"{"v":"external"}"#);
        let all = states(store.get_all("P").unwrap());
        assert_eq!(all[1], ("k2".to_string(), r#"{"v":"external"}"#.to_string(), 9), "{name}");
        assert_eq!(states(store.query("P", &[Tag::new("T", "a")]).unwrap()), all, "{name}");
        rewrite("k1", r#"{"v":"again"}"#);
        assert_eq!(states(store.get_all("P").unwrap())[0].1, r#"{"v":"again"}"#, "{name}");
        if budget > 0 {
            assert!(store.cache_stats().invalidations >= 2, "{name}: {:?}", store.cache_stats());
        }
    }
}

/// Issue 11 item 1: a rebuild never deletes a temporary file silently: it is set aside in the store's
/// `.quarantine/`.
#[test]
fn a_rebuild_sets_temporary_index_files_aside() {
    let dir = tempfile::tempdir().unwrap();
    let io = backends().remove(0);
    let store = open_with(dir.path(), io.clone(), Durability::Fsync);
    store.put(put("P", "k1", "{}", &[("mail", "ada")], None)).unwrap();
    store.close().unwrap();
    let indices = dir.path().join("Projections/P/Indices");
    let leftover = format!("mail_x.json{}0123456789abcdef0123456789abcdef", opossum::format::TMP_MARKER);
    std::fs::write(indices.join(&leftover), b"[\"k").unwrap();
    std::fs::write(dir.path().join("Projections/P/Metadata/opossumd.dirty"), b"").unwrap();
    let store = open_with(dir.path(), io, Durability::Fsync);
    assert!(!indices.join(&leftover).exists());
    let quarantined: Vec<PathBuf> = std::fs::read_dir(dir.path().join(".quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path().join("Projections/P/Indices").join(&leftover))
        .collect();
    assert!(quarantined.iter().any(|p| p.exists()), "{quarantined:?}");
    assert_eq!(query_keys(&store, "P", &[("mail", "ada")]), ["k1"]);
}
