//! Read-all of an N-event store in process, for profiling the read path (`perf record`).
//! Usage: read_profile [N] [reads]
use opossum::model::{Event, Query, ReadOptions, Tag};
use opossum::store::{Durability, IndexWrites, Store, StoreOptions};

#[derive(clap::Parser)]
struct Args {
    /// Events in the store
    #[arg(default_value_t = 100_000)]
    n: u64,
    /// Read-alls to make
    #[arg(default_value_t = 5)]
    reads: u32,
}

fn main() {
    let Args { n, reads } = clap::Parser::parse();
    // A fixed store directory (`OPOSSUM_PROFILE_DIR`) is seeded once and reused, so a profile sees only reads.
    let tmp;
    let dir = match std::env::var_os("OPOSSUM_PROFILE_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir_in(opossum_bench::suite::target_dir()).unwrap();
            tmp.path().to_path_buf()
        }
    };
    let options = StoreOptions {
        durability: Durability::None,
        index_writes: IndexWrites::Deferred { interval: std::time::Duration::from_secs(60) },
        ..StoreOptions::default()
    };
    let store = Store::open(&dir, options).unwrap();
    let seeded = store.head();
    for chunk in (seeded..n).collect::<Vec<_>>().chunks(1000) {
        let events = chunk
            .iter()
            .map(|i| {
                let data = format!(r#"{{"$type":"Sample.StudentRegistered, Sample","studentId":"s{i}","name":"Student {i}","email":"s{i}@example.com"}}"#);
                Event::new("StudentRegistered", &data, vec![Tag::new("studentId", format!("s{i}"))]).unwrap()
            })
            .collect();
        store.append(events, None).unwrap();
    }
    for _ in 0..reads {
        let t = std::time::Instant::now();
        let mut reader = store.read(&Query::All, ReadOptions::default()).unwrap();
        let mut count = 0;
        while let Some(batch) = reader.next_batch() {
            count += batch.unwrap().len();
        }
        let d = t.elapsed();
        println!(
            "read-all {count} events in {d:?}: {:.0}/s (io {})",
            count as f64 / d.as_secs_f64(),
            store.io_backend()
        );
    }
}
