//! The closed-loop client runner: `clients` threads, each with its own connection, send one request, wait for the
//! answer, send the next, for a fixed time. Every throughput workload of the suite, the examples and the peer
//! benchmark runs its clients through [`closed_loop`], so "N clients for S seconds" means the same thing in all of
//! them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::sys::new_histogram;

/// What one request did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// Events the request appended or returned.
    pub events: u64,
    /// Refused by the server in a way the workload expects (a failed append condition): counted, not an error.
    pub rejected: bool,
    /// The part of the request to record as its latency, when that is not the whole cycle (say, the append of a
    /// read-then-append decision). `None`: the whole cycle.
    pub latency: Option<Duration>,
}

impl Outcome {
    pub fn events(events: u64) -> Outcome {
        Outcome { events, ..Outcome::default() }
    }
}

/// What a [`closed_loop`] run measured, summed over its clients.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub clients: usize,
    pub requests: u64,
    pub events: u64,
    pub rejected: u64,
    /// From the moment every client was connected to the moment the last one stopped.
    pub elapsed: Duration,
    /// Per request, µs: [`Outcome::latency`], else the whole cycle.
    pub latency_us: Histogram<u64>,
    /// Per request, µs: the whole cycle.
    pub cycle_us: Histogram<u64>,
}

impl LoadReport {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `clients` closed-loop clients for `duration`. Each thread makes its state with `connect(client_index)`;
/// once all of them are connected the clock starts and each calls `request` in a loop until the time is up (at
/// least once). The
/// first error of any client (connecting or a request) fails the run, after every thread has stopped.
pub fn closed_loop<S>(
    clients: usize,
    duration: Duration,
    connect: impl Fn(usize) -> anyhow::Result<S> + Sync,
    request: impl Fn(&mut S) -> anyhow::Result<Outcome> + Sync,
) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(clients > 0, "a closed loop needs at least one client");
    let stop = AtomicBool::new(false);
    // A client that fails to connect still reaches the barrier (then stops), so the others are never left waiting.
    let start = Barrier::new(clients + 1);
    let total = Mutex::new((0u64, 0u64, 0u64, new_histogram(), new_histogram()));
    let (connect, request) = (&connect, &request);
    let elapsed = std::thread::scope(|s| -> anyhow::Result<Duration> {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (stop, start, total) = (&stop, &start, &total);
                s.spawn(move || -> anyhow::Result<()> {
                    let state = connect(c);
                    start.wait();
                    let mut state = match state {
                        Ok(state) => state,
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    };
                    let (mut latency, mut cycle) = (new_histogram(), new_histogram());
                    let (mut requests, mut events, mut rejected) = (0u64, 0u64, 0u64);
                    // Every client makes at least one request, however short the run.
                    loop {
                        let t = Instant::now();
                        let outcome = match request(&mut state) {
                            Ok(outcome) => outcome,
                            Err(e) => {
                                // Stop the others early: the run has failed.
                                stop.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        };
                        let took = t.elapsed();
                        cycle.record(took.as_micros().max(1) as u64)?;
                        latency.record(outcome.latency.unwrap_or(took).as_micros().max(1) as u64)?;
                        requests += 1;
                        events += outcome.events;
                        rejected += u64::from(outcome.rejected);
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    let mut t = total.lock().unwrap();
                    t.0 += requests;
                    t.1 += events;
                    t.2 += rejected;
                    t.3.add(&latency)?;
                    t.4.add(&cycle)?;
                    Ok(())
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        // Sleep in slices so that a failed client ends the run early.
        while t.elapsed() < duration && !stop.load(Ordering::Relaxed) {
            std::thread::sleep((duration - t.elapsed().min(duration)).min(Duration::from_millis(50)));
        }
        stop.store(true, Ordering::Relaxed);
        let mut first_error = None;
        for h in handles {
            if let Err(e) = h.join().expect("a benchmark client panicked") {
                first_error.get_or_insert(e);
            }
        }
        let elapsed = t.elapsed();
        first_error.map_or(Ok(elapsed), Err)
    })?;
    let (requests, events, rejected, latency_us, cycle_us) = total.into_inner().unwrap();
    Ok(LoadReport { clients, requests, events, rejected, elapsed, latency_us, cycle_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_request_of_every_client() {
        let report = closed_loop(
            3,
            Duration::from_millis(30),
            |c| Ok(c as u64),
            |c| {
                std::thread::sleep(Duration::from_millis(1));
                Ok(Outcome { events: *c + 1, rejected: *c == 2, latency: None })
            },
        )
        .unwrap();
        assert_eq!(report.clients, 3);
        assert!(report.requests >= 3, "every client made a request: {report:?}");
        assert_eq!(report.latency_us.len(), report.requests);
        assert!(report.rejected > 0 && report.rejected < report.requests);
        assert!(report.events > report.requests);
    }

    #[test]
    fn a_failing_client_fails_the_run() {
        let err = closed_loop(
            4,
            Duration::from_secs(30),
            |c| if c == 3 { anyhow::bail!("client 3 cannot connect") } else { Ok(()) },
            |_| Ok(Outcome::events(1)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("client 3"), "{err}");
        let err = closed_loop(
            2,
            Duration::from_secs(30),
            |_| Ok(0u32),
            |n| {
                *n += 1;
                if *n == 5 {
                    anyhow::bail!("count mismatch")
                }
                Ok(Outcome::events(1))
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("mismatch"), "{err}");
    }
}
