//! The peer benchmark's worst row as a loop to profile: durable unconditional appends of 1,000 events per request
//! (the peer driver's event shapes: ~300–500 byte data, one tag) from C clients over the socket of a running
//! `opossumd`, for S seconds. Attach `perf record -g -p <opossumd pid>` meanwhile.
//!
//! ```text
//! opossumd --data /tmp/s --socket /tmp/s.sock --commit journal --mirror off &
//! target/release/examples/batch_append_loop /tmp/s.sock --clients 1 --seconds 10
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use opossum::client::Client;
use opossum::model::{Event, Tag};
use opossum_bench::data::sized_data;

#[derive(clap::Parser)]
struct Args {
    /// The daemon's socket
    socket: PathBuf,
    /// Concurrent clients
    #[arg(long, default_value_t = 1)]
    clients: u64,
    /// Seconds to run
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Events per request
    #[arg(long, default_value_t = 1_000)]
    batch: u64,
}

fn main() -> anyhow::Result<()> {
    let args: Args = clap::Parser::parse();
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..args.clients)
        .map(|c| {
            let (socket, batch) = (args.socket.clone(), args.batch);
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut client = Client::connect(&socket)?;
                let mut i = c * 1_000_000_000;
                let tag = Tag::new("bulk", c.to_string());
                let mut appended = 0;
                while Instant::now() < until {
                    let events = (i..i + batch)
                        .map(|k| Event::new("Enrolled", &sized_data(k), vec![tag.clone()]))
                        .collect::<Result<Vec<_>, _>>()?;
                    client.append(events, None)?;
                    i += batch;
                    appended += batch;
                }
                Ok(appended)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().expect("client panicked")?;
    }
    let took = started.elapsed().as_secs_f64();
    println!("{total} events in {took:.2} s: {:.0} events/s", total as f64 / took);
    Ok(())
}
