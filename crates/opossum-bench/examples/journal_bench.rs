//! Journal against files commit mode, in process: durable appends of one event per request from 1 and 16 threads,
//! then a read-all of a journal-mode store against a raw sequential read of its segment bytes.
//!
//! `cargo run --release --example journal_bench -- [DIR] [READ_EVENTS]` (DIR on the disk to measure; default a temp
//! dir under /tmp; READ_EVENTS default 200000).
//!
//! `cargo run --release --example journal_bench -- zero-fill DIR [SECONDS]`: durable appends (mirror off, one
//! ~400-byte event per request, as the peer benchmark's) from 1, 16 and 64 threads, each for SECONDS (default 3):
//! the journal zero-filling ahead of its head (today) against the same journal whose zero-fill is `fallocate`
//! (unwritten extents, as before: every group's `fdatasync` converts extents, a filesystem journal commit), each
//! alone and beside a thread creating 600-byte files in the same filesystem at a fixed pace (what the live mirror
//! does). Prints events/s, p50/p99 latency and the creator's files/s.
//!
//! `cargo run --release --example journal_bench -- bytes DIR [EVENTS]`: fills a store with the mirror off the way
//! the peer benchmark's fill does (1,000 events per append, 4 clients, `sized_data`, type `StudentEnrolled`, tag
//! `item:<i mod EVENTS/10>`, durability none; default 1,000,000 events), stops it, and prints where its bytes
//! are: records (header, keys, data, metadata), padding, segment headers, offset tables, the active segment's
//! tail, `.opossumd/index.ckpt`, everything else; apparent and allocated. Also what the same records took in
//! format version 2 (which stored the event file whole), computed from the same records.

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

/// The journal's storage with `zero_fill` done the old way: `fallocate` (mode 0), which leaves unwritten extents.
struct FallocateStorage(opossum::journal::DiskStorage);

impl opossum::journal::JournalStorage for FallocateStorage {
    fn dir(&self) -> &std::path::Path {
        self.0.dir()
    }
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.0.list()
    }
    fn create(&self, name: &str) -> std::io::Result<()> {
        self.0.create(name)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.0.remove(name)
    }
    fn len(&self, name: &str) -> std::io::Result<u64> {
        self.0.len(name)
    }
    fn read_at(&self, name: &str, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(name, buf, offset)
    }
    fn write_at(&self, name: &str, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(name, bytes, offset)
    }
    fn zero_fill(&self, name: &str, offset: u64, len: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let file = self.0.file(name).ok_or_else(|| std::io::Error::other("no descriptor"))?;
        // SAFETY: a valid open descriptor; fallocate reads no memory of ours.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, offset as i64, len as i64) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        file.sync_data()
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.0.rename(from, to)
    }
    fn set_len(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.0.set_len(name, len)
    }
    fn sync_data(&self, name: &str) -> std::io::Result<()> {
        self.0.sync_data(name)
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.0.sync_dir()
    }
    fn replace(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.0.replace(name, bytes)
    }
    fn file(&self, name: &str) -> Option<Arc<std::fs::File>> {
        self.0.file(name)
    }
}

/// The file creator's pace: about what the live mirror creates (4-6k event files/s measured on this machine), fixed
/// so both journals compete with the same load.
const CREATOR_FILES_PER_SECOND: u64 = 3000;

/// Creates 600-byte files in `dir` at `CREATOR_FILES_PER_SECOND` until `stop`, without fsyncs (as the live mirror
/// does); returns the count.
fn create_files(dir: &std::path::Path, stop: &std::sync::atomic::AtomicBool) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let body = vec![b'x'; 600];
    let started = Instant::now();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let due = started.elapsed().as_secs_f64() * CREATOR_FILES_PER_SECOND as f64;
        if (n as f64) >= due {
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        }
        std::fs::write(dir.join(format!("{n}.json")), &body).unwrap();
        n += 1;
    }
    n
}

fn zero_fill_run(root: &std::path::Path, fallocate: bool, creator: bool, threads: usize, seconds: f64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = root.join(format!("zf-{fallocate}-{creator}-{threads}"));
    let journal_dir = opossum::journal::journal_dir(&dir);
    let disk = opossum::journal::DiskStorage::open(&journal_dir).unwrap();
    let storage: Arc<dyn opossum::journal::JournalStorage> =
        if fallocate { Arc::new(FallocateStorage(disk)) } else { Arc::new(disk) };
    let opts = StoreOptions {
        journal_storage: Some(storage),
        ..options(CommitMode::Journal, MirrorMode::Off, Durability::Fsync)
    };
    let store = Arc::new(Store::open(&dir, opts).unwrap());
    let stop = AtomicBool::new(false);
    let (latencies, files, took) = std::thread::scope(|s| {
        let creating =
            creator.then(|| s.spawn(|| create_files(&root.join(format!("creator-{fallocate}-{threads}")), &stop)));
        let started = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                s.spawn(move || {
                    let mut latencies = Vec::new();
                    let mut i = 0u64;
                    while started.elapsed().as_secs_f64() < seconds {
                        let e = Event::new(
                            "StudentEnrolled",
                            &opossum_bench::data::sized_data(t as u64 * 1_000_000 + i),
                            vec![Tag::new("item", format!("{:07}", (t as u64 * 1_000_000 + i) % 100_000))],
                        )
                        .unwrap();
                        let one = Instant::now();
                        store.append(vec![e], None).unwrap();
                        latencies.push(one.elapsed().as_micros() as u64);
                        i += 1;
                    }
                    latencies
                })
            })
            .collect();
        let mut all: Vec<u64> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        let took = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let files = creating.map_or(0, |c| c.join().unwrap());
        all.sort_unstable();
        (all, files, took)
    });
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)] as f64 / 1000.0;
    println!(
        "{:<9} {:<8} {threads:>2} threads: {:>7.0} events/s  p50 {:>6.2} ms  p99 {:>6.2} ms  creator {:>6.0} files/s",
        if fallocate { "fallocate" } else { "zeros" },
        if creator { "+creator" } else { "alone" },
        latencies.len() as f64 / took,
        at(0.5),
        at(0.99),
        files as f64 / took
    );
    Arc::try_unwrap(store).ok().unwrap().close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let _ = std::fs::remove_dir_all(root.join(format!("creator-{fallocate}-{threads}")));
}

/// Apparent and allocated bytes of every file under `dir`, by a classifier of its path.
fn walk(dir: &std::path::Path, out: &mut std::collections::BTreeMap<String, (u64, u64, u64)>) {
    use std::os::unix::fs::MetadataExt as _;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = e.metadata().unwrap();
        if meta.is_dir() {
            walk(&e.path(), out);
            continue;
        }
        let path = e.path().to_string_lossy().into_owned();
        let class = if path.ends_with(".seg") {
            "journal segments"
        } else if path.ends_with("index.ckpt") {
            "index checkpoint"
        } else if path.contains("/journal/") {
            "journal marks"
        } else {
            "other (tree skeleton, locks, ...)"
        };
        let entry = out.entry(class.to_string()).or_default();
        entry.0 += 1;
        entry.1 += meta.len();
        entry.2 += meta.blocks() * 512;
    }
}

fn bytes_breakdown(root: &std::path::Path, events: u64) {
    let dir = root.join("bytes");
    let tags = (events / 10).max(1);
    let store = Arc::new(Store::open(&dir, options(CommitMode::Journal, MirrorMode::Off, Durability::None)).unwrap());
    let next = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let lo = next.fetch_add(1000, std::sync::atomic::Ordering::Relaxed);
                if lo >= events {
                    return;
                }
                let batch = (lo..(lo + 1000).min(events))
                    .map(|i| {
                        let tag = Tag::new("item", format!("{:07}", i % tags));
                        Event::new("StudentEnrolled", &opossum_bench::data::sized_data(i), vec![tag]).unwrap()
                    })
                    .collect();
                store.append(batch, None).unwrap();
            });
        }
    });
    let fill = started.elapsed().as_secs_f64();
    Arc::try_unwrap(store).ok().unwrap().close().unwrap();
    println!("filled {events} events in {fill:.1} s ({:.0} events/s), store stopped", events as f64 / fill);
    let mut files = std::collections::BTreeMap::new();
    walk(&dir, &mut files);
    let (mut apparent, mut allocated) = (0, 0);
    for (class, (n, len, blocks)) in &files {
        println!(
            "  {class:<34} {n:>6} files {:>10.1} MB apparent {:>10.1} MB allocated",
            *len as f64 / 1e6,
            *blocks as f64 / 1e6
        );
        apparent += len;
        allocated += blocks;
    }
    println!(
        "  total                              {:>17.1} MB apparent {:>10.1} MB allocated = {:.0} bytes/event",
        apparent as f64 / 1e6,
        allocated as f64 / 1e6,
        allocated as f64 / events as f64
    );
    // Inside the segments: the records' parts, their padding, and what format version 2 would have stored.
    let options = opossum::journal::JournalOptions { durable: false, ..Default::default() };
    let (journal, _) = opossum::journal::Journal::open_dir(&dir, options).unwrap();
    let (mut size, mut data, mut metadata, mut keys, mut v2) = (0u64, 0u64, 0u64, 0u64, 0u64);
    journal
        .scan(1, journal.head(), |v| -> Result<(), opossum::journal::JournalError> {
            size += v.size as u64;
            data += v.data.len() as u64;
            metadata += v.metadata.len() as u64;
            let k = v.event_type.len() + v.tags().map(|(k, v)| 4 + k.len() + v.len()).sum::<usize>();
            keys += k as u64;
            let v2_size = opossum::journal::format::V2_RECORD_HEADER_BYTES + k + v.event_file().len();
            v2 += opossum::journal::format::padded(v2_size) as u64;
            Ok(())
        })
        .unwrap();
    let n = journal.head() as f64;
    let stored = journal.record_bytes();
    let segments = journal.segments() as u64;
    println!(
        "  records: {:.1} MB = per event {:.1} bytes: header {} + keys {:.1} + data {:.1} + metadata {:.1} (+ extensions {:.1}), padding {:.1}",
        stored as f64 / 1e6,
        stored as f64 / n,
        opossum::journal::format::RECORD_HEADER_BYTES,
        keys as f64 / n,
        data as f64 / n,
        metadata as f64 / n,
        (size as f64 - n * opossum::journal::format::RECORD_HEADER_BYTES as f64 - (keys + data + metadata) as f64) / n,
        (stored - size) as f64 / n
    );
    let seg_bytes = files.get("journal segments").map_or(0, |f| f.1);
    println!(
        "  segments: {segments}, headers {} bytes, offset tables + trailers and tails {:.1} MB ({:.1} bytes/event)",
        segments * opossum::journal::format::SEGMENT_HEADER_BYTES as u64,
        (seg_bytes - stored - segments * 32) as f64 / 1e6,
        (seg_bytes - stored - segments * 32) as f64 / n
    );
    println!(
        "  format version 2 would store these records in {:.1} MB ({:.1} bytes/event): the event file whole after a 56-byte header",
        v2 as f64 / 1e6,
        v2 as f64 / n
    );
    drop(journal);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "bytes") {
        let tmp = tempfile::tempdir_in(args.get(2).map_or("/tmp", |s| s.as_str())).unwrap();
        bytes_breakdown(tmp.path(), args.get(3).map_or(1_000_000, |s| s.parse().unwrap()));
        return;
    }
    if args.get(1).is_some_and(|a| a == "zero-fill") {
        let tmp = tempfile::tempdir_in(args.get(2).map_or("/tmp", |s| s.as_str())).unwrap();
        let seconds: f64 = args.get(3).map_or(3.0, |s| s.parse().unwrap());
        for threads in [1usize, 16, 64] {
            for creator in [false, true] {
                for fallocate in [true, false] {
                    zero_fill_run(tmp.path(), fallocate, creator, threads, seconds);
                }
            }
        }
        return;
    }
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
