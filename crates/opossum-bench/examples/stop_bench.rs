//! A real `opossumd`'s graceful stop (SIGTERM to exit) and its RSS after a read-all, on a store of EVENTS events,
//! for one or more daemon binaries in one run (e.g. the build before a change and after it: same store, same load):
//! 1. fill EVENTS events in process (journal, durability none, 1,000 per append; `--mirror live` keeps the tree
//!    current as it fills, so the daemon's open has no tree to catch up), closed cleanly (index checkpoint written);
//! 2. per binary, ROUNDS times: start it on the store, note its RSS (the open index: the baseline), read every
//!    event through the Rust client (each parsed), note its RSS again, append APPENDS events over the socket
//!    (1,000 per request, so the stop has a mirror lag and dirty index files to write with the mirror live), then
//!    SIGTERM and time until it exits (and its open, spawn to READY=1).
//!
//! `cargo run --release -p opossum-bench --example stop_bench -- DIR EVENTS live|off [BINARY...]`
//! (BINARY defaults to the `opossumd` beside this example's build; env `ROUNDS` (2), `APPENDS` (10,000)).
//! With env `KILL=1` each daemon is SIGKILLed right after its appends instead (the mirror behind, its last
//! checkpoints not taken), and the next start's open is the open after a crash.
//! Env `DURABILITY` (`none`) is the daemon's `--durability`.
//! The store is deleted at the end. Prints the load average with every measurement.

use std::path::{Path, PathBuf};
use std::time::Instant;

use opossum::client::Client;
use opossum::model::{Query, ReadOptions};
use opossum::store::{CommitMode, Durability, Store, StoreOptions};
use opossum_bench::daemon::Daemon;
use opossum_bench::data::distinct_tag_event as event;
use opossum_bench::sys::{load_average, rss_bytes};

const BATCH: u64 = 1000;

fn load() -> String {
    let [one, five, _] = load_average();
    format!("load {one:.1}/{five:.1}")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let base = PathBuf::from(args.get(1).map_or("/tmp", |s| s.as_str()));
    let events: u64 = args.get(2).map_or(1_000_000, |s| s.parse().unwrap());
    let mirror = args.get(3).map_or("off", |s| s.as_str()).to_string();
    let binaries: Vec<PathBuf> = match args.get(4..) {
        Some(list) if !list.is_empty() => list.iter().map(PathBuf::from).collect(),
        _ => vec![std::env::current_exe()?.parent().unwrap().parent().unwrap().join("opossumd")],
    };
    let rounds: usize = std::env::var("ROUNDS").map_or(2, |s| s.parse().unwrap());
    let appends: u64 = std::env::var("APPENDS").map_or(10_000, |s| s.parse().unwrap());
    let kill = std::env::var_os("KILL").is_some();
    let durability = std::env::var("DURABILITY").unwrap_or_else(|_| "none".into());
    let tmp = tempfile::tempdir_in(&base)?;
    let dir = tmp.path().join("store");
    let socket = tmp.path().join("opossumd.sock");

    let started = Instant::now();
    let store = Store::open(
        &dir,
        StoreOptions {
            commit: CommitMode::Journal,
            mirror: mirror.parse().map_err(anyhow::Error::msg)?,
            durability: Durability::None,
            ..StoreOptions::default()
        },
    )?;
    let mut n = 0;
    while n < events {
        let last = (n + BATCH).min(events);
        store.append((n..last).map(event).collect(), None)?;
        n = last;
    }
    store.close()?;
    println!("fill {events} events in process (mirror {mirror}): {:.1} s, {}", started.elapsed().as_secs_f64(), load());
    let journal_bytes = dir_bytes(&dir.join(".opossumd").join("journal"));
    println!("journal on disk: {:.1} MiB", mib(journal_bytes));

    let mut next = events;
    for round in 0..rounds {
        for binary in &binaries {
            let daemon = Daemon::start(binary, &dir, &socket, &["--mirror", &mirror, "--durability", &durability])?;
            let pid = daemon.pid().unwrap();
            let rss_open = rss_bytes(pid)?;
            let mut client = Client::connect(&socket)?;
            let read_started = Instant::now();
            let mut read = 0u64;
            for event in client.read(&Query::All, ReadOptions::default())? {
                let event = event?;
                read += 1;
                std::hint::black_box(&event);
            }
            let read_took = read_started.elapsed();
            let rss_read = rss_bytes(pid)?;
            let mut sent = 0;
            while sent < appends {
                let count = BATCH.min(appends - sent);
                client.append((next..next + count).map(event).collect(), None)?;
                next += count;
                sent += count;
            }
            drop(client);
            let load_before_stop = load();
            let opened = daemon.ready_after;
            let stop = match kill {
                true => {
                    daemon.kill()?;
                    "SIGKILL".to_string()
                }
                false => format!("SIGTERM to exit {:.3} s", daemon.stop()?.as_secs_f64()),
            };
            println!(
                "round {round} {}: open (spawn to READY=1) {:.3} s; RSS after open {:.1} MiB, after reading {read} \
                 events ({:.2} s) {:.1} MiB; appended {appends}; {stop}; {load_before_stop}",
                binary.display(),
                opened.as_secs_f64(),
                mib(rss_open),
                read_took.as_secs_f64(),
                mib(rss_read),
            );
        }
    }
    let removed = Instant::now();
    drop(tmp);
    println!("store removed in {:.1} s", removed.elapsed().as_secs_f64());
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}
