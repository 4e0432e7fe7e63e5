//! Wire benchmark: starts its own `opossumd` on a temporary store and measures, side by side in one run,
//!
//! 1. read-all of N events through the socket into the Rust client, next to the in-process `Store::read` of the same
//!    store and the raw sequential `std::fs::read` of every event file;
//! 2. single-event durable conditional appends from 1, 16 and 64 concurrent clients, each appending to its own
//!    stream tag with `fail_if_events_match {type, stream}` after its last position: events/s and p50/p99/p999, next
//!    to the layout's floor (`sys::best_commit_floor`) measured right after each level.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/wire_bench                       # everything, defaults
//! target/release/examples/wire_bench --events 100000 --seconds 3 --clients 1,16,64 --index-writes deferred
//! ```
//! The store is seeded with the suite's course-management data set (durability none, deferred index writes, 1,000
//! events per append request). The appended events carry `data::sized_data` (300–500 B), as in the peer benchmark.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use opossum::client::Client;
use opossum::model::{AppendCondition, Event, Query, QueryItem, ReadOptions, Tag};
use opossum::store::{IndexWrites, Store, StoreOptions};
use opossum_bench::daemon::Daemon;
use opossum_bench::data::{sized_data, DataSet};
use opossum_bench::load::{closed_loop, Outcome};
use opossum_bench::report::Latency;
use opossum_bench::{suite, sys};

#[derive(Parser)]
#[command(about = "Wire benchmark: read-all over the socket vs in process, durable conditional appends per client")]
struct Args {
    /// Events to seed for the read-all
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Concurrent clients of the append levels
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Seconds per append level
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Parent of the temporary work directory
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// The opossumd binary [default: next to this executable's profile directory]
    #[arg(long)]
    daemon: Option<PathBuf>,
    #[arg(long, default_value = "every-commit", value_parser = ["every-commit", "deferred"])]
    index_writes: String,
    #[arg(long, default_value = "auto", value_parser = ["auto", "per-file", "syncfs"])]
    sync_strategy: String,
    #[arg(long, default_value = "auto", value_parser = ["auto", "uring", "threads"])]
    io_backend: String,
    #[arg(long)]
    skip_read: bool,
    #[arg(long)]
    skip_append: bool,
    /// Leave the work directory (several runs back to back: a cleanup slows the next run's creates)
    #[arg(long)]
    keep: bool,
    /// Run every append level on this existing store (e.g. a seeded big one)
    #[arg(long, value_name = "DIR")]
    append_store: Option<PathBuf>,
    /// The appended events' type
    #[arg(long, default_value = "StudentRegistered")]
    append_type: String,
    #[arg(long, default_value = "1000")]
    index_flush_interval_ms: String,
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let daemon = args.daemon.clone().unwrap_or_else(suite::default_daemon);
    anyhow::ensure!(daemon.exists(), "{} not found: build it or pass --daemon", daemon.display());
    let work = tempfile::Builder::new().prefix("opossum-wire-bench-").tempdir_in(&args.dir)?;
    println!("# opossum wire benchmark ({} cores, store under {})", sys::cores(), work.path().display());
    let dir = work.path().to_path_buf();
    let _cleanup = suite::Cleanup { dir: dir.clone(), keep: args.keep };
    let _ = work.keep();
    if !args.skip_read {
        read_bench(&args, &daemon, &dir)?;
    }
    if !args.skip_append {
        append_bench(&args, &daemon, &dir)?;
    }
    Ok(())
}

fn read_bench(args: &Args, binary: &Path, dir: &Path) -> anyhow::Result<()> {
    let data = dir.join("read-store");
    let socket = dir.join("read.sock");
    let n = args.events;
    println!("\n## read-all of {n} events");
    let flags = ["--io-backend", &args.io_backend, "--durability", "none", "--index-writes", "deferred"];
    let daemon = Daemon::start(binary, &data, &socket, &flags)?;
    let ds = DataSet { events: n, students: (n / 100).max(1), courses: (n / 500).max(1) };
    let t = Instant::now();
    let mut client = Client::connect(&daemon.socket)?;
    for lo in (0..n).step_by(1000) {
        client.append((lo..(lo + 1000).min(n)).map(|i| ds.event(i)).collect(), None)?;
    }
    drop(client);
    println!("seeded {n} events in {:.1} s (1000 events/request)", t.elapsed().as_secs_f64());
    daemon.stop()?;

    let files = sys::json_files(&sys::events_dir(&data)?)?;
    let (raw, bytes) = sys::read_files(&files)?;
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
        let mut count = 0u64;
        while let Some(batch) = reader.next_batch() {
            count += batch?.len() as u64;
        }
        let d = t.elapsed();
        anyhow::ensure!(count == n, "in-process read returned {count} of {n} events");
        println!("in-process read #{run}: {:>9.0} events/s  ({:.2} s)", rate(count, d), d.as_secs_f64());
        in_process.push(rate(count, d));
    }
    let backend = store.io_backend();
    store.close()?;

    let daemon = Daemon::start(binary, &data, &socket, &flags)?;
    let mut wire = Vec::new();
    let mut client = Client::connect(&daemon.socket)?;
    for run in 1..=2 {
        let t = Instant::now();
        let (mut count, mut last) = (0u64, 0);
        for e in client.read(&Query::All, ReadOptions::default())? {
            let e = e?;
            anyhow::ensure!(e.position > last, "positions out of order: {} after {last}", e.position);
            last = e.position;
            count += 1;
        }
        let d = t.elapsed();
        anyhow::ensure!(count == n, "socket read returned {count} of {n} events");
        println!("socket read     #{run}: {:>9.0} events/s  ({:.2} s)", rate(count, d), d.as_secs_f64());
        wire.push(rate(count, d));
    }
    drop(client);
    daemon.stop()?;
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "socket / in-process (best of 2): {:.0} / {:.0} = {:.2}x   (io backend {backend}; target >= 0.7x)",
        best(&wire),
        best(&in_process),
        best(&wire) / best(&in_process)
    );
    Ok(())
}

fn append_bench(args: &Args, binary: &Path, dir: &Path) -> anyhow::Result<()> {
    println!(
        "\n## single-event durable conditional appends (durability fsync, index writes {}, {} s per level)",
        args.index_writes, args.seconds
    );
    println!("clients   events/s      p50 ms    p99 ms   p999 ms   events/commit  commit ms   floor ev/s  of floor");
    for (level, &k) in args.clients.iter().enumerate() {
        let data = args.append_store.clone().unwrap_or_else(|| dir.join(format!("append-store-{k}")));
        let socket = dir.join(format!("append-{k}.sock"));
        let flags = [
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
        ];
        let daemon = Daemon::start(binary, &data, &socket, &flags)?;
        let event_type = args.append_type.as_str();
        let load = closed_loop(
            k,
            Duration::from_secs_f64(args.seconds),
            |c| {
                // Unique per run and level: with `--append-store`, levels and runs share one store.
                let stream = Tag::new("stream", format!("{}-{level}-{c}", std::process::id()));
                let query = Query::items(vec![QueryItem::new(vec![event_type.to_string()], vec![stream.clone()])?])?;
                Ok((Client::connect(&daemon.socket)?, stream, query, None::<u64>, 0u64))
            },
            |(client, stream, query, after, i)| {
                let condition = AppendCondition { fail_if_events_match: query.clone(), after: *after };
                let event = Event::new(event_type, &sized_data(*i), vec![stream.clone()])?;
                *after = Some(client.append(vec![event], Some(condition))?.last);
                *i += 1;
                Ok(Outcome::events(1))
            },
        )?;
        let stats = Client::connect(&daemon.socket)?.stats()?;
        daemon.stop()?;
        // Right after the level, on the same disk: commits of `k` events with nothing but their syscalls.
        let (floor, _, _) = sys::best_commit_floor(dir, k, 400, args.seconds.min(4.0))?;
        let l = Latency::from_us(&load.latency_us);
        let commits = stats["store"]["commits"].as_u64().unwrap_or(0).max(1);
        let appended = stats["store"]["events_appended"].as_u64().unwrap_or(0);
        let commit_us = stats["store"]["commit_latency_us_total"].as_u64().unwrap_or(0);
        println!(
            "{k:>7} {:>10.0} {:>11.2} {:>9.2} {:>9.2} {:>15.1} {:>10.2} {:>12.0} {:>9.2}x",
            load.events_per_second(),
            l.p50_ms,
            l.p99_ms,
            l.p999_ms,
            appended as f64 / commits as f64,
            commit_us as f64 / commits as f64 / 1000.0,
            floor,
            load.events_per_second() / floor
        );
    }
    Ok(())
}
