//! `opossum-bench`: the end-to-end benchmark suite. It starts a real `opossumd` on a fresh store, seeds the
//! course-management data set ([`data`]) and measures, over the socket, side by side with raw-filesystem baselines
//! measured in the same run:
//!
//! 1. read-all, warm and cold;
//! 2. tag queries for one student's and one course's events (p50/p99, queries/s);
//! 3. projection `get_all` of StudentShortInfo, warm and cold;
//! 4. a projection rebuild (read every event of the projection's types, write one projection per student);
//! 5. durable single-event conditional appends ("one seat left") from 1, 16 and 64 clients;
//! 6. unconditional durable appends of 100 events per request.
//!
//! It prints a table and writes one JSON file per run (machine, git commit, parameters, every number) under
//! `target/bench/`. `--quick` is the CI smoke test (seconds, not minutes).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

use crate::daemon::Daemon;
use crate::data::DataSet;
use crate::report::{self, Workload};
use crate::sys::{self, Evict};
use crate::workloads;

/// `opossum-bench` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// CI smoke test: a small store and short measurements (well under a minute)
    #[arg(long)]
    pub quick: bool,
    /// The opossumd binary [default: `opossumd` next to this executable]
    #[arg(long, value_name = "PATH")]
    pub daemon: Option<PathBuf>,
    /// Events to seed [default: 1000000; quick: 20000]
    #[arg(long)]
    pub events: Option<u64>,
    /// Students in the data set [default: 10000; quick: 1000]
    #[arg(long)]
    pub students: Option<u64>,
    /// Courses in the data set [default: 2000; quick: 200]
    #[arg(long)]
    pub courses: Option<u64>,
    /// StudentShortInfo projections for the get_all workload [default: 5000; quick: 500]
    #[arg(long)]
    pub projections: Option<usize>,
    /// Seconds per append level and per batched-append run [default: 5; quick: 2]
    #[arg(long, value_name = "SECONDS")]
    pub append_seconds: Option<f64>,
    /// Seconds per tag-query kind [default: 5; quick: 1]
    #[arg(long, value_name = "SECONDS")]
    pub query_seconds: Option<f64>,
    /// Concurrent clients for the conditional-append levels
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Events per append request while seeding
    #[arg(long, default_value_t = 1000)]
    pub seed_batch: usize,
    /// Connections seeding in parallel
    #[arg(long, default_value_t = 4)]
    pub seed_connections: usize,
    /// Index writes of the measured daemon (seeding always defers them)
    #[arg(long, default_value = "deferred", value_parser = ["deferred", "every-commit"])]
    pub index_writes: String,
    /// io backend of the daemon: auto, uring or threads
    #[arg(long, default_value = "auto")]
    pub io_backend: String,
    /// Where the temporary store goes [default: target/bench/tmp]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Where the JSON results go [default: target/bench]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Keep the temporary store
    #[arg(long)]
    pub keep: bool,
}

/// The parameters a run actually used (recorded in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub mode: &'static str,
    pub data_set: DataSet,
    pub projections: usize,
    pub append_seconds: f64,
    pub query_seconds: f64,
    pub clients: Vec<usize>,
    pub batch_clients: usize,
    pub batch_events: usize,
    pub seed_batch: usize,
    pub seed_connections: usize,
    pub seed_daemon_flags: Vec<String>,
    pub daemon_flags: Vec<String>,
    pub cold_raw_sample_files: usize,
    pub raw_seconds: f64,
    pub io_backend: String,
}

impl Params {
    fn resolve(args: &BenchArgs) -> Params {
        let q = args.quick;
        let events = args.events.unwrap_or(if q { 20_000 } else { 1_000_000 });
        let students = args.students.unwrap_or(if q { 1_000 } else { 10_000 }).max(1);
        let courses = args.courses.unwrap_or(if q { 200 } else { 2_000 }).max(1);
        let io = ["--io-backend".to_string(), args.io_backend.clone()];
        let mut seed_daemon_flags: Vec<String> =
            ["--durability", "none", "--index-writes", "deferred", "--index-flush-interval-ms", "3600000"]
                .map(String::from)
                .to_vec();
        seed_daemon_flags.extend(io.clone());
        let mut daemon_flags: Vec<String> =
            ["--durability", "fsync", "--index-writes", args.index_writes.as_str()].map(String::from).to_vec();
        daemon_flags.extend(io);
        Params {
            mode: if q { "quick" } else { "full" },
            data_set: DataSet { events: events.max(students + courses), students, courses },
            projections: args.projections.unwrap_or(if q { 500 } else { 5_000 }).min(students as usize).max(1),
            append_seconds: args.append_seconds.unwrap_or(if q { 2.0 } else { 5.0 }),
            query_seconds: args.query_seconds.unwrap_or(if q { 1.0 } else { 5.0 }),
            clients: args.clients.iter().copied().filter(|&c| c > 0).collect(),
            batch_clients: 4,
            batch_events: 100,
            seed_batch: args.seed_batch.clamp(1, 10_000),
            seed_connections: args.seed_connections.max(1),
            seed_daemon_flags,
            daemon_flags,
            cold_raw_sample_files: if q { 5_000 } else { 50_000 },
            raw_seconds: if q { 1.0 } else { 2.0 },
            io_backend: args.io_backend.clone(),
        }
    }
}

/// Seeding: how long, how fast, and how long the daemon took to stop (flushing the deferred index files).
#[derive(Debug, Clone, Serialize)]
pub struct SeedReport {
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub stop_seconds: f64,
    pub reopen_seconds: f64,
    pub store_bytes: u64,
}

/// Everything one run measured (the JSON document).
#[derive(Debug, Serialize)]
pub struct Results {
    pub tool: &'static str,
    pub version: &'static str,
    pub started_at: String,
    pub duration_seconds: f64,
    pub git_commit: Option<String>,
    pub command: String,
    pub machine: serde_json::Value,
    pub io_backend: String,
    pub cold_cache_method: &'static str,
    pub params: Params,
    pub seed: SeedReport,
    pub workloads: Vec<Workload>,
}

/// Where things go by default: the `target/` directory holding this executable (`target/release/opossum-bench`,
/// `target/release/examples/wire_bench`), else `./target`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().ok();
    exe.as_deref()
        .and_then(|exe| exe.ancestors().skip(1).find(|p| p.file_name().is_some_and(|n| n == "target")))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// `opossumd` in this executable's profile directory (`cargo build --release --workspace --bins` puts both in
/// `target/release`; examples run from `target/release/examples`).
pub fn default_daemon() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "examples" || n == "deps") {
        dir.pop();
    }
    dir.join("opossumd")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Runs the suite; returns the path of the JSON results.
pub fn run(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    let started_at = report::utc_timestamp(now_secs());
    let params = Params::resolve(args);
    let binary = args.daemon.clone().unwrap_or_else(default_daemon);
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build it (cargo build --release --bins) or pass --daemon PATH",
        binary.display()
    );
    let out_dir = args.out.clone().unwrap_or_else(|| target_dir().join("bench"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let tmp_parent = args.dir.clone().unwrap_or_else(|| target_dir().join("bench").join("tmp"));
    std::fs::create_dir_all(&tmp_parent).with_context(|| format!("creating {}", tmp_parent.display()))?;
    let work = tmp_parent.join(format!("run-{}-{}", std::process::id(), now_secs()));
    std::fs::create_dir_all(&work)?;
    let work = std::fs::canonicalize(&work)?;
    let _cleanup = Cleanup { dir: work.clone(), keep: args.keep };

    let evict = Evict::detect();
    let ds = params.data_set;
    eprintln!(
        "opossum-bench ({} mode): {} events, {} students, {} courses; store under {}; cold cache: {}",
        params.mode,
        ds.events,
        ds.students,
        ds.courses,
        work.display(),
        evict.describe()
    );

    let data = work.join("store");
    // Socket paths must fit in sockaddr_un (108 bytes); fall back to /tmp when the work dir is deep.
    let socket_dir = if work.as_os_str().len() < 90 { work.clone() } else { std::env::temp_dir() };
    let socket = socket_dir.join(format!("opossum-bench-{}.sock", std::process::id()));

    // Seed with durability none and deferred index writes, then restart with the measured configuration.
    let seeder = Daemon::start(&binary, &data, &socket, &params.seed_daemon_flags)?;
    let t = Instant::now();
    workloads::seed(&seeder.socket, &params)?;
    let seed_seconds = t.elapsed().as_secs_f64();
    let stop_seconds = seeder.stop()?.as_secs_f64();
    let store_bytes = dir_bytes(&data);
    let daemon = Daemon::start(&binary, &data, &socket, &params.daemon_flags)?;
    let seed = SeedReport {
        events: ds.events,
        seconds: seed_seconds,
        events_per_second: ds.events as f64 / seed_seconds,
        stop_seconds,
        reopen_seconds: daemon.ready_after.as_secs_f64(),
        store_bytes,
    };
    eprintln!(
        "seeded {} events in {:.1} s ({:.0} events/s); daemon stop (index flush) {:.1} s, reopen {:.1} s",
        ds.events, seed.seconds, seed.events_per_second, seed.stop_seconds, seed.reopen_seconds
    );
    let io_backend = opossum_client(&daemon)?.hello()?.io_backend;

    let ctx = workloads::Ctx { params: &params, daemon: &daemon, data: &data, work: &work, evict };
    let mut results = Vec::new();
    results.extend(workloads::read_all(&ctx)?);
    results.extend(workloads::tag_queries(&ctx)?);
    results.extend(workloads::projections(&ctx)?);
    results.extend(workloads::conditional_appends(&ctx)?);
    results.push(workloads::batched_appends(&ctx)?);
    daemon.stop()?;

    let doc = Results {
        tool: "opossum-bench",
        version: env!("CARGO_PKG_VERSION"),
        started_at,
        duration_seconds: started.elapsed().as_secs_f64(),
        git_commit: sys::git_commit(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: sys::machine_info(&work),
        io_backend,
        cold_cache_method: evict.describe(),
        params,
        seed,
        workloads: results,
    };
    let name = format!("bench-{}-{}.json", doc.started_at.replace([':', '-'], ""), doc.params.mode);
    let path = out_dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;

    println!();
    println!(
        "opossum-bench, {} mode: {} events ({} students, {} courses), io backend {}, {} cores, cold cache via {}",
        doc.params.mode,
        ds.events,
        ds.students,
        ds.courses,
        doc.io_backend,
        sys::cores(),
        doc.cold_cache_method
    );
    println!(
        "seeding: {:.1} s ({:.0} events/s, {} events/request, durability none, deferred index writes)",
        doc.seed.seconds, doc.seed.events_per_second, doc.params.seed_batch
    );
    println!();
    print!("{}", report::table(&doc.workloads));
    println!();
    println!("total {:.0} s; results: {}", doc.duration_seconds, path.display());
    Ok(path)
}

fn opossum_client(daemon: &Daemon) -> anyhow::Result<opossum::client::Client> {
    opossum::client::Client::connect(&daemon.socket)
        .with_context(|| format!("connecting to {}", daemon.socket.display()))
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => total += e.metadata().map_or(0, |m| m.len()),
                Err(_) => {}
            }
        }
    }
    total
}

/// Removes a run's work directory (with [`remove_tree`]) when dropped, unless `keep`.
pub struct Cleanup {
    pub dir: PathBuf,
    pub keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.dir.display());
        } else {
            let t = Instant::now();
            if let Err(e) = remove_tree(&self.dir) {
                eprintln!("removing {}: {e}", self.dir.display());
            }
            eprintln!("removed the temporary store in {:.1} s", t.elapsed().as_secs_f64());
        }
    }
}

/// `remove_dir_all`, with the files unlinked from many threads: on a filesystem mounted with `discard` (this
/// benchmark machine's ext4 is), freeing a file's blocks issues a synchronous discard (~2 ms), and concurrent
/// unlinks overlap them (measured: 5,000 files in 9.3 s from one thread, 0.7 s from 32).
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let (mut files, mut dirs, mut stack) = (Vec::new(), Vec::new(), vec![dir.to_path_buf()]);
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
        dirs.push(d);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..REMOVE_THREADS.min(files.len().div_ceil(64)).max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(64, std::sync::atomic::Ordering::Relaxed);
                if i >= files.len() {
                    return;
                }
                for f in &files[i..(i + 64).min(files.len())] {
                    let _ = std::fs::remove_file(f);
                }
            });
        }
    });
    for d in dirs.iter().rev() {
        std::fs::remove_dir(d)?;
    }
    Ok(())
}

const REMOVE_THREADS: usize = 64;

/// `d` in seconds, for JSON.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
