//! Wire benchmark: starts its own `opossumd` on a temporary store and measures, side by side in one run,
//!
//! 1. read-all of N events (default 1,000,000) through the socket into the Rust client, next to the in-process
//!    `Store::read` of the same store and a raw-filesystem baseline (`std::fs::read` of every event file);
//! 2. single-event durable conditional appends from 1, 16 and 64 concurrent clients: events/s and p50/p99/p999,
//!    next to a raw-filesystem baseline (write + fsync + rename + fsync dir of one small file).
//!
//! ```text
//! cargo build --release --bins --examples
//! target/release/examples/wire_bench                       # everything, defaults
//! target/release/examples/wire_bench --events 100000 --seconds 3 --clients 1,16,64 --index-writes deferred
//! ```
//! The store is seeded with durability none + deferred index writes, 1000 events per append request.
//! Each append level also prints the layout's floor (`sys::commit_floor`): the bare syscalls of durable commits of
//! as many events as there are clients, i.e. the most any store keeping Opossum's file-per-event layout and the
//! design's durability contract could do on this disk in that minute.

// Shared with `opossum bench`; not every item is used by every example.
#[allow(dead_code)]
#[path = "../src/bin/opossum/bench/daemon.rs"]
mod daemon;
#[allow(dead_code)]
#[path = "../src/bin/opossum/bench/sys.rs"]
mod sys;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use daemon::Daemon;
use hdrhistogram::Histogram;
use opossum::client::Client;
use opossum::model::{AppendCondition, Event, Query, QueryItem, ReadOptions, Tag};
use opossum::store::{IndexWrites, Store, StoreOptions};

struct Args {
    events: u64,
    clients: Vec<usize>,
    seconds: f64,
    dir: PathBuf,
    daemon: PathBuf,
    index_writes: String,
    sync_strategy: String,
    io_backend: String,
    skip_read: bool,
    skip_append: bool,
    keep: bool,
    append_store: Option<PathBuf>,
    append_type: String,
    index_flush_interval_ms: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let exe = std::env::current_exe()?;
    let default_daemon = exe.parent().and_then(Path::parent).map(|p| p.join("opossumd")).unwrap_or_default();
    let mut a = Args {
        events: 1_000_000,
        clients: vec![1, 16, 64],
        seconds: 5.0,
        dir: std::env::temp_dir(),
        daemon: default_daemon,
        index_writes: "every-commit".into(),
        sync_strategy: "auto".into(),
        io_backend: "auto".into(),
        skip_read: false,
        skip_append: false,
        keep: false,
        append_store: None,
        append_type: "StudentRegistered".into(),
        index_flush_interval_ms: "1000".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => a.events = value()?.parse()?,
            "--clients" => a.clients = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--seconds" => a.seconds = value()?.parse()?,
            "--dir" => a.dir = value()?.into(),
            "--daemon" => a.daemon = value()?.into(),
            "--index-writes" => a.index_writes = value()?,
            "--sync-strategy" => a.sync_strategy = value()?,
            "--io-backend" => a.io_backend = value()?,
            "--skip-read" => a.skip_read = true,
            "--skip-append" => a.skip_append = true,
            "--keep" => a.keep = true,
            "--append-store" => a.append_store = Some(value()?.into()),
            "--append-type" => a.append_type = value()?,
            "--index-flush-interval-ms" => a.index_flush_interval_ms = value()?,
            "--help" | "-h" => {
                println!(
                    "wire_bench [--events N] [--clients 1,16,64] [--seconds S] [--dir DIR] [--daemon PATH]\n           \
                     [--index-writes every-commit|deferred] [--sync-strategy auto|per-file|syncfs] [--io-backend auto|uring|threads] [--skip-read] [--skip-append] [--keep]\n           \
                     [--append-store DIR: run every append level on this existing store (e.g. a seeded big one)]\n           \
                     [--append-type TYPE: the appended events' type (default StudentRegistered)] [--index-flush-interval-ms MS]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if !a.daemon.exists() {
        bail!("{} not found: build it (cargo build --release --bins) or pass --daemon", a.daemon.display());
    }
    Ok(a)
}

fn event(i: u64, tags: Vec<Tag>) -> Event {
    typed_event("StudentRegistered", i, tags)
}

fn typed_event(event_type: &str, i: u64, tags: Vec<Tag>) -> Event {
    let data = format!(r#"{{"studentId":{i},"name":"Student {i}","email":"student{i}@example.com","credits":12}}"#);
    Event::new(event_type, &data, tags).expect("valid event")
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let work = tempfile::Builder::new().prefix("opossum-wire-bench-").tempdir_in(&args.dir)?;
    println!("# opossum wire benchmark ({} cores, store under {})", num_cpus(), work.path().display());
    // `--keep`: several runs back to back, each one's cleanup would slow the next one's creates (see
    // `fsync_baseline`), so the directory is left for the caller to remove.
    let (_cleanup, dir) = if args.keep {
        let kept = work.keep();
        println!("# --keep: {} is left for you to remove", kept.display());
        (None, kept)
    } else {
        let dir = work.path().to_path_buf();
        (Some(work), dir)
    };
    if !args.skip_read {
        read_bench(&args, &dir)?;
    }
    if !args.skip_append {
        append_bench(&args, &dir)?;
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn read_bench(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let data = dir.join("read-store");
    let socket = dir.join("read.sock");
    let n = args.events;
    println!("\n## read-all of {n} events");
    let daemon = Daemon::start(
        &args.daemon,
        &data,
        &socket,
        &["--io-backend", &args.io_backend, "--durability", "none", "--index-writes", "deferred"],
    )?;
    let t = Instant::now();
    let seeders = 4u64;
    let per = n.div_ceil(seeders);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..seeders)
            .map(|k| {
                let socket = &daemon.socket;
                s.spawn(move || -> anyhow::Result<()> {
                    let mut c = Client::connect(socket)?;
                    let (lo, hi) = (k * per, ((k + 1) * per).min(n));
                    let mut i = lo;
                    while i < hi {
                        let m = (hi - i).min(1000);
                        c.append(
                            (i..i + m).map(|j| event(j, vec![Tag::new("studentId", j.to_string())])).collect(),
                            None,
                        )?;
                        i += m;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("seeder panicked")?;
        }
        Ok(())
    })?;
    let seeded = t.elapsed();
    println!(
        "seeded {n} events in {:.1} s ({:.0} events/s, 1000 events/request, 4 connections)",
        seeded.as_secs_f64(),
        rate(n, seeded)
    );
    daemon.stop()?;

    // Raw filesystem baseline: every event file read with std::fs::read, one thread.
    let events_dir = std::fs::read_dir(&data)?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case("events"))
        .map(|e| e.path())
        .context("no events directory")?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&events_dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let t = Instant::now();
    let mut bytes = 0usize;
    for f in &files {
        bytes += std::fs::read(f)?.len();
    }
    let raw = t.elapsed();
    println!(
        "raw fs baseline   : {:>9.0} files/s  ({} files, {:.0} MB, std::fs::read, 1 thread, {:.2} s)",
        rate(files.len() as u64, raw),
        files.len(),
        bytes as f64 / 1e6,
        raw.as_secs_f64()
    );

    let options = StoreOptions {
        durability: opossum::store::Durability::None,
        io_backend: args.io_backend.parse().map_err(anyhow::Error::msg)?,
        index_writes: IndexWrites::Deferred { interval: Duration::from_secs(1) },
        ..StoreOptions::default()
    };
    let store = Store::open(&data, options)?;
    let mut in_process = Vec::new();
    for run in 1..=2 {
        let t = Instant::now();
        let mut reader = store.read(&Query::All, ReadOptions::default())?;
        let (mut count, mut payload) = (0u64, 0usize);
        while let Some(batch) = reader.next_batch() {
            for e in batch? {
                count += 1;
                payload += e.data.get().len();
            }
        }
        let d = t.elapsed();
        assert_eq!(count, n);
        println!(
            "in-process read #{run}: {:>9.0} events/s  ({:.2} s, {payload} data bytes)",
            rate(count, d),
            d.as_secs_f64()
        );
        in_process.push(rate(count, d));
    }
    let backend = store.io_backend();
    store.close()?;

    let daemon = Daemon::start(
        &args.daemon,
        &data,
        &socket,
        &["--io-backend", &args.io_backend, "--durability", "none", "--index-writes", "deferred"],
    )?;
    let mut wire = Vec::new();
    let mut client = Client::connect(&daemon.socket)?;
    for run in 1..=2 {
        let t = Instant::now();
        let (mut count, mut payload) = (0u64, 0usize);
        let mut last = 0;
        for e in client.read(&Query::All, ReadOptions::default())? {
            let e = e?;
            count += 1;
            payload += e.data.get().len();
            assert!(e.position > last);
            last = e.position;
        }
        let d = t.elapsed();
        assert_eq!(count, n);
        println!(
            "socket read     #{run}: {:>9.0} events/s  ({:.2} s, {payload} data bytes)",
            rate(count, d),
            d.as_secs_f64()
        );
        wire.push(rate(count, d));
    }
    drop(client);
    daemon.stop()?;
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "socket / in-process (best of 2): {:.0} / {:.0} = {:.2}x   (io backend {backend}; target >= 0.7x)",
        best(&wire),
        best(&in_process),
        best(&wire) / best(&in_process)
    );
    // The store stays until the run ends (see `fsync_baseline`): deleting a million files here made every create
    // of the append levels that follow cost ~1 ms.
    Ok(())
}

fn fsync_baseline(dir: &Path, seconds: f64) -> anyhow::Result<(f64, Histogram<u64>)> {
    use std::io::Write;
    // Files stay until the run ends (the work directory goes then): deleting them here would slow every later
    // create of this run on ext4 without a journal, whose inode allocator scans past recently freed inodes.
    let d = dir.join("fsync-baseline");
    std::fs::create_dir_all(&d)?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let t = Instant::now();
    let mut i = 0u64;
    while t.elapsed().as_secs_f64() < seconds {
        let s = Instant::now();
        let tmp = d.join(format!("{i}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&[b'x'; 300])?;
        f.sync_all()?;
        std::fs::rename(&tmp, d.join(format!("{i}.json")))?;
        std::fs::File::open(&d)?.sync_all()?;
        hist.record(s.elapsed().as_micros() as u64)?;
        i += 1;
    }
    Ok((rate(i, t.elapsed()), hist))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn append_bench(args: &Args, dir: &Path) -> anyhow::Result<()> {
    println!(
        "\n## single-event durable conditional appends (durability fsync, index writes {}, {} s per level)",
        args.index_writes, args.seconds
    );
    let (fs_rate, fs_hist) = fsync_baseline(dir, args.seconds.min(2.0))?;
    println!(
        "raw fs baseline: {:>8.0} ops/s   p50 {:.2} ms  p99 {:.2} ms  (write+fsync+rename+fsync dir, 1 file, 1 thread)",
        fs_rate,
        ms(fs_hist.value_at_quantile(0.5)),
        ms(fs_hist.value_at_quantile(0.99))
    );
    println!("clients   events/s      p50 ms    p99 ms   p999 ms   events/commit  commit ms   floor ev/s  of floor   (UmaDB: 1,990 / 20,164 / 30,944 ev/s; p99 1.2 / 2.3 / 3.6 ms)");
    for (level, &k) in args.clients.iter().enumerate() {
        let data = args.append_store.clone().unwrap_or_else(|| dir.join(format!("append-store-{k}")));
        let socket = dir.join(format!("append-{k}.sock"));
        let daemon = Daemon::start(
            &args.daemon,
            &data,
            &socket,
            &[
                "--io-backend",
                &args.io_backend,
                "--durability",
                "fsync",
                "--index-writes",
                &args.index_writes,
                "--sync-strategy",
                &args.sync_strategy,
                "--index-flush-interval-ms",
                &args.index_flush_interval_ms,
            ],
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
        let barrier = Arc::new(Barrier::new(k + 1));
        let handles: Vec<_> = (0..k)
            .map(|c| {
                let (socket, stop, total, hist, barrier) =
                    (daemon.socket.clone(), stop.clone(), total.clone(), hist.clone(), barrier.clone());
                let event_type = args.append_type.clone();
                // Unique per run and level: with `--append-store`, levels and runs share one store.
                let stream = Tag::new("stream", format!("{}-{level}-{c}", std::process::id()));
                std::thread::spawn(move || -> anyhow::Result<()> {
                    let mut client = Client::connect(&socket)?;
                    let query = Query::items(vec![QueryItem::new(vec![event_type.clone()], vec![stream.clone()])?])?;
                    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                    let mut after: Option<u64> = None;
                    let mut i = 0u64;
                    barrier.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let condition = AppendCondition { fail_if_events_match: query.clone(), after };
                        let s = Instant::now();
                        let a =
                            client.append(vec![typed_event(&event_type, i, vec![stream.clone()])], Some(condition))?;
                        local.record(s.elapsed().as_micros() as u64)?;
                        after = Some(a.last);
                        i += 1;
                    }
                    total.fetch_add(i, Ordering::Relaxed);
                    hist.lock().unwrap().add(&local)?;
                    Ok(())
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().expect("client panicked")?;
        }
        let d = t.elapsed();
        let stats = Client::connect(&daemon.socket)?.stats()?;
        daemon.stop()?;
        // Right after the level, on the same disk: commits of `k` events with nothing but their syscalls.
        let (floor, _, _) = sys::best_commit_floor(dir, k, 300, args.seconds.min(4.0))?;
        let n = total.load(Ordering::Relaxed);
        let h = hist.lock().unwrap();
        let commits = stats["store"]["commits"].as_u64().unwrap_or(0).max(1);
        let appended = stats["store"]["events_appended"].as_u64().unwrap_or(0);
        let commit_us = stats["store"]["commit_latency_us_total"].as_u64().unwrap_or(0);
        println!(
            "{k:>7} {:>10.0} {:>11.2} {:>9.2} {:>9.2} {:>15.1} {:>10.2} {:>12.0} {:>9.2}x",
            rate(n, d),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            appended as f64 / commits as f64,
            commit_us as f64 / commits as f64 / 1000.0,
            floor,
            rate(n, d) / floor
        );
        // The store stays until the run ends (see `fsync_baseline`).
    }
    Ok(())
}
