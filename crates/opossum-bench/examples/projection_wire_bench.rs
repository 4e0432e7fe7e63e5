//! Projection reads through the socket (issue 5's numbers): starts its own `opossumd` on a temporary store, writes
//! N StudentShortInfo projections (`data::student_short_info`, two tags each) with `projection.put_many`, then
//! measures `projection.get_all` into the Rust client (every item decoded), warm and cold, beside the raw sequential
//! `std::fs::read` of the same projection files measured in the same run.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/projection_wire_bench                    # 5,000 and 100,000 projections
//! target/release/examples/projection_wire_bench --counts 5000 --runs 9 --dir /var/tmp --io-backend threads
//! ```
//! Warm runs are served by the daemon's hot tier (the projection cache, filled by the puts): the output gives the hit
//! rate `stats` reported over the measured runs. Cold runs restart the daemon (an empty cache; the restart is not
//! timed) and then evict the files (`sys::Evict`: `drop_caches` as root, else `posix_fadvise(DONTNEED)`; the output
//! says which). `--projection-cache-bytes 0` measures the daemon without its cache.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use opossum::client::Client;
use opossum_bench::daemon::Daemon;
use opossum_bench::data::{student_short_info, STUDENT_SHORT_INFO};
use opossum_bench::suite;
use opossum_bench::sys::{self, Evict};

const PUT_BATCH: u64 = 1_000;

#[derive(Parser)]
#[command(about = "projection.get_all through the socket, warm and cold, beside the raw read of the same files")]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "5000,100000")]
    counts: Vec<u64>,
    /// Warm runs per count
    #[arg(long, default_value_t = 9)]
    runs: usize,
    #[arg(long, default_value_t = 3)]
    cold_runs: usize,
    /// Parent of the temporary work directory
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// The opossumd binary [default: next to this executable's profile directory]
    #[arg(long)]
    daemon: Option<PathBuf>,
    #[arg(long, default_value = "auto", value_parser = ["auto", "uring", "threads"])]
    io_backend: String,
    /// Passed to the daemon when set
    #[arg(long)]
    projection_cache_bytes: Option<String>,
}

/// `projection.get_all` through the socket, every item decoded by the client.
fn get_all(c: &mut Client) -> anyhow::Result<(Duration, u64, usize)> {
    let t = Instant::now();
    let (mut n, mut state_bytes) = (0, 0);
    for item in c.projection_get_all(STUDENT_SHORT_INFO)? {
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
    let args = Args::parse();
    let binary = args.daemon.clone().unwrap_or_else(suite::default_daemon);
    anyhow::ensure!(binary.exists(), "{} not found: build it or pass --daemon", binary.display());
    let evict = Evict::detect();
    let tmp = tempfile::Builder::new().prefix("projection-wire-bench").tempdir_in(&args.dir)?;
    println!(
        "projection_wire_bench: opossumd {}, io backend {}, cold = {}",
        binary.display(),
        args.io_backend,
        evict.describe()
    );
    for &count in &args.counts {
        let data = tmp.path().join(format!("store-{count}"));
        let socket = tmp.path().join(format!("s-{count}.sock"));
        let mut flags = vec!["--io-backend", args.io_backend.as_str(), "--durability", "none"];
        if let Some(bytes) = &args.projection_cache_bytes {
            flags.extend(["--projection-cache-bytes", bytes.as_str()]);
        }
        let daemon = Daemon::start(&binary, &data, &socket, &flags)?;
        let mut c = Client::connect(&daemon.socket)?;
        let t = Instant::now();
        for lo in (0..count).step_by(PUT_BATCH as usize) {
            let puts: Vec<_> = (lo..(lo + PUT_BATCH).min(count)).map(student_short_info).collect();
            c.projection_put_many(&puts)?;
        }
        let populated = t.elapsed();
        let files = sys::json_files(&data.join("Projections").join(STUDENT_SHORT_INFO))?;
        anyhow::ensure!(files.len() as u64 == count, "{} files for {count} projections", files.len());
        let (_, total_bytes) = sys::read_files(&files)?;
        println!(
            "\n{count} projections: {} files, avg {} B/file, written with put_many x{PUT_BATCH} in {:.2} s",
            files.len(),
            total_bytes / files.len() as u64,
            populated.as_secs_f64()
        );
        for cold in [false, true] {
            let runs = if cold { args.cold_runs } else { args.runs };
            if runs == 0 {
                continue;
            }
            if !cold {
                // Warm up the page cache, the daemon's threads and the client's buffers.
                sys::read_files(&files)?;
                get_all(&mut c)?;
            }
            let (mut raw, mut ours) = (Vec::new(), Vec::new());
            let mut wire_state_bytes = 0;
            let (mut hits, mut misses) = (0, 0);
            for _ in 0..runs {
                if cold {
                    evict.evict(&files)?;
                }
                raw.push(sys::read_files(&files)?.0);
                if cold {
                    // A fresh daemon: nothing in its cache.
                    drop(c);
                    daemon.restart()?;
                    c = Client::connect(&daemon.socket)?;
                    evict.evict(&files)?;
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
