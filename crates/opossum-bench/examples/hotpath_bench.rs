//! The journal hot paths in process (`--commit journal`, mirror off): batched appends of 1,000 events/request
//! (durable), then read-all framed into wire item lines as the server does, for `perf record` and before/after runs.
//!
//! ```text
//! cargo run --release -p opossum-bench --example hotpath_bench -- [--n 200000] [--reads 3] [--dir D]
//! ```
use std::time::Instant;

use opossum::model::{Event, Query, ReadOptions, Tag};
use opossum::store::{CommitMode, MirrorMode, Store, StoreOptions};

#[derive(clap::Parser)]
struct Args {
    /// Events to append (in requests of 1,000)
    #[arg(long, default_value_t = 200_000)]
    n: u64,
    /// Read-alls to make
    #[arg(long, default_value_t = 3)]
    reads: u32,
    /// Store directory [default: a temporary one under target/]
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Only read (the store in --dir is already filled)
    #[arg(long)]
    read_only: bool,
}

const BATCH_EVENTS: u64 = 1_000;

fn main() {
    let args: Args = clap::Parser::parse();
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir_in(opossum_bench::suite::target_dir()).unwrap();
            tmp.path().to_path_buf()
        }
    };
    let options = StoreOptions { commit: CommitMode::Journal, mirror: MirrorMode::Off, ..StoreOptions::default() };
    let store = Store::open(&dir, options).unwrap();
    if !args.read_only {
        // Events built before the clock starts, as a client would have them ready.
        let mut requests = Vec::new();
        for lo in (0..args.n).step_by(BATCH_EVENTS as usize) {
            let tag = Tag::new("bulk", (lo / 100_000).to_string());
            let events: Vec<Event> = (lo..(lo + BATCH_EVENTS).min(args.n))
                .map(|i| Event::new("PeerEvent", &opossum_bench::data::sized_data(i), vec![tag.clone()]).unwrap())
                .collect();
            requests.push(events);
        }
        let t = Instant::now();
        for events in requests {
            store.append(events, None).unwrap();
        }
        let d = t.elapsed();
        println!(
            "append_batch: {} events in {:.3} s = {:.0} events/s",
            args.n,
            d.as_secs_f64(),
            args.n as f64 / d.as_secs_f64()
        );
    }
    let id = opossum::wire::RequestId::number(1);
    for round in 0..args.reads {
        let t = Instant::now();
        let mut reader = store.read(&Query::All, ReadOptions::default()).unwrap();
        let mut out = Vec::with_capacity(1 << 20);
        let (mut count, mut bytes) = (0u64, 0u64);
        while let Some(batch) = reader.next_views() {
            for event in batch.unwrap().views() {
                opossum::wire::encode_item_view(&mut out, &id, &event);
                count += 1;
                if out.len() >= 256 * 1024 {
                    bytes += out.len() as u64;
                    out.clear();
                }
            }
        }
        bytes += out.len() as u64;
        let d = t.elapsed();
        println!(
            "read_all_framed[{round}]: {count} events, {bytes} bytes in {:.3} s = {:.0} events/s",
            d.as_secs_f64(),
            count as f64 / d.as_secs_f64()
        );
    }
    // The client's side: item lines decoded into events, as `Client::read` does.
    let mut lines = Vec::new();
    let mut reader = store.read(&Query::All, ReadOptions { limit: Some(100_000), ..Default::default() }).unwrap();
    while let Some(batch) = reader.next_views() {
        for event in batch.unwrap().views() {
            opossum::wire::encode_item_view(&mut lines, &id, &event);
        }
    }
    for round in 0..args.reads {
        let t = Instant::now();
        let mut count = 0u64;
        for line in lines.split_inclusive(|&b| b == b'\n') {
            let event = <opossum::model::SequencedEvent as opossum::client::StreamItem>::decode(line).unwrap();
            count += event.position.min(1);
        }
        let d = t.elapsed();
        println!(
            "client_decode[{round}]: {count} events in {:.3} s = {:.0} events/s",
            d.as_secs_f64(),
            count as f64 / d.as_secs_f64()
        );
    }
}
