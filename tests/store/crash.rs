//! SIGKILL crash test: a child process (this test binary, re-executed) appends durably from several threads and
//! prints every acknowledgement; the parent kills it at a random moment, reopens the store and checks that every
//! acknowledged append is there, whole, and that no batch is partly visible. Repeated `OPOSSUM_CRASH_CYCLES`
//! times (default 50) on one store, so recovery also runs on stores left by earlier kills.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

const CHILD_DIR_ENV: &str = "OPOSSUM_CRASH_CHILD_DIR";
const CHILD_CYCLE_ENV: &str = "OPOSSUM_CRASH_CHILD_CYCLE";
const CHILD_THREADS: u64 = 4;

/// Only does work when re-executed by the crash test; as a plain test it returns at once.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else { return };
    let cycle: u64 = std::env::var(CHILD_CYCLE_ENV).unwrap().parse().unwrap();
    // Odd cycles defer index files and overwrite the ledger in place; even ones write both per commit, so recovery
    // also meets stores left by the other mode.
    let index_writes = if cycle % 2 == 1 {
        IndexWrites::Deferred { interval: Duration::from_millis(20) }
    } else {
        IndexWrites::EveryCommit
    };
    let store = Arc::new(Store::open(&dir, StoreOptions { index_writes, ..options(Durability::Fsync) }).unwrap());
    let handles: Vec<_> = (0..CHILD_THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let id = cycle * 1_000_000 + t * 100_000 + i;
                    let n = 1 + id % 4;
                    let batch_tag = id.to_string();
                    let events: Vec<Event> = (0..n)
                        .map(|j| {
                            let data = format!(r#"{{"batch":{id},"n":{n},"i":{j}}}"#);
                            Event::new(
                                "Batch",
                                &data,
                                vec![Tag::new("batch", &batch_tag), Tag::new("thread", t.to_string())],
                            )
                            .unwrap()
                        })
                        .collect();
                    // Half of the appends carry a (passing) uniqueness condition, so the check path runs too.
                    let condition = (i % 2 == 0).then(|| AppendCondition {
                        fail_if_events_match: Query::items(vec![QueryItem::tags(&[("batch", &batch_tag)])]).unwrap(),
                        after: None,
                    });
                    let appended = store.append(events, condition).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {id} {} {}", appended.first, appended.last).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn sigkill_during_durable_appends_loses_no_acknowledged_event() {
    let cycles: u64 = std::env::var("OPOSSUM_CRASH_CYCLES").ok().map_or(50, |s| s.parse().unwrap());
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let exe = std::env::current_exe().unwrap();
    let mut kills_before_first_ack = 0;
    for cycle in 0..cycles {
        let mut child = crate::common::spawn_retrying(
            Command::new(&exe)
                .args(["--exact", "crash::crash_child", "--nocapture", "--test-threads=1"])
                .env(CHILD_DIR_ENV, dir.path())
                .env(CHILD_CYCLE_ENV, cycle.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let (stdout, lines) = (child.stdout.take().unwrap(), lines.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        // Mostly kill mid-append (after the first acknowledgement); sometimes during start-up and recovery.
        let early = rng.next(5) == 0;
        if early {
            std::thread::sleep(Duration::from_millis(rng.next(30)));
            kills_before_first_ack += 1;
        } else {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !lines.lock().unwrap().iter().any(|l| l.starts_with("ack ")) {
                assert!(Instant::now() < deadline, "cycle {cycle}: the child never acknowledged an append");
                assert!(child.try_wait().unwrap().is_none(), "cycle {cycle}: the child died on its own");
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(rng.next(40)));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        for line in lines.lock().unwrap().iter() {
            let Some(rest) = line.strip_prefix("ack ") else { continue };
            let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            acked.insert(f[0], (f[1], f[2]));
        }
        verify(dir.path(), &acked, cycle);
    }
    println!(
        "{cycles} kill cycles ({kills_before_first_ack} during start-up), {} acknowledged appends verified",
        acked.len()
    );
    assert!(acked.len() as u64 >= cycles / 2, "too few acknowledged appends to mean anything");
}

fn verify(dir: &Path, acked: &BTreeMap<u64, (u64, u64)>, cycle: u64) {
    // In journal mode every third reopen is a `--commit files` one: after a kill the tree is behind the journal's
    // durable mark (the mirror had not checkpointed, or is off), and files mode repairs it from the journal before
    // serving it (`bring_tree_up_to_journal`); the next child goes on in journal mode.
    let store = match commit_mode() == CommitMode::Journal && cycle % 3 == 1 {
        true => Store::open(dir, StoreOptions { commit: CommitMode::Files, ..options(Durability::None) })
            .expect("a files-mode open after a killed journal-mode run"),
        false => open(dir),
    };
    let head = store.head();
    let all = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
    assert_eq!(positions(&all), (1..=head).collect::<Vec<_>>(), "cycle {cycle}: positions not contiguous");
    // No partial batch: every batch present has all of its n events, contiguous.
    let mut batches: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for e in &all {
        let v: serde_json::Value = serde_json::from_str(e.data.get()).unwrap();
        let (id, n, i) = (v["batch"].as_u64().unwrap(), v["n"].as_u64().unwrap(), v["i"].as_u64().unwrap());
        batches.entry(id).or_default().push((e.position, n, i));
    }
    for (id, events) in &batches {
        let n = events[0].1;
        assert_eq!(events.len() as u64, n, "cycle {cycle}: batch {id} is partly visible: {events:?}");
        for (k, (position, _, i)) in events.iter().enumerate() {
            assert_eq!((*i, *position), (k as u64, events[0].0 + k as u64), "cycle {cycle}: batch {id} out of order");
        }
    }
    // Every acknowledged append is there, at the positions it was told, and found by tag and type queries.
    for (id, &(first, last)) in acked {
        let by_tag = read(&store, &tags(&[("batch", &id.to_string())]), ReadOptions::default());
        assert_eq!(by_tag, (first..=last).collect::<Vec<_>>(), "cycle {cycle}: acknowledged batch {id} lost or moved");
    }
    let thread_total: usize = (0..CHILD_THREADS)
        .map(|t| read(&store, &tags(&[("thread", &t.to_string())]), ReadOptions::default()).len())
        .sum();
    assert_eq!(thread_total as u64, head, "cycle {cycle}: tag index disagrees with the events");
    assert_eq!(read(&store, &types(&["Batch"]), ReadOptions::default()).len() as u64, head);
}
