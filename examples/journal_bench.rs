//! Journal against files commit mode, in process: durable appends of one event per request from 1 and 16 threads,
//! then a read-all of a journal-mode store against a raw sequential read of its segment bytes.
//!
//! `cargo run --release --example journal_bench -- [DIR] [READ_EVENTS]` (DIR on the disk to measure; default a temp
//! dir under /tmp; READ_EVENTS default 200000).

use std::sync::Arc;
use std::time::Instant;

use opossum::model::{Event, Query, ReadOptions, Tag};
use opossum::store::{CommitMode, Durability, IndexWrites, MirrorMode, Store, StoreOptions};

fn event(n: u64) -> Event {
    let data = format!(
        r#"{{"studentId":"s-{n}","courseId":"c-{}","note":"a typical small payload of some sixty bytes"}}"#,
        n % 97
    );
    Event::new(
        "StudentEnrolledToCourseEvent",
        &data,
        vec![Tag::new("studentId", format!("s-{n}")), Tag::new("courseId", format!("c-{}", n % 97))],
    )
    .unwrap()
}

fn options(commit: CommitMode, mirror: MirrorMode, durability: Durability) -> StoreOptions {
    StoreOptions { commit, mirror, durability, ..StoreOptions::default() }
}

fn appends(root: &std::path::Path, name: &str, opts: StoreOptions, threads: usize, per_thread: u64) {
    let dir = root.join(format!("{name}-{threads}"));
    let store = Arc::new(Store::open(&dir, opts).unwrap());
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    store.append(vec![event(t as u64 * per_thread + i)], None).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let took = started.elapsed();
    let events = threads as u64 * per_thread;
    let commits = store.stats().commits;
    println!(
        "append {name:<22} {threads:>2} threads: {events:>6} events in {:>6.2} s = {:>8.0} events/s ({commits} commits)",
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64()
    );
    Arc::try_unwrap(store).ok().unwrap().close().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tmp = tempfile::tempdir_in(args.get(1).map_or("/tmp", |s| s.as_str())).unwrap();
    let root = tmp.path();
    let read_events: u64 = args.get(2).map_or(200_000, |s| s.parse().unwrap());
    let durable = Durability::Fsync;
    for (threads, per_thread) in [(1usize, 1000u64), (16, 150)] {
        appends(root, "files", options(CommitMode::Files, MirrorMode::Live, durable), threads, per_thread);
        appends(
            root,
            "journal, mirror off",
            options(CommitMode::Journal, MirrorMode::Off, durable),
            threads,
            per_thread,
        );
        appends(
            root,
            "journal, mirror live",
            options(CommitMode::Journal, MirrorMode::Live, durable),
            threads,
            per_thread,
        );
        let deferred = IndexWrites::Deferred { interval: std::time::Duration::from_secs(1) };
        let live_deferred =
            StoreOptions { index_writes: deferred, ..options(CommitMode::Journal, MirrorMode::Live, durable) };
        appends(root, "journal, live, deferred", live_deferred, threads, per_thread);
    }

    // Read-all: fill a journal-mode store (mirror off) with batches of 1,000 events, reopen, read everything.
    let dir = root.join("read");
    let store = Store::open(&dir, options(CommitMode::Journal, MirrorMode::Off, Durability::None)).unwrap();
    let mut n = 0;
    while n < read_events {
        let batch = (n..(n + 1000).min(read_events)).map(event).collect();
        store.append(batch, None).unwrap();
        n += 1000;
    }
    store.close().unwrap();
    let started = Instant::now();
    let store = Store::open(&dir, options(CommitMode::Journal, MirrorMode::Off, Durability::None)).unwrap();
    println!("open of {read_events} events (index rebuilt from the journal): {:.3} s", started.elapsed().as_secs_f64());
    for round in 0..2 {
        let started = Instant::now();
        let mut count = 0u64;
        let mut bytes = 0usize;
        for e in store.read(&Query::All, ReadOptions::default()).unwrap() {
            let e = e.unwrap();
            bytes += e.data.get().len();
            count += 1;
        }
        let took = started.elapsed().as_secs_f64();
        println!(
            "read-all (warm, round {round}): {count} events in {took:.3} s = {:.0} events/s ({bytes} data bytes)",
            count as f64 / took
        );
    }
    let journal = opossum::journal::journal_dir(&dir);
    let started = Instant::now();
    let mut raw = 0usize;
    for entry in std::fs::read_dir(&journal).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "seg") {
            raw += std::fs::read(&path).unwrap().len();
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "raw sequential read of the segments: {raw} bytes in {took:.3} s = {:.0} MB/s, {:.0} events/s equivalent",
        raw as f64 / took / 1e6,
        read_events as f64 / took
    );
    store.close().unwrap();
}
