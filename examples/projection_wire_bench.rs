//! Projection reads through the socket (issue 5's numbers): starts its own `opossumd` on a temporary store, writes
//! N StudentShortInfo-sized projections (~400–800 B files, two tags each) with `projection.put_many`, then measures
//! `projection.get_all` into the Rust client (every item decoded), warm and cold, beside the raw sequential
//! `std::fs::read` of the same projection files measured in the same run.
//!
//! ```text
//! cargo build --release --bins --examples
//! target/release/examples/projection_wire_bench                    # 5,000 and 100,000 projections
//! target/release/examples/projection_wire_bench --counts 5000 --runs 9 --dir /var/tmp --io-backend threads
//! ```
//! Warm runs are served by the daemon's hot tier (the projection cache, filled by the puts): the output gives the hit
//! rate `stats` reported over the measured runs. Cold runs restart the daemon (an empty cache; the restart is not
//! timed) and then drop the page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`) when running as root, else evict
//! each projection file with `posix_fadvise(DONTNEED)`; the output says which. `--projection-cache-bytes 0` measures
//! the daemon without its cache.

#[path = "common/cache.rs"]
mod cache;
// Shared with `opossum bench`; not every item is used by every example.
#[allow(dead_code)]
#[path = "../src/bin/opossum/bench/daemon.rs"]
mod daemon;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cache::{evict, evict_method, raw_read, Evict};
use daemon::Daemon;
use opossum::client::Client;
use opossum::model::Tag;
use opossum::projection::Put;
use serde_json::value::RawValue;

const PROJECTION: &str = "StudentShortInfo";
const PUT_BATCH: usize = 1_000;

struct Args {
    counts: Vec<usize>,
    runs: usize,
    cold_runs: usize,
    dir: PathBuf,
    daemon: PathBuf,
    io_backend: String,
    /// Passed to the daemon when set.
    cache_bytes: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let exe = std::env::current_exe()?;
    let default_daemon = exe.parent().and_then(Path::parent).map(|p| p.join("opossumd")).unwrap_or_default();
    let mut a = Args {
        counts: vec![5_000, 100_000],
        runs: 9,
        cold_runs: 3,
        dir: std::env::temp_dir(),
        daemon: default_daemon,
        io_backend: "auto".into(),
        cache_bytes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--counts" => a.counts = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--runs" => a.runs = value()?.parse()?,
            "--cold-runs" => a.cold_runs = value()?.parse()?,
            "--dir" => a.dir = value()?.into(),
            "--daemon" => a.daemon = value()?.into(),
            "--io-backend" => a.io_backend = value()?,
            "--projection-cache-bytes" => a.cache_bytes = Some(value()?),
            "--help" | "-h" => {
                println!(
                    "projection_wire_bench [--counts 5000,100000] [--runs 9] [--cold-runs 3] [--dir DIR] \
                     [--daemon PATH] [--io-backend auto|uring|threads] [--projection-cache-bytes N]"
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

/// A StudentShortInfo state as .NET serialises it (PascalCase), sized for 400–800 byte files.
fn student(i: usize) -> String {
    let first = ["Anna", "Bob", "Chloé", "Dávid", "Eve", "Farkas", "Greta", "Hiroshi"][i % 8];
    let last = ["Kovács", "Smith", "O'Brien", "Nagy", "Müller", "Tanaka", "Rossi", "Dubois"][(i / 8) % 8];
    let note = "x".repeat(20 + (i * 7919) % 330);
    format!(
        r#"{{"StudentId":"{:08x}-d9cb-469f-a165-{:012x}","FirstName":"{first}","LastName":"{last}","Email":"student{i}@example.com","EnrollmentTier":{},"CurrentEnrollmentCount":{},"MaxEnrollmentCount":10,"IsMaxedOut":false,"Notes":"{note}"}}"#,
        i,
        i * 31,
        i % 3,
        i % 10
    )
}

fn populate(c: &mut Client, count: usize) -> anyhow::Result<()> {
    let tiers = ["Basic", "Premium", "Professional"];
    let mut i = 0;
    while i < count {
        let end = (i + PUT_BATCH).min(count);
        let puts: Vec<Put> = (i..end)
            .map(|n| Put {
                projection: PROJECTION.into(),
                key: format!("{:08x}-d9cb-469f-a165-{:012x}", n, n * 31),
                state: RawValue::from_string(student(n)).expect("JSON"),
                tags: vec![Tag::new("EnrollmentTier", tiers[n % 3]), Tag::new("Cohort", format!("{}", 2020 + n % 6))],
                expected_version: None,
            })
            .collect();
        c.projection_put_many(&puts)?;
        i = end;
    }
    Ok(())
}

fn projection_files(data: &Path) -> Vec<PathBuf> {
    let dir = data.join("Projections").join(PROJECTION);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("projection directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// `projection.get_all` through the socket, every item decoded by the client.
fn get_all(c: &mut Client) -> anyhow::Result<(Duration, usize, usize)> {
    let t = Instant::now();
    let (mut n, mut state_bytes) = (0, 0);
    for item in c.projection_get_all(PROJECTION)? {
        state_bytes += item?.state.get().len();
        n += 1;
    }
    Ok((t.elapsed(), n, state_bytes))
}

/// `stats`' projection cache hits and misses so far (0 from a daemon without a cache).
fn cache_counters(c: &mut Client) -> anyhow::Result<(u64, u64)> {
    let stats = c.stats()?;
    let cache = &stats["projections"]["cache"];
    Ok((cache["hits"].as_u64().unwrap_or(0), cache["misses"].as_u64().unwrap_or(0)))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn best_median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let method = evict_method();
    let tmp = tempfile::Builder::new().prefix("projection-wire-bench").tempdir_in(&args.dir)?;
    println!(
        "projection_wire_bench: opossumd {}, io backend {}, cold = {}",
        args.daemon.display(),
        args.io_backend,
        match method {
            Evict::DropCaches => "sync; echo 3 > /proc/sys/vm/drop_caches (root)",
            Evict::Fadvise => "posix_fadvise(DONTNEED) on each projection file (not root)",
        }
    );
    for &count in &args.counts {
        let data = tmp.path().join(format!("store-{count}"));
        let socket = tmp.path().join(format!("s-{count}.sock"));
        let mut daemon_args = vec!["--io-backend", args.io_backend.as_str(), "--durability", "none"];
        if let Some(bytes) = &args.cache_bytes {
            daemon_args.extend(["--projection-cache-bytes", bytes.as_str()]);
        }
        let daemon = Daemon::start(&args.daemon, &data, &socket, &daemon_args)?;
        let mut c = Client::connect(&daemon.socket)?;
        let t = Instant::now();
        populate(&mut c, count)?;
        let populated = t.elapsed();
        let files = projection_files(&data);
        anyhow::ensure!(files.len() == count, "{} files for {count} projections", files.len());
        let (_, total_bytes) = raw_read(&files);
        println!(
            "\n{count} projections: {} files, avg {} B/file, written with put_many x{PUT_BATCH} in {:.2} s",
            files.len(),
            total_bytes / files.len(),
            populated.as_secs_f64()
        );
        for cold in [false, true] {
            let runs = if cold { args.cold_runs } else { args.runs };
            if runs == 0 {
                continue;
            }
            if !cold {
                // Warm up the page cache, the daemon's threads and the client's buffers.
                raw_read(&files);
                get_all(&mut c)?;
            }
            let (mut raw, mut ours) = (Vec::new(), Vec::new());
            let mut wire_state_bytes = 0;
            let (mut hits, mut misses) = (0, 0);
            for _ in 0..runs {
                if cold {
                    evict(method, &files);
                }
                raw.push(raw_read(&files).0);
                if cold {
                    // A fresh daemon: nothing in its cache.
                    drop(c);
                    daemon.restart()?;
                    c = Client::connect(&daemon.socket)?;
                    evict(method, &files);
                }
                let before = cache_counters(&mut c)?;
                let (d, n, state_bytes) = get_all(&mut c)?;
                let after = cache_counters(&mut c)?;
                hits += after.0 - before.0;
                misses += after.1 - before.1;
                anyhow::ensure!(n == count, "get_all returned {n} of {count}");
                wire_state_bytes = state_bytes;
                ours.push(d);
            }
            let ((raw_best, raw_med), (best, med)) = (best_median(raw), best_median(ours));
            println!(
                "{:<4} get_all via socket: best {:>8.2} ms, median {:>8.2} ms = {:>9.0} files/s | \
                 raw sequential std::fs::read: best {:>8.2} ms, median {:>8.2} ms = {:>9.0} files/s | \
                 median ratio raw/ours {:.2}x ({runs} runs, {:.1} MB of state) | daemon cache: {hits} hits, \
                 {misses} misses ({:.1}% hits)",
                if cold { "cold" } else { "warm" },
                ms(best),
                ms(med),
                count as f64 / med.as_secs_f64(),
                ms(raw_best),
                ms(raw_med),
                count as f64 / raw_med.as_secs_f64(),
                raw_med.as_secs_f64() / med.as_secs_f64(),
                wire_state_bytes as f64 / 1e6,
                if hits + misses == 0 { 0.0 } else { 100.0 * hits as f64 / (hits + misses) as f64 },
            );
        }
        drop(c);
        daemon.stop()?;
    }
    Ok(())
}
