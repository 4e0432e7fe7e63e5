//! What the Windows build relies on, checked on every platform (and under Wine by `test-windows.sh`): index file
//! names under the platform's naming rules, stores carried between platforms (a fixture .NET wrote on Windows, and
//! a store this build wrote on Linux opened under Wine), and a daemon round trip over the platform's transport (a
//! Unix socket, or a named pipe on Windows), with the real `opossumd` binary on a temporary store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opossum::client::Client;
use opossum::format::{self, NamingRules};
use opossum::model::{AppendCondition, Event, Query, QueryItem, ReadOptions, Tag};
use opossum::store::{CommitMode, MirrorMode, Store, StoreError, StoreOptions};

#[path = "common/mod.rs"]
mod common;
use common::{copy_dir, hold_like_dotnet};

/// How long a daemon may take to start serving (Wine starts slowly).
const START_DEADLINE: Duration = Duration::from_secs(60);

fn tag_query(key: &str, value: &str) -> Query {
    Query::items(vec![QueryItem::tags(&[(key, value)])]).unwrap()
}

fn event(tags: &[(&str, &str)]) -> Event {
    Event::new("Clocked", r#"{"n":1}"#, tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect()).unwrap()
}

fn tag_index_names(root: &Path) -> Vec<String> {
    let dir = root.join(format::INDICES_DIR).join(format::TAG_INDEX_DIR);
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// A tag whose value NTFS refuses in a file name (`:`, `?`) is indexed under a name legal on this platform, and
/// a query for it finds exactly its events, also when another tag maps to the same index file (Windows: `12:30`
/// and `12?30` both become `time_12_30.json`; the read post-filters on the exact tag).
#[test]
fn tags_with_characters_ntfs_refuses_are_indexed_under_legal_names_and_found_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    store.append(vec![event(&[("time", "12:30")])], None).unwrap();
    store.append(vec![event(&[("time", "12?30")])], None).unwrap();
    store.append(vec![event(&[("ask", "why?")])], None).unwrap();
    store.sync().unwrap();

    let names = tag_index_names(dir.path());
    for name in &names {
        assert!(!name.chars().any(|c| NamingRules::NATIVE.is_invalid_char(c)), "illegal index file name {name:?}");
    }
    let colon = format::index_file_name(&NamingRules::NATIVE.event_tag_stem(&Tag::new("time", "12:30")));
    assert!(names.contains(&colon), "{colon} not among {names:?}");
    if cfg!(windows) {
        assert!(names.contains(&"time_12_30.json".to_string()) && names.contains(&"ask_why.json".to_string()));
    }

    let positions = |q: &Query| -> Vec<u64> {
        store.read_to_vec(q, ReadOptions::default()).unwrap().iter().map(|e| e.position).collect()
    };
    assert_eq!(positions(&tag_query("time", "12:30")), vec![1]);
    assert_eq!(positions(&tag_query("time", "12?30")), vec![2]);
    assert_eq!(positions(&tag_query("ask", "why?")), vec![3]);
    assert_eq!(positions(&tag_query("time", "12_30")), Vec::<u64>::new());
    store.close().unwrap();

    // And again after a restart, from the index files alone.
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let read = store.read_to_vec(&tag_query("time", "12:30"), ReadOptions::default()).unwrap();
    assert_eq!(read.iter().map(|e| e.position).collect::<Vec<_>>(), vec![1]);
}

/// Where a test daemon listens: a socket file in its directory, or a pipe name unique to this process and test.
fn endpoint(dir: &Path, test: &str) -> PathBuf {
    if cfg!(windows) {
        PathBuf::from(format!(r"\\.\pipe\opossumd-test-{}-{test}", std::process::id()))
    } else {
        dir.join("opossum.sock")
    }
}

struct Daemon(Child);

impl Daemon {
    fn start(data: &Path, endpoint: &Path) -> Daemon {
        let child = common::spawn_retrying(
            Command::new(env!("CARGO_BIN_EXE_opossumd"))
                .arg("--data")
                .arg(data)
                .arg("--socket")
                .arg(endpoint)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        );
        Daemon(child)
    }

    /// Connects once the daemon serves (no readiness notification on Windows: connecting is the check).
    fn connect(&mut self, endpoint: &Path) -> Client {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match Client::connect(endpoint) {
                Ok(client) => return client,
                Err(e) => {
                    if let Some(status) = self.0.try_wait().unwrap() {
                        panic!("opossumd exited with {status} before serving: {e}");
                    }
                    assert!(Instant::now() < deadline, "opossumd did not serve within {START_DEADLINE:?}: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn daemon_round_trip_over_the_platform_transport() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let endpoint = endpoint(dir.path(), "round-trip");
    let mut daemon = Daemon::start(&data, &endpoint);
    let mut client = daemon.connect(&endpoint);
    client.hello().unwrap();
    assert_eq!(client.head().unwrap(), 0);
    let appended = client.append(vec![event(&[("time", "12:30")]), event(&[("time", "12?30")])], None).unwrap();
    assert_eq!(appended.head, 2);
    let read: Vec<u64> = client
        .read(&tag_query("time", "12?30"), ReadOptions::default())
        .unwrap()
        .map(|e| e.unwrap().position)
        .collect();
    assert_eq!(read, vec![2]);

    // A second connection at once: the listener serves more than one client (a fresh pipe instance per client).
    let mut second = daemon.connect(&endpoint);
    assert_eq!(second.head().unwrap(), 2);
    assert_eq!(client.head().unwrap(), 2);

    // A second daemon on the same endpoint is refused, and the first keeps serving.
    let other = dir.path().join("other-data");
    let refused = Command::new(env!("CARGO_BIN_EXE_opossumd"))
        .arg("--data")
        .arg(&other)
        .arg("--socket")
        .arg(&endpoint)
        .stdout(Stdio::null())
        .output()
        .expect("start a second opossumd");
    assert_eq!(refused.status.code(), Some(1), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!other.exists(), "the refused daemon created its store directory");
    assert_eq!(second.head().unwrap(), 2);
}

/// A copy of `tests/fixtures/windows-store`: a store laid out as .NET Opossum on Windows writes it (indented JSON
/// with CRLF, index files named under the Windows rules): events 1 `OrderPlaced` {region=eu:west, slot=12:30},
/// 2 `OrderPlaced` {region=eu?west, slot=12:30}, 3 `Billing:InvoiceIssued` {region=eu_west, customer=c:1},
/// 4 `OrderPlaced` {region=us:east, slot=12?30}. Events 1-3 share `Tags/region_eu_west.json`; 1, 2 and 4 share
/// `Tags/slot_12_30.json`; the type `Billing:InvoiceIssued` is `EventType/Billing_InvoiceIssued.json`.
fn windows_fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/windows-store"), &root);
    (dir, root)
}

fn positions_of(store: &Store, query: &Query) -> Vec<u64> {
    store.read_to_vec(query, ReadOptions::default()).unwrap().iter().map(|e| e.position).collect()
}

fn type_query(event_type: &str) -> Query {
    Query::items(vec![QueryItem::types(&[event_type])]).unwrap()
}

fn fails_at(result: Result<opossum::store::Appended, StoreError>) -> u64 {
    match result {
        Err(StoreError::ConditionFailed { position }) => position,
        other => panic!("expected a failed condition, got {other:?}"),
    }
}

/// Queries and append conditions on the Windows fixture, exact despite the shared index files.
fn check_windows_fixture_answers(store: &Store) {
    assert_eq!(store.head(), 4);
    assert_eq!(positions_of(store, &tag_query("region", "eu:west")), vec![1]);
    assert_eq!(positions_of(store, &tag_query("region", "eu?west")), vec![2]);
    assert_eq!(positions_of(store, &tag_query("region", "eu_west")), vec![3]);
    assert_eq!(positions_of(store, &tag_query("slot", "12:30")), vec![1, 2]);
    assert_eq!(positions_of(store, &tag_query("slot", "12?30")), vec![4]);
    assert_eq!(positions_of(store, &tag_query("customer", "c:1")), vec![3]);
    assert_eq!(positions_of(store, &tag_query("customer", "c_1")), Vec::<u64>::new());
    assert_eq!(positions_of(store, &type_query("Billing:InvoiceIssued")), vec![3]);
    assert_eq!(positions_of(store, &type_query("Billing_InvoiceIssued")), Vec::<u64>::new());
    let both =
        Query::items(vec![QueryItem::types(&["OrderPlaced"]).with_tags(&[("region", "eu?west"), ("slot", "12:30")])]);
    assert_eq!(positions_of(store, &both.unwrap()), vec![2]);
    // The DCB decisions a .NET app would make on this store.
    let cond = |key: &str, value: &str, after: Option<u64>| {
        Some(AppendCondition { fail_if_events_match: tag_query(key, value), after })
    };
    assert_eq!(fails_at(store.append(vec![event(&[])], cond("region", "eu?west", None))), 2);
    assert_eq!(fails_at(store.append(vec![event(&[])], cond("slot", "12?30", Some(3)))), 4);
    assert_eq!(fails_at(store.append(vec![event(&[])], cond("customer", "c:1", Some(2)))), 3);
    assert_eq!(store.head(), 4, "failed conditions append nothing");
}

/// Issue 16: a store .NET Opossum wrote on Windows (tags with `:` and `?`, index files under the Windows rules)
/// answers tag queries and conditions correctly here, in both commit modes; on Linux, where the Windows stems are
/// not this platform's, a lookup tries both rules' stems.
#[test]
fn a_store_dotnet_wrote_on_windows_answers_tag_queries_and_conditions_here() {
    let modes = [(CommitMode::Files, MirrorMode::Live), (CommitMode::Journal, MirrorMode::Off)];
    for (commit, mirror) in modes {
        let (_dir, root) = windows_fixture();
        let store = Store::open(&root, StoreOptions { commit, mirror, ..StoreOptions::default() }).unwrap();
        check_windows_fixture_answers(&store);
        // A new event with a colliding tag joins the answers, and the store opens again from its files.
        store.append(vec![event(&[("region", "eu:west")])], None).unwrap();
        assert_eq!(positions_of(&store, &tag_query("region", "eu:west")), vec![1, 5], "{commit:?}");
        store.close().unwrap();
        let store = Store::open(&root, StoreOptions { commit, mirror, ..StoreOptions::default() }).unwrap();
        assert_eq!(positions_of(&store, &tag_query("region", "eu:west")), vec![1, 5], "{commit:?}");
        assert_eq!(positions_of(&store, &tag_query("region", "eu_west")), vec![3], "{commit:?}");
        store.close().unwrap();
    }
    // Nothing on disk said which rules wrote the fixture, so the store took this platform's (a .NET process here
    // sharing it finds the new event's index file where it looks) and recorded them.
    let (_dir, root) = windows_fixture();
    Store::open(&root, StoreOptions::default()).unwrap().close().unwrap();
    let recorded = std::fs::read_to_string(root.join(".opossumd").join("naming-rules")).unwrap();
    assert_eq!(NamingRules::parse(&recorded), Some(NamingRules::NATIVE));
}

/// A store recorded as written under the Windows rules (as the daemon records it on Windows) keeps them when it is
/// written on Linux: the new event's tag `eu:west` goes to `region_eu_west.json`, and no index file name holds a
/// character NTFS refuses, so the store can be copied back.
#[test]
fn a_store_recorded_with_windows_rules_keeps_them_on_every_platform() {
    let (_dir, root) = windows_fixture();
    std::fs::create_dir_all(root.join(".opossumd")).unwrap();
    std::fs::write(root.join(".opossumd").join("naming-rules"), "windows\n").unwrap();
    let store = Store::open(&root, StoreOptions::default()).unwrap();
    store.append(vec![event(&[("region", "eu:west"), ("at", "12:45")])], None).unwrap();
    let mut ev = event(&[]);
    ev.event_type = "Billing:InvoiceIssued".into();
    store.append(vec![ev], None).unwrap();
    assert_eq!(positions_of(&store, &tag_query("region", "eu:west")), vec![1, 5]);
    assert_eq!(positions_of(&store, &type_query("Billing:InvoiceIssued")), vec![3, 6]);
    store.close().unwrap();
    let names = tag_index_names(&root);
    assert!(names.contains(&"at_12_45.json".to_string()), "{names:?}");
    let list = |rel: &str| format::decode_index(&std::fs::read(root.join(rel)).unwrap()).unwrap();
    assert_eq!(list("Indices/Tags/region_eu_west.json"), vec![1, 2, 3, 5]);
    assert_eq!(list("Indices/EventType/Billing_InvoiceIssued.json"), vec![3, 6]);
    for dir in [format::TAG_INDEX_DIR, format::EVENT_TYPE_INDEX_DIR] {
        for entry in std::fs::read_dir(root.join(format::INDICES_DIR).join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(!name.chars().any(|c| NamingRules::Windows.is_invalid_char(c)), "{name} is illegal on NTFS");
        }
    }
}

/// Issue 16: the store and a .NET writer exclude each other on `.store.lock`: an append waits while .NET holds the
/// lock and goes through once it is released; a store in journal mode holds it from open to close, so .NET cannot
/// take it meanwhile and can once the store is closed.
#[test]
fn the_store_lock_excludes_a_dotnet_writer_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    // Files mode: the store takes the lock per commit (journal mode holds it from open to close: below).
    let files = StoreOptions { commit: CommitMode::Files, ..StoreOptions::default() };
    let store = std::sync::Arc::new(Store::open(&root, files).unwrap());
    let dotnet = hold_like_dotnet(&root).expect("the store holds no lock between commits");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let appender = {
        let store = store.clone();
        std::thread::spawn(move || done_tx.send(store.append(vec![event(&[("k", "v")])], None).map(|a| a.last)))
    };
    // Fails only if the append did not wait (a lock that does not exclude); a slow machine can only make it pass.
    assert!(done_rx.recv_timeout(Duration::from_millis(500)).is_err(), "the append did not wait for the lock");
    drop(dotnet);
    assert_eq!(done_rx.recv_timeout(START_DEADLINE).unwrap().unwrap(), 1);
    appender.join().unwrap().unwrap();
    std::sync::Arc::try_unwrap(store).ok().unwrap().close().unwrap();

    let journal = StoreOptions { commit: CommitMode::Journal, mirror: MirrorMode::Off, ..StoreOptions::default() };
    let store = Store::open(&root, journal).unwrap();
    assert!(hold_like_dotnet(&root).is_err(), "a .NET writer took the lock of a store in journal mode");
    store.close().unwrap();
    drop(hold_like_dotnet(&root).expect("the lock is free once the store is closed"));
}

/// A directory for [`a_store_written_on_linux_opens_under_wine`]: on Unix the test writes its store there (CI's
/// Linux step), on Windows it opens the store it finds there (CI's Wine step, on the same directory).
const LINUX_STORE_ENV: &str = "OPOSSUM_TEST_LINUX_STORE";

/// What the Linux side writes: index files named under the Unix rules (`time_12:30.json`, `Ns:Clocked.json`).
fn write_linux_store(root: &Path) {
    let store = Store::open(root, StoreOptions::default()).unwrap();
    let mut clocked = event(&[("time", "12:30"), ("who", "ada")]);
    clocked.event_type = "Ns:Clocked".into();
    store.append(vec![clocked], None).unwrap();
    store.append(vec![event(&[("time", "12?30")]), event(&[("time", "12_30")])], None).unwrap();
    store.close().unwrap();
}

/// Checks a store [`write_linux_store`] wrote, opened on this platform: its queries and conditions, and one more
/// append with a tag that needs a rule-dependent name.
fn check_linux_store(root: &Path) {
    let store = Store::open(root, StoreOptions::default()).unwrap();
    assert_eq!(store.head(), 3);
    assert_eq!(positions_of(&store, &tag_query("time", "12:30")), vec![1]);
    assert_eq!(positions_of(&store, &tag_query("time", "12?30")), vec![2]);
    assert_eq!(positions_of(&store, &tag_query("time", "12_30")), vec![3]);
    assert_eq!(positions_of(&store, &type_query("Ns:Clocked")), vec![1]);
    let cond = Some(AppendCondition { fail_if_events_match: tag_query("time", "12:30"), after: None });
    assert_eq!(fails_at(store.append(vec![event(&[])], cond)), 1);
    store.append(vec![event(&[("time", "12:30")])], None).unwrap();
    assert_eq!(positions_of(&store, &tag_query("time", "12:30")), vec![1, 4]);
    store.close().unwrap();
    let store = Store::open(root, StoreOptions::default()).unwrap();
    assert_eq!(positions_of(&store, &tag_query("time", "12:30")), vec![1, 4]);
    assert_eq!(positions_of(&store, &tag_query("time", "12_30")), vec![3]);
    store.close().unwrap();
}

/// Issue 16: a store written on Linux (index files named under the Unix rules, `:` in names) opens under Wine and
/// answers correctly. CI writes it with the Linux build (`OPOSSUM_TEST_LINUX_STORE=<dir>`), then runs the Windows
/// build under Wine on the same directory; on Unix the test also checks the store itself.
#[test]
fn a_store_written_on_linux_opens_under_wine() {
    let shared = std::env::var_os(LINUX_STORE_ENV).map(PathBuf::from);
    if cfg!(windows) {
        let Some(root) = shared else {
            eprintln!(
                "a_store_written_on_linux_opens_under_wine: skipped, {LINUX_STORE_ENV} names no store written on Linux"
            );
            return;
        };
        // In place: a copy made here could not hold the names with `:` (the Linux step rewrites it each run).
        check_linux_store(&root);
        return;
    }
    if let Some(root) = shared {
        let _ = std::fs::remove_dir_all(&root);
        write_linux_store(&root);
    }
    let dir = tempfile::tempdir().unwrap();
    write_linux_store(dir.path());
    assert!(tag_index_names(dir.path()).contains(&"time_12:30.json".to_string()));
    assert!(dir.path().join("Indices/EventType/Ns:Clocked.json").exists());
    check_linux_store(dir.path());
}
