//! `get_all` of StudentShortInfo-sized projections (~400–800 B), warm and cold, beside the raw sequential
//! `std::fs::read` of the same files measured in the same run.
//!
//! ```text
//! cargo run --release --example projection_bench -- [--counts 5000,100000] [--runs 5] [--dir /path] [--backend auto|uring|threads]
//! ```
//! Cold runs drop the page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`) when running as root, else evict each
//! file with `posix_fadvise(DONTNEED)`; the output says which.

#[path = "common/cache.rs"]
mod cache;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache::{evict, evict_method, raw_read, Evict};
use opossum::io::{self, BatchIo, IoBackendKind};
use opossum::model::Tag;
use opossum::projection::{ProjectionOptions, ProjectionStore, Put};
use opossum::store::Durability;
use serde_json::value::RawValue;

const PROJECTION: &str = "StudentShortInfo";
const PUT_BATCH: usize = 5_000;

struct Args {
    counts: Vec<usize>,
    runs: usize,
    dir: Option<PathBuf>,
    backend: IoBackendKind,
}

fn parse_args() -> Args {
    let mut args = Args { counts: vec![5_000, 100_000], runs: 5, dir: None, backend: IoBackendKind::Auto };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--counts" => args.counts = value.split(',').map(|c| c.parse().expect("count")).collect(),
            "--runs" => args.runs = value.parse().expect("runs"),
            "--dir" => args.dir = Some(PathBuf::from(value)),
            "--backend" => args.backend = value.parse().expect("backend"),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// A StudentShortInfo state as .NET serialises it (PascalCase), padded to 400–800 bytes of file.
fn student(i: usize) -> String {
    let first = ["Anna", "Bob", "Chloé", "Dávid", "Eve", "Farkas", "Greta", "Hiroshi"][i % 8];
    let last = ["Kovács", "Smith", "O'Brien", "Nagy", "Müller", "Tanaka", "Rossi", "Dubois"][(i / 8) % 8];
    let note = "x".repeat(20 + (i * 7919) % 380);
    format!(
        r#"{{"StudentId":"{:08x}-d9cb-469f-a165-{:012x}","FirstName":"{first}","LastName":"{last}","Email":"student{i}@example.com","EnrollmentTier":{},"CurrentEnrollmentCount":{},"MaxEnrollmentCount":10,"IsMaxedOut":false,"Notes":"{note}"}}"#,
        i,
        i * 31,
        i % 3,
        i % 10
    )
}

fn populate(root: &Path, io: Arc<dyn BatchIo>, count: usize) {
    let store =
        ProjectionStore::open(root, io, ProjectionOptions { durability: Durability::None, ..Default::default() })
            .expect("open");
    let existing = store.list().into_iter().find(|s| s.name == PROJECTION).map_or(0, |s| s.count);
    let mut i = existing;
    while i < count {
        let end = (i + PUT_BATCH).min(count);
        let puts = (i..end)
            .map(|n| Put {
                projection: PROJECTION.into(),
                key: format!("{:08x}-d9cb-469f-a165-{:012x}", n, n * 31),
                state: RawValue::from_string(student(n)).unwrap(),
                tags: vec![Tag::new("EnrollmentTier", ["Basic", "Premium", "Professional"][n % 3])],
                expected_version: None,
            })
            .collect();
        store.put_many(puts).expect("put_many");
        i = end;
    }
    store.close().expect("close");
}

fn projection_files(root: &Path) -> Vec<PathBuf> {
    let dir = root.join("Projections").join(PROJECTION);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn get_all(store: &ProjectionStore) -> (Duration, usize) {
    let t = Instant::now();
    let mut reader = store.get_all(PROJECTION).unwrap();
    let mut n = 0;
    while let Some(batch) = reader.next_batch() {
        n += batch.unwrap().len();
    }
    (t.elapsed(), n)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args = parse_args();
    let io = io::open_backend(args.backend).expect("backend");
    let method = evict_method();
    println!(
        "backend {}, cold = {}",
        io.name(),
        if method == Evict::DropCaches {
            "sync; echo 3 > /proc/sys/vm/drop_caches"
        } else {
            "posix_fadvise(DONTNEED) per file"
        }
    );
    let tmp;
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_path_buf()
        }
    };
    for &count in &args.counts {
        let root = base.join(format!("store-{count}"));
        let t = Instant::now();
        populate(&root, io.clone(), count);
        let files = projection_files(&root);
        let (_, total_bytes) = raw_read(&files);
        println!(
            "\n{count} projections, {} files, avg {} B (populated in {:.1} s)",
            files.len(),
            total_bytes / files.len().max(1),
            t.elapsed().as_secs_f64()
        );
        let contents: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        let t = Instant::now();
        for bytes in &contents {
            opossum::projection::format::decode_projection(bytes).unwrap();
        }
        println!("decode only (bytes in memory): {:.2} ms", ms(t.elapsed()));
        let t = Instant::now();
        let read = io.read_files(&files);
        println!("BatchIo::read_files only (warm): {:.2} ms", ms(t.elapsed()));
        drop((contents, read));
        let t = Instant::now();
        let store = ProjectionStore::open(&root, io.clone(), ProjectionOptions::default()).unwrap();
        println!("open (trusting the index files): {:.1} ms", ms(t.elapsed()));
        for cold in [false, true] {
            let (mut raw, mut ours) = (Vec::new(), Vec::new());
            let runs = if cold { args.runs.min(3) } else { args.runs };
            for _ in 0..runs {
                if cold {
                    evict(method, &files);
                }
                let (d, _) = raw_read(&files);
                raw.push(d);
                if cold {
                    evict(method, &files);
                }
                let (d, n) = get_all(&store);
                assert_eq!(n, files.len());
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
        store.close().unwrap();
    }
}
