//! Tag queries against a running opossumd, as the peer benchmark's tag phase makes them (`item` = `%07d` of a random
//! fill tag, 10 events each), for `perf record` / `valgrind --tool=callgrind` on the daemon and before/after runs.
//!
//! ```text
//! cargo run --release -p opossum-bench --example tag_query_load -- --socket S [--clients 1] [--queries 20000] [--tags 100000]
//! ```
use std::time::{Duration, Instant};

use opossum::client::Client;
use opossum::model::{Query, QueryItem, ReadOptions, Tag};

#[derive(clap::Parser)]
struct Args {
    /// The daemon's socket
    #[arg(long)]
    socket: std::path::PathBuf,
    /// Concurrent clients (one connection each)
    #[arg(long, default_value_t = 1)]
    clients: u64,
    /// Queries per client
    #[arg(long, default_value_t = 20_000)]
    queries: u64,
    /// Distinct fill tags (the peer benchmark's fill: events / 10)
    #[arg(long, default_value_t = 100_000)]
    tags: u64,
}

fn main() {
    let Args { socket, clients, queries, tags } = clap::Parser::parse();
    let started = Instant::now();
    let latencies: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let socket = &socket;
                s.spawn(move || {
                    let mut client = Client::connect(socket).expect("connect");
                    let mut seed = 7 + c * 1_000_003;
                    let mut out = Vec::with_capacity(queries as usize);
                    for _ in 0..queries {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let tag = Tag::new("item", format!("{:07}", (seed >> 33) % tags));
                        let query = Query::items(vec![QueryItem::new(Vec::new(), vec![tag]).unwrap()]).unwrap();
                        let t = Instant::now();
                        let n = client.read(&query, ReadOptions::default()).expect("read").count();
                        out.push(t.elapsed());
                        assert!(n > 0, "a fill tag matched no event");
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut all: Vec<Duration> = latencies.into_iter().flatten().collect();
    all.sort();
    let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "{} queries, {clients} clients: {:.0} queries/s, p50 {:.3} ms, p99 {:.3} ms",
        all.len(),
        all.len() as f64 / elapsed,
        p(0.5),
        p(0.99)
    );
}
