//! The benchmark itself (io_uring: Linux only).

use std::path::{Path, PathBuf};
use std::time::Instant;

use opossum::io::uring::{UringConfig, UringIo};
use opossum::io::{BatchIo, ThreadPoolIo};
use rayon::prelude::*;

/// A named way to read a batch, returning the bytes read.
type Backend<'a> = Box<dyn Fn(&[PathBuf]) -> u64 + 'a>;

struct Args {
    n: usize,
    dir: PathBuf,
    warm: bool,
    cold: bool,
    keep: bool,
    rounds: usize,
    threads: usize,
    seq_cold_max: usize,
    urings: Vec<(String, UringConfig)>,
}

fn parse_uring(spec: &str) -> (String, UringConfig) {
    let (name, kvs) = spec.split_once(':').unwrap_or((spec, ""));
    let mut c = UringConfig::default();
    for kv in kvs.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("bad uring option {kv:?}"));
        let num: usize = v.parse().unwrap_or_else(|_| panic!("bad number in {kv:?}"));
        match k {
            "depth" => c.depth = num,
            "rings" => c.rings = num,
            "direct" => c.direct_descriptors = num != 0,
            "regbuf" => c.registered_buffers = num != 0,
            "relative" => c.relative_opens = num != 0,
            "coop" => c.coop_taskrun = num != 0,
            "iowq" => c.iowq_max_workers = [num as u32, num as u32],
            _ => panic!("unknown uring option {k:?}"),
        }
    }
    (name.to_string(), c)
}

fn parse_args() -> Args {
    let mut a = Args {
        n: 100_000,
        dir: PathBuf::from("/work/tmp-read-bench"),
        warm: true,
        cold: true,
        keep: false,
        rounds: 3,
        threads: 32,
        seq_cold_max: 50_000,
        urings: vec![("uring".to_string(), UringConfig::default())],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--n" => a.n = val().replace('_', "").parse().expect("--n"),
            "--dir" => a.dir = PathBuf::from(val()),
            "--mode" => match val().as_str() {
                "warm" => (a.warm, a.cold) = (true, false),
                "cold" => (a.warm, a.cold) = (false, true),
                "both" => (a.warm, a.cold) = (true, true),
                m => panic!("--mode {m}: expected warm, cold or both"),
            },
            "--keep" => a.keep = true,
            "--rounds" => a.rounds = val().parse().expect("--rounds"),
            "--threads" => a.threads = val().parse().expect("--threads"),
            "--seq-cold-max" => a.seq_cold_max = val().parse().expect("--seq-cold-max"),
            "--uring" => a.urings = val().split(';').filter(|s| !s.is_empty()).map(parse_uring).collect(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
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

/// Evicts the files from the page cache (and dentries/inodes when root). Returns the method used.
fn drop_caches(paths: &[PathBuf]) -> &'static str {
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok() {
        return "drop_caches";
    }
    paths.par_iter().for_each(|p| {
        if let Ok(f) = std::fs::File::open(p) {
            use std::os::fd::AsRawFd;
            // SAFETY: the descriptor is valid for the lifetime of `f`.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    });
    "posix_fadvise(DONTNEED)"
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

pub fn main() {
    let args = parse_args();
    let paths = generate(&args.dir, args.n);
    let pool = ThreadPoolIo::new(args.threads);
    let urings: Vec<(String, UringIo)> = args
        .urings
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
    if args.warm {
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
    if args.cold {
        let mut rates = Vec::new();
        let mut method = "";
        for (name, f) in &backends {
            // Sequential cold is ~10k files/s: read a prefix so a million-file run stays short.
            let part = if name == "sequential" { &paths[..paths.len().min(args.seq_cold_max)] } else { &paths[..] };
            method = drop_caches(&paths);
            let (rate, _) = time(part, f.as_ref());
            rates.push((name.clone(), rate));
            if part.len() < paths.len() {
                eprintln!("(cold sequential measured on the first {} files)", part.len());
            }
        }
        println!("N={n} cold cache eviction: {method}");
        report("cold", &rates);
    }
    if !args.keep {
        // Unlinking a million files one by one takes minutes; spread it over the pool first.
        paths.par_iter().for_each(|p| {
            let _ = std::fs::remove_file(p);
        });
        std::fs::remove_dir_all(&args.dir).expect("removing the bench directory");
    }
}
