//! Open time of a journal-mode store (mirror off) of EVENTS events (default 1,000,000), in one run:
//! - after a clean close (the index checkpoint is current): the target is ≤ 1 s;
//! - with the checkpoint removed (the index rebuilt by a scan of the whole journal): the baseline;
//! - after SIGKILL of a process appending (a child: this example re-executed), with the checkpoint as that
//!   process's checkpointer left it: the target is ≤ 3 s;
//! - after SIGKILL again, with the checkpoint put back to what it was before the child started, so it is older than
//!   the checkpointer's interval (`INDEX_CHECKPOINT_EVENTS_DEFAULT`) by half: the worst case.
//!
//! `cargo run --release -p opossum-bench --example open_bench -- [DIR] [EVENTS]` (DIR on the disk to measure;
//! default a temp dir under /tmp). `RUST_LOG=info` shows where each open's time went (journal, index, tree). The
//! store (~0.5 GB at 1M events) is deleted at the end.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opossum::limits::INDEX_CHECKPOINT_EVENTS_DEFAULT;
use opossum::model::{Query, QueryItem, ReadOptions};
use opossum::store::{CommitMode, Durability, MirrorMode, Store, StoreOptions};
use opossum_bench::data::distinct_tag_event as event;

const CHILD_ENV: &str = "OPEN_BENCH_CHILD";
const BATCH: u64 = 1000;

fn options() -> StoreOptions {
    StoreOptions {
        commit: CommitMode::Journal,
        mirror: MirrorMode::Off,
        durability: Durability::None,
        ..StoreOptions::default()
    }
}

fn append_to(store: &Store, from: u64, to: u64, mut each_batch: impl FnMut(u64)) {
    let mut n = from;
    while n < to {
        let last = (n + BATCH).min(to);
        store.append((n..last).map(event).collect(), None).unwrap();
        each_batch(last);
        n = last;
    }
}

/// The position an index checkpoint holds through (header bytes 16..24, `docs/journal.md`), 0 without one.
fn checkpoint_through(dir: &Path) -> u64 {
    match std::fs::read(opossum::journal::index_checkpoint_path(dir)) {
        Ok(b) if b.len() >= 24 => u64::from_le_bytes(b[16..24].try_into().unwrap()),
        _ => 0,
    }
}

/// CPU time of the whole process (every thread, user + system): on a machine shared with other work, wall time
/// alone overstates an open. Nothing else runs in this process during an open but the open's own threads (and, at
/// its very end, the checkpointer's first look at the checkpoint file).
fn process_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec; CLOCK_PROCESS_CPUTIME_ID is supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Opens the store, checks it answers, closes it; returns the open time.
fn timed_open(dir: &Path, what: &str) -> Duration {
    let through = checkpoint_through(dir);
    let started = Instant::now();
    let cpu_started = process_cpu();
    let store = Store::open(dir, options()).unwrap();
    let took = started.elapsed();
    let cpu = process_cpu() - cpu_started;
    let head = store.head();
    // A tag query answered from the loaded index: the last event's own tag.
    let own = Query::items(vec![QueryItem::tags(&[("studentId", &format!("s-{}", head - 1))])]).unwrap();
    let found: Vec<u64> =
        store.read_to_vec(&own, ReadOptions::default()).unwrap().into_iter().map(|e| e.position).collect();
    assert_eq!(found, vec![head], "{what}: the index misses the last event");
    println!(
        "open {what:<52} head {head:>8}, checkpoint {through:>8} (scan {:>7}): {:>7.3} s ({:.3} s CPU)",
        head - through.min(head),
        took.as_secs_f64(),
        cpu.as_secs_f64()
    );
    store.close().unwrap();
    took
}

/// Appends `count` events in a child process and SIGKILLs it once they are all acknowledged.
fn crash_after_appending(dir: &Path, count: u64) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, format!("{}\n{count}", dir.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        if line.unwrap() == "done" {
            break;
        }
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
}

fn child(spec: &str) {
    let (dir, count) = spec.split_once('\n').unwrap();
    let count: u64 = count.parse().unwrap();
    let store = Store::open(dir, options()).unwrap();
    let head = store.head();
    append_to(&store, head, head + count, |_| {});
    println!("done");
    std::io::stdout().flush().unwrap();
    // The parent kills us; never close.
    std::thread::sleep(Duration::from_secs(3600));
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    if std::env::var("RUST_LOG").is_ok() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    }
    let args: Vec<String> = std::env::args().collect();
    let tmp = tempfile::tempdir_in(args.get(1).map_or("/tmp", |s| s.as_str())).unwrap();
    let events: u64 = args.get(2).map_or(1_000_000, |s| s.parse().unwrap());
    // OPEN_BENCH_STORE=PATH: use (fill only if absent) and keep this store, and with OPEN_BENCH_CLEAN_ONLY=1 time
    // only the opens after a clean close (profiling).
    let dir = std::env::var("OPEN_BENCH_STORE").map_or_else(|_| tmp.path().join("store"), Into::into);

    if !dir.exists() {
        let started = Instant::now();
        let store = Store::open(&dir, options()).unwrap();
        append_to(&store, 0, events, |_| {});
        let filled = started.elapsed();
        let started = Instant::now();
        store.close().unwrap();
        println!(
            "fill {events} events (journal, mirror off, durability none, {BATCH}/append): {:.2} s; close (writes \
             the checkpoint): {:.3} s; checkpoint {} bytes",
            filled.as_secs_f64(),
            started.elapsed().as_secs_f64(),
            std::fs::metadata(opossum::journal::index_checkpoint_path(&dir)).map_or(0, |m| m.len())
        );
    }

    let clean: Vec<Duration> = (0..3).map(|_| timed_open(&dir, "after a clean close (checkpoint current)")).collect();
    if std::env::var("OPEN_BENCH_CLEAN_ONLY").is_ok() {
        println!("clean open {:.3} s (median of 3)", median(clean));
        return;
    }
    let full: Vec<Duration> = (0..2)
        .map(|_| {
            std::fs::remove_file(opossum::journal::index_checkpoint_path(&dir)).unwrap();
            timed_open(&dir, "without a checkpoint (full scan: baseline)")
        })
        .collect();

    let crash_events = INDEX_CHECKPOINT_EVENTS_DEFAULT * 3 / 2;
    crash_after_appending(&dir, crash_events);
    let crashed = timed_open(&dir, "after SIGKILL (checkpoint as the checkpointer left it)");

    let saved = std::fs::read(opossum::journal::index_checkpoint_path(&dir)).unwrap();
    crash_after_appending(&dir, crash_events);
    std::fs::write(opossum::journal::index_checkpoint_path(&dir), &saved).unwrap();
    let worst = timed_open(&dir, "after SIGKILL, checkpoint 1.5 intervals old (worst)");

    println!(
        "summary at {events} events: clean {:.3} s (median of 3), full scan {:.3} s (median of 2), after SIGKILL \
         {:.3} s, worst case after SIGKILL {:.3} s",
        median(clean),
        median(full),
        crashed.as_secs_f64(),
        worst.as_secs_f64()
    );
}
