//! Crash test over the wire: SIGKILL the daemon while clients append durably; restart; every acknowledged append
//! is present, and no batch is partially visible.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use opossum::model::{Event, Query, ReadOptions, Tag};

use crate::harness::*;

const CYCLES: usize = 10;
const CLIENTS: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Ack {
    size: usize,
    first: u64,
    last: u64,
}

#[test]
fn sigkill_during_durable_appends_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // batch id -> size, for every batch ever sent; batch id -> positions, for acknowledged ones.
    let sent: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let acked: Arc<Mutex<BTreeMap<String, Ack>>> = Arc::default();
    for cycle in 0..CYCLES {
        let mut daemon = Daemon::start(dir.path(), &["--durability", "fsync"]);
        verify(&mut daemon, &sent.lock().unwrap(), &acked.lock().unwrap(), cycle);
        let stop = Arc::new(AtomicBool::new(false));
        let acks_this_cycle = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (socket, sent, acked) = (daemon.socket.clone(), sent.clone(), acked.clone());
                let (stop, acks) = (stop.clone(), acks_this_cycle.clone());
                std::thread::spawn(move || {
                    let Ok(mut client) = opossum::client::Client::connect(&socket) else { return };
                    client.set_timeout(Some(DEADLINE)).unwrap();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let batch = format!("{cycle}-{c}-{n}");
                        let size = 1 + (n % 3);
                        n += 1;
                        let events: Vec<Event> = (0..size)
                            .map(|k| {
                                let data = format!(r#"{{"k":{k}}}"#);
                                Event::new("Crash", &data, vec![Tag::new("batch", &batch)]).unwrap()
                            })
                            .collect();
                        sent.lock().unwrap().insert(batch.clone(), size);
                        match client.append(events, None) {
                            Ok(a) => {
                                acked.lock().unwrap().insert(batch, Ack { size, first: a.first, last: a.last });
                                acks.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => return, // the daemon died under us: this batch is unacknowledged
                        }
                    }
                })
            })
            .collect();
        // Kill once some appends were acknowledged (and more are in flight): 30 acks, or at least one after 2 s
        // (a loaded machine commits slowly), giving up after 30 s.
        let t = Instant::now();
        loop {
            let acks = acks_this_cycle.load(Ordering::Relaxed);
            if acks >= 30 || (acks > 0 && t.elapsed() > Duration::from_secs(2)) || t.elapsed() > Duration::from_secs(30)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(7 * cycle as u64 % 20));
        daemon.signal(Signal::SIGKILL);
        daemon.wait();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        assert!(acks_this_cycle.load(Ordering::Relaxed) > 0, "cycle {cycle}: no append was acknowledged");
    }
    let mut daemon = Daemon::start(dir.path(), &[]);
    verify(&mut daemon, &sent.lock().unwrap(), &acked.lock().unwrap(), CYCLES);
    assert!(daemon.terminate().success());
    eprintln!(
        "crash test: {CYCLES} cycles, {} acknowledged batches, {:?}",
        acked.lock().unwrap().len(),
        started.elapsed()
    );
}

fn verify(daemon: &mut Daemon, sent: &HashMap<String, usize>, acked: &BTreeMap<String, Ack>, cycle: usize) {
    let mut c = daemon.client();
    let head = c.head().unwrap();
    let events = read_all(&mut c, &Query::All, ReadOptions::default());
    let got: Vec<u64> = positions(&events);
    assert_eq!(got, (1..=head).collect::<Vec<_>>(), "cycle {cycle}: positions are contiguous");
    let mut by_batch: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in &events {
        by_batch.entry(e.tags[0].value.as_str()).or_default().push(e.position);
    }
    for (batch, ack) in acked {
        let ps = by_batch.get(batch.as_str()).unwrap_or_else(|| panic!("cycle {cycle}: acknowledged {batch} lost"));
        assert_eq!(ps, &(ack.first..=ack.last).collect::<Vec<_>>(), "cycle {cycle}: {batch} moved or partial");
        assert_eq!(ps.len(), ack.size);
    }
    for (batch, ps) in &by_batch {
        let size = sent[*batch];
        assert_eq!(ps.len(), size, "cycle {cycle}: batch {batch} is partially visible: {ps:?}");
        assert_eq!(ps.last().unwrap() - ps[0] + 1, size as u64, "cycle {cycle}: batch {batch} not contiguous");
    }
}
