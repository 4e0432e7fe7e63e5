//! Import of a .NET-layout Opossum tree into a new journal, cold cache, beside the best raw read of the same event
//! files in the same run (issue 13: "import of a 1,000,000-event Opossum tree, cold cache: ≥ 1.2× the best raw read
//! of the same files in the same run"; read here as: the import takes at most 1.2× the time of the best raw read).
//!
//! 1. The tree: EVENTS events (default 1,000,000; one type, 300–500-byte data as in the peer benchmark, one
//!    `item:<k>` tag per event, 10 events a tag) appended to a journal-mode store with the mirror off and no
//!    fsyncs, then written out by `opossum export --opossum` (`store::tools::export_tree`: byte-for-byte what files
//!    mode, and so .NET, writes); the journal store is deleted.
//! 2. Per round: for every raw reader (io_uring and the thread pool, each at every batch size of `--raw-batches`):
//!    drop the page cache, read every event file in batches through the backend's `BatchIo::read_files`, bytes only;
//!    then drop the page cache and open the tree as opossumd does with its defaults (`Store::open`, journal mode,
//!    mirror live, fsync, exclusive), which imports every event file into `.opossumd/journal` (no journal yet)
//!    and loads the index; the time to `Store::open`'s return (the daemon's `READY` point). The store is then
//!    closed (timed apart) and `.opossumd/` deleted for the next round.
//! 3. Printed: every time with the process's CPU time over it (user + system, all threads: on a 2-core machine
//!    the cold read is mostly kernel CPU, so what the import adds to it shows there), the best raw read and the
//!    median import, and import / best raw.
//!
//! ```text
//! cargo run --release -p opossum-bench --example import_bench -- [--dir D] [--events N] [--rounds 2]
//!     [--raw-batches 1024,16384] [--threads 32] [--keep] [--import-only] [--no-fsync]
//! ```
//! D must be on the disk to measure (default target/bench/import-bench); the tree (~4.5 GB allocated at 1M events:
//! a block per file) is deleted at the end unless `--keep` (then a later run with the same D and N reuses it).
//! Cold = `sys::Evict` (`drop_caches` as root, else `posix_fadvise(DONTNEED)` on every file). `RUST_LOG=info`
//! shows the import's progress and where the open's time went.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use opossum::format::Layout;
use opossum::io::uring::{UringConfig, UringIo};
use opossum::io::{BatchIo, ThreadPoolIo};
use opossum::model::{Event, Tag};
use opossum::store::{CommitMode, Durability, MirrorMode, Store, StoreOptions};
use opossum_bench::sys::{self, Evict};
use rayon::prelude::*;

/// Events per append while building the source journal.
const FILL_BATCH: u64 = 1_000;
/// Events per tag (as the peer benchmark's fill).
const EVENTS_PER_TAG: u64 = 10;
/// The target: import time / best raw read time.
const TARGET_RATIO: f64 = 1.2;

#[derive(clap::Parser)]
#[command(about = "Import of an Opossum tree (cold) beside the best raw read of its event files, same run")]
struct Args {
    /// Directory on the disk to measure [default: target/bench/import-bench]
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Files per `read_files` call of the raw reads (each size measured with each backend)
    #[arg(long, value_delimiter = ',', default_value = "1024,16384")]
    raw_batches: Vec<usize>,
    /// Threads of the thread-pool raw reader
    #[arg(long, default_value_t = 32)]
    threads: usize,
    /// Keep the tree (and reuse one a previous run kept)
    #[arg(long)]
    keep: bool,
    /// Only the imports, no raw reads (profiling: `perf record -g target/release/examples/import_bench --keep
    /// --import-only --rounds 1`)
    #[arg(long)]
    import_only: bool,
    /// Import without any fsync (`Durability::None`): shows what the journal's writes and syncs cost the import
    #[arg(long)]
    no_fsync: bool,
}

fn event(i: u64, tags: u64) -> Event {
    let data = opossum_bench::data::sized_data(i);
    Event::new("StudentEnrolled", &data, vec![Tag::new("item", format!("{:07}", i % tags))]).expect("valid event")
}

/// The tree of `events` events at `tree` (made unless a kept one with the same count is there).
fn make_tree(dir: &Path, tree: &Path, events: u64) -> anyhow::Result<()> {
    let marker = dir.join("tree-events");
    if tree.is_dir() && std::fs::read_to_string(&marker).ok().as_deref() == Some(&events.to_string()) {
        eprintln!("reusing the tree of {events} events at {}", tree.display());
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(tree);
    let source = dir.join("source");
    let _ = std::fs::remove_dir_all(&source);
    let t = Instant::now();
    let options = StoreOptions {
        commit: CommitMode::Journal,
        mirror: MirrorMode::Off,
        durability: Durability::None,
        ..StoreOptions::default()
    };
    let store = Store::open(&source, options)?;
    let tags = (events / EVENTS_PER_TAG).max(1);
    let mut n = 0;
    while n < events {
        let last = (n + FILL_BATCH).min(events);
        store.append((n..last).map(|i| event(i, tags)).collect(), None)?;
        n = last;
    }
    store.close()?;
    eprintln!("journal of {events} events in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let exported = opossum::store::tools::export_tree(&source, tree, &mut |_, _| {})?;
    anyhow::ensure!(exported.events == events, "export wrote {} events, not {events}", exported.events);
    eprintln!(
        "tree exported in {:.1} s: {} event files, {} index files, {:.0} MB of event files",
        t.elapsed().as_secs_f64(),
        exported.events,
        exported.index_files,
        exported.bytes as f64 / 1e6
    );
    std::fs::remove_dir_all(&source)?;
    std::fs::write(&marker, events.to_string())?;
    Ok(())
}

/// Reads every file in batches of `batch` through `io`; (time, bytes).
fn raw_read(io: &dyn BatchIo, paths: &[PathBuf], batch: usize) -> anyhow::Result<(Duration, u64)> {
    let t = Instant::now();
    let mut bytes = 0u64;
    for chunk in paths.chunks(batch.max(1)) {
        for r in io.read_files(chunk) {
            bytes += r?.len() as u64;
        }
    }
    Ok((t.elapsed(), bytes))
}

/// Opens the tree with opossumd's defaults (importing it), checks the head, closes; (open time, close time).
fn import(tree: &Path, events: u64, durability: Durability) -> anyhow::Result<(Duration, Duration)> {
    let daemon_dir = tree.join(".opossumd");
    anyhow::ensure!(!daemon_dir.exists(), "{} exists: this would not be an import", daemon_dir.display());
    let t = Instant::now();
    let store = Store::open(tree, StoreOptions { exclusive: true, durability, ..StoreOptions::default() })?;
    let opened = t.elapsed();
    anyhow::ensure!(store.head() == events, "imported head {}, the tree has {events} events", store.head());
    let t = Instant::now();
    store.close()?;
    let closed = t.elapsed();
    std::fs::remove_dir_all(&daemon_dir)?;
    Ok((opened, closed))
}

/// CPU seconds this process has used so far, (user, system), all threads (io_uring's io-wq workers included).
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: `getrusage` only writes the `rusage` we pass, which lives for the call.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (seconds(usage.ru_utime), seconds(usage.ru_stime))
}

/// The CPU used since `before` (from [`cpu_seconds`]), as "cpu U user + S sys".
fn cpu_since(before: (f64, f64)) -> String {
    let (user, sys) = cpu_seconds();
    format!("cpu {:.1} user + {:.1} sys", user - before.0, sys - before.1)
}

fn rate(events: u64, d: Duration) -> String {
    format!("{:>9.0} files/s", events as f64 / d.as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    if std::env::var("RUST_LOG").is_ok() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    }
    let dir = args.dir.clone().unwrap_or_else(|| opossum_bench::suite::target_dir().join("bench").join("import-bench"));
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    let tree = dir.join("tree");
    let n = args.events;
    make_tree(&dir, &tree, n)?;
    let layout = Layout::new(&tree);
    let paths: Vec<PathBuf> = (1..=n).map(|p| layout.event_file(p)).collect();
    let evict = Evict::detect();
    let evict_all = || -> anyhow::Result<()> {
        match evict {
            Evict::DropCaches => evict.evict(&[]),
            Evict::Fadvise => {
                // Every file of the tree: the import reads index files and the ledger too.
                evict.evict(&sys::files_under(&tree)?)
            }
        }
    };
    let uring = UringIo::new(UringConfig::default())?;
    let pool = ThreadPoolIo::new(args.threads);
    let mut readers: Vec<(String, &dyn BatchIo, usize)> = Vec::new();
    for &batch in &args.raw_batches {
        readers.push((format!("io_uring, {batch} files/call"), &uring, batch));
        readers.push((format!("threads({}), {batch} files/call", args.threads), &pool, batch));
    }
    let load_before = sys::load_average();
    println!(
        "import_bench: {n} events, {} rounds, cold cache: {}, load average {:.2} {:.2} {:.2}",
        args.rounds,
        evict.describe(),
        load_before[0],
        load_before[1],
        load_before[2]
    );
    let mut raw_best: Option<(Duration, String)> = None;
    let mut imports = Vec::new();
    for round in 1..=args.rounds.max(1) {
        for (name, io, batch) in readers.iter().filter(|_| !args.import_only) {
            evict_all()?;
            let cpu = cpu_seconds();
            let (took, bytes) = raw_read(*io, &paths, *batch)?;
            println!(
                "round {round} raw read, {name:<28}: {:>7.2} s {} ({:.0} MB, {})",
                took.as_secs_f64(),
                rate(n, took),
                bytes as f64 / 1e6,
                cpu_since(cpu)
            );
            if raw_best.as_ref().is_none_or(|(best, _)| took < *best) {
                raw_best = Some((took, name.clone()));
            }
        }
        evict_all()?;
        let cpu = cpu_seconds();
        let durability = if args.no_fsync { Durability::None } else { Durability::Fsync };
        let (opened, closed) = import(&tree, n, durability)?;
        println!(
            "round {round} import (Store::open, {:<22}): {:>7.2} s {} (then close {:.2} s; {})",
            if args.no_fsync { "defaults but no fsync" } else { "defaults" },
            opened.as_secs_f64(),
            rate(n, opened),
            closed.as_secs_f64(),
            cpu_since(cpu)
        );
        imports.push(opened);
    }
    imports.sort();
    let import = imports[imports.len() / 2];
    let Some((raw, raw_name)) = raw_best else {
        println!("import of {n} events {:.2} s (median of {}); no raw reads", import.as_secs_f64(), imports.len());
        return Ok(());
    };
    let ratio = import.as_secs_f64() / raw.as_secs_f64();
    let load_after = sys::load_average();
    println!(
        "summary: import of {n} events {:.2} s (median of {}), best raw read {:.2} s ({raw_name}): import / raw = \
         {ratio:.2}x (target ≤ {TARGET_RATIO}x: {}); load average {:.2} → {:.2}",
        import.as_secs_f64(),
        imports.len(),
        raw.as_secs_f64(),
        if ratio <= TARGET_RATIO { "met" } else { "not met" },
        load_before[0],
        load_after[0]
    );
    if !args.keep {
        let t = Instant::now();
        // Unlinking a million files one by one takes minutes; spread it over a pool first.
        paths.par_iter().for_each(|p| {
            let _ = std::fs::remove_file(p);
        });
        std::fs::remove_dir_all(&dir)?;
        eprintln!("removed the tree in {:.1} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}
