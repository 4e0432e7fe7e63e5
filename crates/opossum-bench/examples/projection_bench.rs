//! `get_all` of StudentShortInfo projections (`data::student_short_info`) in process, warm and cold, beside the raw
//! sequential `std::fs::read` of the same files measured in the same run; also the decode alone, the batch read
//! alone and the store's open.
//!
//! ```text
//! cargo run --release -p opossum-bench --example projection_bench -- [--counts 5000,100000] [--runs 5] [--dir /path] [--backend auto|uring|threads]
//! ```
//! Cold runs evict the files (`sys::Evict`: `drop_caches` as root, else `posix_fadvise(DONTNEED)`; the output says
//! which).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use opossum::io::{self, BatchIo, IoBackendKind};
use opossum::projection::{ProjectionOptions, ProjectionStore};
use opossum::store::Durability;
use opossum_bench::data::{student_short_info, STUDENT_SHORT_INFO};
use opossum_bench::sys::{self, Evict};

const PUT_BATCH: u64 = 5_000;

#[derive(Parser)]
#[command(about = "In-process projection get_all, warm and cold, beside the raw read of the same files")]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "5000,100000")]
    counts: Vec<u64>,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Where the stores go [default: a temporary directory]
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    backend: IoBackendKind,
}

fn populate(root: &Path, io: Arc<dyn BatchIo>, count: u64) -> anyhow::Result<()> {
    let store =
        ProjectionStore::open(root, io, ProjectionOptions { durability: Durability::None, ..Default::default() })?;
    let existing = store.list().into_iter().find(|s| s.name == STUDENT_SHORT_INFO).map_or(0, |s| s.count as u64);
    for lo in (existing..count).step_by(PUT_BATCH as usize) {
        store.put_many((lo..(lo + PUT_BATCH).min(count)).map(student_short_info).collect())?;
    }
    store.close()?;
    Ok(())
}

fn get_all(store: &ProjectionStore) -> anyhow::Result<(Duration, usize)> {
    let t = Instant::now();
    let mut reader = store.get_all(STUDENT_SHORT_INFO)?;
    let mut n = 0;
    while let Some(batch) = reader.next_batch() {
        n += batch?.len();
    }
    Ok((t.elapsed(), n))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let io = io::open_backend(args.backend)?;
    let evict = Evict::detect();
    println!("backend {}, cold = {}", io.name(), evict.describe());
    let tmp;
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    for &count in &args.counts {
        let root = base.join(format!("store-{count}"));
        let t = Instant::now();
        populate(&root, io.clone(), count)?;
        let files = sys::json_files(&root.join("Projections").join(STUDENT_SHORT_INFO))?;
        let (_, total_bytes) = sys::read_files(&files)?;
        println!(
            "\n{count} projections, {} files, avg {} B (populated in {:.1} s)",
            files.len(),
            total_bytes / files.len().max(1) as u64,
            t.elapsed().as_secs_f64()
        );
        let contents: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
        let t = Instant::now();
        for bytes in &contents {
            opossum::projection::format::decode_projection(bytes)?;
        }
        println!("decode only (bytes in memory): {:.2} ms", ms(t.elapsed()));
        let t = Instant::now();
        let read = io.read_files(&files);
        println!("BatchIo::read_files only (warm): {:.2} ms", ms(t.elapsed()));
        drop((contents, read));
        let t = Instant::now();
        let store = ProjectionStore::open(&root, io.clone(), ProjectionOptions::default())?;
        println!("open (trusting the index files): {:.1} ms", ms(t.elapsed()));
        for cold in [false, true] {
            let (mut raw, mut ours) = (Vec::new(), Vec::new());
            let runs = if cold { args.runs.min(3) } else { args.runs };
            for _ in 0..runs {
                if cold {
                    evict.evict(&files)?;
                }
                raw.push(sys::read_files(&files)?.0);
                if cold {
                    evict.evict(&files)?;
                }
                let (d, n) = get_all(&store)?;
                anyhow::ensure!(n == files.len(), "get_all returned {n} of {} projections", files.len());
                ours.push(d);
            }
            let (raw, ours) = (median(raw), median(ours));
            println!(
                "{:<5} get_all {:>9.2} ms {:>10.0} files/s | raw sequential std::fs::read {:>9.2} ms {:>10.0} files/s | ratio {:.2}x",
                if cold { "cold" } else { "warm" },
                ms(ours),
                count as f64 / ours.as_secs_f64(),
                ms(raw),
                count as f64 / raw.as_secs_f64(),
                raw.as_secs_f64() / ours.as_secs_f64()
            );
        }
        store.close()?;
    }
    Ok(())
}
