//! The Rust client's decode of read item lines, in process: N lines as the server frames them
//! (`wire::encode_item`, the peer benchmark's event shape: 300–500-byte data, one tag, default metadata), decoded
//! by `client::StreamItem::decode` into `SequencedEvent`s, beside serde_json's general decode of the same lines into
//! the same type (what the client did before its direct path) and `serde_json::from_slice` into
//! `serde::de::IgnoredAny` (a parse that builds nothing).
//!
//! `cargo run --release -p opossum-bench --example client_decode_bench -- [N] [rounds]`

use std::time::Instant;

use opossum::client::StreamItem;
use opossum::model::{SequencedEvent, Tag};
use opossum::wire::RequestId;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(1_000_000, |s| s.parse().expect("N"));
    let rounds: usize = args.next().map_or(3, |s| s.parse().expect("rounds"));
    let id = RequestId::number(7);
    let mut buf = Vec::new();
    let mut ends = Vec::with_capacity(n as usize);
    for i in 1..=n {
        let event = SequencedEvent {
            position: i,
            event_type: "StudentEnrolled".into(),
            data: serde_json::value::RawValue::from_string(opossum_bench::data::sized_data(i)).expect("data"),
            tags: vec![Tag::new("item", format!("{:07}", i % 100_000))],
            metadata: serde_json::value::RawValue::from_string(
                r#"{"timestamp":"2026-11-29T17:50:00.1234567+00:00"}"#.to_string(),
            )
            .expect("metadata"),
        };
        opossum::wire::encode_item(&mut buf, &id, &event);
        ends.push(buf.len());
    }
    println!("{n} lines, {:.0} MB, {:.0} bytes/line", buf.len() as f64 / 1e6, buf.len() as f64 / n as f64);
    // Interleaved, best of the rounds for each (the machine is shared: the minimum is the least disturbed).
    let mut best = [f64::INFINITY; 3];
    let names = [
        "client decode (StreamItem::decode)",
        "serde_json into SequencedEvent (the general path)",
        "serde_json into IgnoredAny (parse floor)",
    ];
    for round in 1..=rounds {
        for (k, best) in best.iter_mut().enumerate() {
            let t = Instant::now();
            let (mut start, mut sum) = (0, 0u64);
            for &end in &ends {
                let line = &buf[start..end];
                sum += match k {
                    0 => {
                        let e = SequencedEvent::decode(line).expect("decode");
                        e.position + e.tags.len() as u64
                    }
                    1 => {
                        let item: Item = serde_json::from_slice(line).expect("decode");
                        item.event.position + item.event.tags.len() as u64
                    }
                    _ => {
                        let _: serde::de::IgnoredAny = serde_json::from_slice(line).expect("parse");
                        1
                    }
                };
                start = end;
            }
            assert!(sum > 0);
            let ns = t.elapsed().as_nanos() as f64 / n as f64;
            println!("round {round}: {:<50} {ns:>6.0} ns/event", names[k]);
            *best = best.min(ns);
        }
    }
    println!(
        "best: client decode {:.0} ns/event ({:.2}M events/s), general path {:.0} ns/event ({:.2}x the client decode), \
         parse floor {:.0} ns/event; load average {:.2}",
        best[0],
        1e3 / best[0],
        best[1],
        best[1] / best[0],
        best[2],
        opossum_bench::sys::load_average()[0]
    );
}

#[derive(serde::Deserialize)]
struct Item {
    #[allow(dead_code)]
    id: serde::de::IgnoredAny,
    event: SequencedEvent,
}
