//! Batch-read benchmark: N small event files (300–800 B) read with sequential `std::fs::read`, the thread pool
//! and io_uring, warm and cold, all in one run. Driven by `scripts/read-bench.sh`. Cold = `sys::Evict` (the
//! suite's eviction: `drop_caches` as root, else `posix_fadvise(DONTNEED)` per file).
//!
//! ```text
//! cargo run --release -p opossum-bench --example read_bench -- --n 100000 --mode both [--dir D] [--keep] [--rounds 3]
//!     [--threads 32] [--seq-cold-max 50000] [--uring "name:depth=256,rings=2,direct=1,regbuf=1,relative=1,coop=1;..."]
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use opossum::io::uring::{UringConfig, UringIo};
use opossum::io::{BatchIo, ThreadPoolIo};
use opossum_bench::sys::Evict;
use rayon::prelude::*;

/// A named way to read a batch, returning the bytes read.
type Backend<'a> = Box<dyn Fn(&[PathBuf]) -> u64 + 'a>;

#[derive(clap::Parser)]
#[command(about = "Batch reads of N small event files: sequential std::fs::read, the thread pool and io_uring")]
struct Args {
    /// Files to generate and read
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    /// Where the files go [default: target/bench/read-bench]; deleted afterwards unless --keep
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value = "both", value_parser = ["warm", "cold", "both"])]
    mode: String,
    #[arg(long)]
    keep: bool,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 32)]
    threads: usize,
    /// Cold sequential reads only this many files (it runs at ~10k files/s)
    #[arg(long, default_value_t = 50_000)]
    seq_cold_max: usize,
    /// io_uring configurations: `name:depth=256,rings=2,direct=1,regbuf=1,relative=1,coop=1,iowq=N;...`
    #[arg(long, default_value = "uring", value_parser = parse_urings)]
    uring: Urings,
}

#[derive(Clone)]
struct Urings(Vec<(String, UringConfig)>);

fn parse_urings(specs: &str) -> Result<Urings, String> {
    specs.split(';').filter(|s| !s.is_empty()).map(parse_uring).collect::<Result<_, _>>().map(Urings)
}

fn parse_uring(spec: &str) -> Result<(String, UringConfig), String> {
    let (name, kvs) = spec.split_once(':').unwrap_or((spec, ""));
    let mut c = UringConfig::default();
    for kv in kvs.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("bad uring option {kv:?}"))?;
        let num: usize = v.parse().map_err(|_| format!("bad number in {kv:?}"))?;
        match k {
            "depth" => c.depth = num,
            "rings" => c.rings = num,
            "direct" => c.direct_descriptors = num != 0,
            "regbuf" => c.registered_buffers = num != 0,
            "relative" => c.relative_opens = num != 0,
            "coop" => c.coop_taskrun = num != 0,
            "iowq" => c.iowq_max_workers = [num as u32, num as u32],
            _ => return Err(format!("unknown uring option {k:?}")),
        }
    }
    Ok((name.to_string(), c))
}

/// Generates `n` files of 300–800 B in `dir/events` (reusing them when a previous run left the same count).
fn generate(dir: &Path, n: usize) -> Vec<PathBuf> {
    let events = dir.join("events");
    let marker = dir.join("count");
    let paths: Vec<PathBuf> = (0..n).map(|i| events.join(format!("{:010}.json", i + 1))).collect();
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(&n.to_string()) {
        return paths;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&events).expect("creating the bench directory");
    let t = Instant::now();
    paths.par_iter().enumerate().for_each(|(i, p)| {
        let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 29;
        let size = 300 + (x % 501) as usize;
        let mut body = format!(
            "{{\"Position\":{},\"Event\":{{\"EventType\":\"CourseCreated\",\"Data\":{{\"Id\":\"{:032x}\",\"Pad\":\"",
            i + 1,
            x
        );
        while body.len() + 4 < size {
            body.push((b'a' + (body.len() % 26) as u8) as char);
        }
        body.push_str("\"}}}");
        std::fs::write(p, body).expect("writing a bench file");
    });
    std::fs::write(&marker, n.to_string()).unwrap();
    eprintln!("generated {n} files in {:.1}s", t.elapsed().as_secs_f64());
    paths
}

fn checksum(results: Vec<Result<Vec<u8>, opossum::io::IoError>>) -> u64 {
    results.into_iter().map(|r| r.expect("bench read failed").len() as u64).sum()
}

fn time(paths: &[PathBuf], f: &dyn Fn(&[PathBuf]) -> u64) -> (f64, u64) {
    let t = Instant::now();
    let sum = f(paths);
    (paths.len() as f64 / t.elapsed().as_secs_f64(), sum)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let (warm, cold) = (args.mode != "cold", args.mode != "warm");
    let dir = args.dir.clone().unwrap_or_else(|| opossum_bench::suite::target_dir().join("bench").join("read-bench"));
    let evict = Evict::detect();
    let paths = generate(&dir, args.n);
    let pool = ThreadPoolIo::new(args.threads);
    let urings: Vec<(String, UringIo)> = args
        .uring
        .0
        .iter()
        .map(|(name, c)| (name.clone(), UringIo::new(c.clone()).expect("io_uring unavailable")))
        .collect();
    for (name, u) in &urings {
        eprintln!("{name}: {:?}", u.config());
    }
    let seq = |p: &[PathBuf]| -> u64 { p.iter().map(|p| std::fs::read(p).expect("read").len() as u64).sum() };
    let threads_name = format!("threads({})", args.threads);
    let mut backends: Vec<(String, Backend<'_>)> =
        vec![("sequential".into(), Box::new(seq)), (threads_name.clone(), Box::new(|p| checksum(pool.read_files(p))))];
    for (name, u) in &urings {
        backends.push((name.clone(), Box::new(move |p| checksum(u.read_files(p)))));
    }
    let n = args.n;
    let report = |temp: &str, rates: &[(String, f64)]| {
        for (name, r) in rates {
            println!("N={n} {temp} {name:<14} {r:>12.0} files/s");
        }
        let t = rates.iter().find(|(nm, _)| *nm == threads_name).map(|x| x.1).unwrap_or(f64::NAN);
        for (name, r) in rates.iter().filter(|(nm, _)| nm.starts_with("uring")) {
            println!("N={n} {temp} ratio {name}/{threads_name} = {:.2}x", r / t);
        }
    };
    if warm {
        // Warm everything once (page cache, dentries), then interleave the backends round by round so background
        // load hits them alike; report the median of the rounds.
        let expect = seq(&paths);
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); backends.len()];
        for _ in 0..args.rounds.max(1) {
            for (k, (name, f)) in backends.iter().enumerate() {
                let (rate, sum) = time(&paths, f.as_ref());
                assert_eq!(sum, expect, "{name} read the wrong number of bytes");
                rates[k].push(rate);
            }
        }
        let rates: Vec<(String, f64)> =
            backends.iter().zip(rates).map(|((name, _), r)| (name.clone(), median(r))).collect();
        report("warm", &rates);
    }
    if cold {
        let mut rates = Vec::new();
        for (name, f) in &backends {
            // Sequential cold is ~10k files/s: read a prefix so a million-file run stays short.
            let part = if name == "sequential" { &paths[..paths.len().min(args.seq_cold_max)] } else { &paths[..] };
            evict.evict(&paths)?;
            let (rate, _) = time(part, f.as_ref());
            rates.push((name.clone(), rate));
            if part.len() < paths.len() {
                eprintln!("(cold sequential measured on the first {} files)", part.len());
            }
        }
        println!("N={n} cold cache eviction: {}", evict.describe());
        report("cold", &rates);
    }
    if !args.keep {
        // Unlinking a million files one by one takes minutes; spread it over the pool first.
        paths.par_iter().for_each(|p| {
            let _ = std::fs::remove_file(p);
        });
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
