//! What the Windows build relies on, checked on every platform (and under Wine by `test-windows.sh`): index file
//! names under the platform's naming rules, and a daemon round trip over the platform's transport (a Unix socket, or
//! a named pipe on Windows), with the real `opossumd` binary on a temporary store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opossum::client::Client;
use opossum::format::{self, NamingRules};
use opossum::model::{Event, Query, QueryItem, ReadOptions, Tag};
use opossum::store::{Store, StoreOptions};

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
        let child = Command::new(env!("CARGO_BIN_EXE_opossumd"))
            .arg("--data")
            .arg(data)
            .arg("--socket")
            .arg(endpoint)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start opossumd");
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
