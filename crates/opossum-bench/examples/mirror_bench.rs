//! The journal's live mirror against the mirror off and against the raw floor, in process: durable conditional
//! appends of one event per request from 1, 16 and 64 threads for a fixed time each, with the close time (the
//! mirror's catch-up and last checkpoint) and the mirror's stats; then a store filled with FILL events (mirror live,
//! durable, 1,000 events per request) and the time its close takes.
//!
//! The floor, per client count, in the same run on the same disk: the files the mirror had to create for the events
//! of its run (one event file each, one tag file per distinct tag, one type file), created once each from one thread
//! without fsyncs, with every store of the run still in place (deletions come last: this disk creates files slowly
//! for minutes after a big deletion). The mirror can at best match it (it also rewrites the ledger per batch, the tag files a checkpoint
//! finds changed, and makes everything durable with `syncfs`).
//!
//! `cargo run --release -p opossum-bench --example mirror_bench -- [DIR] [SECONDS] [FILL] [CLIENTS]` (DIR on the disk
//! to measure, default /tmp; SECONDS per run, default 5, the issue's target says 30; FILL default 200000, 0 skips it;
//! CLIENTS a comma-separated list, default 1,16,64).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opossum::format::{self, Layout};
use opossum::model::{AppendCondition, Event, Query, QueryItem, Tag};
use opossum::store::{CommitMode, Durability, MirrorMode, Store, StoreOptions};

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

/// The DCB decision of a typical command: no enrolment of this student yet.
fn condition(n: u64) -> AppendCondition {
    let query = Query::items(vec![
        QueryItem::types(&["StudentEnrolledToCourseEvent"]).with_tags(&[("studentId", format!("s-{n}").as_str())])
    ])
    .unwrap();
    AppendCondition { fail_if_events_match: query, after: None }
}

fn options(commit: CommitMode, mirror: MirrorMode) -> StoreOptions {
    StoreOptions { commit, mirror, durability: Durability::Fsync, ..StoreOptions::default() }
}

/// Events per second of a run, and the events it appended.
struct Run {
    rate: f64,
    events: u64,
}

fn appends(root: &std::path::Path, name: &str, opts: StoreOptions, threads: usize, seconds: u64) -> Run {
    let dir = root.join(format!("{}-{threads}", name.replace([' ', ','], "")));
    let store = Arc::new(Store::open(&dir, opts).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (store, stop, next) = (store.clone(), stop.clone(), next.clone());
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    store.append(vec![event(n)], Some(condition(n))).unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let took = started.elapsed();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let stats = store.stats();
    let rate = stats.head as f64 / took.as_secs_f64();
    let closing = Instant::now();
    Arc::try_unwrap(store).ok().unwrap().close().unwrap();
    println!(
        "{name:<20} {threads:>2} clients: {:>8.0} events/s, p99 {:>6.2} ms ({} commits; mirror lag at the end {}, waits \
         {}, checkpoints {}); close {:.2} s",
        rate,
        p99.as_secs_f64() * 1e3,
        stats.commits,
        stats.mirror_lag,
        stats.mirror_waits,
        stats.mirror_checkpoints,
        closing.elapsed().as_secs_f64()
    );
    Run { rate, events: stats.head }
}

/// The raw floor for `events` events of this benchmark: their event files, then one tag file per distinct tag and
/// one type file, each created once (no temporary + rename) from this thread without fsyncs, in a fresh Opossum
/// layout under `root`. Returns events per second.
fn floor(root: &std::path::Path, threads: usize, events: u64) -> f64 {
    let dir = root.join(format!("floor-{threads}"));
    let layout = Layout::new(&dir);
    for d in layout.dirs() {
        std::fs::create_dir_all(d).unwrap();
    }
    let create = |path: &std::path::Path, bytes: &[u8]| {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).unwrap();
        file.write_all(bytes).unwrap();
    };
    let mut by_tag: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let mut by_type: Vec<u64> = Vec::new();
    let metadata =
        serde_json::value::RawValue::from_string(r#"{"timestamp":"2026-11-29T12:00:00.0000000+00:00"}"#.to_string())
            .unwrap();
    let started = Instant::now();
    for position in 1..=events {
        let e = event(position - 1);
        let bytes = format::encode_event(position, &e.event_type, &e.data, &e.tags, &metadata);
        create(&layout.event_file(position), &bytes);
        for tag in &e.tags {
            by_tag.entry(format::event_tag_stem(tag)).or_default().push(position);
        }
        by_type.push(position);
    }
    for (stem, positions) in &by_tag {
        create(&layout.tag_index.join(format::index_file_name(stem)), &format::encode_index(positions));
    }
    create(&layout.type_index_file("StudentEnrolledToCourseEvent"), &format::encode_index(&by_type));
    let took = started.elapsed();
    events as f64 / took.as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tmp = tempfile::tempdir_in(args.get(1).map_or("/tmp", |s| s.as_str())).unwrap();
    let root = tmp.path();
    let seconds: u64 = args.get(2).map_or(5, |s| s.parse().unwrap());
    let fill: u64 = args.get(3).map_or(200_000, |s| s.parse().unwrap());
    let clients: Vec<usize> =
        args.get(4).map_or(vec![1, 16, 64], |s| s.split(',').map(|n| n.parse().unwrap()).collect());
    for threads in clients {
        let off = appends(root, "journal, mirror off", options(CommitMode::Journal, MirrorMode::Off), threads, seconds);
        let live =
            appends(root, "journal, mirror live", options(CommitMode::Journal, MirrorMode::Live), threads, seconds);
        let floor = floor(root, threads, live.events.max(1));
        println!(
            "{:<20} {threads:>2} clients: {floor:>8.0} events/s ({} events' files from one thread, no fsync); mirror \
             live = {:.2}x mirror off, {:.2}x the floor",
            "floor",
            live.events,
            live.rate / off.rate,
            live.rate / floor
        );
    }

    if fill > 0 {
        fill_and_close(root, fill);
    }
    // Every store stays until the end: this disk creates files slowly for minutes after a big deletion, and the
    // floor must not pay for the deletion of the run before it.
    opossum_bench::suite::remove_tree(root).unwrap();
}

/// A store of `fill` events with the mirror live, then its close (the mirror's last checkpoint) and a reopen.
fn fill_and_close(root: &std::path::Path, fill: u64) {
    let dir = root.join("fill");
    let store = Store::open(&dir, options(CommitMode::Journal, MirrorMode::Live)).unwrap();
    let started = Instant::now();
    let mut n = 0;
    while n < fill {
        let batch = (n..(n + 1000).min(fill)).map(event).collect();
        store.append(batch, None).unwrap();
        n += 1000;
    }
    let stats = store.stats();
    println!(
        "fill of {fill} events, 1,000 per request: {:.1} s (mirror lag at the end {}, waits {}, checkpoints {})",
        started.elapsed().as_secs_f64(),
        stats.mirror_lag,
        stats.mirror_waits,
        stats.mirror_checkpoints
    );
    let closing = Instant::now();
    store.close().unwrap();
    println!("close with the mirror live after the fill: {:.2} s", closing.elapsed().as_secs_f64());
    let started = Instant::now();
    let store = Store::open(&dir, options(CommitMode::Journal, MirrorMode::Live)).unwrap();
    println!("reopen after the clean stop: {:.2} s", started.elapsed().as_secs_f64());
    store.close().unwrap();
}
