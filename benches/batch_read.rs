//! Batch reads of N small event files (300–800 B, generated once into a temp dir): sequential `std::fs::read`,
//! the 32-thread pool and io_uring, warm cache. Cold-cache and N = 1,000,000 runs: `scripts/read-bench.sh`.
//!
//! `cargo bench --bench batch_read` (a few minutes); `-- --quick` style filters work as usual, e.g.
//! `cargo bench --bench batch_read -- 'batch_read/.*/1000$'`.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use opossum::io::{BatchIo, ThreadPoolIo};

const SIZES: [usize; 5] = [10, 100, 1_000, 5_000, 100_000];

fn generate(dir: &std::path::Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("{:010}.json", i + 1));
            let size = 300 + (i * 7919) % 501;
            let mut body = format!("{{\"Position\":{},\"Data\":\"", i + 1);
            while body.len() + 2 < size {
                body.push((b'a' + (body.len() % 26) as u8) as char);
            }
            body.push_str("\"}");
            std::fs::write(&p, body).expect("writing a bench file");
            p
        })
        .collect()
}

fn bytes(results: Vec<Result<Vec<u8>, opossum::io::IoError>>) -> usize {
    results.into_iter().map(|r| r.expect("bench read failed").len()).sum()
}

fn batch_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let all = generate(dir.path(), *SIZES.iter().max().unwrap());
    let pool = ThreadPoolIo::new(32);
    #[cfg(target_os = "linux")]
    let uring = opossum::io::uring::UringIo::new(opossum::io::uring::UringConfig::default()).ok();
    let mut group = c.benchmark_group("batch_read");
    for n in SIZES {
        let paths = &all[..n];
        group.throughput(Throughput::Elements(n as u64));
        if n >= 5_000 {
            group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
        } else {
            group.sample_size(30).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        }
        group.bench_with_input(BenchmarkId::new("sequential", n), paths, |b, p| {
            b.iter(|| p.iter().map(|p| std::fs::read(p).expect("read").len()).sum::<usize>())
        });
        group.bench_with_input(BenchmarkId::new("threads32", n), paths, |b, p| b.iter(|| bytes(pool.read_files(p))));
        #[cfg(target_os = "linux")]
        if let Some(u) = &uring {
            group.bench_with_input(BenchmarkId::new("uring", n), paths, |b, p| b.iter(|| bytes(u.read_files(p))));
        }
    }
    group.finish();
}

criterion_group!(benches, batch_read);
criterion_main!(benches);
