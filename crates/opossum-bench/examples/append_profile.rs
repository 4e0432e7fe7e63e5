//! Tight loop of single-event non-durable appends, for profiling the append path (`perf record`).
use opossum::model::{Event, Tag};
use opossum::store::{Durability, IndexWrites, Store, StoreOptions};

#[derive(clap::Parser)]
struct Args {
    /// Appends to make
    #[arg(default_value_t = 20_000)]
    n: u64,
}

fn main() {
    let Args { n } = clap::Parser::parse();
    let dir = tempfile::tempdir_in(opossum_bench::suite::target_dir()).unwrap();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            durability: Durability::None,
            index_writes: IndexWrites::Deferred { interval: std::time::Duration::from_secs(1) },
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let t = std::time::Instant::now();
    for i in 0..n {
        let e = Event::new("Registered", r#"{"name":"someone","n":1}"#, vec![Tag::new("studentId", i.to_string())])
            .unwrap();
        store.append(vec![e], None).unwrap();
    }
    let d = t.elapsed();
    println!("{n} appends in {:?}: {:.0}/s", d, n as f64 / d.as_secs_f64());
}
